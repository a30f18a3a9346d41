"""Faults and misuse found in review: each would have raised out of a cache call, leaked a
secret, or stored something other than what was given."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import importlib.metadata
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio as redis_asyncio
from fakeredis import FakeAsyncRedis, FakeServer
from redis.asyncio.cluster import RedisCluster

from gathering_cache import (
    ArgumentTypeError,
    AsyncCacheManager,
    CacheConfig,
    ConfigurationError,
    InvalidArgumentError,
    SerializationError,
)
from gathering_cache.core.policy import DegradationPolicy
from tests.certs import tls_redis_server
from tests.conftest import require_redis_server
from tests.servers import RedisServer, free_port


async def test_unreachable_cluster_client_degrades() -> None:
    client = RedisCluster(host="127.0.0.1", port=free_port(), socket_connect_timeout=0.2)
    cache = AsyncCacheManager(CacheConfig(), client=client)
    assert await cache.connect() is False
    assert await cache.get("k") is None
    assert await cache.set("k", 1) is False
    assert (await cache.get_stats())["enabled"] is False
    await cache.aclose()
    await client.aclose()


@pytest.mark.integration
async def test_cluster_client_on_a_plain_server_degrades(redis_server: RedisServer) -> None:
    client = RedisCluster(host="127.0.0.1", port=redis_server.port)
    cache = AsyncCacheManager(CacheConfig(), client=client)
    assert await cache.connect() is False
    assert await cache.get("k") is None
    await cache.aclose()
    await client.aclose()


def test_password_in_url_query_is_redacted() -> None:
    config = CacheConfig(url="redis://localhost:6379/0?password=hunter2secret&db=1")
    for text in (repr(config), str(config), str(config.endpoint()), config.redacted_url or ""):
        assert "hunter2secret" not in text
    assert config.endpoint()["db"] == 1


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("redis://localhost:6379/0?foo=bar", "unknown query parameter 'foo'"),
        ("redis://localhost/0?operation_timeout=5", "GATHERING_CACHE_OPERATION_TIMEOUT"),
        ("redis://localhost/0?max_connections=0", "max_connections"),
        ("redis://localhost/0?db=x", "db"),
        ("redis://localhost/abc", "db number"),
    ],
)
def test_url_query_parameters_are_checked(url: str, match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        CacheConfig(url=url)


def test_url_db_is_reported_as_redis_py_reads_it() -> None:
    # redis-py's ConnectionPool.from_url(url, db=3) keeps db 3 when the URL names none.
    assert CacheConfig(url="redis://h:6379", db=3).endpoint()["db"] == 3
    assert CacheConfig(url="redis://h:6379").endpoint()["db"] == 0
    assert CacheConfig(url="redis://h:6379/2?db=5").endpoint()["db"] == 5
    assert CacheConfig(url="redis://h:6379/7").endpoint()["db"] == 7


async def test_wrongtype_is_a_miss_not_an_outage() -> None:
    client = FakeAsyncRedis(server=FakeServer())
    await client.hset("other:h", "f", "v")
    await client.rpush("gathering:circle:7", "x")
    cache = AsyncCacheManager(CacheConfig(), client=client)
    await cache.set("gathering:ok", 1)
    for _ in range(5):
        assert await cache.get("other:h") is None
        assert await cache.get_circle_context(7) is None
    assert cache.is_enabled() is True
    assert await cache.get("gathering:ok") == 1
    stats = await cache.get_stats()
    assert stats["breaker"]["data_errors"] == 10
    assert stats["breaker"]["state"] == "closed"
    await cache.aclose()


def test_typos_in_config_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="pasword: unknown field"):
        CacheConfig(pasword="secret")


def test_model_copy_validates() -> None:
    with pytest.raises(ConfigurationError, match="key_prefix"):
        CacheConfig().model_copy(update={"key_prefix": ""})
    with pytest.raises(ConfigurationError, match="port"):
        CacheConfig(password="x").model_copy(update={"port": 0})
    copy = CacheConfig(password="x").model_copy(update={"port": 6390})
    assert copy.port == 6390
    assert copy.password is not None
    assert copy.password.get_secret_value() == "x"


def test_injected_client_with_decoded_responses_is_refused() -> None:
    client = FakeAsyncRedis(server=FakeServer(), decode_responses=True)
    with pytest.raises(ConfigurationError, match="decode_responses"):
        AsyncCacheManager(CacheConfig(), client=client)


@dataclasses.dataclass
class Point:
    x: float


@pytest.mark.parametrize(
    "value",
    [Point(1.0), datetime.datetime(2026, 1, 1), datetime.date(2026, 1, 1), {"p": Point(2.0)}],
)
async def test_values_that_would_not_come_back_as_stored_are_refused(value: object) -> None:
    cache = AsyncCacheManager(CacheConfig(backend="memory"))
    with pytest.raises(SerializationError):
        await cache.set("k", value)
    assert await cache.get("k") is None


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda c: c.set_embedding("t", {1.0, 2.0}), ArgumentTypeError),
        (lambda c: c.set_embedding("t", {"a": 1.0}), ArgumentTypeError),
        (lambda c: c.set_embedding("t", [10**400]), InvalidArgumentError),
        (lambda c: c.set("bad\ud800key", 1), InvalidArgumentError),
        (lambda c: c.get_embedding("bad\ud800text"), InvalidArgumentError),
        (lambda c: c.set_rag_results(1, "q\udfff", []), InvalidArgumentError),
    ],
)
async def test_more_bad_input(call, error: type[Exception]) -> None:  # type: ignore[no-untyped-def]
    cache = AsyncCacheManager(CacheConfig(), client=FakeAsyncRedis(server=FakeServer()))
    with pytest.raises(error):
        await call(cache)
    assert (await cache.get_stats())["writes"] == 0
    await cache.aclose()


@pytest.mark.integration
def test_manager_bound_to_its_loop(redis_server: RedisServer) -> None:
    cache = AsyncCacheManager(CacheConfig(url=redis_server.url))

    async def use() -> object:
        await cache.set("gathering:k", 1)
        return await cache.get("gathering:k")

    assert asyncio.run(use()) == 1
    with pytest.raises(RuntimeError, match="one manager per event loop"):
        asyncio.run(use())


@pytest.mark.integration
async def test_burst_beyond_the_pool_is_shed_not_an_outage(
    redis_server: RedisServer, record_property: Callable[[str, object], None]
) -> None:
    # 5,000 concurrent GETs on a pool of 2. How many are served before their budget runs out
    # depends on the machine (and on coverage), so those counts are recorded, not asserted;
    # what is asserted holds at any speed: a burst is never an outage. The budget is the
    # default, so a loop starved by the burst does not make the calls holding a connection
    # look like a slow Redis. test_policy.py covers the shedding itself on a gate.
    config = CacheConfig(url=redis_server.url, max_connections=2)
    async with AsyncCacheManager(config) as cache:
        await cache.set("gathering:k", "v")
        loop = asyncio.get_running_loop()
        start = loop.time()
        results = await asyncio.gather(*(cache.get("gathering:k") for _ in range(5000)))
        record_property("burst_seconds", round(loop.time() - start, 4))
        assert set(results) <= {"v", None}
        stats = await cache.get_stats()
        record_property("served", results.count("v"))
        record_property("shed", stats["breaker"]["shed"])
        assert stats["breaker"]["shed"] <= results.count(None)
        assert stats["breaker"]["state"] == "closed"
        assert cache.is_enabled() is True
        assert await cache.get("gathering:k") == "v"
        raw = redis_asyncio.Redis.from_url(redis_server.url)
        clients = await raw.client_list()
        await raw.aclose()
        assert len(clients) <= 2 + 1  # the pool's sockets and ours


FORK_SCRIPT = textwrap.dedent(
    """
    import gc, os, sys, time
    from gathering_cache import CacheConfig, CacheManager

    cache = CacheManager(CacheConfig(url=sys.argv[1], key_prefix="fork:"))
    cache.set("fork:parent", 1)
    pid = os.fork()
    if pid == 0:
        start = time.monotonic()
        stored = cache.set("fork:child", 2)
        seen = cache.get("fork:parent")
        print(f"child: {time.monotonic() - start:.4f} s", file=sys.stderr)  # a figure, not a bound
        # What the child saw, for a failure to say which step went wrong.
        print(f"child: stored={stored} seen={seen!r} stats={cache.get_stats()}", file=sys.stderr)

        async def collect():  # the parent's objects, garbage here, finalized on this loop
            gc.collect()

        cache.submit(collect()).result(5)
        cache.close()
        os._exit(0 if stored and seen == 1 and cache.get("fork:x") is None else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, status
    assert cache.get("fork:child") == 2
    cache.close()
    print("ok")
    """
)


@pytest.mark.integration
def test_sync_facade_after_fork(
    redis_server: RedisServer, record_property: Callable[[str, object], None]
) -> None:
    result = subprocess.run(
        [sys.executable, "-c", FORK_SCRIPT, redis_server.url],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
    # A facade wedged by the fork shows here (each call gives up after its own timeout).
    assert "did not finish in time" not in result.stderr
    record_property("child_stderr", result.stderr.strip())


# -- found while documenting ----------------------------------------------------------------


async def test_the_lru_does_not_answer_once_closed_or_disabled() -> None:
    server = FakeServer()
    cache = AsyncCacheManager(CacheConfig(), client=FakeAsyncRedis(server=server))
    await cache.set_embedding("t", [1.0])
    await cache.aclose()
    assert await cache.get_embedding("t") is None
    assert await cache.get_embeddings(["t"]) == [None]


async def test_a_generation_from_before_clear_all_is_stale(cache: AsyncCacheManager) -> None:
    generation = await cache.get_rag_generation(1)
    await cache.invalidate_rag_results(1)
    await cache.set_rag_results(2, "q", [{"x": 1}])
    assert await cache.clear_all() > 0  # resets the counters...
    await cache.set_rag_results(1, "q", [{"stale": True}], generation=generation)
    assert await cache.get_rag_results(1, "q") is None  # ...but not to a value seen before


def test_a_closed_sync_facade_still_checks_arguments() -> None:
    from gathering_cache import CacheManager

    cache = CacheManager(CacheConfig(backend="memory"))
    cache.close()
    with pytest.raises(ArgumentTypeError):
        cache.get(1)  # type: ignore[arg-type]
    assert cache.get("k") is None
    assert cache.get_stats()["reason"] == "closed"


def test_unix_urls_are_shown_as_given() -> None:
    config = CacheConfig(url="unix:///var/run/redis.sock")
    assert "unix:///var/run/redis.sock" in repr(config)
    assert config.endpoint()["host"] == "/var/run/redis.sock"


@pytest.mark.parametrize("field", ["port", "db", "max_connections", "embedding_ttl"])
def test_bools_are_not_integers_in_config(field: str) -> None:
    with pytest.raises(ConfigurationError, match=field):
        CacheConfig(**{field: True})  # type: ignore[arg-type]


async def test_more_argument_checks() -> None:
    cache = AsyncCacheManager(CacheConfig(backend="memory"))
    with pytest.raises(SerializationError):
        await cache.set_llm_response("m", {1, 2}, prompt="p", temperature=0.9)
    with pytest.raises(ArgumentTypeError, match="int"):
        await cache.get_many(5)  # type: ignore[arg-type]
    disabled = AsyncCacheManager(CacheConfig(enabled=False))
    assert await disabled.set_many({}) is False
    assert await disabled.set_embeddings([], []) is False


async def test_an_oversized_vector_is_not_kept_in_the_lru() -> None:
    server = FakeServer()
    cache = AsyncCacheManager(
        CacheConfig(max_value_bytes=100), client=FakeAsyncRedis(server=server)
    )
    assert await cache.set_embedding("big", [0.1] * 50) is False
    server.connected = False
    assert await cache.get_embedding("big") is None
    await cache.aclose()


# -- Python 3.10: the shared deadline and the caller's own cancel --------------------------------


async def test_a_callers_cancel_right_after_the_deadline_fired_propagates() -> None:
    # The deadline cancels first, the caller's own cancel lands in the same loop pass before
    # the task resumes (tests/test_policy.py has the other order). Python 3.10 folds the two
    # into one CancelledError, so without care the caller's cancel became a timeout.
    policy = DegradationPolicy(
        fault_types=(ConnectionError,),
        operation_timeout=0.05,
        failure_threshold=3,
        recovery_interval=5.0,
    )
    loop = asyncio.get_running_loop()

    async def caller() -> object:
        result = await policy.run(asyncio.Event().wait, "fallback")
        await asyncio.sleep(0.05)
        return result

    task = loop.create_task(caller())
    await asyncio.sleep(0)
    loop.call_at(loop.time() + 0.1, task.cancel)  # due after the deadline...
    loop.call_soon(time.sleep, 0.2)  # ...and both run in one loop pass, the deadline first
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_deadline_on_its_own_is_still_a_timeout_after_a_callers_cancel() -> None:
    # A caller's cancel that was handled (caught) leaves nothing behind that would make the
    # next deadline look like a cancel of the caller's.
    policy = DegradationPolicy(
        fault_types=(ConnectionError,),
        operation_timeout=0.05,
        failure_threshold=3,
        recovery_interval=5.0,
    )

    async def caller() -> object:
        with contextlib.suppress(asyncio.CancelledError):
            await policy.run(asyncio.Event().wait, "first")
        return await policy.run(asyncio.Event().wait, "fallback")

    task = asyncio.create_task(caller())
    await asyncio.sleep(0)
    task.cancel()
    assert await task == "fallback"
    assert "TimeoutError" in (policy.last_error or "")


# -- the lowest redis-py pyproject.toml allows (make test-lowest runs these on it) ---------------


@pytest.mark.integration
@pytest.mark.parametrize(
    "config",
    [
        {"ssl_cert_reqs": "none"},  # with the default ssl_check_hostname=True
        {"ssl_cert_reqs": "none", "ssl_check_hostname": False},
    ],
)
async def test_tls_without_verification_connects(
    tmp_path: Path, redis_version: str, config: dict[str, Any]
) -> None:
    # redis-py 5.x raised "Cannot set verify_mode to CERT_NONE when check_hostname is
    # enabled" for the first case on every connect, so the cache stayed degraded for good.
    require_redis_server()
    server, tls_port, _ = tls_redis_server(tmp_path)
    server.start()
    try:
        url = f"rediss://127.0.0.1:{tls_port}/0"
        cache_config = CacheConfig(url=url, **config)
        async with AsyncCacheManager(cache_config) as cache:
            assert await cache.connect() is True, redis_version
            assert await cache.set("gathering:tls", 1) is True
            assert await cache.get("gathering:tls") == 1
    finally:
        server.cleanup()


@pytest.fixture
def redis_version() -> str:
    """The redis-py under test, shown when an assertion fails."""
    return redis.__version__


# -- packaging ----------------------------------------------------------------------------------


def test_the_version_is_written_once() -> None:
    import gathering_cache

    pyproject = (Path(__file__).resolve().parent.parent / "pyproject.toml").read_text()
    project = pyproject.split("[project]", 1)[1].split("\n[", 1)[0]
    assert 'dynamic = ["version"]' in project
    assert not any(line.startswith("version =") for line in project.splitlines())
    assert importlib.metadata.version("gathering-cache") == gathering_cache.__version__


async def test_a_deadline_over_an_awaited_inner_task_is_a_timeout() -> None:
    policy = DegradationPolicy(
        fault_types=(ConnectionError,),
        operation_timeout=0.05,
        failure_threshold=3,
        recovery_interval=5.0,
    )

    async def operation() -> Any:
        return await asyncio.create_task(asyncio.Event().wait())

    assert await policy.run(operation, "fallback") == "fallback"
    assert "TimeoutError" in (policy.last_error or "")
