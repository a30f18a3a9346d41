"""A circle of three agents sharing a memory: every member's recall cache is cleared (clearing
only the author's would leave the others recalling stale results)."""

from __future__ import annotations

import asyncio

from _backend import open_cache, toy_embeddings

from gathering_cache import MemoryManager


async def main() -> None:
    cache, where = await open_cache("gathering-example-circle:")
    print(f"running on {where}")
    async with cache:
        await cache.clear_all()
        memory = MemoryManager(cache, toy_embeddings)
        query = "What does the user prefer?"
        await cache.set_circle_context(5, {"name": "Research Team", "members": [1, 2, 3]})
        for agent in (1, 2, 3):
            await memory.remember(agent, f"agent {agent} met the user today")
            await memory.recall(agent, query)
        cached = [a for a in (1, 2, 3) if await cache.get_rag_results(a, query) is not None]
        print(f"cached recalls before sharing: agents {cached}")

        memory_id = await memory.remember(1, "The user prefers dark mode")
        await memory.share(memory_id, circle_id=5)
        cached = [a for a in (1, 2, 3) if await cache.get_rag_results(a, query) is not None]
        print(f"cached recalls after sharing: agents {cached}")
        for agent in (1, 2, 3):
            found = [r["content"] for r in await memory.recall(agent, query)]
            print(f"agent {agent} sees the shared memory: {'The user prefers dark mode' in found}")
        await cache.clear_all()


if __name__ == "__main__":
    asyncio.run(main())
