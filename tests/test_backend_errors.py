"""What is an outage and what is not: huge TTLs, error replies to one call, an ACL without
+ping, injected clients the store cannot use, and the endpoint named in every fault."""

from __future__ import annotations

import asyncio
import inspect
import logging
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
import redis
import redis.asyncio as redis_asyncio
from fakeredis import FakeAsyncRedis, FakeServer
from redis._parsers.base import BaseParser
from redis.exceptions import ResponseError

from gathering_cache import (
    ArgumentTypeError,
    AsyncCacheManager,
    CacheConfig,
    ConfigurationError,
    InvalidArgumentError,
)
from gathering_cache.backends.redis_store import RedisStore
from gathering_cache.core.keys import MAX_TTL, check_ttl
from tests.conftest import require_redis_server
from tests.servers import RedisServer, free_port
from tests.test_hostile_server import EXTRA, OPTIONAL, SAMPLES

Factory = Callable[..., Awaitable[AsyncCacheManager]]

# -- TTLs Redis cannot take ----------------------------------------------------------------

HUGE = [sys.maxsize, 10**18, 2**64, MAX_TTL + 1]

WRITERS = sorted(
    name
    for name, member in inspect.getmembers(AsyncCacheManager, inspect.iscoroutinefunction)
    if not name.startswith("_") and "ttl" in inspect.signature(member).parameters
)
"""Every public coroutine that takes a ttl (set, set_many and every domain set_*)."""


def call_arguments(name: str, ttl: int) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"ttl": ttl}
    for param in list(inspect.signature(getattr(AsyncCacheManager, name)).parameters.values())[1:]:
        if param.kind is param.VAR_KEYWORD:
            kwargs.update(EXTRA)
        elif param.default is param.empty and param.kind is not param.VAR_POSITIONAL:
            kwargs[param.name] = SAMPLES[param.name]
        elif param.name in OPTIONAL:
            kwargs[param.name] = OPTIONAL[param.name]
    return kwargs


def test_the_writers_with_a_ttl_are_all_found() -> None:
    assert {"set", "set_many", "set_embedding", "set_rag_results", "set_llm_response"} <= set(
        WRITERS
    )


def test_check_ttl_bounds() -> None:
    assert check_ttl(MAX_TTL) == MAX_TTL
    for ttl in HUGE:
        with pytest.raises(InvalidArgumentError, match="at most"):
            check_ttl(ttl)


@pytest.mark.parametrize("name", WRITERS)
async def test_a_huge_ttl_is_refused_before_anything_is_sent(
    make_cache: Factory, name: str
) -> None:
    cache = await make_cache()
    for _ in range(3):  # three times: it used to open the breaker for the whole cache
        for ttl in HUGE:
            with pytest.raises(InvalidArgumentError, match="ttl"):
                await getattr(cache, name)(**call_arguments(name, ttl))
    assert cache.is_enabled()
    assert (await cache.get_stats())["total_keys"] == 0  # nothing written
    assert await getattr(cache, name)(**call_arguments(name, MAX_TTL)) is True
    assert (await cache.get_stats())["total_keys"] >= 1


# -- error replies to one call's arguments are not an outage --------------------------------


@pytest.fixture(params=["fakeredis", pytest.param("redis", marks=pytest.mark.integration)])
async def redis_like(request: pytest.FixtureRequest) -> AsyncIterator[AsyncCacheManager]:
    if request.param == "fakeredis":
        cache = AsyncCacheManager(CacheConfig(), client=FakeAsyncRedis(server=FakeServer()))
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        raw = redis_asyncio.Redis.from_url(server.url)
        await raw.flushdb()
        await raw.aclose()
        cache = AsyncCacheManager(CacheConfig(url=server.url))
    await cache.connect()
    yield cache
    await cache.aclose()


