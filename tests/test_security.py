"""Security: TLS against a real redis-server with a test certificate, an ACL user confined to
the prefix, and no secrets in output."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from gathering_cache import (
    AsyncCacheManager,
    CacheConfig,
    CachedEmbedder,
    Event,
    EventBus,
    EventType,
    RedisEventBridge,
    cached_completion,
)
from tests.certs import make_certificates, tls_redis_server
from tests.conftest import require_redis_server
from tests.servers import RedisServer

pytestmark = pytest.mark.integration


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[RedisServer, dict[str, Path]]]:
    require_redis_server()
    server, tls_port, certs = tls_redis_server(tmp_path)
    server.start()
    server.tls_port = tls_port  # type: ignore[attr-defined]
    yield server, certs
    server.cleanup()


async def test_tls_with_a_rediss_url(tls_server: tuple[RedisServer, dict[str, Path]]) -> None:
    server, certs = tls_server
    url = f"rediss://127.0.0.1:{server.tls_port}/0"  # type: ignore[attr-defined]
    async with AsyncCacheManager(CacheConfig(url=url, ssl_ca_certs=str(certs["ca"]))) as cache:
        assert cache.is_enabled()
        assert await cache.set("gathering:tls", {"secure": True}) is True
        assert await cache.get("gathering:tls") == {"secure": True}


async def test_tls_with_explicit_options(tls_server: tuple[RedisServer, dict[str, Path]]) -> None:
    server, certs = tls_server
    config = CacheConfig(
        host="127.0.0.1",
        port=server.tls_port,  # type: ignore[attr-defined]
        ssl=True,
        ssl_ca_certs=str(certs["ca"]),
    )
    async with AsyncCacheManager(config) as cache:
        assert await cache.set_embedding("t", [1.0, 2.0]) is True
        assert await cache.get_embedding("t") == [1.0, 2.0]


async def test_tls_with_an_untrusted_certificate_degrades(
    tls_server: tuple[RedisServer, dict[str, Path]], tmp_path: Path
) -> None:
    server, _ = tls_server
    (tmp_path / "other").mkdir()
    other = make_certificates(tmp_path / "other", "another CA")
    url = f"rediss://127.0.0.1:{server.tls_port}/0"  # type: ignore[attr-defined]
    cache = AsyncCacheManager(CacheConfig(url=url, ssl_ca_certs=str(other["ca"])))
    assert await cache.connect() is False
    assert await cache.get("gathering:x") is None
    assert "certificate" in (await cache.get_stats())["breaker"]["last_error"].lower()
    await cache.aclose()


ACL_PASSWORD = "acl-Secret-4242"


@pytest.fixture
def acl_server() -> Iterator[RedisServer]:
    require_redis_server()
    server = RedisServer(
        "--user", "default", "off",
        "--user", "admin", "on", ">admin-pw", "~*", "&*", "+@all",
        "--user", "app", "on", f">{ACL_PASSWORD}", "~gathering:*", "&gathering:*",
        "+@all", "-@dangerous", "-@admin",
        username="admin", password="admin-pw", auth_only=True,
    )  # fmt: skip
    server.start()
    yield server
    server.cleanup()


async def test_every_feature_works_with_only_the_prefix_allowed(
    acl_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    config = CacheConfig(
        host="127.0.0.1", port=acl_server.port, username="app", password=ACL_PASSWORD
    )
    async with AsyncCacheManager(config) as cache:
        assert cache.is_enabled()
        assert await cache.set("gathering:k", 1) is True
        assert await cache.get("gathering:k") == 1
        assert await cache.set_many({"gathering:a": 1, "gathering:b": 2}) is True
        assert await cache.get_many(["gathering:a", "gathering:b"]) == [1, 2]
        assert await cache.exists("gathering:a") is True
        assert await cache.ttl("gathering:a") == cache.config.default_ttl
        assert await cache.delete("gathering:a") is True
        assert await cache.set_embeddings(["x", "y"], [[1.0], [2.0]], model="m") is True
        assert await cache.get_embeddings(["x", "y"], model="m") == [[1.0], [2.0]]
        assert await cache.set_rag_results(1, "q", [{"r": 1}]) is True
        assert await cache.get_rag_results(1, "q") == [{"r": 1}]
        assert await cache.invalidate_rag_results(1) == 1
        assert await cache.invalidate_all_rag_results() is True
        assert await cache.set_circle_context(1, {"m": [1]}) is True
        assert await cache.invalidate_circle_context(1) is True
        assert await cache.set_llm_response("m", "r", prompt="p", temperature=0) is True
        assert await cache.get_llm_response("m", prompt="p", temperature=0) is not None

        async def provider(texts: list[str]) -> list[list[float]]:
            return [[float(len(t))] for t in texts]

        embedder = CachedEmbedder(provider, cache, model="acl")
        assert await embedder.embed_many(["one", "two"]) == [[3.0], [3.0]]
        assert await cache.get_stats()  # SCAN for total_keys
        complete = cached_completion(cache)(_echo)
        assert await complete("m", [{"role": "user", "content": "hi"}], seed=1) == "hi"

        bus = EventBus()
        seen: list[Event] = []
        other = EventBus()
        other.subscribe(EventType.CIRCLE_UPDATED, seen.append)
        async with RedisEventBridge(bus, cache) as a, RedisEventBridge(other, cache) as b:
            assert a.connected
            assert b.connected
            await bus.publish(Event(EventType.CIRCLE_UPDATED, circle_id=3))
            for _ in range(100):
                if seen:
                    break
                await asyncio.sleep(0.01)
        assert seen
        assert await cache.delete_pattern("gathering:*") > 0
        assert await cache.clear_all() >= 0
        # Outside the prefix the ACL says no: a miss and a failed write, not an outage.
        assert await cache.set("elsewhere:k", 1) is False
        assert await cache.get("elsewhere:k") is None
        stats = await cache.get_stats()
        assert stats["breaker"]["state"] == "closed"
        assert stats["breaker"]["data_errors"] >= 2
    assert ACL_PASSWORD not in caplog.text


async def _echo(model: str, messages: list[dict[str, str]], **params: object) -> str:
    return messages[-1]["content"]
