"""The near cache (L1): served in this process for the chosen namespaces, kept correct by
Redis client-side caching (CLIENT TRACKING in broadcast mode), flushed whenever tracking
is lost. Some tests use two managers on separate connections (the server cannot tell them
from two processes: invalidations go by connection); the others start a second Python
process (tests/near_writer.py) that writes and deletes while this one reads."""

from __future__ import annotations

import asyncio
import functools
import json
import select
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NamedTuple

import pytest
import redis
import redis.asyncio as redis_asyncio

from gathering_cache import AsyncCacheManager, CacheConfig
from gathering_cache.backends.base import Tracker
from gathering_cache.core import encoding
from gathering_cache.core.engine import UNAVAILABLE, CacheCore
from gathering_cache.core.near import NearCache
from gathering_cache.core.observe import Operation, Outcome
from tests.conftest import topology_settings
from tests.near_writer import Writer
from tests.servers import LocalCluster

# -- the pure part ------------------------------------------------------------------------------


def test_near_cache_serves_only_while_tracking() -> None:
    near = NearCache(10, 60.0, ["circle"])
    near.put("k", b"v", near.epoch)
    assert near.get("k") is None  # not serving yet: nothing kept
    near.flush(serving=True)
    near.put("k", b"v", near.epoch)
    assert near.get("k") == b"v"
    near.flush(serving=False)
    assert near.get("k") is None


def test_a_read_that_raced_an_invalidation_is_not_kept() -> None:
    near = NearCache(10, 60.0, ["circle"])
    near.flush(serving=True)
    started = near.epoch
    near.invalidate(["other"])  # arrives while the read's reply travels
    near.put("k", b"old", started)
    assert near.get("k") is None


def test_near_cache_is_bounded_in_size_and_time() -> None:
    near = NearCache(2, 0.05, ["circle"])
    near.flush(serving=True)
    for key in ("a", "b", "c"):
        near.put(key, key.encode(), near.epoch)
    assert near.get("a") is None  # the least recently used went first
    assert near.get("c") == b"c"
    time.sleep(0.06)
    assert near.get("c") is None
    assert near.snapshot()["size"] == 1  # "b" is still held until read or pushed out


def test_invalidate_none_forgets_everything() -> None:
    near = NearCache(10, 60.0, ["circle"])
    near.flush(serving=True)
    near.put("a", b"1", near.epoch)
    near.invalidate(None)
    assert near.get("a") is None
    assert near.snapshot()["invalidations"] == 1


def test_the_inlined_json_judge_decides_as_decode_does() -> None:
    judge = CacheCore._json_decoder(dict)
    good = encoding.encode({"v": [1, 2]})
    for raw, expected in (
        (good, ({"v": [1, 2]}, 1, 0, len(good))),
        (encoding.encode([1]), (None, 0, 1, len(encoding.encode([1])))),  # another shape
        (good[:-1], (None, 0, 1, len(good) - 1)),  # a corrupt payload
        (b"\x09j{}", (None, 0, 1, 4)),  # an unknown envelope
        (b"", (None, 0, 1, 0)),
        (None, (None, 0, 0, 0)),
        (UNAVAILABLE, (None, 0, 0, 0)),
    ):
        assert judge(raw) == expected, raw
        if isinstance(raw, bytes) and expected[1]:
            assert encoding.decode(raw) == expected[0]
    first, second = judge(good)[0], judge(good)[0]
    assert first == second
    assert first is not second  # each call decodes a value of its own


def test_near_cache_is_off_by_default_and_never_on_the_memory_backend() -> None:
    assert CacheConfig().near_cache is False
    assert CacheConfig().near_cache_namespaces == ["circle", "embedding"]
    with pytest.raises(ValueError, match="near_cache_namespaces"):
        CacheConfig(near_cache_namespaces=["rag"])


async def test_stats_say_when_the_near_cache_is_off() -> None:
    cache = AsyncCacheManager(CacheConfig(backend="memory", near_cache=True))
    assert (await cache.get_stats())["near_cache"] == {"enabled": False}


# -- on real Redis, standalone and cluster ---------------------------------------------------

Pair = tuple[AsyncCacheManager, AsyncCacheManager]