async def test_invalid_expire_time_replies_are_data_errors(redis_like: AsyncCacheManager) -> None:
    core = redis_like._core
    for _ in range(5):  # past failure_threshold: bypasses check_ttl to reach Redis
        assert await core.write("generic", "gathering:k", b"1", 10**18) is False
        assert (
            await core.write_many("generic", [("gathering:a", b"1")], 10**18) is False
        )  # pipeline
    breaker = (await redis_like.get_stats())["breaker"]
    assert breaker["state"] == "closed"
    assert breaker["data_errors"] == 10
    assert redis_like.is_enabled()
    assert await redis_like.set("gathering:k", 1) is True


def _parsed(reply: str) -> Exception:
    """What redis-py raises for this error reply (its own parser)."""
    error = BaseParser.parse_error(reply)  # type: ignore[no-untyped-call]
    assert isinstance(error, Exception)
    return error


DATA_REPLIES = [
    "WRONGTYPE Operation against a key holding the wrong kind of value",
    "ERR invalid expire time in 'set' command",
    "ERR value is not an integer or out of range",
    "ERR increment or decrement would overflow",
    "NOPERM this user has no permissions to access one of the keys used as arguments",
    "NOPERM this user has no permissions to run the 'ping' command",
]
FAULT_REPLIES = [
    "LOADING Redis is loading the dataset in memory",
    "READONLY You can't write against a read only replica.",
    "MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.",
    "CLUSTERDOWN The cluster is down",
    "TRYAGAIN Multiple keys request during rehashing of slot",
    "BUSY Redis is busy running a script. You can only call SCRIPT KILL or SHUTDOWN NOSAVE.",
    "OOM command not allowed when used memory > 'maxmemory'.",
    "NOAUTH Authentication required.",
    "MISCONF Redis is configured to save RDB snapshots, but it's currently unable to persist",
    "ERR DB index is out of range",
]


@pytest.fixture
def store() -> RedisStore:
    return RedisStore(FakeAsyncRedis(server=FakeServer()), owned=False, describe={})


@pytest.mark.parametrize("reply", DATA_REPLIES)
def test_replies_to_one_call_are_data_errors(store: RedisStore, reply: str) -> None:
    assert store.is_data_error(_parsed(reply)) is True
    # Inside a pipeline redis-py prefixes the command; older redis-py has no status_code.
    assert store.is_data_error(
        ResponseError(f"Command # 2 (SET k v) of pipeline caused error: {reply}")
    )
    assert store.is_data_error(ResponseError(reply.removeprefix("ERR "))) is True


@pytest.mark.parametrize("reply", FAULT_REPLIES)
def test_replies_about_the_server_state_are_faults(store: RedisStore, reply: str) -> None:
    assert store.is_data_error(_parsed(reply)) is False
    assert not store.is_data_error(
        ResponseError(f"Command # 1 (SET k v) of pipeline caused error: {reply}")
    )
    assert store.is_data_error(ResponseError(reply.removeprefix("ERR "))) is False


@pytest.mark.integration
async def test_a_read_only_replica_is_an_outage() -> None:
    require_redis_server()
    with RedisServer() as server:
        raw = redis_asyncio.Redis.from_url(server.url)
        await raw.replicaof("127.0.0.1", free_port())  # a replica of nothing: READONLY
        cache = AsyncCacheManager(CacheConfig(url=server.url, failure_threshold=2))
        assert await cache.connect() is True
        assert await cache.set("gathering:k", 1) is False
        assert await cache.set("gathering:k", 1) is False
        assert cache.is_enabled() is False
        stats = await cache.get_stats()
        assert "ReadOnlyError" in stats["reason"]
        assert f"127.0.0.1:{server.port}" in stats["reason"]
        await cache.aclose()
        await raw.aclose()


# -- an ACL user without +ping ----------------------------------------------------------------

NOPING_PASSWORD = "noping-Secret-77"


@pytest.fixture
def noping_server() -> Iterator[RedisServer]:
    require_redis_server()
    server = RedisServer(
        "--user", "default", "off",
        "--user", "admin", "on", ">admin-pw", "~*", "&*", "+@all",
        "--user", "app", "on", f">{NOPING_PASSWORD}", "~gathering:*", "&gathering:*",
        "+@all", "-@dangerous", "-@admin", "-ping",
        username="admin", password="admin-pw", auth_only=True,
    )  # fmt: skip
    server.start()
    yield server
    server.cleanup()


