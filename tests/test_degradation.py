"""Graceful degradation: the seed's four modes, with real faults (closed ports, killed and
paused servers, fakeredis outages), logging once per outage, and recovery without restart."""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

import pytest
from fakeredis import FakeAsyncRedis, FakeServer

from gathering_cache import AsyncCacheManager, CacheConfig
from tests.conftest import require_redis_server
from tests.servers import RedisServer, free_port

# Loose upper bound for "returns promptly": the point is "not seconds", not a benchmark.
PROMPT = 2.0

# How far past its deadline a call may return against a hung server: the loop's delay in
# resuming the caller, not a second round of redis-py retries. (On Python 3.10 a SCAN step of
# clear_all used to run on to ~0.8 s: async_timeout lost its cancellation to redis-py's own
# read timeout, and redis-py retried; see redis_store._bounded_310.)
SLACK = 0.5


# Every public coroutine of AsyncCacheManager that is a cache operation, with one call of it,
# its degraded answer and how many lookups (misses when degraded) it counts. Which operations
# exist is derived from the manager (as the sync facade's parity test does), so an operation
# added without an entry here fails test_every_public_operation_is_exercised instead of going
# untested.
LIFECYCLE = frozenset({"aclose", "close", "connect", "get_stats"})
Call = Callable[[AsyncCacheManager], Awaitable[Any]]


class Operation(NamedTuple):
    call: Call
    degraded: Any
    lookups: int = 0


OPERATIONS: dict[str, Operation] = {
    "get": Operation(lambda c: c.get("any_key"), None, 1),
    "set": Operation(lambda c: c.set("any_key", "value"), False),
    "delete": Operation(lambda c: c.delete("any_key"), False),
    "delete_pattern": Operation(lambda c: c.delete_pattern("gathering:*"), 0),
    "get_many": Operation(lambda c: c.get_many(["a", "b"]), [None, None], 2),
    "set_many": Operation(lambda c: c.set_many({"a": 1}), False),
    "exists": Operation(lambda c: c.exists("a"), False),
    "ttl": Operation(lambda c: c.ttl("a"), None),
    "get_embedding": Operation(lambda c: c.get_embedding("t"), None, 1),
    "set_embedding": Operation(lambda c: c.set_embedding("t", [0.1]), False),
    "get_embeddings": Operation(lambda c: c.get_embeddings(["t", "u"]), [None, None], 2),
    "set_embeddings": Operation(lambda c: c.set_embeddings(["t"], [[0.1]]), False),
    "get_rag_results": Operation(lambda c: c.get_rag_results(1, "q"), None, 1),
    "set_rag_results": Operation(lambda c: c.set_rag_results(1, "q", []), False),
    "get_rag_generation": Operation(lambda c: c.get_rag_generation(1), None),
    "invalidate_rag_results": Operation(lambda c: c.invalidate_rag_results(1), 0),
    "invalidate_all_rag_results": Operation(lambda c: c.invalidate_all_rag_results(), False),
    "get_circle_context": Operation(lambda c: c.get_circle_context(1), None, 1),
    "set_circle_context": Operation(lambda c: c.set_circle_context(1, {}), False),
    "invalidate_circle_context": Operation(lambda c: c.invalidate_circle_context(1), False),
    "get_llm_response": Operation(
        lambda c: c.get_llm_response("m", prompt="p", temperature=0), None, 1
    ),
    "set_llm_response": Operation(
        lambda c: c.set_llm_response("m", {"text": "r"}, prompt="p", temperature=0),
        False,
    ),
    "invalidate_llm_responses": Operation(lambda c: c.invalidate_llm_responses(), 0),
    "clear_all": Operation(lambda c: c.clear_all(), 0),
    "flush_stats": Operation(lambda c: c.flush_stats(), False),
}


def public_operations() -> list[str]:
    """The names of AsyncCacheManager's public coroutines that are cache operations."""
    return sorted(
        name
        for name, member in inspect.getmembers(AsyncCacheManager)
        if not name.startswith("_")
        and inspect.iscoroutinefunction(member)
        and name not in LIFECYCLE
    )


async def every_operation(cache: AsyncCacheManager) -> list[Any]:
    """Call every cache operation once, in public_operations() order; return their results."""
    return [await OPERATIONS[name].call(cache) for name in public_operations()]


DEGRADED_ANSWERS = [OPERATIONS[name].degraded for name in public_operations() if name in OPERATIONS]
LOOKUPS = sum(operation.lookups for operation in OPERATIONS.values())


