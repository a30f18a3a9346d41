"""What a URL's query says reaches the connection: against real redis-servers (plain, TLS with
a password, Unix socket), the client built from the config uses the URL's db, client name,
credentials, TLS options and timeouts, and speaks RESP2."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis.asyncio as redis_asyncio

from gathering_cache import AsyncCacheManager, CacheConfig
from gathering_cache.backends.redis_store import build_client
from tests.certs import tls_redis_server
from tests.conftest import require_redis_server
from tests.servers import RedisServer

pytestmark = pytest.mark.integration

PASSWORD = "cl0ud-Secret"


async def test_url_query_parameters_reach_the_connection(redis_server: RedisServer) -> None:
    url = (
        f"redis://127.0.0.1:{redis_server.port}/0?db=3&client_name=agent-7"
        "&socket_timeout=3&socket_connect_timeout=2&health_check_interval=5&protocol=2"
    )
    config = CacheConfig.from_url(url, key_prefix="conn:")
    # The fields show what the URL says: the library bounds SCAN steps with socket_timeout.
    assert (config.db, config.client_name) == (3, "agent-7")
    assert (config.socket_timeout, config.connect_timeout) == (3.0, 2.0)
    assert config.health_check_interval == 5.0

    client = build_client(config)
    try:
        info = await client.client_info()
        assert info["name"] == "agent-7"
        assert int(info["db"]) == 3
        assert int(info["resp"]) == 2
        kwargs = client.connection_pool.connection_kwargs
        assert kwargs["socket_timeout"] == 3.0
        assert kwargs["socket_connect_timeout"] == 2.0
        assert kwargs["health_check_interval"] == 5.0
    finally:
        await client.aclose()

    raw = redis_asyncio.Redis(port=redis_server.port, db=3)
    try:
        async with AsyncCacheManager(config) as cache:
            assert await cache.set("conn:k", {"db": 3}) is True
        assert await raw.exists("conn:k") == 1  # written to the URL's ?db=3
        await raw.flushdb()
    finally:
        await raw.aclose()


@pytest.fixture
def tls_server_with_password(tmp_path: Path) -> Iterator[tuple[RedisServer, int, Path]]:
    require_redis_server()
    server, tls_port, certs = tls_redis_server(tmp_path, password=PASSWORD)
    server.start()
    yield server, tls_port, certs["ca"]
    server.cleanup()


async def test_a_cloud_style_rediss_url_against_a_tls_server(
    tls_server_with_password: tuple[RedisServer, int, Path],
) -> None:
    _, tls_port, ca = tls_server_with_password
    base = f"rediss://default:{PASSWORD}@127.0.0.1:{tls_port}/0"

    # The form cloud providers hand out: TLS, a password, no CA to verify against.
    async with AsyncCacheManager(CacheConfig.from_url(f"{base}?ssl_cert_reqs=none")) as cache:
        assert cache.is_enabled()
        assert await cache.set("gathering:tls", {"secure": True}) is True
        assert await cache.get("gathering:tls") == {"secure": True}

    # The query parameter is what made it work: without it the certificate is checked.
    cache = AsyncCacheManager(CacheConfig.from_url(base))
    assert await cache.connect() is False
    await cache.aclose()

    # ?ssl_ca_certs= verifies the server instead.
    async with AsyncCacheManager(CacheConfig.from_url(f"{base}?ssl_ca_certs={ca}")) as cache:
        assert await cache.get("gathering:tls") == {"secure": True}


async def test_a_wrong_password_in_the_url_is_not_overridden_by_the_field(
    tls_server_with_password: tuple[RedisServer, int, Path],
) -> None:
    _, tls_port, _ = tls_server_with_password
    url = f"rediss://default:wrong@127.0.0.1:{tls_port}/0?ssl_cert_reqs=none"
    # As with redis-py, the URL's password wins over the password field.
    cache = AsyncCacheManager(CacheConfig(url=url, password=PASSWORD))
    assert await cache.connect() is False
    await cache.aclose()
    url = f"rediss://127.0.0.1:{tls_port}/0?ssl_cert_reqs=none"
    async with AsyncCacheManager(CacheConfig(url=url, password=PASSWORD)) as cache:
        assert cache.is_enabled()  # the URL has none: the field is used


async def test_a_unix_socket_url() -> None:
    require_redis_server()
    directory = tempfile.mkdtemp(prefix="gc-sock-", dir="/tmp")  # socket paths are short
    socket = f"{directory}/redis.sock"
    try:
        with RedisServer("--unixsocket", socket, "--unixsocketperm", "700") as server:
            config = CacheConfig(url=f"unix://{socket}?db=2&client_name=unix-agent")
            assert config.socket_path == socket
            client = build_client(config)
            try:
                info = await client.client_info()
                assert (info["name"], int(info["db"])) == ("unix-agent", 2)
            finally:
                await client.aclose()
            async with AsyncCacheManager(config) as cache:
                assert await cache.set("gathering:u", [1]) is True
                assert await cache.get("gathering:u") == [1]
            raw = redis_asyncio.Redis(port=server.port, db=2)
            assert await raw.exists("gathering:u") == 1
            await raw.aclose()
    finally:
        shutil.rmtree(directory, ignore_errors=True)
