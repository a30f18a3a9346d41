"""Embeddings through a provider, never paid for twice: CachedEmbedder with hit/miss counts.

The provider here is a stand-in for a paid API (150 ms and $0.0001 per call). With a real
one: ``CachedEmbedder(OpenAIEmbeddings("text-embedding-3-small"), cache)`` or
``CachedEmbedder.from_env()`` (OPENAI_API_KEY, OPENAI_BASE_URL, OPENAI_EMBEDDING_MODEL).
"""

from __future__ import annotations

import asyncio
import hashlib
import time

from _backend import open_cache

from gathering_cache import CachedEmbedder

calls = 0


async def paid_embedding_api(texts: list[str]) -> list[list[float]]:
    global calls
    calls += 1
    await asyncio.sleep(0.15)
    return [[b / 255 for b in hashlib.sha256(t.encode()).digest()[:8]] for t in texts]


async def main() -> None:
    cache, where = await open_cache("gathering-example-embed:")
    print(f"running on {where}")
    async with cache:
        await cache.clear_all()
        embedder = CachedEmbedder(paid_embedding_api, cache, model="example-embedder")

        start = time.perf_counter()
        await embedder.embed("What are the user's preferences?")
        print(f"first embed : {(time.perf_counter() - start) * 1000:7.1f} ms (provider)")
        start = time.perf_counter()
        await embedder.embed("What are the user's preferences?")
        print(f"second embed: {(time.perf_counter() - start) * 1000:7.1f} ms (cache)")

        # 20 agents ask for the same uncached text at once: one provider call.
        await asyncio.gather(*(embedder.embed("a brand new question") for _ in range(20)))

        stats = embedder.stats.snapshot()
        print(f"provider calls: {stats['provider_calls']} (texts sent: {stats['texts_sent']})")
        print(
            f"requested: {stats['requested']}, saved: {stats['embeddings_saved']} "
            f"({stats['saved_ratio']:.0%}), est. cost saved ${stats['estimated_cost_saved']}"
        )
        print(f"hits from the store: {stats['hits_store']}, coalesced: {stats['coalesced']}")
        await cache.clear_all()


if __name__ == "__main__":
    asyncio.run(main())
