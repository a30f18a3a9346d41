"""``gathering-cache demo``: a short tour on the configured cache (keys under the prefix it
is given; the CLI uses ``gathering-demo:``), cleaned up afterwards."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable

from gathering_cache.config import CacheConfig
from gathering_cache.manager import AsyncCacheManager

__all__ = ["run_demo"]


async def _embedding_api(text: str) -> list[float]:
    """Stands in for a paid embedding API: slow (150 ms), deterministic."""
    await asyncio.sleep(0.15)
    return [round(b / 255, 4) for b in hashlib.sha256(text.encode()).digest()[:8]]


async def run_demo(config: CacheConfig, echo: Callable[[str], object]) -> None:
    """Set/get, an embedding computed then cached, a RAG invalidation, the stats."""
    async with AsyncCacheManager(config) as cache:
        if not cache.is_enabled():
            raise RuntimeError(f"cannot use the cache: {cache.telemetry.reason}")
        prefix = config.key_prefix
        echo(f"gathering-cache demo on {cache.telemetry.endpoint or 'memory'}")
        await cache.set(f"{prefix}greeting", {"text": "hello"}, ttl=60)
        echo(f"1. get -> {await cache.get(f'{prefix}greeting')}")
        for attempt in (1, 2):
            started = time.perf_counter()
            vector = await cache.get_embedding("Hello world")
            source = "cache"
            if vector is None:
                vector, source = await _embedding_api("Hello world"), "API"
                await cache.set_embedding("Hello world", vector)
            ms = (time.perf_counter() - started) * 1000
            echo(f"2. embedding, call {attempt}: {source:5} {ms:7.2f} ms")
        await cache.set_rag_results(1, "preferences?", [{"content": "dark mode"}])
        echo(f"3. RAG recall cached: {await cache.get_rag_results(1, 'preferences?')}")
        await cache.invalidate_rag_results(1)
        echo(f"   after invalidation: {await cache.get_rag_results(1, 'preferences?')}")
        stats = await cache.get_stats()
        echo(f"4. hits={stats['hits']} misses={stats['misses']} hit_rate={stats['hit_rate']}%")
        echo(f"   cleaned up {await cache.clear_all()} demo keys")
