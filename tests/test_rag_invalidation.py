"""RAG results: invalidation without scanning, generations, stale writes, the seed's pattern."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as redis_asyncio
from fakeredis import FakeAsyncRedis, FakeServer

from gathering_cache import ArgumentTypeError, AsyncCacheManager, CacheConfig

R1 = [{"id": "m1", "content": "User prefers dark mode", "score": 0.9}]


async def test_invalidation_counts_and_isolates_agents(cache: AsyncCacheManager) -> None:
    for query in ("a", "b", "c"):
        assert await cache.set_rag_results(1, query, R1) is True
    await cache.set_rag_results(10, "a", R1)
    await cache.set_rag_results(1, "a", R1)  # rewritten: still one entry
    assert await cache.invalidate_rag_results(1) == 3
    for query in ("a", "b", "c"):
        assert await cache.get_rag_results(1, query) is None
    assert await cache.get_rag_results(10, "a") == R1
    assert await cache.invalidate_rag_results(1) == 0
    # The seed's flow without generation=: the miss above was before that second
    # invalidation, so results computed since then are stale and never served...
    await cache.set_rag_results(1, "a", R1)
    assert await cache.get_rag_results(1, "a") is None
    await cache.set_rag_results(1, "a", R1)  # ...while after this fresh miss, they are valid
    assert await cache.get_rag_results(1, "a") == R1


async def test_results_computed_before_an_invalidation_are_never_served(
    cache: AsyncCacheManager,
) -> None:
    generation = await cache.get_rag_generation(1)
    assert generation == (0, 0)
    await cache.invalidate_rag_results(1)  # memories changed while results were computed
    assert await cache.set_rag_results(1, "q", R1, generation=generation) is True
    assert await cache.get_rag_results(1, "q") is None
    fresh = await cache.get_rag_generation(1)
    assert fresh == (1, 0)
    await cache.set_rag_results(1, "q", R1, generation=fresh)
    assert await cache.get_rag_results(1, "q") == R1


async def test_invalidate_everyone(cache: AsyncCacheManager) -> None:
    for agent in (1, 2, 3):
        await cache.set_rag_results(agent, "q", R1)
    assert await cache.invalidate_all_rag_results() is True
    for agent in (1, 2, 3):
        assert await cache.get_rag_results(agent, "q") is None
    await cache.set_rag_results(2, "q", R1)
    assert await cache.get_rag_results(2, "q") == R1


async def test_seed_pattern_deletion_still_works(cache: AsyncCacheManager) -> None:
    await cache.set_rag_results(1, "a", R1)
    await cache.set_rag_results(1, "b", R1)
    assert await cache.delete_pattern("gathering:rag:agent:1:*") == 2
    assert await cache.get_rag_results(1, "a") is None


async def test_the_seeds_get_compute_set_flow_never_caches_across_an_invalidation(
    cache: AsyncCacheManager,
) -> None:
    assert await cache.get_rag_results(1, "q") is None  # miss: compute...
    await cache.invalidate_rag_results(1)  # ...while the agent's memories change
    await cache.set_rag_results(1, "q", R1)  # no generation= given
    assert await cache.get_rag_results(1, "q") is None


async def test_an_invalidation_that_could_not_reach_redis_is_owed() -> None:
    server = FakeServer()
    cache = AsyncCacheManager(
        CacheConfig(recovery_interval=0.01), client=FakeAsyncRedis(server=server)
    )
    await cache.set_rag_results(1, "q", R1)
    server.connected = False
    assert await cache.invalidate_rag_results(1) == 0  # lost on the way
    assert await cache.invalidate_all_rag_results() is False
    server.connected = True
    await asyncio.sleep(0.02)
    assert await cache.get_rag_results(1, "q") is None  # paid first, then read: stale
    assert await cache.get_rag_generation(1) == (1, 1)
    await cache.aclose()


async def test_bad_generation_is_refused(cache: AsyncCacheManager) -> None:
    with pytest.raises(ArgumentTypeError, match="generation"):
        await cache.set_rag_results(1, "q", R1, generation=(1, "x"))  # type: ignore[arg-type]
    with pytest.raises(ArgumentTypeError, match="generation"):
        await cache.set_rag_results(1, "q", R1, generation=5)  # type: ignore[arg-type]


async def test_foreign_value_under_a_rag_key_is_a_miss(cache: AsyncCacheManager) -> None:
    key = cache._core.keys.rag(1, "q")
    await cache.set(key, [{"plain": "list, no generations"}])
    assert await cache.get_rag_results(1, "q") is None
    assert (await cache.get_stats())["errors"] == 1


async def test_unavailable_cache_writes_nothing() -> None:
    cache = AsyncCacheManager(CacheConfig(enabled=False))
    assert await cache.set_rag_results(1, "q", R1) is False
    assert await cache.get_rag_generation(1) is None
    assert await cache.invalidate_rag_results(1) == 0
    assert await cache.invalidate_all_rag_results() is False


@pytest.mark.integration
async def test_invalidation_never_scans(redis_url: str) -> None:
    raw = redis_asyncio.Redis.from_url(redis_url)
    await raw.execute_command("DEBUG", "POPULATE", 20000, "other")  # type: ignore[no-untyped-call]
    async with AsyncCacheManager(CacheConfig(url=redis_url)) as cache:
        await cache.set_many({f"gathering:x:{i}": i for i in range(10)})
        for i in range(1000):
            await cache.set_rag_results(7, f"query {i}", R1)
        await raw.config_resetstat()
        assert await cache.invalidate_rag_results(7) == 1000
        stats = await raw.info("commandstats")
        assert await cache.get_rag_results(7, "query 5") is None
    keys_left = [k async for k in raw.scan_iter(match="gathering:rag:agent:7:*")]
    await raw.aclose()
    assert "cmdstat_scan" not in stats
    assert "cmdstat_keys" not in stats
    assert stats["cmdstat_incrby"]["calls"] == 1  # redis-py's INCR is INCRBY
    assert keys_left == []
