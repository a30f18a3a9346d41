"""Single-flight, batch-capable: concurrent callers share one computation per key, in this
process (futures) and across processes sharing the store (a short-lived lock per key, released
only by its owner). The one implementation behind ``CachedEmbedder`` (texts in batches) and
``cached_completion`` (one key).

For a set of keys, :meth:`SingleFlight.run_many`:

* waits for the keys another coroutine of this process is computing (counted ``coalesced``);
* locks the others in the store; one ``compute`` call covers those whose locks it got (after
  one more ``lookup``: another process may have stored one meanwhile);
* polls for the keys another process holds the lock of (counted ``from_other_processes`` when
  they appear), takes over a lock that frees up without a value (its owner died or failed),
  and computes the rest at ``wait_timeout``;
* an exception of ``compute`` reaches every coroutine waiting on those keys; an owner that is
  cancelled hands its keys over to the waiters (:class:`OwnerGone`).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Generic, Protocol, TypeVar

from gathering_cache.core.engine import UNAVAILABLE, CacheCore, Locks
from gathering_cache.core.keys import check_lock_ttl, check_number

__all__ = ["FlightCounters", "OwnerGone", "SingleFlight", "retrieve_exception"]

T = TypeVar("T")

Compute = Callable[[list[str]], Awaitable[Mapping[str, T]]]
"""Computes (and stores) the values of the keys given: a value for every one of them."""
Lookup = Callable[[list[str]], Awaitable[Mapping[str, T]]]
"""Reads what another process stored: the keys found (absent ones left out)."""


class OwnerGone(Exception):
    """The coroutine computing a shared key was cancelled: waiters compute it themselves."""


class FlightCounters(Protocol):
    """Where a :class:`SingleFlight` counts (an embedder's stats, or the flight itself)."""

    coalesced: int
    from_other_processes: int


def retrieve_exception(future: asyncio.Future[Any]) -> None:
    """Done-callback marking a shared future's exception as seen (it may have no waiter)."""
    if not future.cancelled():
        future.exception()


class SingleFlight(Generic[T]):
    """Compute each key at most once at a time, here and across processes.

    Keys are cache keys (with the prefix); the lock of ``key`` is ``core.keys.lock(key)``.

    Args:
        core: the cache core (its store holds the locks).
        lock_ttl: seconds a lock lives if its owner dies (at least 0.001: Redis counts in
            milliseconds).
        wait_timeout: seconds to wait for another process before computing anyway.
        cross_process: coordinate with other processes through store locks.
        counters: where to count ``coalesced`` and ``from_other_processes`` (default: the
            flight's own attributes of those names).

    Raises:
        ArgumentTypeError / InvalidArgumentError: a bad ``lock_ttl`` or ``wait_timeout``.
    """

    def __init__(
        self,
        locks: Locks | CacheCore,
        *,
        lock_ttl: float = 30.0,
        wait_timeout: float = 10.0,
        cross_process: bool = True,
        counters: FlightCounters | None = None,
    ) -> None:
        self._locks = locks if isinstance(locks, Locks) else Locks(locks)
        self.lock_ttl_ms = check_lock_ttl(lock_ttl)
        self.wait_timeout = check_number(wait_timeout, "wait_timeout")
        self.cross_process = bool(cross_process)
        self.coalesced = 0
        self.from_other_processes = 0
        self.counters: FlightCounters = counters if counters is not None else self
        self.inflight: dict[str, asyncio.Future[T]] = {}
        """Keys a coroutine of this process is computing (empty when all is settled)."""

    async def run(
        self,
        key: str,
        compute: Callable[[], Awaitable[T]],
        lookup: Callable[[], Awaitable[T | None]],
    ) -> T:
        """The shared result for one ``key``: ``lookup()`` reads a result another process may
        have stored (``None`` if absent); ``compute()`` produces (and stores) it."""

        async def compute_one(keys: list[str]) -> dict[str, T]:
            return {key: await compute()}

        async def lookup_one(keys: list[str]) -> dict[str, T]:
            found = await lookup()
            return {} if found is None else {key: found}

        return (await self.run_many([key], compute_one, lookup_one))[key]

    async def run_many(
        self, keys: Sequence[str], compute: Compute[T], lookup: Lookup[T]
    ) -> dict[str, T]:
        """The shared results for ``keys`` (duplicates once), as a dict by key.

        ``compute(keys)`` is called with the keys this coroutine owns (at most once per
        group it got the locks of, plus once for what is left at the wait deadline);
        ``lookup(keys)`` reads what other processes stored.
        """
        results: dict[str, T] = {}
        pending = list(dict.fromkeys(keys))
        loop = asyncio.get_running_loop()
        while pending:
            mine: list[str] = []
            theirs: list[tuple[str, asyncio.Future[T]]] = []
            for key in pending:
                future = self.inflight.get(key)
                if future is None:
                    future = loop.create_future()
                    future.add_done_callback(retrieve_exception)
                    self.inflight[key] = future
                    mine.append(key)
                else:
                    theirs.append((key, future))
            if mine:
                results.update(await self._own(mine, compute, lookup))
            retry: list[str] = []
            for key, future in theirs:
                try:
                    results[key] = await asyncio.shield(future)
                except OwnerGone:
                    retry.append(key)  # its owner was cancelled: try to own it now
                else:
                    self.counters.coalesced += 1
            pending = retry
        return results

    async def _own(self, keys: list[str], compute: Compute[T], lookup: Lookup[T]) -> dict[str, T]:
        """Get ``keys``, whose in-process futures this coroutine owns, and settle every one of
        them, whatever happens."""
        try:
            if self.cross_process:
                results = await self._coordinated(keys, compute, lookup)
            else:
                results = dict(await compute(keys))
        except BaseException as exc:
            # Settle the waiters first: nothing may leave them pending forever.
            error = exc if isinstance(exc, Exception) else OwnerGone()
            for key in keys:
                future = self.inflight.pop(key, None)
                if future is not None and not future.done():
                    future.set_exception(error)
            raise
        for key in keys:
            future = self.inflight.pop(key, None)
            if future is not None and not future.done():
                future.set_result(results[key])
        return results

    async def _coordinated(
        self, keys: list[str], compute: Compute[T], lookup: Lookup[T]
    ) -> dict[str, T]:
        token = secrets.token_hex(8)
        taken = await self._acquire(keys, token)
        if taken is None:  # no store, no coordination: compute
            return dict(await compute(keys))
        results = await self._under_lock(
            [k for k, ok in zip(keys, taken, strict=True) if ok], token, compute, lookup
        )
        waiting = [k for k, ok in zip(keys, taken, strict=True) if not ok]
        if waiting:
            results.update(await self._wait_for_others(waiting, token, compute, lookup))
        return results

    async def _acquire(self, keys: list[str], token: str) -> list[bool] | None:
        locks = [self._locks.key(key) for key in keys]
        taken = await self._locks.acquire(locks, token, self.lock_ttl_ms)
        return None if taken is UNAVAILABLE else taken

    async def _under_lock(
        self, keys: list[str], token: str, compute: Compute[T], lookup: Lookup[T]
    ) -> dict[str, T]:
        """Compute keys whose locks we hold, then release them. Looks them up once more
        first: another process may have stored one between our lookup and our lock."""
        if not keys:
            return {}
        try:
            found = await lookup(keys)
            results = {key: found[key] for key in keys if key in found}
            self.counters.from_other_processes += len(results)
            missing = [key for key in keys if key not in results]
            if missing:
                results.update(await compute(missing))
            return results
        finally:
            # Only the owner's token deletes a lock (compare-and-delete).
            await self._locks.release([self._locks.key(key) for key in keys], token)

    async def _wait_for_others(
        self, keys: list[str], token: str, compute: Compute[T], lookup: Lookup[T]
    ) -> dict[str, T]:
        """Poll for keys another process holds the lock of. A key whose lock frees up with no
        value (its owner died or failed) is taken over; at the deadline the rest is computed."""
        results: dict[str, T] = {}
        deadline = time.monotonic() + self.wait_timeout
        delay = 0.01
        pending = keys
        while pending and time.monotonic() < deadline:
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 0.2)
            found = await lookup(pending)
            still: list[str] = []
            for key in pending:
                if key in found:
                    results[key] = found[key]
                    self.counters.from_other_processes += 1
                else:
                    still.append(key)
            if not still:
                break
            taken = await self._acquire(still, token)
            if taken is None:  # the store went away: no more coordination
                break
            mine = [k for k, ok in zip(still, taken, strict=True) if ok]
            results.update(await self._under_lock(mine, token, compute, lookup))
            pending = [k for k, ok in zip(still, taken, strict=True) if not ok]
        rest = [key for key in keys if key not in results]
        if rest:
            results.update(await compute(rest))
        return results
