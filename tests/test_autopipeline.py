"""Auto-pipelining on a real Redis: concurrent callers share round trips, each gets its own
reply, and nothing else about a call changes (deadline, cancellation, error replies)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as redis_asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gathering_cache import AsyncCacheManager, CacheConfig, Outcome
from gathering_cache.backends.autopipeline import CLUSTER_BATCHES, AutoPipeline
from gathering_cache.backends.redis_store import RedisStore
from tests.servers import RedisServer

pytestmark = pytest.mark.integration


def _pipeline(cache: AsyncCacheManager) -> AutoPipeline:
    store = cache._core.store
    assert isinstance(store, RedisStore)
    assert store.pipeline is not None
    return store.pipeline


@pytest.fixture
async def cache(redis_url: str) -> AsyncIterator[AsyncCacheManager]:
    async with AsyncCacheManager(CacheConfig.from_url(redis_url)) as manager:
        yield manager


async def test_concurrent_callers_share_round_trips(cache: AsyncCacheManager) -> None:
    await cache.set_many({f"gathering:k{i}": i for i in range(64)}, ttl=60)
    pipeline = _pipeline(cache)
    before = pipeline.batches, pipeline.batched
    values = await asyncio.gather(*(cache.get(f"gathering:k{i}") for i in range(64)))
    assert values == list(range(64))  # each caller got its own reply
    batches, batched = pipeline.batches - before[0], pipeline.batched - before[1]
    # One went alone, at once; the others waited for it together (a few more may go alone
    # when they find nothing in flight, having waited for the limiter's slots).
    assert batched >= 56
    assert batches < 8  # in a few round trips, not 63


async def test_a_single_sequential_caller_is_never_batched(cache: AsyncCacheManager) -> None:
    pipeline = _pipeline(cache)
    before = pipeline.batched
    for i in range(50):
        assert await cache.set(f"gathering:s{i}", i) is True
        assert await cache.get(f"gathering:s{i}") == i
    assert pipeline.batched == before


async def test_an_error_reply_fails_only_its_own_command(
    cache: AsyncCacheManager, raw_redis: redis_asyncio.Redis
) -> None:
    await raw_redis.rpush("gathering:list", b"x")
    await cache.set_many({f"gathering:g{i}": i for i in range(10)}, ttl=60)
    seen: list[Any] = []
    cache.add_observer(seen.append)
    keys = [f"gathering:g{i}" for i in range(5)] + ["gathering:list"]
    keys += [f"gathering:g{i}" for i in range(5, 10)]
    values = await asyncio.gather(*(cache.get(key) for key in keys))
    assert values == [0, 1, 2, 3, 4, None, 5, 6, 7, 8, 9]
    outcomes = [o.outcome for o in seen]
    assert outcomes.count(Outcome.REJECTED) == 1  # WRONGTYPE: that call's miss
    assert outcomes.count(Outcome.HIT) == 10
    assert cache.is_enabled()


async def test_cancelling_one_caller_leaves_the_others_their_replies(
    cache: AsyncCacheManager,
) -> None:
    await cache.set_many({f"gathering:c{i}": i for i in range(30)}, ttl=60)
    tasks = [asyncio.ensure_future(cache.get(f"gathering:c{i}")) for i in range(30)]
    await asyncio.sleep(0)  # every call has started: one in flight, the rest queued
    tasks[7].cancel()
    tasks[19].cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    for i, result in enumerate(results):
        if i in (7, 19):
            assert isinstance(result, asyncio.CancelledError)
        else:
            assert result == i
    assert await cache.get("gathering:c7") == 7  # the connection is still in sync


async def test_a_hung_server_degrades_every_waiting_call_within_its_deadline(
    redis_server: Any,
) -> None:
    config = CacheConfig.from_url(redis_server.url, operation_timeout=0.2, failure_threshold=100)
    async with AsyncCacheManager(config) as cache:
        await cache.set("gathering:h", 1)
        blocker = redis_asyncio.Redis.from_url(redis_server.url)
        try:
            sleeper = asyncio.ensure_future(
                blocker.execute_command("DEBUG", "SLEEP", "0.6")  # type: ignore[no-untyped-call]
            )
            await asyncio.sleep(0.05)
            loop = asyncio.get_running_loop()
            start = loop.time()
            values = await asyncio.gather(*(cache.get("gathering:h") for _ in range(20)))
            elapsed = loop.time() - start
            assert values == [None] * 20  # degraded, not raised
            assert elapsed < 0.5  # each call bounded by its own deadline (0.2 s)
            await sleeper
        finally:
            await blocker.aclose()
        # The server answers again: so does the cache, on connections still in sync.
        for _ in range(50):
            if await cache.get("gathering:h") == 1:
                break
            await asyncio.sleep(0.05)
        assert await cache.get("gathering:h") == 1


async def test_turned_off_every_call_goes_alone(redis_url: str) -> None:
    config = CacheConfig.from_url(redis_url, auto_pipeline=False)
    async with AsyncCacheManager(config) as cache:
        store = cache._core.store
        assert isinstance(store, RedisStore)
        assert store.pipeline is None
        await cache.set("gathering:off", 1)
        assert await asyncio.gather(*(cache.get("gathering:off") for _ in range(10))) == [1] * 10


# -- concurrent programs against a sequential model -----------------------------------------

_OPS = st.one_of(
    st.tuples(st.just("set"), st.integers(0, 3), st.integers(0, 99)),
    st.tuples(st.just("get"), st.integers(0, 3), st.just(0)),
    st.tuples(st.just("delete"), st.integers(0, 3), st.just(0)),
    st.tuples(st.just("get_many"), st.integers(0, 3), st.integers(0, 3)),
)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(programs=st.lists(st.lists(_OPS, min_size=1, max_size=12), min_size=2, max_size=24))
async def test_concurrent_programs_match_a_sequential_model(
    cache: AsyncCacheManager, programs: list[list[tuple[str, int, int]]]
) -> None:
    """Coroutines run at once, each on keys of its own: whatever the batches, each one must
    see exactly what running its program alone would show."""
    await _check_programs(cache, programs)


@settings(
    max_examples=10,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(programs=st.lists(st.lists(_OPS, min_size=1, max_size=12), min_size=2, max_size=24))
async def test_on_a_cluster_concurrent_programs_match_a_sequential_model(
    cluster_cache: AsyncCacheManager, programs: list[list[tuple[str, int, int]]]
) -> None:
    """The same on a cluster, where each batch is split per node."""
    await _check_programs(cluster_cache, programs)


async def _check_programs(
    cache: AsyncCacheManager, programs: list[list[tuple[str, int, int]]]
) -> None:
    await cache.delete_pattern("gathering:p:*")

    async def run(index: int, program: list[tuple[str, int, int]]) -> tuple[list[Any], list[Any]]:
        model: dict[str, int] = {}
        expected: list[Any] = []
        actual: list[Any] = []
        for op, a, b in program:
            key, other = f"gathering:p:{index}:{a}", f"gathering:p:{index}:{b}"
            if op == "set":
                model[key] = b
                expected.append(True)
                actual.append(await cache.set(key, b, ttl=60))
            elif op == "get":
                expected.append(model.get(key))
                actual.append(await cache.get(key))
            elif op == "delete":
                expected.append(model.pop(key, None) is not None)
                actual.append(await cache.delete(key))
            else:
                expected.append([model.get(key), model.get(other)])
                actual.append(await cache.get_many([key, other]))
        return expected, actual

    results = await asyncio.gather(*(run(i, p) for i, p in enumerate(programs)))
    for expected, actual in results:
        assert actual == expected


async def test_a_batch_on_a_stopped_server_ends_at_its_deadline_even_without_socket_timeout() -> (
    None
):
    """An injected client may have no socket timeout: a batch whose callers are gone still
    gives its connection back by the batch's own deadline, so a stopped server cannot drain
    the pool across breaker probes."""
    with RedisServer() as server:
        client = redis_asyncio.Redis(host="127.0.0.1", port=server.port, max_connections=32)
        config = CacheConfig(operation_timeout=0.2, failure_threshold=1000, stats_flush_interval=0)
        cache = AsyncCacheManager(config, client=client)
        try:
            await cache.set("gathering:k", 1)
            pipeline = _pipeline(cache)
            assert server.process is not None
            server.process.send_signal(signal.SIGSTOP)
            try:
                for _ in range(3):
                    values = await asyncio.gather(*(cache.get("gathering:k") for _ in range(32)))
                    assert values == [None] * 32  # degraded at each caller's deadline
                    await asyncio.sleep(0.3)  # past the batches' own deadline
                    assert not pipeline._batches  # every batch gave its connection back
                    assert pipeline._inflight == 0
            finally:
                server.process.send_signal(signal.SIGCONT)
            for _ in range(50):  # the server answers again: so does the cache
                if await cache.get("gathering:k") == 1:
                    break
                await asyncio.sleep(0.05)
            assert await cache.get("gathering:k") == 1
        finally:
            await cache.aclose()
            await client.aclose()


async def test_a_sequential_caller_keeps_one_connection(cache: AsyncCacheManager) -> None:
    """Calls alone go on the connection the pipeline keeps between calls, not through the
    pool's checkout and check-in each time."""
    pipeline = _pipeline(cache)
    await cache.set("gathering:one", 1)
    kept = pipeline._idle
    assert kept is not None
    for i in range(20):
        assert await cache.set(f"gathering:one{i}", i) is True
        assert await cache.get(f"gathering:one{i}") == i
        assert pipeline._idle is kept


