"""One conformance suite for every :class:`~gathering_cache.backends.base.Store`.

Each test runs on every store in :data:`STORES` and asserts the same observable result on
each: the contract is the docstrings of ``Store`` and ``Subscriber`` in
``gathering_cache/backends/base.py``. A new backend (cluster, sentinel, ...) is proven by
adding one builder to :data:`STORES`. What legitimately differs between stores (``describe``)
is not tested here. ``test_every_store_method_has_a_conformance_test`` fails when the
interface grows a public method no test here claims (see :func:`covers`).

Tests talk to the store only through the interface (no raw client behind its back), so the
same assertions hold for every topology.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import pytest
import redis.asyncio as redis_asyncio
from fakeredis import FakeAsyncRedis, FakeServer

from gathering_cache import CacheConfig
from gathering_cache.backends import create_store
from gathering_cache.backends.base import COUNTER_DIGITS, Progress, Store, Subscriber
from tests.conftest import topology_settings
from tests.servers import RedisServer

_Test = TypeVar("_Test", bound=Callable[..., Awaitable[None]])

_COVERED: dict[str, set[str]] = {}
"""Interface method -> the tests that claim it (filled by :func:`covers`)."""

EXEMPT = {
    "describe": "where the store lives differs by design (host/port vs max_entries)",
}
"""Public methods deliberately not tested here, with the reason."""


def covers(*methods: str) -> Callable[[_Test], _Test]:
    """Record that the decorated test exercises ``methods`` (``Store`` methods by name,
    ``Subscriber`` methods as ``"Subscriber.<name>"``)."""

    def mark(test: _Test) -> _Test:
        for method in methods:
            _COVERED.setdefault(method, set()).add(test.__name__)
        return test

    return mark


# --- the stores ---------------------------------------------------------------------------

StoreBuilder = Callable[[pytest.FixtureRequest], AsyncIterator[Store]]


async def _memory(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    yield create_store(CacheConfig(backend="memory"))


async def _fakeredis(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    client = FakeAsyncRedis(server=FakeServer())
    try:
        yield create_store(CacheConfig(), client=client)  # injected: not owned by the store
    finally:
        await client.aclose()


async def _redis(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    server: RedisServer = request.getfixturevalue("redis_server")  # one for the session
    raw = redis_asyncio.Redis.from_url(server.url)
    try:
        await raw.flushdb()
    finally:
        await raw.aclose()
    yield create_store(CacheConfig(url=server.url))  # built from config: owned


async def _cluster(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    yield create_store(CacheConfig(**topology_settings("cluster", request)))


async def _sentinel(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    yield create_store(CacheConfig(**topology_settings("sentinel", request)))


STORES: dict[str, StoreBuilder] = {
    "memory": _memory,
    "fakeredis": _fakeredis,
    "redis": _redis,
    "cluster": _cluster,
    "sentinel": _sentinel,
}
"""Every store the suite proves. Real servers are marked ``integration``."""

_NETWORKED = {"redis", "cluster", "sentinel"}

KNOWN_DIVERGENCES: dict[tuple[str, str], str] = {}
# (Fixed: the Redis subscriber's first get() answered None at once, reading the SUBSCRIBE
# confirmation; a closed subscriber stayed subscribed on fakeredis.)
"""(test, store) -> why that store fails that test today: a bug, marked xfail(strict=True)
so the fix shows up as an unexpected pass. Remove the entry with the fix."""

STORE_PARAMS = [
    pytest.param(name, marks=pytest.mark.integration) if name in _NETWORKED else name
    for name in STORES
]


@pytest.fixture(params=STORE_PARAMS)
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    """A connected store of each kind, empty; closed after the test."""
    builder = STORES[request.param]
    function = getattr(request.node, "originalname", request.node.name)
    reason = KNOWN_DIVERGENCES.get((function, request.param))
    if reason is not None:
        request.node.add_marker(pytest.mark.xfail(strict=True, reason=reason))
    built = builder(request)
    instance = await built.__anext__()
    await instance.connect()
    yield instance
    await instance.aclose()
    with pytest.raises(StopAsyncIteration):
        await built.__anext__()


# --- coverage of the interface ------------------------------------------------------------


def _public_methods(cls: type, prefix: str = "") -> set[str]:
    return {
        prefix + name
        for name, member in inspect.getmembers(cls, inspect.isfunction)
        if not name.startswith("_")
    }


def test_every_store_method_has_a_conformance_test() -> None:
    interface = _public_methods(Store) | _public_methods(Subscriber, "Subscriber.")
    missing = interface - set(_COVERED) - set(EXEMPT)
    assert not missing, f"Store methods without a conformance test: {sorted(missing)}"
    stale = (set(_COVERED) | set(EXEMPT)) - interface
    assert not stale, f"conformance tests claim methods Store no longer has: {sorted(stale)}"
    for tests in _COVERED.values():  # each claiming test runs on every store
        for name in tests:
            assert "store" in inspect.signature(globals()[name]).parameters, name


# --- connect / aclose ---------------------------------------------------------------------


@covers("connect", "aclose")
async def test_connect_answers_and_aclose_releases(store: Store) -> None:
    await store.connect()  # the fixture connected it already: connecting again is harmless
    assert await store.set("k", b"v", 60) is True
    assert await store.get("k") == b"v"
    await store.aclose()  # the fixture closes it again: closing twice is harmless


# --- get / set / get_many / set_many ------------------------------------------------------


@covers("get", "set")
async def test_get_returns_exactly_the_bytes_set(store: Store) -> None:
    assert await store.get("absent") is None
    for value in (b"v", b"", b"\x00\xff\r\n binary", "ключ é".encode(), b"x" * 100_000):
        assert await store.set("k", value, 60) is True
        assert await store.get("k") == value
    assert await store.set("ключ:é", b"unicode key", 60) is True
    assert await store.get("ключ:é") == b"unicode key"


@covers("get", "get_many", "set")
async def test_a_key_of_another_type_reads_as_a_miss_and_set_overwrites_it(
    store: Store,
) -> None:
    await store.set_indexed([("entry", b"v")], 60, "idx")  # "idx" is not a string value
    # Redis answers WRONGTYPE, an error is_data_error() owns: the manager's miss, like None.
    error: BaseException | None = None
    value: bytes | None = None
    try:
        value = await store.get("idx")
    except Exception as exc:
        error = exc
    assert value is None
    assert error is None or store.is_data_error(error), repr(error)
    assert await store.get_many(["entry", "idx"]) == [b"v", None]
    assert await store.set("idx", b"now a string", 60) is True
    assert await store.get("idx") == b"now a string"


@covers("set", "ttl")
async def test_set_applies_the_ttl(store: Store) -> None:
    assert await store.set("k", b"v", 100) is True
    assert await store.ttl("k") in (99, 100)
    assert await store.set("k", b"w", 30) is True  # overwriting replaces the expiry too
    assert await store.ttl("k") in (29, 30)
    assert await store.get("k") == b"w"
    assert await store.set("k", b"forever", None) is True  # None: no expiry at all
    assert await store.ttl("k") == -1
    assert await store.get("k") == b"forever"


@covers("set", "get", "exists", "ttl")
async def test_an_entry_expires_after_its_ttl(store: Store) -> None:
    await store.set("short", b"v", 1)
    await store.set("long", b"v", 100)
    await asyncio.sleep(1.2)
    assert await store.get("short") is None
    assert await store.exists("short") is False
    assert await store.ttl("short") is None
    assert await store.get("long") == b"v"


@covers("get_many")
async def test_get_many_keeps_order_and_marks_missing_keys(store: Store) -> None:
    assert await store.get_many([]) == []
    assert await store.get_many(["a", "b"]) == [None, None]
    await store.set("a", b"1", 60)
    await store.set("c", b"3", 60)
    assert await store.get_many(["c", "b", "a"]) == [b"3", None, b"1"]
    assert await store.get_many(["a", "a", "zz", "c"]) == [b"1", b"1", None, b"3"]


@covers("set_many")
async def test_set_many_stores_every_item_with_the_ttl(store: Store) -> None:
    assert await store.set_many([], 60) is True
    items = [(f"m:{i}", f"v{i}".encode()) for i in range(50)]
    assert await store.set_many(items, 100) is True
    assert await store.get_many([k for k, _ in items]) == [v for _, v in items]
    for key, _ in items:
        assert await store.ttl(key) in (99, 100)
    assert await store.set_many([("m:0", b"new")], None) is True
    assert await store.get("m:0") == b"new"
    assert await store.ttl("m:0") == -1


# --- delete / exists / ttl ----------------------------------------------------------------


@covers("delete")
async def test_delete_counts_the_keys_that_existed(store: Store) -> None:
    assert await store.delete([]) == 0
    assert await store.delete(["absent"]) == 0
    await store.set_many([("a", b"1"), ("b", b"2"), ("c", b"3")], 60)
    assert await store.delete(["a", "absent", "b", "a"]) == 2
    assert await store.get_many(["a", "b", "c"]) == [None, None, b"3"]
    await store.set_indexed([("e", b"1")], 60, "idx")  # any type of key is deleted
    assert await store.delete(["idx"]) == 1
    assert await store.pop_index("idx") == []


@covers("exists")
async def test_exists(store: Store) -> None:
    assert await store.exists("k") is False
    await store.set("k", b"", 60)  # an empty value exists
    assert await store.exists("k") is True
    await store.set_indexed([("e", b"1")], 60, "idx")
    assert await store.exists("idx") is True
    await store.delete(["k"])
    assert await store.exists("k") is False


@covers("ttl")
async def test_ttl_is_none_when_absent_and_never_minus_one_for_expiring_writes(
    store: Store,
) -> None:
    assert await store.ttl("absent") is None
    await store.set("set", b"v", 50)
    await store.set_many([("many", b"v")], 50)
    await store.set_indexed([("indexed", b"v")], 50, "idx")
    await store.counters(["counter"], 0, 50)
    await store.acquire_locks(["lock"], "t", 50_000)
    for key in ("set", "many", "indexed", "idx", "counter", "lock"):
        assert await store.ttl(key) in (49, 50), key


# --- scan_delete / count ------------------------------------------------------------------

KEYS = [
    "ns:a:1",
    "ns:a:2",
    "ns:b:1",
    "ns:ab",
    "NS:a:1",
    "other:ns:a:1",
    "ns:[x]",
    "ns:*star",
    "ns:?q",
    "ns:!",
    "ns:é",
    "ns:",
    "ns:a",
    "ns:\\",
]

PATTERNS: dict[str, set[str]] = {
    "ns:a:1": {"ns:a:1"},  # no wildcard: the key itself
    "ns:a:*": {"ns:a:1", "ns:a:2"},
    "ns:?:1": {"ns:a:1", "ns:b:1"},
    "ns:[ab]:1": {"ns:a:1", "ns:b:1"},
    "ns:[^a]:1": {"ns:b:1"},
    "ns:[a-b]:2": {"ns:a:2"},
    "ns:[b-a]:2": {"ns:a:2"},  # a reversed range is swapped
    "NS:*": {"NS:a:1"},  # case-sensitive
    "*:a:1": {"ns:a:1", "NS:a:1", "other:ns:a:1"},
    "ns:*:*": {"ns:a:1", "ns:a:2", "ns:b:1"},
    "ns:\\[x\\]": {"ns:[x]"},  # escaped brackets are literal
    "ns:\\*star": {"ns:*star"},
    "ns:\\?q": {"ns:?q"},
    "ns:[!]": {"ns:!"},  # "!" is not a negation in Redis, just a byte
    "ns:?": {"ns:!", "ns:a", "ns:\\"},  # one byte: "é" is two in UTF-8
    "ns:??": {"ns:ab", "ns:é", "ns:?q"},
    "ns:": {"ns:"},
    "ns:\\": {"ns:\\"},  # a backslash that ends the pattern is literal
    "ns:[]": set(),  # an empty class matches nothing
    "ns:[^]": {"ns:!", "ns:a", "ns:\\"},  # its negation any one byte
    "ns:[ab": {"ns:a"},  # a class never closed still matches one byte
    "ns:[a-]": {"ns:a"},  # the range "]".."a" (swapped), then the class runs to the end
    "nomatch*": set(),
    "*": set(KEYS),
}


async def _fill(store: Store) -> None:
    await store.set_many([(key, key.encode()) for key in KEYS], 60)


async def _remaining(store: Store) -> set[str]:
    values = await store.get_many(KEYS)
    return {key for key, value in zip(KEYS, values, strict=True) if value is not None}


@covers("scan_delete")
@pytest.mark.parametrize("pattern", list(PATTERNS))
async def test_scan_delete_deletes_exactly_the_matching_keys(store: Store, pattern: str) -> None:
    await _fill(store)
    progress = Progress(step_timeout=5.0)
    expected = PATTERNS[pattern]
    assert await store.scan_delete(pattern, progress) == len(expected)
    assert progress.done == len(expected)
    assert await _remaining(store) == set(KEYS) - expected


@covers("count")
@pytest.mark.parametrize("pattern", list(PATTERNS))
async def test_count_counts_the_matching_keys_and_deletes_nothing(
    store: Store, pattern: str
) -> None:
    await _fill(store)
    assert await store.count(pattern, Progress(step_timeout=5.0)) == len(PATTERNS[pattern])
    assert await _remaining(store) == set(KEYS)


async def _listed(store: Store, pattern: str, count: int) -> list[str]:
    keys: list[str] = []
    cursor = 0
    for _ in range(10_000):  # bounded: a cursor that never returns to 0 fails the test
        cursor, page = await store.scan_page(pattern, cursor, count)
        keys.extend(page)
        if cursor == 0:
            return keys
    raise AssertionError("scan_page never finished")


@covers("scan_page")
@pytest.mark.parametrize("pattern", list(PATTERNS))
async def test_scan_page_lists_exactly_the_matching_keys(store: Store, pattern: str) -> None:
    await _fill(store)
    assert set(await _listed(store, pattern, 3)) == PATTERNS[pattern]
    assert await _remaining(store) == set(KEYS)  # listing deletes nothing


@covers("scan_page")
async def test_scan_page_pages_over_many_keys_and_types(store: Store) -> None:
    await store.set_many([(f"big:{i}", b"v") for i in range(2_500)], 60)
    await store.set_indexed([("big:indexed", b"v")], 60, "big:index")
    await store.counters(["big:counter"], 0, 60)
    await store.set("other", b"v", 60)
    listed = await _listed(store, "big:*", 100)
    assert set(listed) == {f"big:{i}" for i in range(2_500)} | {
        "big:indexed",
        "big:index",
        "big:counter",
    }
    assert len(listed) - len(set(listed)) < 100  # SCAN may repeat a key, rarely
    assert await _listed(store, "nothing:*", 10) == []


@covers("scan_delete", "count")
async def test_scan_delete_and_count_over_many_keys_and_types(store: Store) -> None:
    # More keys than one SCAN batch and one UNLINK batch of the Redis store.
    await store.set_many([(f"big:{i}", b"v") for i in range(2_500)], 60)
    await store.set_indexed([("big:indexed", b"v")], 60, "big:index")
    await store.counters(["big:counter"], 0, 60)
    await store.acquire_locks(["big:lock"], "t", 60_000)
    await store.set("keep", b"v", 60)
    assert await store.count("big:*", Progress()) == 2_504
    progress = Progress()
    assert await store.scan_delete("big:*", progress) == 2_504
    assert progress.done == 2_504
    assert await store.count("big:*", Progress()) == 0
    assert await store.count("*", Progress()) == 1
    assert await store.get("keep") == b"v"
    assert await store.scan_delete("big:*", Progress()) == 0


# --- counters -----------------------------------------------------------------------------


def _is_counter_value(value: int) -> bool:
    return 0 <= value < 2**48


@covers("counters")
async def test_counters_get_or_create_at_random_and_increment(store: Store) -> None:
    assert await store.counters([], 1, 60) == []
    first = await store.counters(["c:a", "c:b"], 0, 60)
    assert all(_is_counter_value(v) for v in first)
    assert first[0] != first[1]  # random starts (a collision has probability 2**-48)
    assert await store.counters(["c:a", "c:b"], 0, 60) == first  # amount 0 reads
    assert await store.counters(["c:b", "c:a"], 1, 60) == [first[1] + 1, first[0] + 1]
    assert await store.counters(["c:a"], 5, 60) == [first[0] + 6]
    assert await store.get("c:a") == str(first[0] + 6).encode()
    assert await store.counters(["c:a", "c:new"], 1, 60) != [first[0] + 7, first[0] + 7]
    await store.delete(["c:a"])
    (again,) = await store.counters(["c:a"], 0, 60)
    assert again != first[0] + 7  # a counter that comes back never resumes where it was


@covers("counters")
async def test_counters_adopt_a_valid_counter_and_give_it_an_expiry(store: Store) -> None:
    await store.set("plain", b"5", None)  # an older version's counter, without expiry
    await store.set("zero", b"0", None)
    longest = b"9" * (COUNTER_DIGITS - 1)
    await store.set("long", longest, None)
    assert await store.counters(["plain", "zero", "long"], 2, 60) == [7, 2, int(longest) + 2]
    for key in ("plain", "zero", "long"):
        assert await store.ttl(key) in (59, 60)


@covers("counters")
@pytest.mark.parametrize(
    "corrupt",
    [b"garbage", b"", b"-3", b"1.5", b"007", b" 5", b"5 ", b"9" * (COUNTER_DIGITS + 1), b"\xff"],
)
async def test_counters_repair_a_corrupt_value(store: Store, corrupt: bytes) -> None:
    await store.set("c", corrupt, None)
    (value,) = await store.counters(["c"], 1, 60)
    assert _is_counter_value(value)
    assert await store.get("c") == str(value).encode()
    assert await store.ttl("c") in (59, 60)
    assert await store.counters(["c"], 1, 60) == [value + 1]  # a counter again


@covers("counters")
async def test_counters_repair_a_key_of_another_type(store: Store) -> None:
    await store.set_indexed([("entry", b"v")], 60, "c")  # "c" is an index, not a string
    (value,) = await store.counters(["c"], 1, 60)
    assert _is_counter_value(value)
    assert await store.get("c") == str(value).encode()
    assert await store.counters(["c"], 0, 60) == [value]


@covers("counters")
async def test_counters_extend_the_expiry_and_never_shorten_it(store: Store) -> None:
    (value,) = await store.counters(["c"], 0, 100)
    assert await store.ttl("c") in (99, 100)
    assert await store.counters(["c"], 1, 10) == [value + 1]
    assert await store.ttl("c") in (99, 100)  # not shortened
    assert await store.counters(["c"], 0, 200) == [value + 1]
    assert await store.ttl("c") in (199, 200)  # extended, also by a read


# --- set_indexed / pop_index --------------------------------------------------------------


@covers("set_indexed", "pop_index")
async def test_set_indexed_stores_values_and_pop_index_returns_and_deletes_members(
    store: Store,
) -> None:
    assert await store.pop_index("idx") == []
    items = [("e:1", b"one"), ("e:2", b"two"), ("e:é", b"unicode")]
    assert await store.set_indexed(items, 100, "idx") is True
    assert await store.set_indexed([("e:3", b"three"), ("e:1", b"uno")], 100, "idx") is True
    assert await store.get_many(["e:1", "e:2", "e:é", "e:3"]) == [
        b"uno",
        b"two",
        b"unicode",
        b"three",
    ]
    for key in ("e:1", "e:2", "e:é", "e:3"):
        assert await store.ttl(key) in (99, 100)
    members = await store.pop_index("idx")
    assert sorted(members) == ["e:1", "e:2", "e:3", "e:é"]  # no order is promised
    assert await store.exists("idx") is False
    assert await store.pop_index("idx") == []
    assert await store.get("e:2") == b"two"  # popping the index leaves the entries


@covers("set_indexed")
async def test_the_index_expiry_is_extended_and_never_shortened(store: Store) -> None:
    await store.set_indexed([("a", b"v")], 100, "idx")
    assert await store.ttl("idx") in (99, 100)
    await store.set_indexed([("b", b"v")], 10, "idx")
    assert await store.ttl("idx") in (99, 100)  # it lists entries that live longer
    assert await store.ttl("b") in (9, 10)
    await store.set_indexed([("c", b"v")], 200, "idx")
    assert await store.ttl("idx") in (199, 200)
    assert sorted(await store.pop_index("idx")) == ["a", "b", "c"]


@covers("set_indexed", "pop_index")
async def test_members_whose_entries_expired_are_dropped(store: Store) -> None:
    await store.set_indexed([("short", b"v")], 1, "idx")
    await store.set_indexed([("long", b"v")], 100, "idx")
    await asyncio.sleep(1.2)
    await store.set_indexed([("later", b"v")], 100, "idx")
    assert await store.get("short") is None
    assert sorted(await store.pop_index("idx")) == ["later", "long"]


# --- locks --------------------------------------------------------------------------------


@covers("acquire_locks", "release_locks")
async def test_locks_are_exclusive_and_only_the_owner_releases(store: Store) -> None:
    assert await store.acquire_locks([], "A", 60_000) == []
    assert await store.release_locks([], "A") == 0
    assert await store.acquire_locks(["l:1", "l:2"], "A", 60_000) == [True, True]
    assert await store.acquire_locks(["l:1", "l:3", "l:2"], "B", 60_000) == [False, True, False]
    assert await store.release_locks(["l:1", "l:2", "l:3"], "B") == 1  # only its own
    assert await store.acquire_locks(["l:3"], "A", 60_000) == [True]
    assert await store.release_locks(["l:1", "l:2", "l:3", "l:absent"], "A") == 3
    assert await store.acquire_locks(["l:1"], "B", 60_000) == [True]
    assert await store.release_locks(["l:1"], "A") == 0
    assert await store.exists("l:1") is True


@covers("acquire_locks", "release_locks")
async def test_a_lock_is_never_taken_over_an_existing_key(store: Store) -> None:
    await store.set("k", b"value", 60)
    assert await store.acquire_locks(["k"], "A", 60_000) == [False]
    assert await store.release_locks(["k"], "A") == 0
    assert await store.release_locks(["k"], "value") == 1  # holds "value": that is its owner
    await store.set("k", b"value", 60)
    assert await store.get("k") == b"value"


@covers("acquire_locks", "release_locks")
async def test_a_lock_expires(store: Store) -> None:
    assert await store.acquire_locks(["l"], "A", 30_000) == [True]
    assert await store.ttl("l") in (29, 30)
    assert await store.acquire_locks(["m"], "A", 50) == [True]
    await asyncio.sleep(0.3)
    assert await store.exists("m") is False
    assert await store.acquire_locks(["m"], "B", 60_000) == [True]
    assert await store.release_locks(["m"], "A") == 0  # the expired owner frees nothing
    assert await store.exists("m") is True


# --- publish / subscriber -----------------------------------------------------------------


async def _receive(subscriber: Subscriber, timeout: float = 5.0) -> bytes | None:
    return await subscriber.get(timeout)


@covers("publish", "subscriber", "Subscriber.start", "Subscriber.get", "Subscriber.close")
async def test_a_message_published_after_start_is_received(store: Store) -> None:
    subscriber = store.subscriber("ch")
    await subscriber.start()
    try:
        assert await store.publish("ch", b"hello \x00\xff") == 1
        assert await _receive(subscriber) == b"hello \x00\xff"
    finally:
        await subscriber.close()


@covers("publish", "subscriber", "Subscriber.start", "Subscriber.get")
async def test_every_subscriber_receives_in_order_and_other_channels_stay_quiet(
    store: Store,
) -> None:
    first, second, other = store.subscriber("ch"), store.subscriber("ch"), store.subscriber("x")
    for subscriber in (first, second, other):
        await subscriber.start()
    try:
        assert await store.publish("ch", b"1") == 2
        assert await store.publish("ch", b"2") == 2
        for subscriber in (first, second):
            assert [await _receive(subscriber), await _receive(subscriber)] == [b"1", b"2"]
        assert await other.get(0.1) is None
    finally:
        for subscriber in (first, second, other):
            await subscriber.close()


@covers("Subscriber.get")
async def test_a_waiting_get_returns_a_message_published_meanwhile(store: Store) -> None:
    subscriber = store.subscriber("ch")
    await subscriber.start()
    try:
        waiting = asyncio.ensure_future(subscriber.get(5.0))
        await asyncio.sleep(0.05)  # let it wait
        assert await store.publish("ch", b"meanwhile") == 1
        assert await waiting == b"meanwhile"
    finally:
        await subscriber.close()


@covers("publish")
async def test_publish_without_subscribers_reaches_nobody(store: Store) -> None:
    assert await store.publish("nobody", b"m") == 0
    subscriber = store.subscriber("nobody")
    await subscriber.start()
    await subscriber.close()
    assert await store.publish("nobody", b"m") == 0  # a closed subscriber is gone


@covers("Subscriber.get")
async def test_get_returns_none_after_the_timeout(store: Store) -> None:
    subscriber = store.subscriber("quiet")
    await subscriber.start()
    try:
        for _ in range(3):
            assert await subscriber.get(0.05) is None
    finally:
        await subscriber.close()


@covers("Subscriber.close")
async def test_close_never_raises(store: Store) -> None:
    never_started = store.subscriber("ch")
    await never_started.close()
    await never_started.close()
    started = store.subscriber("ch")
    await started.start()
    await started.close()
    await started.close()  # twice


# --- is_data_error ------------------------------------------------------------------------


@covers("is_data_error")
async def test_a_fault_is_never_a_data_error(store: Store) -> None:
    for fault in (ConnectionError("down"), asyncio.TimeoutError(), OSError("reset")):
        assert store.is_data_error(fault) is False


# --- tracker (invalidations for a near cache) ----------------------------------------------


@covers("tracker")
async def test_a_tracker_reports_changes_under_its_prefix(
    store: Store, request: pytest.FixtureRequest
) -> None:
    if not store.capabilities.tracking:
        with pytest.raises(NotImplementedError):
            store.tracker("t:")
        return
    tracker = store.tracker("t:")
    try:
        try:
            await tracker.start()
        except store.fault_types:
            # A server without CLIENT TRACKING (fakeredis): the near cache never serves.
            assert request.node.callspec.params["store"] not in _NETWORKED
            return
        await store.set("other:k", b"v", 60)
        await store.set("t:a", b"v", 60)
        await store.delete(["t:a"])
        seen: list[str] = []
        for _ in range(50):
            keys = await tracker.get(0.1)
            assert keys is not None
            seen += keys
            if seen.count("t:a") >= 2:
                break
        assert seen == ["t:a", "t:a"]  # the write and the delete; never the other prefix
    finally:
        await tracker.close()
        await tracker.close()  # twice


# --- introspection (operators' tools) -----------------------------------------------------


@covers("server_info")
async def test_server_info_is_flat_fields_without_secrets(store: Store) -> None:
    info = await store.server_info()
    assert isinstance(info, dict)
    allowed = {
        "redis_version",
        "uptime_in_seconds",
        "used_memory",
        "maxmemory",
        "maxmemory_policy",
        "aof_enabled",
        "rdb_changes_since_last_save",
        "rdb_save",
        "expired_keys",
        "evicted_keys",
        "keyspace_hits",
        "keyspace_misses",
    }
    assert set(info) <= allowed
    if not store.capabilities.networked:
        assert isinstance(info["used_memory"], int)
    elif info:  # a real server (fakeredis refuses INFO: it has nothing to say, {})
        assert isinstance(info["redis_version"], str)
        assert isinstance(info["used_memory"], int)
        assert info["maxmemory_policy"]


@covers("memory_usage")
async def test_memory_usage_sizes_present_keys_and_none_for_absent(store: Store) -> None:
    await store.set("gathering:m:small", b"x" * 10, 60)
    await store.set("gathering:m:big", b"x" * 5000, 60)
    sizes = await store.memory_usage(["gathering:m:small", "gathering:m:big", "gathering:m:no"])
    assert len(sizes) == 3
    assert sizes[2] is None
    assert await store.memory_usage([]) == []
    small, big = sizes[0], sizes[1]
    if small is not None and big is not None:  # fakeredis cannot tell: None
        assert big > small >= 10
    else:  # only a store that refuses MEMORY USAGE (fakeredis) cannot tell
        assert small is None
        assert big is None
    if not store.capabilities.networked:
        assert small is not None