@pytest.fixture(
    params=[
        pytest.param("redis", marks=pytest.mark.integration),
        pytest.param("cluster", marks=pytest.mark.integration),
    ]
)
async def pair(request: pytest.FixtureRequest) -> AsyncIterator[Pair]:
    """Two managers with the near cache on, as two processes would be."""
    if request.param == "redis":
        await _flush(request.getfixturevalue("redis_server").url)
    settings = topology_settings(request.param, request)
    managers = [
        AsyncCacheManager(CacheConfig(near_cache=True, **settings)),
        AsyncCacheManager(CacheConfig(near_cache=True, **settings)),
    ]
    for manager in managers:
        await manager.connect()
        await _until(functools.partial(_serving, manager))
    yield managers[0], managers[1]
    for manager in managers:
        await manager.aclose()


async def _flush(url: str) -> None:
    client = redis_asyncio.Redis.from_url(url)
    try:
        await client.flushdb()
    finally:
        await client.aclose()


async def _serving(manager: AsyncCacheManager) -> bool:
    return bool((await manager.get_stats())["near_cache"].get("serving"))


async def _until(check: Callable[[], Awaitable[bool]], within: float = 5.0) -> float:
    started = time.monotonic()
    while not await check():
        assert time.monotonic() - started < within, "condition not met in time"
        await asyncio.sleep(0.005)
    return time.monotonic() - started


async def _near(manager: AsyncCacheManager) -> dict[str, Any]:
    stats: dict[str, Any] = (await manager.get_stats())["near_cache"]
    return stats


async def test_a_second_read_is_served_in_process(pair: Pair) -> None:
    a, _ = pair
    assert await a.set_circle_context(1, {"topic": "x"})
    await asyncio.sleep(0.1)  # the invalidation of a's own write arrives (and is applied)
    assert await a.get_circle_context(1) == {"topic": "x"}  # from Redis, now kept
    before = await _near(a)
    assert await a.get_circle_context(1) == {"topic": "x"}
    after = await _near(a)
    assert after["hits"] == before["hits"] + 1
    assert after["size"] >= 1


async def test_a_write_elsewhere_is_seen_here(pair: Pair) -> None:
    a, b = pair
    assert await a.set_circle_context(2, {"v": 1})
    await asyncio.sleep(0.1)
    assert await a.get_circle_context(2) == {"v": 1}
    assert await a.get_circle_context(2) == {"v": 1}  # held in a's near cache
    assert (await _near(a))["size"] == 1
    assert await b.set_circle_context(2, {"v": 2})
    await _until(lambda: _equals(a, 2, {"v": 2}), within=2.0)
    assert await b.invalidate_circle_context(2)
    await _until(lambda: _equals(a, 2, None), within=2.0)


async def _equals(manager: AsyncCacheManager, circle: int, expected: Any) -> bool:
    found: Any = await manager.get_circle_context(circle)
    return bool(found == expected)


async def test_killing_the_tracking_connection_flushes_and_never_serves_stale(
    pair: Pair, request: pytest.FixtureRequest
) -> None:
    a, b = pair
    assert await a.set_circle_context(3, {"v": 1})
    await asyncio.sleep(0.1)
    assert await a.get_circle_context(3) == {"v": 1}
    assert await a.get_circle_context(3) == {"v": 1}
    # The tracking connections are the subscribed ones (type pubsub): CLIENT KILL them.
    if "cluster" in request.node.name:
        cluster: LocalCluster = request.getfixturevalue("redis_cluster")
        killed = sum(
            int(cluster.cli(port, "client", "kill", "type", "pubsub").strip() or 0)
            for port in cluster.primary_ports()
        )
    else:
        raw = redis_asyncio.Redis.from_url(request.getfixturevalue("redis_server").url)
        try:
            killed = await raw.client_kill_filter(_type="pubsub")
        finally:
            await raw.aclose()
    assert killed >= 2  # a's and b's
    # No pause: the end of a's connection stopped its near cache as the loop saw it.
    assert await b.set_circle_context(3, {"v": 2})  # its invalidation may never reach a ...
    # ... but a's near cache was flushed with the connection: never the old value.
    for _ in range(50):
        assert await a.get_circle_context(3) == {"v": 2}
        await asyncio.sleep(0.01)
    await _until(functools.partial(_serving, a), within=5.0)
    assert await a.get_circle_context(3) == {"v": 2}


async def test_own_writes_and_deletes_are_never_served_stale(pair: Pair) -> None:
    a, _ = pair
    assert await a.set_circle_context(4, {"v": 1})
    assert await a.get_circle_context(4) == {"v": 1}
    assert await a.set_circle_context(4, {"v": 2})
    assert await a.get_circle_context(4) == {"v": 2}
    assert await a.invalidate_circle_context(4)
    assert await a.get_circle_context(4) is None
    assert await a.set_circle_context(4, {"v": 3})
    assert await a.get_circle_context(4) == {"v": 3}
    await a.clear_all()
    assert await a.get_circle_context(4) is None


