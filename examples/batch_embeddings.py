"""Batch embedding with partial hits: one cache round trip, only the misses sent on."""

from __future__ import annotations

import asyncio
import hashlib

from _backend import open_cache

from gathering_cache import CachedEmbedder

sent: list[list[str]] = []


async def provider(texts: list[str]) -> list[list[float]]:
    sent.append(texts)
    return [[b / 255 for b in hashlib.sha256(t.encode()).digest()[:4]] for t in texts]


async def main() -> None:
    cache, where = await open_cache("gathering-example-batch:")
    print(f"running on {where}")
    async with cache:
        await cache.clear_all()
        embedder = CachedEmbedder(provider, cache, model="example-embedder", max_batch_size=8)
        documents = [f"document {i}" for i in range(30)]
        await embedder.embed_many(documents[:20])  # warm 20 of them
        sent.clear()

        vectors = await embedder.embed_many(documents + documents[:5])  # 35 asked, 10 new
        print(f"asked for {len(documents) + 5} texts, got {len(vectors)} vectors")
        print(f"provider calls: {len(sent)}, sizes {[len(batch) for batch in sent]}")
        print(f"texts sent: {sum(len(batch) for batch in sent)}")

        cached = await cache.get_embeddings(documents, model="example-embedder")
        print(f"now cached: {sum(v is not None for v in cached)} of {len(documents)}")
        await cache.clear_all()


if __name__ == "__main__":
    asyncio.run(main())
