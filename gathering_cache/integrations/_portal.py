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

from gathering_cache.sync import CacheManager

__all__ = ["Handoff", "run_sync"]

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
            raise
        loop.call_soon_threadsafe(_settle, answer, value)
    return outer.result()


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
            raise
        loop.call_soon_threadsafe(_settle, answer, value)
    else:
        asked.cancel()
    return await waiting