async def test_batch_reads_use_the_near_cache_and_see_writes_elsewhere(pair: Pair) -> None:
    a, b = pair
    texts = ["alpha", "beta", "gamma"]
    for i, text in enumerate(texts):
        assert await a.set_embedding(text, [float(i), 0.5])
    await asyncio.sleep(0.1)  # the invalidations of a's own writes arrive
    assert await a.get_embeddings(["alpha", "beta"]) == [[0.0, 0.5], [1.0, 0.5]]  # kept
    before = await _near(a)
    # Two held, one asked from Redis (and kept), one missing everywhere.
    found = await a.get_embeddings(["alpha", "beta", "gamma", "delta"])
    assert found == [[0.0, 0.5], [1.0, 0.5], [2.0, 0.5], None]
    after = await _near(a)
    assert after["hits"] == before["hits"] + 2
    assert await b.set_embedding("beta", [9.0, 9.0])
    await _until(lambda: _batch_equals(a, ["alpha", "beta"], [[0.0, 0.5], [9.0, 9.0]]), 2.0)


async def _batch_equals(manager: AsyncCacheManager, texts: list[str], expected: Any) -> bool:
    found: Any = await manager.get_embeddings(texts)
    return bool(found == expected)


# -- with a second process writing ---------------------------------------------------------------


class Solo(NamedTuple):
    """This process's manager (near cache on), a writer process on the same store."""

    cache: AsyncCacheManager
    writer: Writer
    backend: str
    settings: dict[str, Any]


@pytest.fixture(
    params=[
        pytest.param("redis", marks=pytest.mark.integration),
        pytest.param("cluster", marks=pytest.mark.integration),
    ]
)
async def solo(request: pytest.FixtureRequest) -> AsyncIterator[Solo]:
    """This process's manager, and another process writing (started once it serves)."""
    if request.param == "redis":
        await _flush(request.getfixturevalue("redis_server").url)
    settings = topology_settings(request.param, request)
    manager = AsyncCacheManager(CacheConfig(near_cache=True, **settings))
    writer: Writer | None = None
    try:
        await manager.connect()
        await _until(functools.partial(_serving, manager))
        writer = await Writer.start(settings)
        yield Solo(manager, writer, request.param, settings)
    finally:
        if writer is not None:
            await writer.close()
        await manager.aclose()


async def _held(manager: AsyncCacheManager, circle: int, value: Any) -> None:
    """``value`` read by ``manager`` until served from its near cache."""
    await _kept(manager, lambda: manager.get_circle_context(circle), value, 1)


async def _kept(
    manager: AsyncCacheManager, read: Callable[[], Awaitable[Any]], value: Any, hits: int
) -> None:
    """``read`` answers ``value`` until it is ``hits`` near-cache hits (a value is kept
    once the invalidation of the manager's own write came back: a read racing it is not)."""

    async def hit() -> bool:
        before = (await _near(manager))["hits"]
        assert await read() == value
        return bool((await _near(manager))["hits"] == before + hits)

    await _until(hit, within=2.0)


async def _never(
    manager: AsyncCacheManager, read: Callable[[], Awaitable[Any]], stale: Any
) -> None:
    """``read`` never answers ``stale`` again (a few loop turns and a bounded poll)."""
    for turn in range(40):
        assert await read() != stale, f"stale value served at read {turn}"
        await asyncio.sleep(0 if turn < 20 else 0.005)


async def test_a_write_and_a_delete_in_another_process_reach_this_near_cache(solo: Solo) -> None:
    a, writer = solo.cache, solo.writer
    assert await a.set_circle_context(5, {"v": 1})
    await _held(a, 5, {"v": 1})
    assert await writer.do("set_circle", circle=5, value={"v": 2}) is True
    # Gone within a bounded poll (the 50 ms target is measured by make bench, W9) ...
    await _until(lambda: _equals(a, 5, {"v": 2}), within=2.0)
    # ... and never the old value again.
    await _never(a, lambda: a.get_circle_context(5), {"v": 1})
    await _held(a, 5, {"v": 2})
    assert await writer.do("invalidate_circle", circle=5) is True
    await _until(lambda: _equals(a, 5, None), within=2.0)
    await _never(a, lambda: a.get_circle_context(5), {"v": 2})