def test_every_public_operation_is_exercised() -> None:
    assert len(public_operations()) >= 24
    assert set(public_operations()) == set(OPERATIONS)


async def timed(call: Callable[[], Awaitable[Any]]) -> tuple[Any, float]:
    start = time.monotonic()
    result = await call()
    return result, time.monotonic() - start


def warnings_in(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.WARNING and r.name.startswith("gathering_cache")
    ]


# -- mode 3: disabled in config ---------------------------------------------------------------


async def test_disabled_in_config_answers_degraded_without_io() -> None:
    cache = AsyncCacheManager(CacheConfig(enabled=False, host="unreachable.invalid"))
    assert cache.is_enabled() is False
    assert await cache.connect() is False
    assert await every_operation(cache) == DEGRADED_ANSWERS
    stats = await cache.get_stats()
    assert stats["enabled"] is False
    assert "disabled" in stats["reason"]
    assert stats["misses"] == LOOKUPS  # lookups still counted: the caller had to compute
    await cache.aclose()


async def test_bad_input_still_raises_when_disabled() -> None:
    cache = AsyncCacheManager(CacheConfig(enabled=False))
    with pytest.raises(TypeError):
        await cache.set("k", {1, 2})
    with pytest.raises(ValueError, match="outside the key prefix"):
        await cache.delete_pattern("other:*")


# -- mode 2: connection failed at start --------------------------------------------------------


async def test_connection_refused_at_start(caplog: pytest.LogCaptureFixture) -> None:
    config = CacheConfig(port=free_port(), host="127.0.0.1")
    cache = AsyncCacheManager(config)
    ok, elapsed = await timed(cache.connect)
    assert ok is False
    assert elapsed < PROMPT
    assert cache.is_enabled() is False

    results, elapsed = await timed(lambda: every_operation(cache))
    assert results == DEGRADED_ANSWERS
    assert elapsed < PROMPT
    stats = await cache.get_stats()
    assert stats["enabled"] is False
    assert "Redis unavailable" in stats["reason"]
    assert stats["breaker"]["state"] == "open"
    assert "Connection" in (stats["breaker"]["last_error"] or "")
    assert len(warnings_in(caplog)) == 1
    assert "degraded mode" in warnings_in(caplog)[0]
    await cache.aclose()


async def test_lazy_connect_on_first_use() -> None:
    cache = AsyncCacheManager(CacheConfig(port=free_port(), host="127.0.0.1"))
    assert cache.is_enabled() is True  # nothing tried yet
    assert await cache.get("k") is None
    assert cache.is_enabled() is False
    await cache.aclose()


async def test_one_warning_per_outage_not_per_call(caplog: pytest.LogCaptureFixture) -> None:
    cache = AsyncCacheManager(
        CacheConfig(port=free_port(), host="127.0.0.1", recovery_interval=0.05)
    )
    for _ in range(30):
        await cache.get("k")
        await asyncio.sleep(0.005)  # several probes happen and fail
    assert len(warnings_in(caplog)) == 1
    await cache.aclose()


# -- mode 1: redis library missing ---------------------------------------------------------------


