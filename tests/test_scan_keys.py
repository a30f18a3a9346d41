"""``scan_keys``: listing the keys under the prefix with SCAN, on every backend, async and sync."""

from __future__ import annotations

import socket

import pytest

from gathering_cache import (
    AsyncCacheManager,
    CacheConfig,
    CacheManager,
    InvalidArgumentError,
    PatternError,
)
from tests.conftest import Factory


async def _fill(cache: AsyncCacheManager) -> None:
    await cache.set_many({f"gathering:k:{i}": i for i in range(30)}, ttl=60)
    await cache.set_embedding("hello", [0.5, 1.0])
    await cache.set_circle_context(4, {"goal": "x"})
    await cache.set("elsewhere:k", 1, ttl=60)  # outside the prefix: never listed


async def test_every_key_under_the_prefix_and_nothing_else(make_cache: Factory) -> None:
    cache = await make_cache()
    await _fill(cache)
    keys = {key async for key in cache.scan_keys(count=7)}
    assert {f"gathering:k:{i}" for i in range(30)} <= keys
    assert "gathering:circle:4" in keys
    assert sum(key.startswith("gathering:embedding:") for key in keys) == 1
    assert len(keys) == 32
    assert all(key.startswith("gathering:") for key in keys)


async def test_a_namespace_or_a_pattern_narrows_the_listing(make_cache: Factory) -> None:
    cache = await make_cache()
    await _fill(cache)
    assert [k async for k in cache.scan_keys(namespace="circle")] == ["gathering:circle:4"]
    embedding = [k async for k in cache.scan_keys(namespace="embedding")]
    assert len(embedding) == 1
    narrowed = {k async for k in cache.scan_keys("gathering:k:1*")}
    assert narrowed == {"gathering:k:1"} | {f"gathering:k:{i}" for i in range(10, 20)}
    assert [k async for k in cache.scan_keys("gathering:circle:*", namespace="circle")] == [
        "gathering:circle:4"
    ]
    assert [k async for k in cache.scan_keys(namespace="llm")] == []


async def test_bad_arguments_raise_at_the_call_before_any_io(make_cache: Factory) -> None:
    cache = await make_cache()
    with pytest.raises(PatternError, match="outside the key prefix"):
        cache.scan_keys("other:*")
    with pytest.raises(PatternError, match="outside namespace 'circle'"):
        cache.scan_keys("gathering:k:*", namespace="circle")
    with pytest.raises(InvalidArgumentError, match="namespace must be one of"):
        cache.scan_keys(namespace="generic")
    with pytest.raises(InvalidArgumentError, match="count must be > 0"):
        cache.scan_keys(count=0)


async def test_an_unreachable_store_lists_nothing_and_never_raises() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with AsyncCacheManager(CacheConfig(port=port)) as cache:
        assert [k async for k in cache.scan_keys()] == []


def test_the_sync_twin_lists_the_same_keys_in_pages() -> None:
    with CacheManager(CacheConfig(backend="memory")) as cache:
        cache.set_many({f"gathering:s:{i}": i for i in range(25)}, ttl=60)
        listed = list(cache.scan_keys("gathering:s:*", count=4))
        assert sorted(listed) == sorted(f"gathering:s:{i}" for i in range(25))
        with pytest.raises(PatternError):
            cache.scan_keys("nope:*")
    # Closed: the listing is empty, not an error.
    assert list(cache.scan_keys()) == []