async def test_a_killed_kept_connection_is_replaced_without_a_fault(
    cache: AsyncCacheManager, raw_redis: redis_asyncio.Redis
) -> None:
    """The kept connection closed by the server (a restart, a timeout, CLIENT KILL): the next
    call connects afresh and answers, as the client's own retry would, and no fault is
    counted."""
    await cache.set("gathering:kk", 1)
    seen: list[Any] = []
    cache.add_observer(seen.append)
    for _ in range(3):
        killed = await raw_redis.execute_command(  # type: ignore[no-untyped-call]
            "CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"
        )
        assert killed >= 1
        assert await cache.get("gathering:kk") == 1
    assert [o.outcome for o in seen] == [Outcome.HIT] * 3
    assert cache.is_enabled()


async def test_a_cancelled_call_alone_leaves_no_reply_behind(
    redis_server: Any, raw_redis: redis_asyncio.Redis
) -> None:
    """A call alone cancelled while its reply is on the way: the next call must not read
    that reply as its own."""
    async with AsyncCacheManager(CacheConfig.from_url(redis_server.url)) as cache:
        await cache.set_many({"gathering:a": "a", "gathering:b": "b"}, ttl=60)
        for _ in range(3):
            sleeper = asyncio.ensure_future(
                raw_redis.execute_command("DEBUG", "SLEEP", "0.1")  # type: ignore[no-untyped-call]
            )
            await asyncio.sleep(0.02)
            call = asyncio.ensure_future(cache.get("gathering:a"))
            await asyncio.sleep(0.02)
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
            await sleeper
            assert await cache.get("gathering:b") == "b"
            assert await cache.get("gathering:a") == "a"


