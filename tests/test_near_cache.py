"""The near cache (L1): served in this process for the chosen namespaces, kept correct by
Redis client-side caching (CLIENT TRACKING in broadcast mode), flushed whenever tracking
is lost. Two managers on separate connections stand for two processes (the server cannot
tell the difference: invalidations go by connection)."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio as redis_asyncio

from gathering_cache import AsyncCacheManager, CacheConfig
from gathering_cache.core.near import NearCache
from tests.conftest import topology_settings
from tests.servers import LocalCluster

# -- the pure part ------------------------------------------------------------------------------


def test_near_cache_serves_only_while_tracking() -> None:
    near = NearCache(10, 60.0, ["circle"])
    near.put("k", b"v", near.epoch)
    assert near.get("k") is None  # not serving yet: nothing kept
    near.flush(serving=True)
    near.put("k", b"v", near.epoch)
    assert near.get("k") == b"v"
    near.flush(serving=False)
    assert near.get("k") is None


def test_a_read_that_raced_an_invalidation_is_not_kept() -> None:
    near = NearCache(10, 60.0, ["circle"])
    near.flush(serving=True)
    started = near.epoch
    near.invalidate(["other"])  # arrives while the read's reply travels
    near.put("k", b"old", started)
    assert near.get("k") is None


def test_near_cache_is_bounded_in_size_and_time() -> None:
    near = NearCache(2, 0.05, ["circle"])
    near.flush(serving=True)
    for key in ("a", "b", "c"):
        near.put(key, key.encode(), near.epoch)
    assert near.get("a") is None  # the least recently used went first
    assert near.get("c") == b"c"
    time.sleep(0.06)
    assert near.get("c") is None
    assert near.snapshot()["size"] == 1  # "b" is still held until read or pushed out


def test_invalidate_none_forgets_everything() -> None:
    near = NearCache(10, 60.0, ["circle"])
    near.flush(serving=True)
    near.put("a", b"1", near.epoch)
    near.invalidate(None)
    assert near.get("a") is None
    assert near.snapshot()["invalidations"] == 1


def test_near_cache_is_off_by_default_and_never_on_the_memory_backend() -> None:
    assert CacheConfig().near_cache is False
    assert CacheConfig().near_cache_namespaces == ["circle", "embedding"]
    with pytest.raises(ValueError, match="near_cache_namespaces"):
        CacheConfig(near_cache_namespaces=["rag"])


async def test_stats_say_when_the_near_cache_is_off() -> None:
    cache = AsyncCacheManager(CacheConfig(backend="memory", near_cache=True))
    assert (await cache.get_stats())["near_cache"] == {"enabled": False}


# -- on real Redis, standalone and cluster ---------------------------------------------------

Pair = tuple[AsyncCacheManager, AsyncCacheManager]


@pytest.fixture(
    params=[
        pytest.param("redis", marks=pytest.mark.integration),
        pytest.param("cluster", marks=pytest.mark.integration),
    ]
)
async def pair(request: pytest.FixtureRequest) -> AsyncIterator[Pair]:
    """Two managers with the near cache on, as two processes would be."""
    if request.param == "redis":
        await _flush(request.getfixturevalue("redis_server").url)
    settings = topology_settings(request.param, request)
    managers = [
        AsyncCacheManager(CacheConfig(near_cache=True, **settings)),
        AsyncCacheManager(CacheConfig(near_cache=True, **settings)),
    ]
    for manager in managers:
        await manager.connect()
        await _until(functools.partial(_serving, manager))
    yield managers[0], managers[1]
    for manager in managers:
        await manager.aclose()


async def _flush(url: str) -> None:
    client = redis_asyncio.Redis.from_url(url)
    try:
        await client.flushdb()
    finally:
        await client.aclose()


async def _serving(manager: AsyncCacheManager) -> bool:
    return bool((await manager.get_stats())["near_cache"].get("serving"))


async def _until(check: Callable[[], Awaitable[bool]], within: float = 5.0) -> float:
    started = time.monotonic()
    while not await check():
        assert time.monotonic() - started < within, "condition not met in time"
        await asyncio.sleep(0.005)
    return time.monotonic() - started


async def _near(manager: AsyncCacheManager) -> dict[str, Any]:
    stats: dict[str, Any] = (await manager.get_stats())["near_cache"]
    return stats


async def test_a_second_read_is_served_in_process(pair: Pair) -> None:
    a, _ = pair
    assert await a.set_circle_context(1, {"topic": "x"})
    await asyncio.sleep(0.1)  # the invalidation of a's own write arrives (and is applied)
    assert await a.get_circle_context(1) == {"topic": "x"}  # from Redis, now kept
    before = await _near(a)
    assert await a.get_circle_context(1) == {"topic": "x"}
    after = await _near(a)
    assert after["hits"] == before["hits"] + 1
    assert after["size"] >= 1


async def test_a_write_elsewhere_is_seen_here(pair: Pair) -> None:
    a, b = pair
    assert await a.set_circle_context(2, {"v": 1})
    await asyncio.sleep(0.1)
    assert await a.get_circle_context(2) == {"v": 1}
    assert await a.get_circle_context(2) == {"v": 1}  # held in a's near cache
    assert (await _near(a))["size"] == 1
    assert await b.set_circle_context(2, {"v": 2})
    await _until(lambda: _equals(a, 2, {"v": 2}), within=2.0)
    assert await b.invalidate_circle_context(2)
    await _until(lambda: _equals(a, 2, None), within=2.0)


async def _equals(manager: AsyncCacheManager, circle: int, expected: Any) -> bool:
    found: Any = await manager.get_circle_context(circle)
    return bool(found == expected)


async def test_killing_the_tracking_connection_flushes_and_never_serves_stale(
    pair: Pair, request: pytest.FixtureRequest
) -> None:
    a, b = pair
    assert await a.set_circle_context(3, {"v": 1})
    await asyncio.sleep(0.1)
    assert await a.get_circle_context(3) == {"v": 1}
    assert await a.get_circle_context(3) == {"v": 1}
    # The tracking connections are the subscribed ones (type pubsub): CLIENT KILL them.
    if "cluster" in request.node.name:
        cluster: LocalCluster = request.getfixturevalue("redis_cluster")
        killed = sum(
            int(cluster.cli(port, "client", "kill", "type", "pubsub").strip() or 0)
            for port in cluster.primary_ports()
        )
    else:
        raw = redis_asyncio.Redis.from_url(request.getfixturevalue("redis_server").url)
        try:
            killed = await raw.client_kill_filter(_type="pubsub")
        finally:
            await raw.aclose()
    assert killed >= 2  # a's and b's
    # The loss reaches this process as the connection's EOF, like an invalidation would:
    # give the loop that moment (the staleness window of the design, see docs/scaling.md).
    await asyncio.sleep(0.05)
    assert await b.set_circle_context(3, {"v": 2})  # its invalidation may never reach a ...
    # ... but a's near cache was flushed with the connection: never the old value.
    for _ in range(50):
        assert await a.get_circle_context(3) == {"v": 2}
        await asyncio.sleep(0.01)
    await _until(functools.partial(_serving, a), within=5.0)
    assert await a.get_circle_context(3) == {"v": 2}


async def test_own_writes_and_deletes_are_never_served_stale(pair: Pair) -> None:
    a, _ = pair
    assert await a.set_circle_context(4, {"v": 1})
    assert await a.get_circle_context(4) == {"v": 1}
    assert await a.set_circle_context(4, {"v": 2})
    assert await a.get_circle_context(4) == {"v": 2}
    assert await a.invalidate_circle_context(4)
    assert await a.get_circle_context(4) is None
    assert await a.set_circle_context(4, {"v": 3})
    assert await a.get_circle_context(4) == {"v": 3}
    await a.clear_all()
    assert await a.get_circle_context(4) is None


async def test_batch_reads_use_the_near_cache_and_see_writes_elsewhere(pair: Pair) -> None:
    a, b = pair
    texts = ["alpha", "beta", "gamma"]
    for i, text in enumerate(texts):
        assert await a.set_embedding(text, [float(i), 0.5])
    await asyncio.sleep(0.1)  # the invalidations of a's own writes arrive
    assert await a.get_embeddings(["alpha", "beta"]) == [[0.0, 0.5], [1.0, 0.5]]  # kept
    before = await _near(a)
    # Two held, one asked from Redis (and kept), one missing everywhere.
    found = await a.get_embeddings(["alpha", "beta", "gamma", "delta"])
    assert found == [[0.0, 0.5], [1.0, 0.5], [2.0, 0.5], None]
    after = await _near(a)
    assert after["hits"] == before["hits"] + 2
    assert await b.set_embedding("beta", [9.0, 9.0])
    await _until(lambda: _batch_equals(a, ["alpha", "beta"], [[0.0, 0.5], [9.0, 9.0]]), 2.0)


async def _batch_equals(manager: AsyncCacheManager, texts: list[str], expected: Any) -> bool:
    found: Any = await manager.get_embeddings(texts)
    return bool(found == expected)
