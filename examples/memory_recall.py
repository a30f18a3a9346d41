"""Memory recall with invalidation: the second recall comes from the cache, and remember()
clears the agent's cache so the next recall sees the new memory."""

from __future__ import annotations

import asyncio

from _backend import open_cache, toy_embeddings

from gathering_cache import InMemoryVectorStore, MemoryManager


async def main() -> None:
    cache, where = await open_cache("gathering-example-recall:")
    print(f"running on {where}")
    async with cache:
        await cache.clear_all()
        store = InMemoryVectorStore()
        memory = MemoryManager(cache, toy_embeddings, store)
        query = "What are the user's preferences?"

        await memory.remember(agent_id=1, content="User prefers dark mode")
        first = await memory.recall(agent_id=1, query=query)
        second = await memory.recall(agent_id=1, query=query)
        print(
            f"recall 1: {len(first)} memories, recall 2: {len(second)} memories, "
            f"vector searches: {store.searches}, from cache: {memory.recalls_from_cache}"
        )

        await memory.remember(agent_id=1, content="User prefers metric units")
        third = await memory.recall(agent_id=1, query=query)
        print(f"after remember(): {len(third)} memories, vector searches: {store.searches}")
        print("contents:", sorted(r["content"] for r in third))
        await cache.clear_all()


if __name__ == "__main__":
    asyncio.run(main())
