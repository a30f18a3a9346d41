"""gathering-cache demo: set/get, embeddings, RAG recall with invalidation, stats.

Runs on Redis when one answers at REDIS_URL (or REDIS_HOST/REDIS_PORT, default
localhost:6379), otherwise on the in-process memory backend, and says which in one line.
Keys live under ``gathering-demo:`` so the demo never touches another application's data.

    make demo            # or: python examples/demo.py
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time

from gathering_cache import AsyncCacheManager, CacheConfig

PREFIX = "gathering-demo:"
EMBED_LATENCY = 0.15  # a paid embedding API call takes 100-300 ms


async def fake_embedding_api(text: str) -> list[float]:
    """Stands in for a paid embedding API: slow, deterministic."""
    await asyncio.sleep(EMBED_LATENCY)
    digest = hashlib.sha256(text.encode()).digest()
    return [round(b / 255, 4) for b in digest[:8]]


async def embed(cache: AsyncCacheManager, text: str) -> tuple[list[float], str]:
    cached = await cache.get_embedding(text)
    if cached is not None:
        return cached, "cache"
    vector = await fake_embedding_api(text)
    await cache.set_embedding(text, vector)
    return vector, "API"


MEMORIES = {1: ["User prefers dark mode", "User works in Python"]}


async def recall(
    cache: AsyncCacheManager, agent_id: int, query: str
) -> tuple[list[dict[str, object]], str]:
    cached = await cache.get_rag_results(agent_id, query)
    if cached is not None:
        return cached, "cache"
    await asyncio.sleep(0.08)  # vector search + filtering
    results = [{"content": m, "score": 0.9} for m in MEMORIES.get(agent_id, [])]
    await cache.set_rag_results(agent_id, query, results)
    return results, "database"


async def open_cache() -> tuple[AsyncCacheManager, str]:
    """A connected manager and one line saying where it runs."""
    config = CacheConfig.from_env().model_copy(update={"key_prefix": PREFIX})
    if config.backend == "redis":
        where = config.redacted_url or f"{config.host}:{config.port}"
        cache = AsyncCacheManager(config)
        # The library warns when Redis does not answer and says it will keep retrying; this
        # probe's manager is discarded at once, so that warning would not be true here.
        library_log = logging.getLogger("gathering_cache")
        level = library_log.level
        library_log.setLevel(logging.ERROR)
        try:
            connected = await cache.connect()
        finally:
            library_log.setLevel(level)
        if connected:
            return cache, f"running on Redis at {where}"
        await cache.aclose()
        reason = f"no Redis answered at {where} (set REDIS_URL to use one)"
    else:
        reason = "GATHERING_CACHE_BACKEND=memory"
    memory = AsyncCacheManager(config.model_copy(update={"backend": "memory"}))
    await memory.connect()
    return memory, f"{reason}; running on the in-process memory backend"


async def main() -> None:
    cache, where = await open_cache()
    print(f"gathering-cache demo: {where}\n")
    async with cache:
        await cache.clear_all()

        print("1. set / get")
        await cache.set(f"{PREFIX}greeting", {"text": "hello", "lang": "en"}, ttl=60)
        print(f"   get -> {await cache.get(f'{PREFIX}greeting')}")
        print(f"   ttl -> {await cache.ttl(f'{PREFIX}greeting')} s\n")

        print("2. embeddings (simulated API, 150 ms per call)")
        for attempt in (1, 2):
            start = time.perf_counter()
            vector, source = await embed(cache, "Hello world")
            ms = (time.perf_counter() - start) * 1000
            print(f"   call {attempt}: {source:5} {ms:7.2f} ms  {vector[:3]}...")
        print()

        print("3. RAG recall cache with invalidation")
        query = "What are the user's preferences?"
        for label in ("first recall", "second recall"):
            results, source = await recall(cache, 1, query)
            print(f"   {label:14}: from {source:8} -> {len(results)} memories")
        MEMORIES[1].append("User prefers metric units")
        removed = await cache.invalidate_rag_results(1)
        print(f"   remember() -> invalidated {removed} cached recall(s) of agent 1")
        results, source = await recall(cache, 1, query)
        print(f"   after invalidation: from {source} -> {len(results)} memories\n")

        print("4. stats")
        stats = await cache.get_stats()
        print(f"   backend={stats['backend']} total_keys={stats['total_keys']}")
        print(f"   hits={stats['hits']} misses={stats['misses']} hit_rate={stats['hit_rate']}%")
        for name, counts in stats["namespaces"].items():
            if counts["hits"] or counts["misses"]:
                print(f"   {name:9} hits={counts['hits']} misses={counts['misses']}")
        print(f"\n   cleaned up {await cache.clear_all()} demo keys")


if __name__ == "__main__":
    asyncio.run(main())
