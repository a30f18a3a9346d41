"""Single-flight for one key: concurrent callers share one computation, in this process
(futures) and across processes sharing the store (a short-lived lock, released only by its
owner). Used by the LLM response wrapper; the embedder does the same per text, in batches.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

from gathering_cache.core.engine import UNAVAILABLE, CacheCore
from gathering_cache.core.keys import check_lock_ttl, check_number

__all__ = ["OwnerGone", "SingleFlight", "retrieve_exception"]

T = TypeVar("T")


class OwnerGone(Exception):
    """The coroutine computing a shared key was cancelled: waiters compute it themselves."""


def retrieve_exception(future: asyncio.Future[Any]) -> None:
    """Done-callback marking a shared future's exception as seen (it may have no waiter)."""
    if not future.cancelled():
        future.exception()


class SingleFlight(Generic[T]):
    """Run ``compute`` at most once at a time per key, here and across processes.

    Args:
        core: the cache core (its store holds the locks).
        lock_ttl: seconds a lock lives if its owner dies (at least 0.001: Redis counts in
            milliseconds).
        wait_timeout: seconds to wait for another process before computing anyway.

    Raises:
        ArgumentTypeError / InvalidArgumentError: a bad ``lock_ttl`` or ``wait_timeout``.
    """

    def __init__(self, core: CacheCore, *, lock_ttl: float = 30.0, wait_timeout: float = 10.0):
        self._core = core
        self._lock_ttl_ms = check_lock_ttl(lock_ttl)
        self._wait_timeout = check_number(wait_timeout, "wait_timeout")
        self._inflight: dict[str, asyncio.Future[T]] = {}
        self.coalesced = 0
        self.from_other_processes = 0

    async def run(
        self,
        key: str,
        compute: Callable[[], Awaitable[T]],
        lookup: Callable[[], Awaitable[T | None]],
    ) -> T:
        """The shared result for ``key``.

        ``lookup`` reads a result another process may have stored (``None`` if absent);
        ``compute`` produces (and stores) it. An exception of ``compute`` reaches every
        caller waiting in this process.
        """
        while True:
            future = self._inflight.get(key)
            if future is None:
                break
            try:
                result = await asyncio.shield(future)
            except OwnerGone:
                continue
            self.coalesced += 1
            return result
        future = asyncio.get_running_loop().create_future()
        future.add_done_callback(retrieve_exception)
        self._inflight[key] = future
        try:
            result = await self._locked(key, compute, lookup)
        except BaseException as exc:
            future.set_exception(exc if isinstance(exc, Exception) else OwnerGone())
            raise
        else:
            future.set_result(result)
            return result
        finally:
            del self._inflight[key]

    async def _locked(
        self,
        key: str,
        compute: Callable[[], Awaitable[T]],
        lookup: Callable[[], Awaitable[T | None]],
    ) -> T:
        lock = self._core.keys.lock(key)
        token = secrets.token_hex(8)
        deadline = time.monotonic() + self._wait_timeout
        delay = 0.01
        while True:
            taken = await self._core.acquire_locks([lock], token, self._lock_ttl_ms)
            if taken is UNAVAILABLE:
                return await compute()  # no store, no coordination
            if taken[0]:
                try:
                    found = await lookup()  # stored by another process before we locked?
                    if found is not None:
                        self.from_other_processes += 1
                        return found
                    return await compute()
                finally:
                    await self._core.release_locks([lock], token)
            if time.monotonic() >= deadline:
                return await compute()
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 0.2)
            found = await lookup()
            if found is not None:
                self.from_other_processes += 1
                return found
