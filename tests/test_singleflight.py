"""The shared single-flight (core/singleflight.py) on its own: batches with partial ownership,
in-process coalescing, other processes (two managers on one server; two flights on one memory
store), takeover of a lock whose owner died, a cancelled owner, errors reaching every waiter."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import pytest

from gathering_cache import AsyncCacheManager
from gathering_cache.core.engine import UNAVAILABLE, CacheCore
from gathering_cache.core.keys import GENERIC
from gathering_cache.core.singleflight import SingleFlight
from tests.conftest import Factory


class Source:
    """A slow computation that stores what it computes, and reads it back, through one core."""

    def __init__(self, core: CacheCore, delay: float = 0.1) -> None:
        self.core = core
        self.delay = delay
        self.calls: list[list[str]] = []
        self.fail: Exception | None = None
        self.locked_while_computing: list[bool] = []

    async def compute(self, keys: list[str]) -> dict[str, str]:
        self.calls.append(list(keys))
        locks = [self.core.keys.lock(key) for key in keys]
        free = await self.core.acquire_locks(locks, "probe", 60_000)
        assert free is not UNAVAILABLE
        await self.core.release_locks(locks, "probe")
        self.locked_while_computing.append(not any(free))
        await asyncio.sleep(self.delay)
        if self.fail is not None:
            raise self.fail
        values = {key: f"value of {key}" for key in keys}
        for key, value in values.items():
            await self.core.set(key, value, 60)
        return values

    async def lookup(self, keys: list[str]) -> Mapping[str, str]:
        found = await self.core.get_many(keys, GENERIC)
        return {key: value for key, value in zip(keys, found, strict=True) if value is not None}


def key(core: CacheCore, name: str) -> str:
    return f"{core.keys.prefix}sf:{name}"


async def two_processes(make_cache: Factory, backend: str) -> tuple[CacheCore, CacheCore]:
    """Two cores sharing one store as two processes would: two managers on one server (a
    memory store is private to its manager: there, two flights on one core stand for them)."""
    first = await make_cache()
    second = first if backend == "memory" else await make_cache()
    return first._core, second._core


async def lock_is_free(core: CacheCore, name: str) -> bool:
    lock = core.keys.lock(key(core, name))
    taken = await core.acquire_locks([lock], "probe", 60_000)
    assert taken is not UNAVAILABLE
    if taken[0]:
        await core.release_locks([lock], "probe")
    return bool(taken[0])


async def test_a_batch_computes_only_what_it_owns(cache: AsyncCacheManager) -> None:
    core = cache._core
    source = Source(core)
    flight: SingleFlight[str] = SingleFlight(core)
    a, b, c = (key(core, n) for n in "abc")
    first, second = await asyncio.gather(
        flight.run_many([a, b, b], source.compute, source.lookup),
        flight.run_many([b, c], source.compute, source.lookup),
    )
    assert first == {a: f"value of {a}", b: f"value of {b}"}
    assert second == {b: f"value of {b}", c: f"value of {c}"}
    # b once, by its first owner; which batch reaches its provider first is not promised.
    assert sorted(sorted(call) for call in source.calls) == [[a, b], [c]]
    assert flight.coalesced == 1
    assert flight.from_other_processes == 0
    assert flight.inflight == {}
    assert await lock_is_free(core, "a")
    assert await lock_is_free(core, "c")


async def test_another_process_waits_for_the_keys_it_does_not_own(
    make_cache: Factory, backend: str
) -> None:
    here, there = await two_processes(make_cache, backend)
    ours, theirs = Source(here, delay=0.3), Source(there, delay=0.01)
    flight_here: SingleFlight[str] = SingleFlight(here, wait_timeout=10)
    flight_there: SingleFlight[str] = SingleFlight(there, wait_timeout=10)
    a, b, d = (key(here, n) for n in "abd")
    owner = asyncio.create_task(flight_here.run_many([a, b], ours.compute, ours.lookup))
    await asyncio.sleep(0.1)  # the owner holds the locks of a and b now
    result = await flight_there.run_many([a, b, d], theirs.compute, theirs.lookup)
    assert result == {k: f"value of {k}" for k in (a, b, d)}
    assert await owner == {a: f"value of {a}", b: f"value of {b}"}
    assert ours.calls == [[a, b]]
    assert theirs.calls == [[d]]  # a and b were waited for, not paid twice
    assert flight_there.from_other_processes == 2
    assert await lock_is_free(here, "a")
    assert await lock_is_free(here, "b")


async def test_a_lock_whose_owner_died_is_taken_over(make_cache: Factory, backend: str) -> None:
    here, there = await two_processes(make_cache, backend)
    a = key(here, "a")
    # A process took the lock and died: nobody releases it, it expires.
    assert await there.acquire_locks([there.keys.lock(a)], "dead owner", 300) == [True]
    source = Source(here, delay=0.01)
    flight: SingleFlight[str] = SingleFlight(here, wait_timeout=30)
    result = flight.run(a, lambda: one(source, a), lambda: first(source, a))
    assert await asyncio.wait_for(result, 20) == f"value of {a}"  # a guard against hanging
    assert source.calls == [[a]]
    # Computed under its own lock: taken over once the dead owner's lock expired, not
    # computed unguarded at the wait deadline.
    assert source.locked_while_computing == [True]
    assert flight.from_other_processes == 0
    assert await lock_is_free(here, "a")


async def test_at_the_deadline_the_waiter_computes_and_leaves_the_owners_lock(
    make_cache: Factory, backend: str
) -> None:
    here, there = await two_processes(make_cache, backend)
    a = key(here, "a")
    assert await there.acquire_locks([there.keys.lock(a)], "slow owner", 60_000) == [True]
    source = Source(here, delay=0.01)
    flight: SingleFlight[str] = SingleFlight(here, wait_timeout=0.1)
    assert await flight.run(a, lambda: one(source, a), lambda: first(source, a)) == f"value of {a}"
    assert source.calls == [[a]]
    assert source.locked_while_computing == [True]  # by the slow owner, not by this waiter
    assert not await lock_is_free(here, "a")  # only its owner releases a lock
    assert await there.release_locks([there.keys.lock(a)], "slow owner") == 1


async def test_a_cancelled_owner_hands_its_keys_to_the_waiters(cache: AsyncCacheManager) -> None:
    core = cache._core
    source = Source(core, delay=0.3)
    flight: SingleFlight[str] = SingleFlight(core)
    a, b = key(core, "a"), key(core, "b")
    owner = asyncio.create_task(flight.run_many([a, b], source.compute, source.lookup))
    for _ in range(500):  # until the owner is computing (its locks taken), at most 5 s
        if source.calls:
            break
        await asyncio.sleep(0.01)
    waiter = asyncio.create_task(flight.run_many([b], source.compute, source.lookup))
    await asyncio.sleep(0.05)
    owner.cancel()
    with pytest.raises(asyncio.CancelledError):
        await owner
    assert await asyncio.wait_for(waiter, 10) == {b: f"value of {b}"}
    assert source.calls == [[a, b], [b]]  # the waiter computed b itself
    assert flight.coalesced == 0
    assert flight.inflight == {}
    assert await lock_is_free(core, "a")  # the cancelled owner still released its locks


async def test_an_error_reaches_every_waiter_and_nothing_is_stored(
    make_cache: Factory, backend: str
) -> None:
    here, there = await two_processes(make_cache, backend)
    ours, theirs = Source(here, delay=0.2), Source(there, delay=0.01)
    ours.fail = RuntimeError("provider down")
    flight: SingleFlight[str] = SingleFlight(here)
    flight_there: SingleFlight[str] = SingleFlight(there, wait_timeout=10)
    a = key(here, "a")
    local = [asyncio.create_task(flight.run_many([a], ours.compute, ours.lookup)) for _ in range(5)]
    await asyncio.sleep(0.05)
    other = asyncio.create_task(flight_there.run_many([a], theirs.compute, theirs.lookup))
    outcomes = await asyncio.gather(*local, return_exceptions=True)
    assert all(isinstance(o, RuntimeError) and "provider down" in str(o) for o in outcomes)
    assert ours.calls == [[a]]  # one call; its error reached the four coalesced callers
    assert flight.inflight == {}
    # The other process is not handed the error: the lock freed up without a value, so it
    # takes the key over and computes it.
    assert await asyncio.wait_for(other, 10) == {a: f"value of {a}"}
    assert theirs.calls == [[a]]
    assert flight_there.from_other_processes == 0


async def test_without_cross_process_no_lock_is_taken(cache: AsyncCacheManager) -> None:
    core = cache._core
    source = Source(core, delay=0.2)
    flight: SingleFlight[str] = SingleFlight(core, cross_process=False)
    a = key(core, "a")
    task = asyncio.create_task(flight.run(a, lambda: one(source, a), lambda: first(source, a)))
    await asyncio.sleep(0.05)
    assert await lock_is_free(core, "a")
    assert await task == f"value of {a}"


async def one(source: Source, key: str) -> str:
    return (await source.compute([key]))[key]


async def first(source: Source, key: str) -> str | None:
    return (await source.lookup([key])).get(key)