async def test_embeddings_changed_in_another_process_reach_this_near_cache(solo: Solo) -> None:
    a, writer = solo.cache, solo.writer
    assert await a.set_embeddings(["one", "two"], [[1.0, 0.0], [2.0, 0.0]])
    await _kept(a, lambda: a.get_embeddings(["one", "two"]), [[1.0, 0.0], [2.0, 0.0]], 2)
    await _kept(a, lambda: a.get_embedding("one"), [1.0, 0.0], 1)
    assert await writer.do("set_embedding", text="one", vector=[1.5, 0.5]) is True
    await _until(lambda: _batch_equals(a, ["one", "two"], [[1.5, 0.5], [2.0, 0.0]]), 2.0)
    await _never(a, lambda: a.get_embedding("one"), [1.0, 0.0])
    assert await writer.do("delete_embeddings") == 2
    await _until(lambda: _batch_equals(a, ["one", "two"], [None, None]), 2.0)
    await _never(a, lambda: a.get_embeddings(["one", "two"]), [[1.5, 0.5], [2.0, 0.0]])


async def _kill_listeners(request: pytest.FixtureRequest, backend: str) -> int:
    """CLIENT KILL this process's tracking connections (the only subscribed ones: the
    writer process has no near cache): by ID on standalone (found with CLIENT LIST), by
    TYPE on each primary of the cluster. How many were killed."""
    if backend == "cluster":
        cluster: LocalCluster = request.getfixturevalue("redis_cluster")
        ports = cluster.primary_ports()
    else:
        ports = [request.getfixturevalue("redis_server").port]
    killed = 0
    for port in ports:
        raw = redis_asyncio.Redis(host="127.0.0.1", port=port)
        try:
            if backend == "cluster":
                killed += await raw.client_kill_filter(_type="pubsub")
            else:
                for client in await raw.client_list(_type="pubsub"):
                    killed += await raw.client_kill_filter(_id=client["id"])
        finally:
            await raw.aclose()
    return killed


async def test_after_client_kill_of_the_listener_no_stale_value_is_served(
    solo: Solo, request: pytest.FixtureRequest
) -> None:
    a, writer, backend = solo.cache, solo.writer, solo.backend
    assert await a.set_circle_context(6, {"v": 1})
    await _held(a, 6, {"v": 1})
    # (On the cluster, the first kill ends tracking on every primary: the others may be
    # closed by this process before their turn.)
    assert await _kill_listeners(request, backend) >= 1
    # No pause: the other process writes at once, and its invalidation never reaches us.
    assert await writer.do("set_circle", circle=6, value={"v": 2}) is True
    for turn in range(50):
        assert await a.get_circle_context(6) == {"v": 2}, f"stale value at read {turn}"
        await asyncio.sleep(0 if turn < 25 else 0.005)
    # Tracking comes back by itself (after recovery_interval), and the near cache with it.
    await _until(functools.partial(_serving, a), within=5.0)
    await _held(a, 6, {"v": 2})
    assert await writer.do("invalidate_circle", circle=6) is True
    await _until(lambda: _equals(a, 6, None), within=2.0)


async def test_a_value_served_from_the_near_cache_is_the_callers_own(pair: Pair) -> None:
    a, _ = pair
    context = {"members": [1, 2], "state": {"turn": 1}}
    assert await a.set_circle_context(7, context)
    await _held(a, 7, context)
    served = await a.get_circle_context(7)  # a hit
    assert served == context
    assert served is not None
    served["members"].append(3)  # the caller changes what it got ...
    served["state"]["turn"] = 2
    served["extra"] = True
    assert await a.get_circle_context(7) == context  # ... never what the next one gets
    assert await a.set_embeddings(["v"], [[1.0, 2.0]])
    await _kept(a, lambda: a.get_embeddings(["v"]), [[1.0, 2.0]], 1)
    vectors = await a.get_embeddings(["v"])
    assert vectors[0] is not None
    vectors[0].append(3.0)
    assert await a.get_embeddings(["v"]) == [[1.0, 2.0]]


