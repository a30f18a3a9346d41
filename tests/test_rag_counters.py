"""RAG generation counters and index sets: what the store hands back is never trusted.

Index members outside the agent's own namespace are never deleted; a corrupt counter makes
misses and is repaired; a counter that disappears (deletion, eviction, a restart that lost
data) and comes back never repeats a value; memory-backend index sets count against the
bound.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis.asyncio as redis_asyncio
from fakeredis import FakeAsyncRedis, FakeServer

from gathering_cache import AsyncCacheManager, CacheConfig
from gathering_cache.backends import MemoryStore
from gathering_cache.backends.base import fresh_counter, parse_counter
from gathering_cache.backends.redis_store import RedisStore
from gathering_cache.core.keys import KeySpace, text_hash
from tests.conftest import Factory
from tests.servers import RedisServer

R1 = [{"id": "m1", "content": "User prefers dark mode", "score": 0.9}]
R2 = [{"id": "m2", "content": "User moved to Lyon", "score": 0.8}]
KEYS = KeySpace("gathering:")


def raw_client(cache: AsyncCacheManager) -> Any:
    """The redis client under a manager (fakeredis or real), to write behind its back."""
    store = cache._core.store
    assert isinstance(store, RedisStore)
    return store.client


async def peer(make_cache: Factory, backend: str, cache: AsyncCacheManager) -> AsyncCacheManager:
    """Another process on the same data (the memory backend has no other process)."""
    return cache if backend == "memory" else await make_cache()


# -- index sets ---------------------------------------------------------------------------


async def test_invalidation_deletes_only_the_agents_own_entries(cache: AsyncCacheManager) -> None:
    store = cache._core.store
    await cache.set_rag_results(1, "q", R1)
    await cache.set_rag_results(2, "q", R1)
    generation_2 = await cache.get_rag_generation(2)
    foreign = [
        "other:precious",
        "gatheringX:precious",
        "gathering:precious",
        KEYS.rag_generation(2),  # agent 2's counter: deleting it would revive nothing, but
        KEYS.rag_generation(None),  # the index may name it: never acted upon
        KEYS.rag(2, "q"),  # another agent's entry
        f"gathering:rag:agent:1:{text_hash('x')}:extra",
        "gathering:rag:agent:1:ZZZZZZZZZZZZZZZZ",
        f"gathering:rag:agent:10:{text_hash('q')}",
        f"gathering:rag:agent:01:{text_hash('q')}",
    ]
    for key in foreign:
        value = await store.get(key)
        # Add each key to agent 1's index (rewriting counters and entries as they are).
        await store.set_indexed([(key, value or b"precious")], 300, KEYS.rag_index(1))
    before = {key: await store.get(key) for key in foreign}

    assert await cache.invalidate_rag_results(1) == 1  # its one entry, nothing else
    assert {key: await store.get(key) for key in foreign} == before
    assert await cache.get_rag_generation(2) == generation_2
    assert await cache.get_rag_results(2, "q") == R1
    assert await cache.get_rag_results(1, "q") is None


@pytest.mark.parametrize(
    "backend", ["fakeredis", pytest.param("redis", marks=pytest.mark.integration)]
)
async def test_invalidation_survives_members_that_are_not_text(make_cache: Factory) -> None:
    cache = await make_cache()
    raw = raw_client(cache)
    await raw.set("other:precious", b"1")
    await cache.set_rag_results(1, "q", R1)
    members = {b"\xff": 1e12, b"other:precious": 1e12, b"gatheringX:precious": 1e12, b"": 1e12}
    await raw.zadd(KEYS.rag_index(1), members)
    assert await cache.invalidate_rag_results(1) == 1
    assert await raw.get("other:precious") == b"1"
    assert cache.is_enabled()


async def test_index_sets_expire_no_sooner_than_their_longest_entry(
    cache: AsyncCacheManager,
) -> None:
    await cache.set_rag_results(1, "long", R1, ttl=3600)
    await cache.set_rag_results(1, "short", R1, ttl=60)  # must not shorten the index's life
    ttl = await cache.ttl(KEYS.rag_index(1))
    assert ttl is not None
    assert 3590 <= ttl <= 3600
    assert await cache.invalidate_rag_results(1) == 2


async def test_an_index_never_outgrows_the_live_entries() -> None:
    now = [1000.0]
    store = MemoryStore(max_entries=1000, clock=lambda: now[0])
    for i in range(50):
        await store.set_indexed([(f"e:{i}", b"v")], 10, "index")
        now[0] += 1  # each entry outlives the next four writes only
    members = await store.pop_index("index")
    assert members == sorted(f"e:{i}" for i in range(40, 50))


@pytest.mark.parametrize(
    "backend", ["fakeredis", pytest.param("redis", marks=pytest.mark.integration)]
)
async def test_a_redis_index_drops_members_whose_entries_expired(make_cache: Factory) -> None:
    cache = await make_cache()
    raw = raw_client(cache)
    index = KEYS.rag_index(1)
    await raw.zadd(index, {f"gathering:rag:agent:1:{i:016x}": 1.0 for i in range(100)})  # 1970
    await cache.set_rag_results(1, "q", R1)
    assert await raw.zrange(index, 0, -1) == [KEYS.rag(1, "q").encode()]


# -- corrupt counters ---------------------------------------------------------------------

# b"00123": digits Redis's INCRBY refuses (a leading zero) must not pass for a counter.
CORRUPTIONS = [b"garbage", b"1.5", b"-3", b"", b" 7", b"9" * 16, b"00123", "list"]


@pytest.mark.parametrize("corruption", CORRUPTIONS, ids=repr)
@pytest.mark.parametrize("which", [5, None], ids=["agent", "all"])
async def test_a_corrupt_counter_makes_misses_and_is_repaired(
    make_cache: Factory, backend: str, corruption: bytes | str, which: int | None
) -> None:
    cache = await make_cache()
    other = await peer(make_cache, backend, cache)
    key = KEYS.rag_generation(which)
    await cache.set_rag_results(5, "q", R1)
    assert await other.get_rag_results(5, "q") == R1

    if corruption == "list":
        if backend == "memory":  # its only other type: an index
            await cache._core.store.delete([key])
            await cache._core.store.set_indexed([("gathering:x", b"1")], 300, key)
        else:
            await raw_client(cache).delete(key)
            await raw_client(cache).rpush(key, b"1", b"2")
    else:
        assert isinstance(corruption, bytes)
        await cache._core.store.set(key, corruption, None)

    # Entries guarded by a counter that cannot be read are misses, in every process...
    assert await other.get_rag_results(5, "q") is None
    assert await cache.get_rag_results(5, "q") is None
    # ...and the counter is repaired (at a fresh value, with an expiry).
    assert parse_counter(await cache._core.store.get(key)) is not None
    assert (await cache.ttl(key) or 0) > 0

    # Writes and invalidations work again.
    assert await cache.set_rag_results(5, "q", R2) is True
    assert await other.get_rag_results(5, "q") == R2
    assert await cache.invalidate_rag_results(5) == 1
    assert await other.get_rag_results(5, "q") is None
    for manager in (cache, other):
        breaker = (await manager.get_stats())["breaker"]
        assert breaker["state"] == "closed"
        assert breaker["outages"] == 0
        assert breaker["consecutive_failures"] == 0


@pytest.mark.parametrize("corruption", [b"garbage", b"1.5", b"00123"], ids=repr)
async def test_a_write_never_goes_around_a_corrupt_counter(
    make_cache: Factory, backend: str, corruption: bytes
) -> None:
    cache = await make_cache()
    other = await peer(make_cache, backend, cache)
    await cache._core.store.set(KEYS.rag_generation(5), corruption, None)
    assert await cache.set_rag_results(5, "q", R1) is True  # repaired first, then stored
    assert await other.get_rag_results(5, "q") == R1
    assert await cache.invalidate_rag_results(5) == 1  # the increment works
    assert await other.get_rag_results(5, "q") is None


async def test_many_corrupt_counters_never_open_the_breaker(cache: AsyncCacheManager) -> None:
    for agent in range(20):
        await cache._core.store.set(KEYS.rag_generation(agent), b"garbage", None)
        assert await cache.invalidate_rag_results(agent) == 0
        assert await cache.set_rag_results(agent, "q", R1) is True
        assert await cache.get_rag_results(agent, "q") == R1
    assert cache.is_enabled()
    assert (await cache.get_stats())["breaker"]["consecutive_failures"] == 0


# -- counters that come back ----------------------------------------------------------------


async def test_a_deleted_counter_never_revives_stale_results(cache: AsyncCacheManager) -> None:
    seen = {await cache.get_rag_generation(7)}
    for _ in range(3):
        await cache.invalidate_rag_results(7)
        seen.add(await cache.get_rag_generation(7))
    stale = await cache.get_rag_generation(7)  # results computed now, stored later
    assert stale is not None
    assert None not in seen
    assert await cache.clear_all() > 0  # counters go too: nothing left behind
    for _ in range(3):  # the counter comes back and moves as many steps as before
        await cache.invalidate_rag_results(7)
        generation = await cache.get_rag_generation(7)
        assert generation is not None
        assert generation not in seen
    assert await cache.set_rag_results(7, "q", R1, generation=stale) is True
    assert await cache.get_rag_results(7, "q") is None
    assert await cache.set_rag_results(7, "q", R1, generation=(3, 0)) is True  # the seed's
    assert await cache.get_rag_results(7, "q") is None


async def test_an_evicted_counter_never_revives_stale_results() -> None:
    cache = AsyncCacheManager(CacheConfig(backend="memory", memory_max_entries=20))
    store = cache._core.store
    assert isinstance(store, MemoryStore)
    for _ in range(3):
        await cache.invalidate_rag_results(7)
    stale = await cache.get_rag_generation(7)
    assert stale is not None
    await cache.set_many({f"gathering:filler:{i}": i for i in range(40)})
    assert await store.get(KEYS.rag_generation(7)) is None  # evicted by the LRU
    for _ in range(3):
        await cache.invalidate_rag_results(7)
    assert await cache.set_rag_results(7, "q", R1, generation=stale) is True
    assert await cache.get_rag_results(7, "q") is None
    await cache.aclose()


@pytest.mark.integration
async def test_a_restart_that_lost_data_never_revives_stale_results(
    redis_server: RedisServer,
) -> None:
    with RedisServer() as server:  # its own server: this test restarts it
        cache = AsyncCacheManager(CacheConfig(url=server.url, recovery_interval=0.01))
        for _ in range(3):
            await cache.invalidate_rag_results(7)
        stale = await cache.get_rag_generation(7)
        assert stale is not None
        server.stop()
        server.start()  # no persistence: every counter is gone
        for _ in range(50):  # until the pool has reconnected
            await cache.get("gathering:probe")
            if cache.is_enabled() and cache._core.policy.consecutive_failures == 0:
                break
            await asyncio.sleep(0.02)
        assert await cache.get_rag_generation(7) not in (None, stale)
        for _ in range(3):
            await cache.invalidate_rag_results(7)
        assert await cache.set_rag_results(7, "q", R1, generation=stale) is True
        assert await cache.get_rag_results(7, "q") is None
        assert await cache.set_rag_results(7, "q", R1, generation=(3, 0)) is True
        assert await cache.get_rag_results(7, "q") is None
        await cache.aclose()


async def test_the_seeds_flow_on_an_agent_never_seen(cache: AsyncCacheManager) -> None:
    # get (no counter yet) -> compute -> invalidate (creates it) -> set: never served.
    assert await cache.get_rag_results(3, "q") is None
    await cache.invalidate_rag_results(3)
    await cache.set_rag_results(3, "q", R1)
    assert await cache.get_rag_results(3, "q") is None
    await cache.set_rag_results(3, "q", R1)  # after a fresh miss: valid
    assert await cache.get_rag_results(3, "q") == R1


async def test_an_expired_counter_makes_misses_not_stale_hits(cache: AsyncCacheManager) -> None:
    await cache.set_rag_results(4, "q", R1)
    await cache.delete(KEYS.rag_generation(4))  # as if it had expired before the entry
    assert await cache.get_rag_results(4, "q") is None
    await cache.set_rag_results(4, "q", R2)
    assert await cache.get_rag_results(4, "q") == R2


async def test_counters_outlive_the_entries_they_guard(cache: AsyncCacheManager) -> None:
    await cache.get_rag_results(1, "q")  # creates the counters with the default lifetime
    await cache.set_rag_results(1, "q", R1, ttl=7200)
    for key in (KEYS.rag_generation(1), KEYS.rag_generation(None)):
        ttl = await cache.ttl(key)
        assert ttl is not None
        assert ttl > 7200
    await cache.set_rag_results(1, "other", R1, ttl=60)  # never shortened
    assert (await cache.ttl(KEYS.rag_generation(1)) or 0) > 7200
    await cache.invalidate_rag_results(1)
    assert (await cache.ttl(KEYS.rag_generation(1)) or 0) > 7200


def test_fresh_counters_are_random_and_parse_back() -> None:
    values = {fresh_counter() for _ in range(100)}
    assert len(values) > 90
    for value in values:
        assert parse_counter(str(value).encode()) == value
    for bad in (None, b"", b"-1", b"1.5", b"x", b" 1", b"1" * 16, "12", 12, "١٢".encode()):
        assert parse_counter(bad) is None


# -- the memory backend's bound -------------------------------------------------------------


async def test_memory_index_sets_count_against_the_bound() -> None:
    cache = AsyncCacheManager(CacheConfig(backend="memory", memory_max_entries=100))
    store = cache._core.store
    assert isinstance(store, MemoryStore)
    for agent in range(5000):
        await cache.set_rag_results(agent, "q", R1)
    assert (await cache.get_stats())["total_keys"] <= 100
    assert len(store._data) <= 100
    # The newest agents still work: entries, counters and index sets of the last few live.
    assert await cache.get_rag_results(4999, "q") == R1
    assert await cache.invalidate_rag_results(4999) == 1
    await cache.aclose()


async def test_memory_locks_count_against_the_bound() -> None:
    store = MemoryStore(max_entries=10)
    for i in range(50):
        assert await store.acquire_locks([f"lock:{i}"], "t", 60_000) == [True]
    assert len(store._data) <= 10


@pytest.mark.integration
async def test_counter_script_on_a_real_server(raw_redis: redis_asyncio.Redis) -> None:
    store = RedisStore(raw_redis, owned=False, describe={})
    first = await store.counters(["c:a", "c:b"], 0, 100)
    assert await store.counters(["c:a", "c:b"], 1, 50) == [first[0] + 1, first[1] + 1]
    assert 99_000 <= await raw_redis.pttl("c:a") <= 100_000  # never shortened
    await raw_redis.set("c:a", b"5")  # a plain counter without expiry (an older version's)
    assert await store.counters(["c:a"], 2, 100) == [7]
    assert 0 < await raw_redis.ttl("c:a") <= 100
    await raw_redis.delete("c:a")
    await raw_redis.hset("c:a", "f", "v")
    (repaired,) = await store.counters(["c:a"], 1, 100)
    assert await raw_redis.get("c:a") == str(repaired).encode()


async def test_owed_invalidations_stay_bounded_through_a_long_outage() -> None:
    server = FakeServer()
    cache = AsyncCacheManager(
        CacheConfig(recovery_interval=0.01), client=FakeAsyncRedis(server=server)
    )
    await cache.set_rag_results(1, "q", R1)
    await cache.set_rag_results(20_000, "q", R1)
    server.connected = False
    for agent in range(20_001):
        assert await cache.invalidate_rag_results(agent) == 0
    rag = cache._rag
    assert len(rag._owed) <= 10_000
    assert rag._owed_all  # one global invalidation is owed instead: it covers them all
    server.connected = True
    await asyncio.sleep(0.02)
    assert await cache.get_rag_results(1, "q") is None
    assert await cache.get_rag_results(20_000, "q") is None
    assert not rag._owed
    assert not rag._owed_all
    await cache.aclose()


async def test_misses_on_either_side_of_an_invalidation_never_store_stale_results(
    make_cache: Factory, backend: str
) -> None:
    """Two coroutines of one process miss the same key, one before and one after an
    invalidation, then write without ``generation=``: the first one's results (computed
    before the invalidation) must not be stored under the second one's generation."""
    cache = await make_cache()
    other = await peer(make_cache, backend, cache)
    assert await cache.get_rag_results(3, "q") is None  # A misses
    await other.invalidate_rag_results(3)  # the agent's memories change
    assert await cache.get_rag_results(3, "q") is None  # B misses
    assert await cache.set_rag_results(3, "q", R1) is True  # A's results, computed before
    assert await other.get_rag_results(3, "q") is None  # never served
    await cache.set_rag_results(3, "q", R2)  # B's: skipped too (safe: a missed write)
    assert await other.get_rag_results(3, "q") is None
    generation = await cache.get_rag_generation(3)
    await cache.set_rag_results(3, "q", R2, generation=generation)
    assert await other.get_rag_results(3, "q") == R2