async def test_calls_while_the_server_is_down_leak_no_connection() -> None:
    """Calls alone and batches that cannot connect give every connection back: after an
    outage the pool holds no more than the one the pipeline keeps, and the cache answers
    again once the server is back."""
    with RedisServer() as server:
        config = CacheConfig(
            url=server.url, operation_timeout=0.3, failure_threshold=10_000, max_connections=8
        )
        async with AsyncCacheManager(config) as cache:
            await cache.set("gathering:down", 1)
            pool = cache._core.store.client.connection_pool  # type: ignore[attr-defined]
            server.stop()
            for _ in range(5):
                assert await cache.get("gathering:down") is None
                values = await asyncio.gather(*(cache.get("gathering:down") for _ in range(20)))
                assert values == [None] * 20
            await asyncio.sleep(0.4)  # every batch past its deadline
            assert len(pool._in_use_connections) <= 1
            server.start()
            for _ in range(50):
                # The restart lost the data: the server answers once a write is stored.
                if await cache.get("gathering:down") is None and await cache.set(
                    "gathering:down", 2
                ):
                    break
                await asyncio.sleep(0.05)
            values = await asyncio.gather(*(cache.get("gathering:down") for _ in range(20)))
            assert values == [2] * 20
            assert len(pool._in_use_connections) <= 1


