"""Cache traffic from a separate process, for the fleet, CLI and dashboard tests.

    python -m tests.ops_traffic URL PREFIX [--interval S] [--hang]

Makes a known mix of operations (per process: 3 embedding sets, 6 embedding lookups of which
3 hit; 2 circle sets and 4 lookups of which 2 hit; one RAG result cached, read twice, then
invalidated; one LLM response cached and read), then closes the manager (its statistics
are flushed on close). With ``--hang`` it does the lookups, waits past one flush interval,
makes one more lookup (which starts a flush), prints ``flushed`` once the store has its
counters, and sleeps until killed.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

from gathering_cache import AsyncCacheManager, CacheConfig

EMBEDDING_HITS = 3
EMBEDDING_MISSES = 3
CIRCLE_HITS = 2
CIRCLE_MISSES = 2


async def traffic(cache: AsyncCacheManager, tag: str) -> None:
    for index in range(3):
        await cache.set_embedding(f"{tag} text {index}", [0.1 * index, 0.2])
    for index in range(6):  # 3 hits, 3 misses
        await cache.get_embedding(f"{tag} text {index}")
    for circle in (1, 2):
        await cache.set_circle_context(circle, {"goal": tag})
    for circle in (1, 2, 3, 4):  # 2 hits, 2 misses
        await cache.get_circle_context(circle)
    await cache.set_rag_results(7, f"{tag} query", [{"content": "x"}])
    await cache.get_rag_results(7, f"{tag} query")
    await cache.get_rag_results(7, f"{tag} query")
    await cache.invalidate_rag_results(7)
    await cache.set_llm_response("m", "answer", prompt=tag, temperature=0)
    await cache.get_llm_response("m", prompt=tag, temperature=0)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("prefix")
    parser.add_argument("--interval", type=float, default=10.0)
    parser.add_argument("--hang", action="store_true")
    args = parser.parse_args()
    config = CacheConfig(url=args.url, key_prefix=args.prefix, stats_flush_interval=args.interval)
    cache = AsyncCacheManager(config)
    await cache.connect()
    tag = str(time.monotonic_ns())
    if not args.hang:
        await traffic(cache, tag)
        await cache.aclose()
        return
    for index in range(10):
        await cache.get_circle_context(index)  # 10 misses
    await asyncio.sleep(args.interval * 1.5)
    await cache.get_circle_context(99)  # one more miss: starts a flush of all 11
    fleet = cache.fleet
    assert fleet is not None
    deadline = time.monotonic() + 10
    while fleet.flushes == 0 and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    print("flushed" if fleet.flushes else "not flushed", flush=True)
    await cache.get_circle_context(100)  # counted, never flushed: lost when killed
    await asyncio.sleep(3600)


if __name__ == "__main__":
    asyncio.run(main())
    sys.exit(0)
