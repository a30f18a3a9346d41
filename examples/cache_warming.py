"""Warming the RAG cache with common queries per agent."""

from __future__ import annotations

import asyncio

from _backend import open_cache, toy_embeddings

from gathering_cache import MemoryManager, WarmProgress, warm_rag_cache

COMMON_QUERIES = [
    "What are the user's preferences?",
    "What is the project context?",
    "What are the recent decisions?",
]


async def main() -> None:
    cache, where = await open_cache("gathering-example-warm:")
    print(f"running on {where}")
    async with cache:
        await cache.clear_all()
        memory = MemoryManager(cache, toy_embeddings)
        for agent in (1, 2):
            await memory.remember(agent, "The user prefers dark mode")
            await memory.remember(agent, "The project is a caching layer")

        def report(p: WarmProgress) -> None:
            print(f"  [{p.done}/{p.total}] agent {p.agent_id}: {p.query!r} -> {p.outcome}")

        summary = await warm_rag_cache(
            memory, {1: COMMON_QUERIES, 2: COMMON_QUERIES}, progress=report
        )
        print(
            f"warmed: {summary.computed} computed, {summary.already_cached} already cached, "
            f"{summary.failed} failed"
        )
        before = memory.recalls_from_cache
        for query in COMMON_QUERIES:
            await memory.recall(1, query)
        print(
            f"after warming, {memory.recalls_from_cache - before} of {len(COMMON_QUERIES)} "
            "recalls came from the cache"
        )
        await cache.clear_all()


if __name__ == "__main__":
    asyncio.run(main())
