"""Fleet-wide statistics: counters folded into the store by each process (an observer, a
batched write every interval and on close), read back added up; minute history with TTLs."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as redis_asyncio

from gathering_cache import AsyncCacheManager, CacheConfig, CacheManager, Operation, Outcome
from gathering_cache.ops.fleet import (
    BUCKETS,
    Counts,
    FleetRecorder,
    fleet_history,
    percentile,
    process_of,
)
from gathering_cache.ops.report import collect
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


# -- regressions from the review of the ops wing -----------------------------------------------


@pytest.mark.integration
async def test_planted_process_entries_are_skipped_never_raised(
    redis_server: RedisServer,
) -> None:
    """Anyone who can write the store chooses ``stats:proc:`` names and values: the process
    id comes from the key name, checked; a malformed entry is counted, never raised."""
    prefix = f"fleet-{uuid.uuid4().hex[:6]}:"
    raw = redis_asyncio.Redis.from_url(redis_server.url)
    planted = {
        f"{prefix}stats:proc:x": b'{"process": "evil:host", "namespaces": {}}',
        f"{prefix}stats:proc:a:b": b'{"namespaces": {}}',  # not of the id alphabet
        f"{prefix}stats:proc:list": b"[1, 2]",  # not an object
        f"{prefix}stats:proc:junk": b"\xff not json",
    }
    try:
        for key, value in planted.items():
            await raw.set(key, value, ex=60)
        config = CacheConfig(url=redis_server.url, key_prefix=prefix)
        async with AsyncCacheManager(config) as cache:
            await cache.get_circle_context(1)
            report = await collect(cache, minutes=3)
            fleet = report["fleet"]
            assert fleet["available"] is True
            ids = sorted(p["process"] for p in fleet["by_process"])
            assert cache.fleet is not None
            assert ids == sorted(["x", cache.fleet.process])  # "evil:host" is not an id
            assert fleet["skipped"] == 3
            assert report["history"]["namespaces"]["circle"]["misses"][-1] == 1
            assert (await cache.get_stats())["fleet"]["skipped"] == 3
    finally:
        await raw.delete(*planted)
        await raw.aclose()


def test_process_ids_come_from_key_names_of_the_id_alphabet() -> None:
    assert process_of("p:stats:proc:host-1-ab12", "p:stats:proc:") == "host-1-ab12"
    for bad in ("p:stats:proc:evil:host", "p:stats:proc:", "q:stats:proc:x", "p:stats:proc:é"):
        assert process_of(bad, "p:stats:proc:") is None


@pytest.mark.integration
async def test_ops_reads_are_reported_under_stats_not_as_the_applications(
    redis_server: RedisServer,
) -> None:
    """The scans and counts of get_stats() and collect() are the library's own: neither the
    application's generic operations nor its errors or latency."""
    prefix = f"fleet-{uuid.uuid4().hex[:6]}:"
    config = CacheConfig(url=redis_server.url, key_prefix=prefix)
    async with AsyncCacheManager(config) as cache:
        await cache.set_embedding("t", [0.1])
        seen: list[Operation] = []
        cache.add_observer(seen.append)
        await cache.get_stats()
        await collect(cache, minutes=2)
        ops = {(o.op, o.namespace) for o in seen}
        assert {("scan", "stats"), ("server_info", "stats"), ("memory_usage", "stats")} <= ops
        assert not [o for o in seen if o.namespace == "generic"], ops
        assert cache.fleet is not None
        assert cache.fleet.total["generic"].latency == [0] * (len(BUCKETS) + 1)


@pytest.mark.integration
async def test_collect_lists_the_keyspace_once(redis_server: RedisServer) -> None:
    """One SCAN pass counts every namespace, samples memory from the keys it saw and finds
    the processes (it used to walk the keyspace eleven times)."""
    prefix = f"fleet-{uuid.uuid4().hex[:6]}:"
    config = CacheConfig(url=redis_server.url, key_prefix=prefix, stats_flush_interval=0)
    async with AsyncCacheManager(config) as cache:
        for index in range(3):
            await cache.set_embedding(f"t{index}", [0.1])
        await cache.set_circle_context(1, {"goal": "x"})
        seen: list[Operation] = []
        cache.add_observer(seen.append)
        report = await collect(cache, minutes=2)
        assert report["partial"] is False
        assert report["namespaces"]["embedding"]["keys"] == 3
        assert report["namespaces"]["circle"]["keys"] == 1
        assert report["namespaces"]["embedding"]["memory_sampled"] == 3
        assert report["total_keys"] == 4
        scans = [o for o in seen if o.op in ("scan", "count")]
        assert len(scans) == 1  # a handful of keys: one page