async def test_a_near_cache_hit_reaches_every_observer(pair: Pair) -> None:
    a, _ = pair
    assert await a.set_circle_context(8, {"v": 1})
    await _held(a, 8, {"v": 1})
    seen: list[Operation] = []
    a.add_observer(seen.append)
    before = await a.get_stats()
    assert await a.get_circle_context(8) == {"v": 1}  # a hit
    after = await a.get_stats()
    [hit] = [o for o in seen if o.op == "get"]  # (get_stats counts keys: scans)
    assert (hit.op, hit.namespace, hit.outcome) == ("get", "circle", Outcome.HIT)
    assert (hit.keys, hit.hits, hit.invalid, hit.misses) == (1, 1, 0, 0)
    assert hit.nbytes == len(encoding.encode({"v": 1}))
    assert 0 <= hit.duration < 1.0
    # Built field by field on the hit path: every field is there (a new one too).
    assert all(hasattr(hit, name) for name in Operation.__slots__)
    assert after["near_cache"]["hits"] == before["near_cache"]["hits"] + 1
    circle = ("namespaces", "circle", "hits")
    assert _dig(after, circle) == _dig(before, circle) + 1
    fleet = ("fleet", "namespaces", "circle", "hits")
    assert _dig(after, fleet) == _dig(before, fleet) + 1


def _dig(data: Any, path: tuple[str, ...]) -> Any:
    for name in path:
        data = data[name]
    return data


def _kill_listeners_now(request: pytest.FixtureRequest, backend: str) -> int:
    """CLIENT KILL TYPE pubsub on every primary, synchronously (the loop stands still)."""
    if backend == "cluster":
        cluster: LocalCluster = request.getfixturevalue("redis_cluster")
        return sum(
            int(cluster.cli(port, "client", "kill", "type", "pubsub").strip() or 0)
            for port in cluster.primary_ports()
        )
    raw = redis.Redis(host="127.0.0.1", port=request.getfixturevalue("redis_server").port)
    try:
        return int(raw.client_kill_filter(_type="pubsub"))
    finally:
        raw.close()


def _wait_readable(writer: Writer, within: float) -> None:
    """Block (the event loop stands still) until the writer's answer is in the pipe."""
    transport = writer.process._transport  # type: ignore[attr-defined]
    pipe = transport.get_pipe_transport(1).get_extra_info("pipe")
    readable, _, _ = select.select([pipe], [], [], within)
    assert readable, "the writer process did not answer in time"


async def test_no_stale_value_even_when_the_kill_and_the_news_arrive_together(
    solo: Solo, request: pytest.FixtureRequest
) -> None:
    """The tightest case: this event loop stands still while the listener is killed and
    the other process writes and reports it, so the end of the connection and the report
    reach the loop in the same poll. The read that follows the report never gets the old
    value: the end of the connection stops the near cache as the loop handles the socket,
    before any task resumes."""
    a, writer, backend = solo.cache, solo.writer, solo.backend
    assert await a.set_circle_context(9, {"v": 1})
    await _held(a, 9, {"v": 1})
    # From here to the report, nothing awaits: the loop does not turn.
    assert _kill_listeners_now(request, backend) == (3 if backend == "cluster" else 1)
    assert writer.process.stdin is not None
    command = {"op": "set_circle", "circle": 9, "value": {"v": 2}}
    writer.process.stdin.write((json.dumps(command) + "\n").encode())  # sent at once
    _wait_readable(writer, within=10.0)
    # Read straight from the pipe (no wait_for, whose task would add turns of the loop):
    # bounded, the answer is there; this await is the loop's first poll since the kill.
    assert writer.process.stdout is not None
    assert json.loads(await writer.process.stdout.readline())["ok"] is True
    assert await a.get_circle_context(9) == {"v": 2}
    for turn in range(20):
        assert await a.get_circle_context(9) == {"v": 2}, f"stale value at read {turn}"
        await asyncio.sleep(0)


def test_a_tracker_that_cannot_watch_its_connections_says_so() -> None:
    """The default of the interface: losses are known from get() only."""

    class Quiet(Tracker):
        async def start(self) -> None:
            return None

        async def get(self, timeout: float) -> list[str] | None:
            return []

        async def close(self) -> None:
            return None

    called: list[bool] = []
    assert Quiet().on_end(lambda: called.append(True)) is False
    assert called == []


async def test_tracking_declared_lost_stops_the_near_cache_at_once(pair: Pair) -> None:
    """A failover the store follows (the sentinels moved the primary) declares tracking lost:
    the near cache stops serving in that same turn, not when the tracking task next reads."""
    a, _ = pair
    near = a._core.near
    assert near is not None
    assert near.serving
    tracker = near.tracker
    lost = getattr(tracker, "lost", None)
    assert lost is not None  # the Redis tracker, on both topologies
    assert await a.set_circle_context(3, {"v": 1})
    await asyncio.sleep(0.1)
    assert await a.get_circle_context(3) == {"v": 1}
    lost("the primary moved")
    assert not near.serving  # no await in between: the same turn
    await _until(functools.partial(_serving, a))  # and tracking comes back by itself
