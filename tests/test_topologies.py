"""Redis Cluster and Sentinel: configuration, the topology in stats, and what differs on a
real cluster (the store conformance suite and the ``cache`` tests run there too)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio.cluster import ClusterNode, RedisCluster

from gathering_cache import AsyncCacheManager, CacheConfig, ConfigurationError
from tests.servers import LocalCluster, LocalSentinel

# -- configuration -------------------------------------------------------------------------


def test_neither_list_is_standalone() -> None:
    config = CacheConfig()
    assert config.topology == "standalone"
    assert config.cluster_nodes is None
    assert config.sentinel_nodes is None
    assert config.sentinel_service == "mymaster"


def test_cluster_nodes_are_seed_addresses() -> None:
    config = CacheConfig(cluster_nodes=["10.0.0.1:7000", "redis-2:7001", "[::1]:7002"])
    assert config.topology == "cluster"
    assert config.addresses(config.cluster_nodes) == [
        ("10.0.0.1", 7000),
        ("redis-2", 7001),
        ("::1", 7002),
    ]
    assert config.endpoint()["nodes"] == ["10.0.0.1:7000", "redis-2:7001", "[::1]:7002"]


def test_sentinel_nodes_and_service() -> None:
    config = CacheConfig(
        sentinel_nodes=["s1:26379"],
        sentinel_service="cache",
        sentinel_password="s3cret",
        sentinel_username="watcher",
    )
    assert config.topology == "sentinel"
    assert config.endpoint() == {
        "host": "s1",
        "port": 26379,
        "db": 0,
        "nodes": ["s1:26379"],
        "service": "cache",
    }
    assert "s3cret" not in repr(config)


def test_from_env_reads_the_topology_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_CLUSTER_NODES", "h1:7000, h2:7001")
    assert CacheConfig.from_env().cluster_nodes == ["h1:7000", "h2:7001"]
    monkeypatch.delenv("REDIS_CLUSTER_NODES")
    monkeypatch.setenv("REDIS_SENTINEL_NODES", "s1:26379,s2:26380")
    monkeypatch.setenv("REDIS_SENTINEL_SERVICE", "cache")
    config = CacheConfig.from_env()
    assert config.sentinel_nodes == ["s1:26379", "s2:26380"]
    assert (config.topology, config.sentinel_service) == ("sentinel", "cache")
    monkeypatch.setenv("REDIS_SENTINEL_NODES", "")
    assert CacheConfig.from_env().topology == "standalone"


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        ({"cluster_nodes": ["a:1"], "sentinel_nodes": ["b:2"]}, "sentinel_nodes"),
        ({"cluster_nodes": ["a:7000"], "db": 2}, "db"),
        ({"cluster_nodes": ["a"]}, "cluster_nodes"),
        ({"cluster_nodes": ["a:port"]}, "cluster_nodes"),
        ({"cluster_nodes": [":7000"]}, "cluster_nodes"),
        ({"sentinel_nodes": ["a:70000"]}, "sentinel_nodes"),
        ({"sentinel_nodes": "a:1,b"}, "sentinel_nodes"),
        ({"sentinel_nodes": ["::1:26379"]}, "sentinel_nodes"),
        ({"sentinel_nodes": ["a:1"], "sentinel_service": " "}, "sentinel_service"),
        ({"cluster_nodes": ["a:1"], "url": "unix:///run/redis.sock"}, "url"),
    ],
)
def test_bad_topology_settings_name_the_field(settings: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        CacheConfig(**settings)
    assert caught.value.field == field


async def test_topology_in_stats_for_in_process_and_disabled_caches() -> None:
    memory = AsyncCacheManager(CacheConfig(backend="memory"))
    assert (await memory.get_stats())["topology"] == "standalone"
    disabled = AsyncCacheManager(CacheConfig(enabled=False, cluster_nodes=["a:7000"]))
    stats = await disabled.get_stats()
    assert stats["topology"] == "cluster"
    assert stats["nodes"] == ["a:7000"]


# -- real topologies ------------------------------------------------------------------------


@pytest.fixture
async def cluster_cache(redis_cluster: LocalCluster) -> AsyncIterator[AsyncCacheManager]:
    redis_cluster.flush()
    cache = AsyncCacheManager(CacheConfig(cluster_nodes=redis_cluster.addresses))
    await cache.connect()
    yield cache
    await cache.aclose()


@pytest.mark.integration
async def test_stats_on_a_cluster_count_every_primary(cluster_cache: AsyncCacheManager) -> None:
    await cluster_cache.set_many({f"gathering:spread:{i}": i for i in range(200)})
    stats = await cluster_cache.get_stats()
    assert stats["topology"] == "cluster"
    assert stats["total_keys"] == 200
    assert stats["enabled"] is True


@pytest.mark.integration
async def test_stats_on_a_sentinel_set(redis_sentinel: LocalSentinel) -> None:
    redis_sentinel.wait_settled()
    redis_sentinel.flush()
    cache = AsyncCacheManager(CacheConfig(sentinel_nodes=[redis_sentinel.address]))
    await cache.connect()
    try:
        assert await cache.set("gathering:s", 1)
        stats = await cache.get_stats()
        assert (stats["topology"], stats["total_keys"], stats["service"]) == (
            "sentinel",
            1,
            "mymaster",
        )
    finally:
        await cache.aclose()


@pytest.mark.integration
async def test_rag_invalidation_on_an_injected_cluster_client(
    redis_cluster: LocalCluster,
) -> None:
    # Regression: pop_index used a MULTI pipeline, which redis-py's async cluster pipeline
    # refused or mishandled (TypeError out of invalidate_rag_results).
    redis_cluster.flush()
    host, port = redis_cluster.addresses[0].split(":")
    client = RedisCluster(startup_nodes=[ClusterNode(host, int(port))], protocol=2)
    cache = AsyncCacheManager(CacheConfig(), client=client)
    try:
        await cache.connect()
        assert (await cache.get_stats())["topology"] == "cluster"
        assert await cache.set_rag_results(7, "q", [{"id": 1}])
        assert await cache.get_rag_results(7, "q") == [{"id": 1}]
        assert await cache.invalidate_rag_results(7) == 1
        assert await cache.get_rag_results(7, "q") is None
    finally:
        await cache.aclose()
        await client.aclose()


@pytest.mark.integration
async def test_an_unreachable_cluster_degrades_within_the_timeout() -> None:
    from tests.servers import free_port

    config = CacheConfig(cluster_nodes=[f"127.0.0.1:{free_port()}"], operation_timeout=0.3)
    cache = AsyncCacheManager(config)
    await cache.connect()  # never raises: the cache starts degraded
    try:
        assert await cache.get("gathering:x") is None
        assert await cache.set("gathering:x", 1) is False
        stats = await cache.get_stats()
        assert (stats["enabled"], stats["topology"]) == (False, "cluster")
    finally:
        await cache.aclose()


@pytest.mark.integration
async def test_a_sentinel_that_does_not_know_the_service_degrades(
    redis_sentinel: LocalSentinel,
) -> None:
    config = CacheConfig(
        sentinel_nodes=[redis_sentinel.address], sentinel_service="unknown", operation_timeout=0.3
    )
    cache = AsyncCacheManager(config)
    await cache.connect()  # never raises: the cache starts degraded
    try:
        assert await cache.get("gathering:x") is None
        assert await cache.set("gathering:x", 1) is False
        stats = await cache.get_stats()
        assert (stats["enabled"], stats["topology"], stats["service"]) == (
            False,
            "sentinel",
            "unknown",
        )
    finally:
        await cache.aclose()


@pytest.mark.integration
async def test_an_injected_cluster_client_gets_its_own_methods_back_on_close(
    redis_cluster: LocalCluster,
) -> None:
    """The cluster store wraps the client's execute_command while it uses it (a fresh slot
    map when a slot is missing); the application's client is left as it was given."""
    host, port = redis_cluster.addresses[0].rsplit(":", 1)
    client = RedisCluster(startup_nodes=[ClusterNode(host, int(port))])
    try:
        async with AsyncCacheManager(CacheConfig(), client=client) as cache:
            assert "execute_command" in vars(client)  # wrapped while in use
            assert await cache.set("gathering:injected", 1)
            assert await cache.get("gathering:injected") == 1
        assert "execute_command" not in vars(client)
        assert await client.get("gathering:injected") is not None
    finally:
        await client.aclose()
