"""CacheManager, the sync facade: parity with the async core, threads, running loops."""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import Iterator

import pytest
import redis

from gathering_cache import (
    ArgumentTypeError,
    AsyncCacheManager,
    CacheConfig,
    CacheManager,
    SerializationError,
)
from tests.servers import RedisServer

SYNC_BACKENDS = ["memory", pytest.param("redis", marks=pytest.mark.integration)]


@pytest.fixture(params=SYNC_BACKENDS)
def sync_cache(request: pytest.FixtureRequest) -> Iterator[CacheManager]:
    if request.param == "memory":
        config = CacheConfig(backend="memory")
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        flush = redis.Redis.from_url(server.url)
        flush.flushdb()
        flush.close()
        config = CacheConfig(url=server.url, key_prefix=f"sync{threading.get_ident()}:")
    cache = CacheManager(config)
    cache.clear_all()
    yield cache
    cache.clear_all()
    cache.close()


def test_every_public_coroutine_has_a_sync_twin() -> None:
    coroutines = {
        name
        for name, member in inspect.getmembers(AsyncCacheManager)
        if not name.startswith("_") and inspect.iscoroutinefunction(member)
    }
    assert len(coroutines) >= 20
    for name in sorted(coroutines):
        twin = getattr(CacheManager, name, None)
        assert twin is not None, f"CacheManager lacks {name}"
        assert not inspect.iscoroutinefunction(twin), name
        async_params = list(inspect.signature(getattr(AsyncCacheManager, name)).parameters)
        assert list(inspect.signature(twin).parameters) == async_params, name
    plain = {
        name
        for name, member in inspect.getmembers(AsyncCacheManager)
        if not name.startswith("_") and inspect.isfunction(member)
    } - coroutines
    for name in plain:
        assert hasattr(CacheManager, name), name


def test_round_trips(sync_cache: CacheManager) -> None:
    assert sync_cache.is_enabled() is True
    prefix = sync_cache.config.key_prefix
    assert sync_cache.set(f"{prefix}k", {"a": [1, 2]}, ttl=30) is True
    assert sync_cache.get(f"{prefix}k") == {"a": [1, 2]}
    assert sync_cache.exists(f"{prefix}k") is True
    assert 28 <= (sync_cache.ttl(f"{prefix}k") or 0) <= 30
    assert sync_cache.set_many({f"{prefix}a": 1, f"{prefix}b": 2}) is True
    assert sync_cache.get_many([f"{prefix}a", f"{prefix}zz", f"{prefix}b"]) == [1, None, 2]
    assert sync_cache.set_embedding("hello", [0.1, 0.2, 0.3]) is True
    assert sync_cache.get_embedding("hello") == [0.1, 0.2, 0.3]
    assert sync_cache.set_rag_results(1, "q", [{"x": 1}]) is True
    assert sync_cache.get_rag_results(1, "q") == [{"x": 1}]
    assert sync_cache.invalidate_rag_results(1) == 1
    assert sync_cache.set_circle_context(5, {"name": "c"}) is True
    assert sync_cache.invalidate_circle_context(5) is True
    assert sync_cache.delete(f"{prefix}k") is True
    stats = sync_cache.get_stats()
    assert stats["hits"] == 5
    # a, b, the embedding, and agent 1's RAG generation counter (bumped by the invalidation)
    assert stats["total_keys"] == 4
    assert sync_cache.delete_pattern(f"{prefix}*") == 3  # generation counters are kept


def test_bad_input_raises_through_the_facade(sync_cache: CacheManager) -> None:
    with pytest.raises(SerializationError):
        sync_cache.set("k", object())
    with pytest.raises(ArgumentTypeError):
        sync_cache.get_rag_results("1", "q")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="outside the key prefix"):
        sync_cache.delete_pattern("elsewhere:*")


def test_many_threads_at_once(sync_cache: CacheManager) -> None:
    errors: list[BaseException] = []
    prefix = sync_cache.config.key_prefix

    def worker(n: int) -> None:
        try:
            for i in range(50):
                key = f"{prefix}t{n}:{i}"
                assert sync_cache.set(key, [n, i]) is True
                assert sync_cache.get(key) == [n, i]
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert sync_cache.get_stats()["total_keys"] == 16 * 50


def test_inside_a_running_event_loop(sync_cache: CacheManager) -> None:
    """Legacy sync code called from an async app (or a notebook cell)."""

    async def async_app() -> object:
        sync_cache.set_embedding("in-loop", [1.0, 2.0])
        return sync_cache.get_embedding("in-loop")

    assert asyncio.run(async_app()) == [1.0, 2.0]


def test_call_from_the_portal_thread_is_a_clear_error() -> None:
    cache = CacheManager(CacheConfig(backend="memory"))
    outcome: list[BaseException] = []

    def on_portal() -> None:
        try:
            cache.get("k")
        except RuntimeError as exc:
            outcome.append(exc)

    loop = cache._portal.loop
    done = threading.Event()

    def on_portal_then_done() -> None:
        on_portal()
        done.set()

    loop.call_soon_threadsafe(on_portal_then_done)
    assert done.wait(5)
    assert len(outcome) == 1
    assert "own event-loop thread" in str(outcome[0])
    cache.close()


def test_close_is_idempotent_and_later_calls_degrade() -> None:
    cache = CacheManager(CacheConfig(backend="memory"))
    cache.set("k", 1)
    thread = cache._portal._thread
    cache.close()
    cache.close()
    assert not thread.is_alive()
    assert cache.is_enabled() is False
    assert cache.get("k") is None
    assert cache.set("k", 2) is False
    stats = cache.get_stats()
    assert stats["enabled"] is False
    assert stats["reason"] == "closed"


def test_context_manager_closes() -> None:
    with CacheManager(CacheConfig(backend="memory")) as cache:
        assert cache.set("k", 1) is True
        thread = cache._portal._thread
    assert not thread.is_alive()


def test_unreachable_redis_degrades_in_the_constructor() -> None:
    from tests.servers import free_port

    cache = CacheManager(CacheConfig(host="127.0.0.1", port=free_port()))
    assert cache.is_enabled() is False
    assert cache.get("any_key") is None
    assert cache.set("any_key", "value") is False
    cache.close()