@pytest.mark.integration
async def test_counters_work_for_a_user_without_scripts(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An ACL without +@scripting refuses EVAL: RAG invalidation must still reach Redis
    (plain commands), or another process would keep serving stale results."""
    from tests.conftest import require_redis_server

    require_redis_server()
    server = RedisServer(
        "--user", "default", "off",
        "--user", "admin", "on", ">admin-pw", "~*", "&*", "+@all",
        "--user", "app", "on", ">app-pw", "~*", "&*", "+@all", "-@scripting",
        username="admin", password="admin-pw", auth_only=True,
    )  # fmt: skip
    server.start()
    try:
        config = CacheConfig(host="127.0.0.1", port=server.port, username="app", password="app-pw")
        async with AsyncCacheManager(config) as cache, AsyncCacheManager(config) as other:
            assert await cache.set_rag_results(1, "q", R1) is True
            assert await other.get_rag_results(1, "q") == R1
            assert await cache.invalidate_rag_results(1) == 1
            assert await other.get_rag_results(1, "q") is None
            generation = await cache.get_rag_generation(1)
            assert generation is not None
            key = KEYS.rag_generation(1)
            await raw_client(cache).set(key, b"garbage")  # repaired without a script too
            assert await cache.invalidate_rag_results(1) == 0
            assert parse_counter(await raw_client(cache).get(key)) is not None
            assert await raw_client(cache).ttl(key) > 0
            assert cache.is_enabled()
        assert "refuses scripts" in caplog.text
    finally:
        server.cleanup()
