"""The observer seam: every store operation reaches the observers once, with its outcome.

Run on every backend (memory, fakeredis, real Redis), and against real faults: a closed
port, a server that never answers, a pool with no free slot, a value of another type.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import socket

import pytest
import redis.asyncio as redis_asyncio

from gathering_cache import (
    ArgumentTypeError,
    AsyncCacheManager,
    CacheConfig,
    CachedEmbedder,
    CacheManager,
    Operation,
    Outcome,
)
from tests.conftest import Factory
from tests.test_hostile_server import HostileServer


class Recorder:
    """An observer that keeps what it is told."""

    def __init__(self) -> None:
        self.seen: list[Operation] = []

    def __call__(self, operation: Operation) -> None:
        self.seen.append(operation)

    def take(self) -> list[tuple[str, str, Outcome]]:
        out = [(o.op, o.namespace, o.outcome) for o in self.seen]
        self.seen.clear()
        return out


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_each_generic_operation_is_reported_once_with_its_outcome(
    make_cache: Factory,
) -> None:
    cache = await make_cache()
    seen = Recorder()
    cache.add_observer(seen)
    assert await cache.get("k") is None
    assert await cache.set("k", {"v": 1}) is True
    assert await cache.get("k") == {"v": 1}
    assert await cache.get_many(["k", "absent"]) == [{"v": 1}, None]
    assert await cache.delete("k") is True
    assert seen.take() == [
        ("get", "generic", Outcome.MISS),
        ("set", "generic", Outcome.STORED),
        ("get", "generic", Outcome.HIT),
        ("get_many", "generic", Outcome.HIT),
        ("delete", "generic", Outcome.DONE),
    ]


async def test_a_report_carries_keys_hits_bytes_and_a_duration(make_cache: Factory) -> None:
    cache = await make_cache()
    seen = Recorder()
    cache.add_observer(seen)
    await cache.set_many({"a": "x" * 100, "b": "y" * 50}, ttl=60)
    await cache.get_many(["a", "b", "c"])
    write, read = seen.seen
    assert (write.op, write.keys, write.outcome) == ("set_many", 2, Outcome.STORED)
    assert write.nbytes > 150  # the encoded values sent
    assert (read.keys, read.hits, read.misses, read.invalid) == (3, 2, 1, 0)
    assert read.nbytes == write.nbytes  # the same bytes came back
    assert 0.0 < read.duration < 5.0
    assert not read.failed


async def test_domain_reads_and_writes_go_through_the_seam_with_their_namespace(
    make_cache: Factory,
) -> None:
    cache = await make_cache()
    seen = Recorder()
    cache.add_observer(seen)
    await cache.set_embedding("hello", [0.5, 0.25])
    await cache.get_embedding("hello")
    await cache.set_rag_results(7, "q", [{"id": 1}])
    assert await cache.get_rag_results(7, "q") == [{"id": 1}]
    await cache.invalidate_rag_results(7)
    assert await cache.get_rag_results(7, "q") is None  # stale generation: a miss
    await cache.set_circle_context(3, {"goal": "x"})
    await cache.get_circle_context(3)
    await cache.set_llm_response("m", "four", prompt="2+2?", temperature=0)
    await cache.get_llm_response("m", prompt="2+2?", temperature=0)
    reads = [(o.namespace, o.outcome) for o in seen.seen if o.op in ("get", "get_many")]
    assert reads == [
        ("embedding", Outcome.HIT),
        ("rag", Outcome.HIT),
        ("rag", Outcome.MISS),
        ("circle", Outcome.HIT),
        ("llm", Outcome.HIT),
    ]
    writes = {o.namespace for o in seen.seen if o.outcome is Outcome.STORED}
    assert writes == {"embedding", "rag", "circle", "llm"}
    # One RAG lookup is one lookup, though it reads the entry and two counters at once.
    assert all(o.keys == 1 for o in seen.seen if o.namespace == "rag" and o.op == "get_many")


async def test_stats_are_the_sum_of_what_the_observers_saw(make_cache: Factory) -> None:
    cache = await make_cache()
    seen = Recorder()
    cache.add_observer(seen)
    rng = random.Random(5)
    for _ in range(200):
        key = f"k{rng.randrange(20)}"
        action = rng.randrange(4)
        if action == 0:
            await cache.set(key, rng.random())
        elif action == 1:
            await cache.get(key)
        elif action == 2:
            await cache.get_many([key, f"k{rng.randrange(20)}"])
        else:
            await cache.delete(key)
    stats = await cache.get_stats()
    reads = [o for o in seen.seen if o.op in ("get", "get_many")]
    assert stats["hits"] == sum(o.hits for o in reads)
    assert stats["misses"] == sum(o.misses for o in reads)
    assert stats["writes"] == sum(o.keys for o in seen.seen if o.outcome is Outcome.STORED)
    assert stats["hits"] > 0
    assert stats["misses"] > 0


async def test_an_unreachable_store_reports_faults_then_skipped_calls() -> None:
    config = CacheConfig(port=_closed_port(), failure_threshold=2, recovery_interval=60)
    async with AsyncCacheManager(config) as cache:
        seen = Recorder()
        cache.add_observer(seen)
        assert await cache.get("k") is None
        assert await cache.set("k", 1) is False
    # connect() failed first and opened the breaker: calls after it do not reach the store.
    assert seen.take() == [("get", "generic", Outcome.SKIPPED), ("set", "generic", Outcome.SKIPPED)]
    cache = AsyncCacheManager(config)
    cache.add_observer(seen)
    await cache.connect()
    await cache.aclose()
    assert seen.take() == [("connect", "generic", Outcome.FAULT)]


async def test_a_server_that_never_answers_reports_timeouts_and_sheds_the_overflow() -> None:
    async with HostileServer(b"") as server:  # answers the handshake, then nothing
        config = CacheConfig(
            port=server.port,
            operation_timeout=0.5,  # wide: two calls that start together stay together
            failure_threshold=100,
            max_connections=1,
        )
        async with AsyncCacheManager(config) as cache:
            seen = Recorder()
            cache.add_observer(seen)
            results = await asyncio.gather(cache.get("a"), cache.get("b"))
            assert results == [None, None]
            outcomes = sorted(o.outcome.value for o in seen.seen)
            # One call held the only connection until its deadline; the other waited for it
            # in vain: shed, not counted against Redis.
            assert outcomes == ["shed", "timeout"]
            assert all(o.failed and o.hits == 0 for o in seen.seen)
            stats = await cache.get_stats()
            assert stats["breaker"]["shed"] == 1


@pytest.mark.integration
async def test_a_value_of_another_type_is_rejected_not_an_outage(redis_url: str) -> None:
    client = redis_asyncio.Redis.from_url(redis_url)
    try:
        await client.rpush("gathering:listy", b"x")
        # A wide budget: a stall of the machine must not turn the connect into a timeout
        # (the breaker would then skip the read this test is about; seen once in CI).
        config = CacheConfig.from_url(redis_url, operation_timeout=5.0)
        async with AsyncCacheManager(config) as cache:
            seen = Recorder()
            cache.add_observer(seen)
            assert await cache.get("gathering:listy") is None
            assert seen.take() == [("get", "generic", Outcome.REJECTED)]
            assert (await cache.get_stats())["misses"] == 1
    finally:
        await client.aclose()


async def test_undecodable_entries_are_misses_counted_invalid(make_cache: Factory) -> None:
    cache = await make_cache()
    seen = Recorder()
    cache.add_observer(seen)
    await cache.set_circle_context(1, {"a": 1})
    # The generic API can write any JSON under a circle key: not a dict, so a refused entry.
    await cache.set("gathering:circle:1", [1, 2])
    assert await cache.get_circle_context(1) is None
    read = seen.seen[-1]
    assert (read.outcome, read.hits, read.invalid) == (Outcome.MISS, 0, 1)
    assert (await cache.get_stats())["errors"] == 1


async def test_a_failing_observer_is_removed_and_never_breaks_a_call(
    make_cache: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    cache = await make_cache()
    calls: list[Operation] = []

    def broken(operation: Operation) -> None:
        calls.append(operation)
        raise RuntimeError("observer bug")

    seen = Recorder()
    cache.add_observer(broken)
    cache.add_observer(seen)
    with caplog.at_level(logging.ERROR, logger="gathering_cache"):
        assert await cache.set("k", 1) is True
        assert await cache.get("k") == 1
    assert len(calls) == 1  # called once, then removed
    assert cache.observers == (seen,)
    assert [o.op for o in seen.seen] == ["set", "get"]  # the others still hear everything
    assert sum("observer" in r.getMessage() for r in caplog.records) == 1
    assert (await cache.get_stats())["hits"] == 1


async def test_observers_are_added_removed_and_checked(make_cache: Factory) -> None:
    cache = await make_cache()
    seen = Recorder()
    cache.add_observer(seen)
    assert cache.observers == (seen,)
    assert cache.remove_observer(seen) is True
    assert cache.remove_observer(seen) is False
    await cache.get("k")
    assert seen.seen == []
    with pytest.raises(ArgumentTypeError, match="observer must be callable"):
        cache.add_observer(42)  # type: ignore[arg-type]


def test_the_sync_facade_reports_to_observers_on_its_loop_thread() -> None:
    with CacheManager(CacheConfig(backend="memory")) as cache:
        seen = Recorder()
        cache.add_observer(seen)
        cache.set("k", 1)
        assert cache.get("k") == 1
        assert [(o.op, o.outcome) for o in seen.seen] == [
            ("set", Outcome.STORED),
            ("get", Outcome.HIT),
        ]
        assert cache.remove_observer(seen) is True


async def test_embedding_fallback_during_an_outage_is_a_hit_on_a_fault() -> None:
    async with HostileServer(b"-ERR down\r\n") as server:
        pass  # closed: the port refuses from now on
    config = CacheConfig(port=server.port, failure_threshold=1, recovery_interval=60)
    cache = AsyncCacheManager(config)
    try:
        seen = Recorder()
        cache.add_observer(seen)
        await cache.set_embedding("t", [1.0, 2.0])  # kept in the process's LRU
        assert await cache.get_embedding("t") == [1.0, 2.0]
        read = seen.seen[-1]
        assert read.op == "get"
        assert read.failed
        assert read.hits == 1
        assert (await cache.get_stats())["namespaces"]["embedding"]["hits"] == 1
    finally:
        await cache.aclose()


# -- optional store capabilities ---------------------------------------------------------


async def _without(cache: AsyncCacheManager, *, indexes: bool = True, locks: bool = True) -> None:
    """Make the cache's store declare fewer capabilities than it has."""
    store = cache._core.store
    store.capabilities = dataclasses.replace(
        store.capabilities,
        indexes=store.capabilities.indexes and indexes,
        locks=store.capabilities.locks and locks,
    )


