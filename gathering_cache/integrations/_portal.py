"""Running cache work for synchronous callers on the sync facade's loop, while the caller's
own computation stays in the caller's thread (its thread-locals, its context).

``hand_off`` starts a coroutine on the facade's loop that may ask the caller to compute a
value: the caller's thread then runs the computation and hands the result (or its error)
back, and the coroutine goes on (stores it, wakes the other waiters). One pool, one set of
stats, one single-flight table for every thread of the process.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Generic, TypeVar

from gathering_cache.errors import ArgumentTypeError
from gathering_cache.manager import AsyncCacheManager
from gathering_cache.sync import CacheManager

__all__ = ["Bridge", "Handoff", "run_async", "run_sync"]

T = TypeVar("T")


class Handoff(Generic[T]):
    """A value the portal coroutine asks the calling thread to compute."""

    def __init__(self) -> None:
        self.asked: concurrent.futures.Future[asyncio.Future[T]] = concurrent.futures.Future()

    async def compute(self) -> T:
        """On the portal loop: ask the calling thread for the value and wait for it."""
        answer: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self.asked.set_result(answer)
        return await answer


def _seen(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


def _settle(answer: asyncio.Future[T], value: T) -> None:
    if not answer.done():
        answer.set_result(value)


def _fail(answer: asyncio.Future[Any], error: BaseException) -> None:
    if answer.done():
        return
    if isinstance(error, Exception):
        answer.set_exception(error)
    else:  # KeyboardInterrupt and the like stay in the caller's thread
        answer.cancel()


def run_sync(
    cache: CacheManager,
    plan: Callable[[Handoff[T]], Coroutine[Any, Any, T]],
    compute: Callable[[], T],
) -> T:
    """Run ``plan(handoff)`` on the facade's loop; when it awaits ``handoff.compute()``, call
    ``compute()`` in this thread. Falls back to ``compute()`` alone when the facade is
    closed.

    Raises:
        whatever ``compute()`` raises, and whatever ``plan`` raises (the error of another
        thread's computation it shared, say).
    """
    handoff: Handoff[T] = Handoff()
    outer = cache.submit(plan(handoff))
    if outer is None:
        return compute()
    both: list[concurrent.futures.Future[Any]] = [outer, handoff.asked]
    concurrent.futures.wait(both, return_when=concurrent.futures.FIRST_COMPLETED)
    if handoff.asked.done():
        answer = handoff.asked.result()
        loop = answer.get_loop()
        try:
            value = compute()
        except BaseException as exc:
            loop.call_soon_threadsafe(_fail, answer, exc)
            if isinstance(exc, Exception):
                # The shared run ends with this error: let it end (its waiters told, its
                # single-flight entry gone) before raising, or this thread's next call
                # could join it and get this error again. (A KeyboardInterrupt does not
                # wait.)
                concurrent.futures.wait([outer], timeout=_settling(cache))
            raise
        loop.call_soon_threadsafe(_settle, answer, value)
    return outer.result()


def _settling(cache: CacheManager) -> float:
    """How long a failed computation's shared run may take to end (it releases its lock:
    one bounded store call), as a backstop."""
    return cache.async_manager.config.operation_timeout + 1.0


async def run_async(
    cache: CacheManager,
    plan: Callable[[Handoff[T]], Coroutine[Any, Any, T]],
    compute: Callable[[], Awaitable[T]],
) -> T:
    """``run_sync`` for a coroutine caller on another event loop than the facade's."""
    handoff: Handoff[T] = Handoff()
    outer = cache.submit(plan(handoff))
    if outer is None:
        return await compute()
    waiting = asyncio.wrap_future(outer)
    asked = asyncio.wrap_future(handoff.asked)
    both: list[asyncio.Future[Any]] = [waiting, asked]
    await asyncio.wait(both, return_when=asyncio.FIRST_COMPLETED)
    if asked.done():
        answer = asked.result()
        loop = answer.get_loop()
        try:
            value = await compute()
        except BaseException as exc:
            loop.call_soon_threadsafe(_fail, answer, exc)
            # The shared run fails with it too: mark that outcome seen, ours is raised,
            # once that run has ended (see run_sync).
            waiting.add_done_callback(_seen)
            if isinstance(exc, Exception):  # a cancellation goes through at once
                await asyncio.wait([waiting], timeout=_settling(cache))
            raise
        loop.call_soon_threadsafe(_settle, answer, value)
    else:
        asked.cancel()
    return await waiting


class Bridge:
    """Call the async manager's coroutines from sync and async code alike, with either
    manager: an :class:`AsyncCacheManager` serves async callers on its own loop; a
    :class:`CacheManager` serves both (sync callers through its methods, async callers on any
    loop through its private one). What a framework adapter holds."""

    def __init__(self, cache: AsyncCacheManager | CacheManager) -> None:
        if not isinstance(cache, (AsyncCacheManager, CacheManager)):
            raise ArgumentTypeError(
                f"cache must be an AsyncCacheManager or a CacheManager, not {type(cache).__name__}"
            )
        self.cache = cache
        self.manager = cache.async_manager if isinstance(cache, CacheManager) else cache

    @property
    def prefix(self) -> str:
        return self.manager.config.key_prefix

    async def call(
        self, make: Callable[[AsyncCacheManager], Coroutine[Any, Any, T]], degraded: T
    ) -> T:
        """``await make(manager)`` on the manager's loop; ``degraded`` once it is closed."""
        if isinstance(self.cache, AsyncCacheManager):
            return await make(self.cache)
        future = self.cache.submit(make(self.manager))
        if future is None:
            return degraded
        return await asyncio.wrap_future(future)

    def call_sync(
        self, make: Callable[[AsyncCacheManager], Coroutine[Any, Any, T]], degraded: T
    ) -> T:
        """``make(manager)`` run to completion for a sync caller (a :class:`CacheManager` is
        needed: an async manager's loop is the caller's own, which cannot be blocked).

        Raises:
            ArgumentTypeError: the bridge holds an AsyncCacheManager.
        """
        if isinstance(self.cache, AsyncCacheManager):
            raise ArgumentTypeError(
                "a synchronous call needs a CacheManager (the sync facade, which also serves "
                "the async methods); this adapter was given an AsyncCacheManager"
            )
        future = self.cache.submit(make(self.manager))
        if future is None:
            return degraded
        config = self.manager.config
        try:  # the core bounds every operation; this is a backstop for a starved loop
            return future.result(config.bulk_timeout + config.operation_timeout + 1.0)
        except concurrent.futures.TimeoutError:
            future.cancel()
            return degraded