def test_redis_library_missing() -> None:
    script = textwrap.dedent(
        """
        import sys
        sys.modules["redis"] = None  # import redis -> ImportError
        import asyncio
        import gathering_cache as gc
        from gathering_cache import AsyncCacheManager, CacheConfig, CacheManager
        assert gc.REDIS_AVAILABLE is False

        async def main():
            cache = AsyncCacheManager(CacheConfig())
            assert cache.is_enabled() is False
            assert await cache.get("k") is None
            assert await cache.set("k", 1) is False
            stats = await cache.get_stats()
            assert stats["enabled"] is False and "not installed" in stats["reason"], stats
            memory = AsyncCacheManager(CacheConfig(backend="memory"))
            assert await memory.set("k", 1) is True and await memory.get("k") == 1

        asyncio.run(main())
        sync = CacheManager(CacheConfig())
        assert sync.is_enabled() is False and sync.set("k", 1) is False
        sync.close()
        print("ok")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
    assert "not installed" in result.stderr  # the one warning


# -- mode 4: errors during operation, and recovery ------------------------------------------------


async def test_fakeredis_outage_degrades_then_recovers(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    server = FakeServer()
    config = CacheConfig(failure_threshold=3, recovery_interval=0.1)
    cache = AsyncCacheManager(config, client=FakeAsyncRedis(server=server))
    assert await cache.set("k", "v") is True

    server.connected = False
    assert await cache.get("k") is None
    assert cache.is_enabled() is True  # one failure is not an outage yet
    assert await cache.set("k2", "v") is False
    assert await cache.get("k") is None
    assert cache.is_enabled() is False  # third consecutive failure opens the breaker
    assert (await cache.get_stats())["breaker"]["consecutive_failures"] == 3

    server.connected = True
    assert await cache.get("k") is None  # still cooling down: no I/O, degraded answer
    await asyncio.sleep(0.15)
    assert await cache.get("k") == "v"  # the probe succeeds and closes the breaker
    assert cache.is_enabled() is True
    stats = await cache.get_stats()
    assert stats["enabled"] is True
    assert stats["breaker"]["outages"] == 1
    assert stats["breaker"]["degraded_seconds"] > 0
    assert any("recovered" in r.getMessage() for r in caplog.records)
    assert len(warnings_in(caplog)) == 1
    await cache.aclose()


@pytest.mark.integration
async def test_recovers_when_redis_starts_later() -> None:
    require_redis_server()
    port = free_port()
    cache = AsyncCacheManager(CacheConfig(host="127.0.0.1", port=port, recovery_interval=0.1))
    assert await cache.connect() is False
    assert await cache.set("k", "v") is False
    with RedisServer(port=port):
        deadline = time.monotonic() + 5
        while not await cache.set("k", "v") and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert cache.is_enabled() is True
        assert await cache.get("k") == "v"
    await cache.aclose()


@pytest.mark.integration
async def test_killed_and_restarted_server() -> None:
    require_redis_server()
    server = RedisServer()
    server.start()
    try:
        cache = AsyncCacheManager(
            CacheConfig(url=server.url, recovery_interval=0.1, failure_threshold=2)
        )
        assert await cache.set("k", "v") is True
        server.kill()
        for _ in range(10):
            result, elapsed = await timed(lambda: cache.get("k"))
            assert result is None
            assert elapsed < PROMPT
        assert cache.is_enabled() is False
        server.start()  # same port, empty data
        deadline = time.monotonic() + 5
        while not await cache.set("k", "back") and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert await cache.get("k") == "back"
        assert cache.is_enabled() is True
        await cache.aclose()
    finally:
        server.cleanup()


@pytest.mark.integration
async def test_hung_server_does_not_block_past_the_timeout() -> None:
    require_redis_server()
    with RedisServer() as server:
        config = CacheConfig(url=server.url, operation_timeout=0.3, recovery_interval=0.1)
        cache = AsyncCacheManager(config)
        assert await cache.set("k", "v") is True
        server.pause()
        try:
            for call in (lambda: cache.get("k"), lambda: cache.set("k", 1), cache.clear_all):
                result, elapsed = await timed(call)
                assert result in (None, False, 0)
                assert elapsed < config.operation_timeout + SLACK
        finally:
            server.resume()
        deadline = time.monotonic() + 5
        while await cache.get("k") != "v" and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert await cache.get("k") == "v"
        await cache.aclose()


@pytest.mark.integration
async def test_wrong_password_degrades_without_leaking_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    require_redis_server()
    caplog.set_level(logging.DEBUG)
    with RedisServer(password="right-horse-battery") as server:
        good = AsyncCacheManager(
            CacheConfig(host="127.0.0.1", port=server.port, password="right-horse-battery")
        )
        assert await good.set("k", 1) is True
        assert await good.get("k") == 1
        await good.aclose()

        bad = AsyncCacheManager(
            CacheConfig(host="127.0.0.1", port=server.port, password="wrong-staple-pass")
        )
        assert await bad.connect() is False
        assert await bad.get("k") is None
        stats = await bad.get_stats()
        assert stats["enabled"] is False
        assert "wrong-staple-pass" not in str(stats)
        assert "wrong-staple-pass" not in caplog.text
        assert "right-horse-battery" not in caplog.text
        await bad.aclose()


async def test_closed_manager_answers_degraded() -> None:
    cache = AsyncCacheManager(CacheConfig(backend="memory"))
    await cache.set("k", 1)
    await cache.aclose()
    assert cache.is_enabled() is False
    assert await cache.get("k") is None
    assert (await cache.get_stats())["reason"] == "closed"
