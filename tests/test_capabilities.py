"""Stores declare what the core needs to know (capabilities); the event bridge works through
a public, policy-guarded handle (``AsyncCacheManager.messaging``), never the store itself."""

from __future__ import annotations

import pytest

from gathering_cache import AsyncCacheManager, BackendError, CacheConfig
from gathering_cache.backends.base import Capabilities
from tests.conftest import Factory


async def test_every_store_declares_its_capabilities(make_cache: Factory, backend: str) -> None:
    cache = await make_cache()
    caps = cache.capabilities
    assert isinstance(caps, Capabilities)
    assert caps.disabled is None
    if backend == "memory":
        assert (caps.backend, caps.networked, caps.loop_bound, caps.concurrency) == (
            "memory",
            False,
            False,
            None,
        )
        assert cache.embeddings.lru.capacity == 0  # an in-process store needs no LRU copy
    else:
        assert (caps.backend, caps.networked, caps.loop_bound) == ("redis", True, True)
        assert caps.concurrency == cache.config.max_connections
        assert cache.embeddings.lru.capacity == cache.config.embedding_lru_size
    assert (await cache.get_stats())["backend"] == caps.backend


@pytest.mark.parametrize("backend_name", ["redis", "memory"])
async def test_a_disabled_store_says_why_and_is_never_called(backend_name: str) -> None:
    config = CacheConfig(enabled=False, backend=backend_name)
    async with AsyncCacheManager(config) as cache:
        caps = cache.capabilities
        assert caps.disabled is not None
        assert "disabled in config" in caps.disabled
        assert caps.backend == backend_name
        stats = await cache.get_stats()
        assert stats["backend"] == backend_name
        assert stats["enabled"] is False
        assert cache.messaging.disabled == caps.disabled
        with pytest.raises(BackendError):
            await cache.messaging.subscribe("gathering:events")


async def test_subscribing_goes_through_the_policy(make_cache: Factory) -> None:
    cache = await make_cache()
    messaging = cache.messaging
    subscriber = await messaging.subscribe("gathering:events")
    try:
        assert await messaging.publish("gathering:events", b"hello") == 1
        received = None
        for _ in range(20):  # the first reads may see the subscription's confirmation
            received = await subscriber.get(timeout=0.1)
            if received is not None:
                break
        assert received == b"hello"
    finally:
        await subscriber.close()
    cache._core.policy.trip()  # degraded: the breaker is open
    with pytest.raises(messaging.faults):
        await messaging.subscribe("gathering:events")
    assert await messaging.publish("gathering:events", b"x") is None
    assert messaging.open is True  # degraded, not closed
    await cache.aclose()
    assert messaging.open is False
    assert messaging.disabled == "closed"
