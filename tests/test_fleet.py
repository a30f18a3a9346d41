"""Fleet-wide statistics: counters folded into the store by each process (an observer, a
batched write every interval and on close), read back added up; minute history with TTLs."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import redis.asyncio as redis_asyncio

from gathering_cache import AsyncCacheManager, CacheConfig, CacheManager, Operation, Outcome
from gathering_cache.ops.fleet import BUCKETS, Counts, FleetRecorder, fleet_history, percentile
from tests import ops_traffic
from tests.servers import RedisServer

ROOT = Path(__file__).resolve().parent.parent


def run_traffic(url: str, prefix: str, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.ops_traffic", url, prefix, *extra],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )


def two_processes(url: str, prefix: str) -> None:
    """Two processes' traffic, each flushed on close."""
    processes = [run_traffic(url, prefix), run_traffic(url, prefix)]
    for process in processes:
        assert process.wait(timeout=60) == 0


@pytest.mark.integration
async def test_two_processes_are_added_up_with_this_one(redis_server: RedisServer) -> None:
    prefix = f"fleet-{uuid.uuid4().hex[:6]}:"
    await asyncio.to_thread(two_processes, redis_server.url, prefix)
    config = CacheConfig(url=redis_server.url, key_prefix=prefix)
    async with AsyncCacheManager(config) as cache:
        await cache.get_circle_context(1)  # this process: one more circle hit, not flushed
        stats = await cache.get_stats()
        fleet = stats["fleet"]
        assert stats["hits"] == 1  # the original keys: this process's own
        assert fleet["available"] is True
        assert fleet["processes"] == 3
        embedding = fleet["namespaces"]["embedding"]
        assert embedding["hits"] == 2 * ops_traffic.EMBEDDING_HITS
        assert embedding["misses"] == 2 * ops_traffic.EMBEDDING_MISSES
        assert embedding["sets"] == 2 * 3
        circle = fleet["namespaces"]["circle"]
        assert circle["hits"] == 2 * ops_traffic.CIRCLE_HITS + 1
        assert fleet["namespaces"]["rag"]["invalidations"] == 2
        assert fleet["namespaces"]["llm"]["cost_saved"] > 0
        assert fleet["latency_ms"]["p50"] is not None
        assert sorted(p["breaker"] for p in fleet["by_process"]) == ["closed"] * 3
        history = await fleet_history(cache.telemetry, 5, cache.fleet)
        circle_hits = sum(history["namespaces"]["circle"]["hits"])
        assert circle_hits == 2 * ops_traffic.CIRCLE_HITS + 1
    raw = redis_asyncio.Redis.from_url(redis_server.url)
    try:
        keys = [key async for key in raw.scan_iter(match=f"{prefix}stats:*")]
        assert len(keys) >= 4  # 3 processes' counters (this one flushed on close) + minutes
        for key in keys:  # every key written expires, within the window
            assert 0 < await raw.ttl(key) <= 86400
    finally:
        await raw.aclose()


@pytest.mark.integration
def test_a_killed_process_loses_at_most_one_interval(redis_server: RedisServer) -> None:
    prefix = f"fleet-{uuid.uuid4().hex[:6]}:"
    process = run_traffic(redis_server.url, prefix, "--interval", "0.3", "--hang")
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "flushed"
    finally:
        process.kill()
        process.wait(timeout=10)
    config = CacheConfig(url=redis_server.url, key_prefix=prefix, stats_flush_interval=0)
    with CacheManager(config) as cache:
        fleet = cache.get_stats()["fleet"]
    assert fleet["processes"] == 1
    # 11 lookups were flushed; the one after the flush died with the process.
    assert fleet["namespaces"]["circle"]["misses"] == 11


async def test_the_recorder_is_an_observer_that_writes_nothing_per_operation() -> None:
    """Counting does no I/O: a hundred lookups, no stats key until a flush; the flush is
    one batched write (one set_many operation) whatever the traffic."""
    config = CacheConfig(backend="memory", stats_flush_interval=3600)
    async with AsyncCacheManager(config) as cache:
        seen: list[Operation] = []
        cache.add_observer(seen.append)
        for index in range(100):
            await cache.get_circle_context(index)
        assert cache.fleet is not None
        assert [key async for key in cache.scan_keys("gathering:stats:*")] == []
        assert await cache.flush_stats() is True
        writes = [o for o in seen if o.namespace == "stats"]
        assert [(o.op, o.outcome) for o in writes] == [("set_many", Outcome.STORED)]
        assert cache.observers == (seen.append,)  # the recorder is the library's own
        stats = await cache.get_stats()
        assert stats["writes"] == 0  # stats writes are not the application's
        assert stats["fleet"]["namespaces"]["circle"]["misses"] == 100


async def test_a_flush_starts_on_the_first_operation_after_the_interval() -> None:
    now = [1_000_000.0]
    config = CacheConfig(backend="memory", stats_flush_interval=3600)
    async with AsyncCacheManager(config) as cache:
        recorder = FleetRecorder(cache.telemetry, 10, 3600, clock=lambda: now[0])
        cache.telemetry.attach(recorder.observe)
        await cache.get_circle_context(1)
        await asyncio.sleep(0)
        assert recorder.flushes == 0
        now[0] += 61  # past the interval, into the next minute
        await cache.get_circle_context(2)
        for _ in range(20):
            await asyncio.sleep(0)
            if recorder.flushes:
                break
        assert recorder.flushes == 1
        history = await fleet_history(cache.telemetry, 3, None)
        assert history["minutes"]  # aligned lists, oldest first
        await recorder.aclose()
        assert recorder.closed
        await recorder.aclose()  # once
        assert recorder.flushes == 2


def test_fleet_stats_off_and_disabled() -> None:
    with CacheManager(CacheConfig(backend="memory", stats_flush_interval=0)) as cache:
        assert cache.async_manager.fleet is None
        assert cache.flush_stats() is False
        assert cache.get_stats()["fleet"]["processes"] == 0
    with CacheManager(CacheConfig(enabled=False)) as cache:
        assert cache.async_manager.fleet is None
        fleet = cache.get_stats()["fleet"]
        assert fleet["available"] is False


def test_counts_read_malformed_data_as_zero_and_percentiles_use_buckets() -> None:
    assert Counts.from_json("nope").hits == 0
    counts = Counts.from_json({"hits": -1, "misses": 2, "cost": "x", "latency": [1]})
    assert (counts.hits, counts.misses, counts.cost) == (0, 2, 0.0)
    histogram = [0] * (len(BUCKETS) + 1)
    assert percentile(histogram, 0.5) is None
    histogram[2] = 9  # <= 2.5 ms
    histogram[-1] = 1  # beyond the last bound
    assert percentile(histogram, 0.5) == BUCKETS[2] * 1000
    assert percentile(histogram, 0.99) == BUCKETS[-1] * 1000
