"""Fixtures: backends (memory, fakeredis, real redis-server) and the CI skip guard.

Tests that take the ``cache`` fixture run once per backend. The real-server runs carry the
``integration`` marker; with ``CI=true`` a missing redis-server fails them instead of
skipping, and any skipped integration test fails the session.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
import redis.asyncio as redis_asyncio
from fakeredis import FakeAsyncRedis, FakeServer

from gathering_cache import AsyncCacheManager, CacheConfig
from tests.servers import REDIS_CLI, REDIS_SERVER, LocalCluster, LocalSentinel, RedisServer, in_ci

BACKENDS = [
    "memory",
    "fakeredis",
    pytest.param("redis", marks=pytest.mark.integration),
    pytest.param("cluster", marks=pytest.mark.integration),
]
"""Backends of the tests that take ``cache`` / ``make_cache``. Sentinel is proven by the
store conformance suite alone: behind the store it is a standalone server."""

_skipped_integration: list[str] = []


def require_redis_server() -> None:
    """Skip (or, in CI, fail) when redis-server is not installed."""
    if REDIS_SERVER is None:
        message = "redis-server is not installed (apt-get install -y redis-server)"
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One real redis-server for the whole session (flushed before each test using it)."""
    require_redis_server()
    with RedisServer() as server:
        yield server


def require_redis_cli() -> None:
    """Skip (or, in CI, fail) when redis-server or redis-cli is not installed."""
    require_redis_server()
    if REDIS_CLI is None:
        message = "redis-cli is not installed (apt-get install -y redis-server)"
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[LocalCluster]:
    """One real 3-primary, 3-replica Redis Cluster for the session (flush before use)."""
    require_redis_cli()
    with LocalCluster() as cluster:
        yield cluster


@pytest.fixture(scope="session")
def redis_sentinel() -> Iterator[LocalSentinel]:
    """One primary, one replica and one sentinel (quorum 1) for the session."""
    require_redis_cli()
    with LocalSentinel() as sentinel:
        yield sentinel


def topology_settings(backend: str, request: pytest.FixtureRequest) -> dict[str, Any]:
    """The config of a real-server backend ("redis", "cluster", "sentinel"), its data
    flushed."""
    if backend == "cluster":
        cluster: LocalCluster = request.getfixturevalue("redis_cluster")
        cluster.flush()
        # Six servers on two cores: under a full suite's load (coverage triples the client's
        # CPU) a connection or a call, the first above all (it discovers the slots), can pass
        # the default 0.25 / 0.5 s and open the breaker. These tests check results on a
        # cluster; tests/test_failover.py measures the bounds with the defaults.
        return {
            "cluster_nodes": cluster.addresses,
            "operation_timeout": 2.0,
            "connect_timeout": 1.0,
            "socket_timeout": 1.0,
        }
    if backend == "sentinel":
        sentinel: LocalSentinel = request.getfixturevalue("redis_sentinel")
        sentinel.wait_settled()
        sentinel.flush()
        return {"sentinel_nodes": [sentinel.address]}
    server: RedisServer = request.getfixturevalue("redis_server")
    return {"url": server.url}


@pytest.fixture
async def redis_url(redis_server: RedisServer) -> str:
    """The session server's URL, with the database flushed before the test."""
    await _flush(redis_server.url)
    return redis_server.url


async def _flush(url: str) -> None:
    client = redis_asyncio.Redis.from_url(url)
    try:
        await client.flushdb()
    finally:
        await client.aclose()


@pytest.fixture
async def raw_redis(redis_url: str) -> AsyncIterator[redis_asyncio.Redis]:
    """A plain redis.asyncio client on the test server, to look behind the cache's back."""
    client = redis_asyncio.Redis.from_url(redis_url)
    yield client
    await client.aclose()


Factory = Callable[..., Awaitable[AsyncCacheManager]]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
async def make_cache(backend: str, request: pytest.FixtureRequest) -> AsyncIterator[Factory]:
    """A factory of connected managers on the current backend: ``await make_cache(**config)``."""
    managers: list[AsyncCacheManager] = []
    fake_server = FakeServer()
    real: dict[str, Any] = {}
    if backend == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        await _flush(server.url)
    if backend not in ("memory", "fakeredis"):
        real = topology_settings(backend, request)

    async def factory(**overrides: Any) -> AsyncCacheManager:
        client = None
        settings: dict[str, Any] = {}
        if backend == "memory":
            settings["backend"] = "memory"
        elif backend == "fakeredis":
            client = FakeAsyncRedis(server=fake_server)
        else:
            settings.update(real)
        settings.update(overrides)
        manager = AsyncCacheManager(CacheConfig(**settings), client=client)
        await manager.connect()
        managers.append(manager)
        return manager

    yield factory
    for manager in managers:
        await manager.aclose()


@pytest.fixture
async def cache(make_cache: Factory) -> AsyncCacheManager:
    """A connected manager with the default config on the current backend."""
    return await make_cache()


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and "integration" in report.keywords:
        _skipped_integration.append(report.nodeid)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    from tests.faults import FIGURES, OUT, write_figures

    if FIGURES:
        write_figures()
        terminalreporter.write_sep("-", f"reliability figures (also in {OUT.name})")
        for name, figures in sorted(FIGURES.items()):
            shown = ", ".join(f"{k}={v}" for k, v in figures.items())
            terminalreporter.write_line(f"{name}: {shown}")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if in_ci() and _skipped_integration:
        print(f"\nCI: {len(_skipped_integration)} integration test(s) were skipped; failing.")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