async def test_a_write_that_cannot_finish_ends_at_the_deadline_and_leaves_nothing_half_sent() -> (
    None
):
    """A value larger than the socket buffers, sent to a stopped server: the write blocks,
    the call's deadline ends it (a degraded answer, not an exception), its connection is
    dropped, and once the server runs again the cache answers in sync."""
    with RedisServer() as server:
        config = CacheConfig(
            url=server.url,
            operation_timeout=0.3,
            failure_threshold=1000,
            max_value_bytes=128 << 20,
        )
        async with AsyncCacheManager(config) as cache:
            assert await cache.set("gathering:small", 1)
            assert server.process is not None
            server.process.send_signal(signal.SIGSTOP)
            seen: list[Any] = []
            cache.add_observer(seen.append)
            try:
                # Far more than the socket buffers take (a few MiB on loopback).
                assert await cache.set("gathering:big", "x" * (64 << 20)) is False
                # The write blocked until the deadline ended it (encoding the 64 MiB before
                # is the caller's own work, outside the deadline).
                assert [o.outcome for o in seen] == [Outcome.TIMEOUT]
                assert seen[0].duration < 0.3 + 0.5
            finally:
                server.process.send_signal(signal.SIGCONT)
            for _ in range(50):
                if await cache.get("gathering:small") == 1:
                    break
                await asyncio.sleep(0.05)
            assert await cache.get("gathering:small") == 1
            assert await cache.get("gathering:big") is None  # the half-sent SET never ran
            assert await cache.set("gathering:small", 2)
            assert await cache.get("gathering:small") == 2


# -- on a cluster: one batch per node, through the cluster client's pipeline --------------


@pytest.fixture
async def cluster_cache(redis_cluster: Any) -> AsyncIterator[AsyncCacheManager]:
    redis_cluster.flush()
    config = CacheConfig(
        cluster_nodes=redis_cluster.addresses,
        operation_timeout=2.0,
        connect_timeout=1.0,
        socket_timeout=1.0,
    )
    async with AsyncCacheManager(config) as manager:
        yield manager


async def test_on_a_cluster_concurrent_callers_share_round_trips_across_slots(
    cluster_cache: AsyncCacheManager,
) -> None:
    keys = [f"gathering:n{i}" for i in range(96)]  # spread over the three primaries
    assert (
        await asyncio.gather(*(cluster_cache.set(k, i) for i, k in enumerate(keys))) == [True] * 96
    )
    if not CLUSTER_BATCHES:  # a redis-py whose cluster pipelines leak when cancelled
        assert cluster_cache._core.store.pipeline is None  # type: ignore[attr-defined]
        assert await asyncio.gather(*(cluster_cache.get(k) for k in keys)) == list(range(96))
        return
    pipeline = _pipeline(cluster_cache)
    before = pipeline.batches, pipeline.batched
    values = await asyncio.gather(*(cluster_cache.get(k) for k in keys))
    assert values == list(range(96))
    assert pipeline.batched - before[1] >= 80
    assert pipeline.batches - before[0] < 10