async def test_a_store_without_indexes_still_invalidates_rag_results(make_cache: Factory) -> None:
    cache = await make_cache()
    await _without(cache, indexes=False)
    assert await cache.set_rag_results(1, "q", [{"id": 1}]) is True
    assert await cache.get_rag_results(1, "q") == [{"id": 1}]
    # No index to read: nothing is deleted now, but the entry is unreadable at once.
    assert await cache.invalidate_rag_results(1) == 0
    assert await cache.get_rag_results(1, "q") is None
    assert await cache.exists("rag:entries:1") is False  # no index was written
    assert await cache.set_rag_results(1, "q", [{"id": 2}]) is True
    assert await cache.get_rag_results(1, "q") == [{"id": 2}]


async def test_a_store_without_locks_leaves_single_flight_to_the_process(
    make_cache: Factory,
) -> None:
    cache = await make_cache()
    await _without(cache, locks=False)
    assert not isinstance(await cache.locks.acquire(["gathering:lock:x"], "t", 1000), list)

    calls = 0

    async def provider(texts: list[str]) -> list[list[float]]:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.01)
        return [[float(len(t)), 1.0] for t in texts]

    embedder = CachedEmbedder(provider, cache, model="m")
    results = await asyncio.gather(*(embedder.embed("same") for _ in range(5)))
    assert results == [[4.0, 1.0]] * 5
    assert calls == 1  # the process's own single-flight still joins concurrent callers
    assert (await cache.get_stats())["total_keys"] == 1  # the embedding; no lock was taken


# -- closing ----------------------------------------------------------------------------------


@pytest.mark.integration
def test_closing_from_another_loop_closes_without_raising(redis_url: str) -> None:
    cache = AsyncCacheManager(CacheConfig.from_url(redis_url))
    asyncio.run(cache.set("gathering:k", 1))
    asyncio.run(cache.aclose())  # the last statistics flush is skipped off the bound loop
    assert asyncio.run(cache.get("gathering:k")) is None  # closed: degraded, no I/O
    assert asyncio.run(cache.get_stats())["reason"] == "closed"


async def test_closing_an_unused_manager_contacts_nothing() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cache = AsyncCacheManager(CacheConfig(port=port))
    seen = Recorder()
    cache.add_observer(seen)
    await cache.aclose()
    assert seen.seen == []  # no connect, no flush
    assert cache.is_enabled() is False
