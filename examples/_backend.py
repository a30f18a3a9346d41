"""Shared by the examples: Redis when one answers (REDIS_URL or localhost:6379), else the
in-process memory backend. Each example keeps its keys under its own prefix."""

from __future__ import annotations

import logging

from gathering_cache import AsyncCacheManager, CacheConfig


async def open_cache(prefix: str) -> tuple[AsyncCacheManager, str]:
    """A connected manager and a sentence saying which backend it runs on."""
    config = CacheConfig.from_env().model_copy(update={"key_prefix": prefix})
    if config.backend == "redis":
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
            return cache, f"Redis at {config.redacted_url or f'{config.host}:{config.port}'}"
        await cache.aclose()
    memory = AsyncCacheManager(config.model_copy(update={"backend": "memory"}))
    await memory.connect()
    return memory, "the in-process memory backend"


def toy_embeddings(texts: list[str]) -> list[list[float]]:
    """A stand-in for an embedding model: words hashed into 32 buckets (deterministic)."""
    import hashlib

    out = []
    for text in texts:
        vector = [0.0] * 32
        for word in text.lower().split():
            vector[hashlib.sha256(word.strip("?.,!'").encode()).digest()[0] % 32] += 1.0
        out.append(vector)
    return out