@pytest.mark.integration
async def test_a_walk_stops_at_its_deadline_between_pages(redis_server: RedisServer) -> None:
    prefix = f"walk-{uuid.uuid4().hex[:6]}:"
    config = CacheConfig(url=redis_server.url, key_prefix=prefix, stats_flush_interval=0)
    async with AsyncCacheManager(config) as cache:
        await cache.set_many({f"{prefix}k{index}": index for index in range(50)})
        pages: list[list[str]] = []
        telemetry = cache.telemetry
        assert await telemetry.walk(f"{prefix}*", pages.append, time.monotonic(), 5) is False
        assert pages == []  # a deadline already past: no page at all
        assert await telemetry.walk(f"{prefix}*", pages.append, None, 5) is True
        assert len(set().union(*pages)) == 50
        assert await telemetry.scan(f"{prefix}*", 5, time.monotonic() - 1) is None

        def slow(keys: list[str]) -> None:  # the first page outlasts the budget
            pages.append(keys)
            time.sleep(0.06)

        pages.clear()
        assert await telemetry.walk(f"{prefix}*", slow, time.monotonic() + 0.05, 5) is False
        assert len(pages) == 1
        await cache.clear_all()


@pytest.mark.integration
def test_a_stalled_server_gives_a_partial_report_within_the_budget() -> None:
    """A server that stops answering (SIGSTOP) mid-way: collect() returns within one
    bulk_timeout (plus the connection's own timeouts), saying it is partial."""
    with RedisServer() as server:
        config = CacheConfig(url=server.url, key_prefix="stall:", bulk_timeout=1.0)

        async def main() -> tuple[dict[str, Any], float]:
            async with AsyncCacheManager(config) as cache:
                await cache.set("stall:k", 1)
                server.pause()
                try:
                    started = time.monotonic()
                    report = await collect(cache, minutes=2)
                    return report, time.monotonic() - started
                finally:
                    server.resume()

        report, elapsed = asyncio.run(main())
    assert report["partial"] is True
    assert report["fleet"]["available"] is False
    assert elapsed < 1.0 + 3.0  # the budget, and slack for a loaded machine


async def test_invalidate_all_counts_as_one_invalidation_like_one_agents() -> None:
    config = CacheConfig(backend="memory", stats_flush_interval=3600)
    async with AsyncCacheManager(config) as cache:
        assert cache.fleet is not None
        await cache.set_rag_results(7, "q", [{"content": "x"}])
        await cache.invalidate_rag_results(7)
        assert cache.fleet.total["rag"].invalidations == 1
        assert await cache.invalidate_all_rag_results() is True
        assert cache.fleet.total["rag"].invalidations == 2
        await cache.get_rag_results(7, "q")  # reading the generations is no invalidation
        assert cache.fleet.total["rag"].invalidations == 2


@pytest.mark.integration
async def test_counts_added_while_a_flush_is_written_reach_that_minutes_history(
    redis_server: RedisServer,
) -> None:
    prefix = f"fleet-{uuid.uuid4().hex[:6]}:"
    config = CacheConfig(url=redis_server.url, key_prefix=prefix, stats_flush_interval=0)
    now = [60.0 * (int(time.time()) // 60) + 1]
    async with AsyncCacheManager(config) as cache:
        await cache.connect()
        recorder = FleetRecorder(cache.telemetry, 10**6, 3600, clock=lambda: now[0])
        miss = Operation("get", "circle", Outcome.MISS, 0.001, 0, 1, 0)
        recorder.observe(miss)
        first = recorder._minute
        task = asyncio.create_task(recorder.flush())
        await asyncio.sleep(0)
        assert not task.done()  # serialised, the write under way
        recorder.observe(miss)  # after serialising...
        now[0] += 60
        recorder.observe(miss)  # ...and the minute rolls before the write returns
        assert await task
        assert await recorder.flush()
        raw = await cache.telemetry.read(
            [cache.telemetry.keys.stats_minute(first, recorder.process)]
        )
        assert raw is not None
        assert raw[0] is not None
        assert Counts.from_json(json.loads(raw[0])["circle"]).misses == 2
