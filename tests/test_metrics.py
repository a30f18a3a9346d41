"""Prometheus metrics: a real registry scraped after real traffic (memory store, a real Redis,
and a real outage: a closed port)."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import gathering_cache.metrics
from gathering_cache import AsyncCacheManager, CacheConfig, CacheManager
from tests.servers import RedisServer, free_port


def scrape(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the registry's text exposition, as Prometheus would read it."""
    text = generate_latest(registry).decode()
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples[name, tuple(sorted(labels.items()))]


async def traffic(cache: AsyncCacheManager) -> None:
    await cache.set_embedding("hello", [0.1, 0.2])
    await cache.get_embedding("hello")  # hit
    await cache.get_embedding("unknown")  # miss
    await cache.set_circle_context(1, {"goal": "ship"})
    await cache.get_circle_context(1)  # hit
    await cache.set_llm_response("m", "answer", prompt="p", temperature=0)
    await cache.get_llm_response("m", prompt="p", temperature=0)  # hit


async def test_metrics_count_real_traffic_in_process() -> None:
    await check_traffic(CacheConfig(backend="memory"))


@pytest.mark.integration
async def test_metrics_count_real_traffic_on_redis(redis_url: str) -> None:
    await check_traffic(CacheConfig(url=redis_url))


async def check_traffic(config: CacheConfig) -> None:
    registry = CollectorRegistry()
    async with AsyncCacheManager(config) as cache:
        collector = gathering_cache.metrics.register(cache, registry=registry)
        await traffic(cache)
        samples = scrape(registry)
    assert value(samples, "gathering_cache_hits_total", namespace="embedding") == 1
    assert value(samples, "gathering_cache_misses_total", namespace="embedding") == 1
    assert value(samples, "gathering_cache_hits_total", namespace="circle") == 1
    assert value(samples, "gathering_cache_hits_total", namespace="rag") == 0
    assert value(samples, "gathering_cache_sets_total", namespace="embedding") == 1
    assert value(samples, "gathering_cache_sets_total", namespace="llm") == 1
    assert value(samples, "gathering_cache_cost_saved_dollars_total", namespace="llm") > 0
    assert value(samples, "gathering_cache_breaker_state") == 0
    gets = value(samples, "gathering_cache_operation_duration_seconds_count", operation="get")
    assert gets == 4  # embedding x2, circle, llm
    inf = value(
        samples, "gathering_cache_operation_duration_seconds_bucket", operation="get", le="+Inf"
    )
    assert inf == gets
    assert not any(name == "gathering_cache_errors_total" for name, _ in samples)
    assert collector.hits["embedding"] == 1


def test_an_outage_shows_as_errors_and_an_open_breaker() -> None:
    """A closed port: faults, then the breaker opens and calls are skipped; the sync facade
    registers the same way."""
    config = CacheConfig(
        url=f"redis://127.0.0.1:{free_port()}/0", failure_threshold=1, recovery_interval=60
    )
    registry = CollectorRegistry()
    with CacheManager(config) as cache:
        gathering_cache.metrics.register(cache, registry=registry)
        for _ in range(3):
            assert cache.get_circle_context(1) is None
        samples = scrape(registry)
    assert value(samples, "gathering_cache_breaker_state") == 2
    assert value(samples, "gathering_cache_errors_total", namespace="circle", kind="skipped") == 3
    assert value(samples, "gathering_cache_misses_total", namespace="circle") == 3


@pytest.mark.integration
def test_the_sync_facade_on_a_real_server_reads_closed(redis_server: RedisServer) -> None:
    registry = CollectorRegistry()
    config = CacheConfig(url=redis_server.url, key_prefix="metrics-sync:")
    with CacheManager(config) as cache:
        gathering_cache.metrics.register(cache, registry=registry)
        assert cache.set("metrics-sync:k", 1)
        assert value(scrape(registry), "gathering_cache_breaker_state") == 0
        assert value(scrape(registry), "gathering_cache_sets_total", namespace="generic") == 1