async def test_on_a_cluster_an_error_reply_fails_only_its_own_command(
    cluster_cache: AsyncCacheManager, redis_cluster: Any
) -> None:
    client = redis_asyncio.RedisCluster(
        host="127.0.0.1", port=int(redis_cluster.addresses[0].rsplit(":", 1)[1])
    )
    try:
        await client.rpush("gathering:clist", b"x")
    finally:
        await client.aclose()
    await cluster_cache.set_many({f"gathering:cg{i}": i for i in range(10)}, ttl=60)
    seen: list[Any] = []
    cluster_cache.add_observer(seen.append)
    keys = [f"gathering:cg{i}" for i in range(5)] + ["gathering:clist"]
    keys += [f"gathering:cg{i}" for i in range(5, 10)]
    values = await asyncio.gather(*(cluster_cache.get(key) for key in keys))
    assert values == [0, 1, 2, 3, 4, None, 5, 6, 7, 8, 9]
    outcomes = [o.outcome for o in seen]
    assert outcomes.count(Outcome.REJECTED) == 1
    assert outcomes.count(Outcome.HIT) == 10
    assert cluster_cache.is_enabled()


async def test_on_a_cluster_cancelling_one_caller_leaves_the_others_their_replies(
    cluster_cache: AsyncCacheManager,
) -> None:
    await cluster_cache.set_many({f"gathering:cc{i}": i for i in range(30)}, ttl=60)
    tasks = [asyncio.ensure_future(cluster_cache.get(f"gathering:cc{i}")) for i in range(30)]
    await asyncio.sleep(0)
    tasks[3].cancel()
    tasks[21].cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    for i, result in enumerate(results):
        if i in (3, 21) and CLUSTER_BATCHES:
            assert isinstance(result, asyncio.CancelledError)
        elif i in (3, 21):
            # Not batched (redis-py 6.1): the cluster client itself may let its own call
            # finish despite the cancel; never another caller's value.
            assert isinstance(result, asyncio.CancelledError) or result == i
        else:
            assert result == i
    assert await cluster_cache.get("gathering:cc3") == 3


async def test_closing_the_cache_gives_the_kept_connection_back_to_an_injected_pool(
    redis_url: str,
) -> None:
    """The application's own client (its pool of 3): managers opened and closed on it one
    after the other leave no connection checked out, and the client keeps working."""
    client = redis_asyncio.Redis.from_url(redis_url, max_connections=3)
    try:
        for i in range(5):
            async with AsyncCacheManager(CacheConfig(), client=client) as cache:
                assert await cache.set(f"gathering:inj{i}", i)
                assert await cache.get(f"gathering:inj{i}") == i
            assert not client.connection_pool._in_use_connections
        assert await client.get("gathering:inj4") is not None
    finally:
        await client.aclose()


async def test_batches_whose_callers_gave_up_do_not_exhaust_the_pool() -> None:
    """Callers that give up early (the application's own timeout, shorter than the cache's)
    free their places at once; the batches they leave are cancelled at once too, so new
    calls never find the pool exhausted (which would count as a Redis fault)."""
    with RedisServer() as server:
        config = CacheConfig(
            url=server.url, max_connections=4, operation_timeout=0.5, failure_threshold=1000
        )
        async with AsyncCacheManager(config) as cache:
            await cache.set("gathering:ab", 1)
            pool = cache._core.store.client.connection_pool  # type: ignore[attr-defined]
            peak = 0

            async def impatient() -> None:
                nonlocal peak
                for _ in range(30):
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(cache.get("gathering:ab"), 0.02)
                    peak = max(peak, len(pool._in_use_connections))

            assert server.process is not None
            server.process.send_signal(signal.SIGSTOP)
            try:
                await asyncio.gather(*(impatient() for _ in range(4)))
            finally:
                server.process.send_signal(signal.SIGCONT)
            stats = await cache.get_stats()
            assert "MaxConnections" not in str(stats["breaker"]["last_error"])
            assert peak <= 4 + 1
            assert await cache.get("gathering:ab") == 1