@pytest.mark.integration
async def test_an_acl_user_without_ping_is_not_an_outage(
    noping_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    config = CacheConfig(
        host="127.0.0.1", port=noping_server.port, username="app", password=NOPING_PASSWORD
    )
    caplog.set_level(logging.WARNING)
    cache = AsyncCacheManager(config)
    assert await cache.connect() is True  # was: "Redis unavailable: None"
    assert cache.is_enabled()
    assert await cache.set("gathering:k", 1) is True
    assert await cache.get("gathering:k") == 1
    stats = await cache.get_stats()
    assert "reason" not in stats
    assert stats["breaker"]["state"] == "closed"
    assert stats["breaker"]["last_error"] is None
    assert "unavailable" not in caplog.text
    await cache.aclose()


# -- injected clients the store cannot use ----------------------------------------------------


def test_a_sync_client_is_refused_at_construction() -> None:
    with pytest.raises(ArgumentTypeError, match=r"redis\.asyncio client.*redis\.client\.Redis"):
        AsyncCacheManager(client=redis.Redis(host="127.0.0.1", port=free_port()))
    with pytest.raises(ArgumentTypeError, match=r"redis\.asyncio client"):
        AsyncCacheManager(CacheConfig(enabled=False), client=object())


def test_decode_responses_is_refused_for_a_standalone_client() -> None:
    client = FakeAsyncRedis(server=FakeServer(), decode_responses=True)
    with pytest.raises(ArgumentTypeError, match="decode_responses") as caught:
        AsyncCacheManager(client=client)
    assert isinstance(caught.value, ConfigurationError)  # as documented, too


def test_decode_responses_is_refused_for_a_cluster_client() -> None:
    # A RedisCluster is built without contacting any node (the nodes are discovered on first
    # use), so the check at construction is tested for real; no cluster runs here.
    cluster = redis_asyncio.RedisCluster(host="127.0.0.1", port=free_port(), decode_responses=True)
    with pytest.raises(ArgumentTypeError, match="decode_responses"):
        AsyncCacheManager(client=cluster)
    plain = redis_asyncio.RedisCluster(host="127.0.0.1", port=7001)
    stats_location = AsyncCacheManager(client=plain)._core.store.describe()
    assert stats_location == {"injected_client": True, "host": "127.0.0.1", "port": 7001}


# -- the endpoint is named in every fault -----------------------------------------------------


class SilentServer:
    """Accepts connections and never answers: every call times out."""

    def __init__(self) -> None:
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> SilentServer:
        self._server = await asyncio.start_server(self._hold, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _hold(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        while await reader.read(4096):
            pass

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        for writer in self._writers:
            writer.close()
        self._server.close()
        await self._server.wait_closed()


@pytest.mark.parametrize(
    ("how", "shown"),
    [
        ("host", "127.0.0.1:{port}"),
        ("url", "redis://:***@127.0.0.1:{port}/0"),
        ("tls", "127.0.0.1:{port}"),
    ],
)
async def test_a_timeout_names_the_endpoint_never_the_password(
    how: str, shown: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with SilentServer() as server:
        settings: dict[str, Any] = {"operation_timeout": 0.3, "retry_attempts": 0}
        if how == "url":
            settings["url"] = f"redis://:hunter2-pw@127.0.0.1:{server.port}/0"
        else:
            settings.update(host="127.0.0.1", port=server.port, password="hunter2-pw")
            settings["ssl"] = how == "tls"  # the TLS handshake never completes
        cache = AsyncCacheManager(CacheConfig(**settings))
        assert await cache.connect() is False
        stats = await cache.get_stats()
        expected = shown.format(port=server.port)
        assert expected in stats["reason"]
        assert expected in stats["breaker"]["last_error"]
        assert expected in caplog.text  # the outage warning
        await cache.aclose()
    assert "hunter2-pw" not in caplog.text
    assert "hunter2-pw" not in str(stats)
