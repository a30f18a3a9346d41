"""``CacheManager``: the synchronous facade, for legacy callers and scripts.

It owns one :class:`AsyncCacheManager` running on a private event loop in one daemon thread
(a "portal"), and forwards each call to it as a task, as ``asyncio.run_coroutine_threadsafe``
does, the calling thread waiting on a lock the task's completion releases.
There is no second implementation. This stays correct from many threads at once and from code
that is already inside a running event loop (a notebook, an async app calling legacy code),
where ``asyncio.run()`` per call would fail.

Closing is ordered so that no caller is left behind: the calls in the middle of a store
operation are cancelled (their callers get the degraded answer), the manager is closed (after
which no call does I/O), the portal stops taking calls, the calls already handed to it finish,
and only then does its loop stop. From then on each call runs the closed manager's coroutine
in the caller's own thread: it checks the arguments and returns the degraded answer without
suspending, so no event loop is needed.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import inspect
import logging
import os
import threading
import weakref
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Mapping, Sequence, Sized
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar, cast, overload

from gathering_cache.config import CacheConfig
from gathering_cache.core.observe import Observer
from gathering_cache.manager import AsyncCacheManager

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt
    from typing_extensions import Self

__all__ = ["CacheManager"]

logger = logging.getLogger(__name__)

_INHERITED: list[Any] = []
"""In a forked child: the managers of the parent, kept (see ``CacheManager._after_fork``)."""

T = TypeVar("T")
R = TypeVar("R")

# Extra seconds a caller waits on the portal beyond the core's own bound: a backstop only.
_MARGIN = 1.0
# How long close() lets the calls already handed to the portal finish, then how long it waits
# for those it had to cancel. They run against the closed manager, which does no I/O, so they
# take microseconds; the bound only matters if user code blocks the portal loop.
_GRACE = 1.0
# The whole close on the portal loop: the async close, then the grace periods.
_CLOSE_TIMEOUT = 5.0


def _none() -> None:
    return None


def _false() -> bool:
    return False


def _zero() -> int:
    return 0


def _nones(items: object) -> list[Any]:
    """The degraded answer of a batch read: one ``None`` per item.

    Computed only when needed, after the call had the chance to check its arguments, so a bad
    argument (``get_many(5)``) raises the library's error rather than ``len()``'s TypeError.
    """
    return [None] * len(items) if isinstance(items, Sized) else []


class _Call(Generic[T]):
    """One facade call handed to the portal: its coroutine runs as a task on the portal loop
    (as with ``run_coroutine_threadsafe``), and the calling thread waits on a plain lock
    that the task's completion releases. ``run_coroutine_threadsafe``'s
    ``concurrent.futures.Future`` waits on a condition variable instead, whose lock the
    caller must take again once woken: a second hand-over between the threads, ~35 us of
    every call here."""

    __slots__ = ("_coro", "_done", "_error", "_loop", "_result", "_task")

    def __init__(self, coro: Coroutine[Any, Any, T], loop: asyncio.AbstractEventLoop) -> None:
        self._coro = coro
        self._loop = loop
        self._done = threading.Lock()
        self._done.acquire()
        self._task: asyncio.Task[T] | None = None
        self._result: T | None = None
        self._error: BaseException | None = None

    def start(self) -> None:
        """On the portal loop: run the coroutine as a task."""
        try:
            task = self._loop.create_task(self._coro)
        except BaseException as exc:  # as run_coroutine_threadsafe: the caller gets it
            self._error = exc
            self._done.release()
            raise
        self._task = task
        task.add_done_callback(self._finish)

    def _finish(self, task: asyncio.Task[T]) -> None:
        if task.cancelled():
            self._error = concurrent.futures.CancelledError()
        else:
            error = task.exception()
            if error is None:
                self._result = task.result()
            else:
                self._error = error
        self._done.release()

    def result(self, timeout: float) -> T:
        """The coroutine's result (or its exception, raised; ``CancelledError`` when the
        task was cancelled); ``concurrent.futures.TimeoutError`` after ``timeout`` s."""
        if not self._done.acquire(timeout=timeout):
            raise concurrent.futures.TimeoutError
        self._done.release()
        error = self._error
        if error is not None:
            self._error = None  # no reference cycle through its traceback
            raise error
        return cast("T", self._result)

    def cancel(self) -> None:
        """Cancel the task (from the calling thread, after a timeout)."""
        with contextlib.suppress(RuntimeError):  # the loop has closed: nothing runs it
            self._loop.call_soon_threadsafe(self._cancel)

    def _cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()
        else:  # not started: it never will be
            self._coro.close()


class _Portal:
    """An event loop running forever in a daemon thread, and the gate that hands it calls."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        # Held only to check the gate and schedule a call, never while waiting for one: once
        # refuse() has returned, no call can reach the loop any more.
        self._gate = threading.Lock()
        self._accepting = True
        self._thread = threading.Thread(
            target=self._serve, name="gathering-cache-portal", daemon=True
        )
        self._thread.start()

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            self.refuse()
            # Normally close() left nothing behind; should anything remain (a close that timed
            # out), cancel it here rather than let the loop destroy pending tasks.
            _cancel_all(self.loop)
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.close()

    def on_portal_thread(self) -> bool:
        # The Thread object, not its ident: idents are reused once the thread has ended.
        return threading.current_thread() is self._thread

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and not self.loop.is_closed()

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T] | None:
        """Schedule ``coro`` on the loop; ``None`` (``coro`` untouched) once it refuses calls.

        Raises:
            RuntimeError: called from the portal thread itself (it would deadlock).
        """
        return self._hand(coro, self._submit)

    def start(self, coro: Coroutine[Any, Any, T]) -> _Call[T] | None:
        """:meth:`submit` for the facade's own calls: a :class:`_Call` to wait on."""
        return self._hand(coro, self._schedule)

    def _hand(
        self, coro: Coroutine[Any, Any, T], schedule: Callable[[Coroutine[Any, Any, T]], R]
    ) -> R | None:
        """``schedule(coro)``, which hands ``coro`` to the loop, under the gate; ``None``
        (``coro`` untouched) once the portal refuses calls."""
        if not self._accepting:  # it never turns back: closed calls skip the lock
            return None
        if self.on_portal_thread():
            coro.close()
            raise RuntimeError(
                "CacheManager was called from its own event-loop thread (for example from a "
                "callback running on that loop); use the AsyncCacheManager there instead"
            )
        with self._gate:
            if not self._accepting:
                return None
            return schedule(coro)

    def _submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def _schedule(self, coro: Coroutine[Any, Any, T]) -> _Call[T]:
        call = _Call(coro, self.loop)
        self.loop.call_soon_threadsafe(call.start)
        return call

    def refuse(self) -> None:
        """Take no more calls (those already submitted are in the loop's ready queue)."""
        with self._gate:
            self._accepting = False

    def call(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        """Run ``coro`` on the portal loop and wait for its result (lifecycle steps only).

        Raises:
            RuntimeError: called from the portal thread, or the portal takes no more calls.
            concurrent.futures.TimeoutError: no result within ``timeout`` (the coroutine is
                cancelled).
        """
        future = self.submit(coro)
        if future is None:
            coro.close()
            raise RuntimeError("the portal takes no more calls")
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise

    def stop(self) -> None:
        self.refuse()
        if self.alive:
            try:
                self.loop.call_soon_threadsafe(self.loop.stop)
            except RuntimeError:  # closed since the check: it has stopped already
                return
            self._thread.join(timeout=5)


def _started(task: asyncio.Task[Any]) -> bool:
    """Whether ``task``'s coroutine has begun (and so has checked its arguments)."""
    coro = task.get_coro()
    return not (inspect.iscoroutine(coro) and inspect.getcoroutinestate(coro) == "CORO_CREATED")


def _cancel_all(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel every task left on a stopped ``loop`` and let them unwind (as asyncio.run does)."""
    tasks = asyncio.all_tasks(loop)
    if not tasks:
        return
    for task in tasks:
        task.cancel()
    loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))


async def _close_on_loop(portal: _Portal, manager: AsyncCacheManager) -> None:
    """Close ``manager`` leaving no call behind; runs on the portal loop."""
    fleet = manager.fleet
    if fleet is not None:  # the statistics' last fold, while the store is still in use
        await fleet.aclose()
    me = asyncio.current_task()
    # Calls in the middle of a store operation are cancelled rather than left to run against
    # a store being closed (where redis-py could reconnect and leave a socket open); their
    # callers get the degraded answer. Calls not yet started are left to start: they check
    # their arguments, and find the manager closed.
    for task in asyncio.all_tasks():
        if task is not me and _started(task):
            task.cancel()
    # No await between the cancellations and this call, and aclose() disables the manager
    # before its first await: no call that starts from now on does any I/O.
    try:
        await manager.aclose()
    finally:
        portal.refuse()  # from now on callers run the closed manager in their own thread
        # The calls submitted before refuse() are callbacks in the ready queue, ahead of this
        # task's wake-up: after one turn of the loop each is a task that all_tasks() sees.
        await asyncio.sleep(0)
        others = asyncio.all_tasks() - {me} if me is not None else set()
        if others:
            _, pending = await asyncio.wait(others, timeout=_GRACE)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=_GRACE)


def _shutdown(portal: _Portal, manager: AsyncCacheManager) -> None:
    """Close the async manager and stop the portal (also run at exit, via weakref.finalize)."""
    if portal.on_portal_thread():  # collected by code running on the portal loop itself
        task = portal.loop.create_task(_close_on_loop(portal, manager))
        task.add_done_callback(lambda _: portal.loop.stop())
        return
    if portal.alive:
        try:
            portal.call(_close_on_loop(portal, manager), timeout=_CLOSE_TIMEOUT)
        except Exception as exc:  # closing must not fail the caller or interpreter exit
            logger.debug("error while closing: %s", exc)
    portal.stop()


def _drive(coro: Coroutine[Any, Any, T], fallback: Callable[[], T], loop: Any) -> T:
    """Run a call of the closed manager in this thread, with no event loop round trip.

    A closed manager does no I/O: its coroutines check their arguments (raising as usual) and
    return the degraded answer without ever suspending. ``asyncio.get_running_loop()`` must
    still answer inside them, so when this thread runs no loop, ``loop`` (the portal's closed
    one, used for its identity only) stands in while the coroutine runs. A coroutine that does
    suspend wanted to wait for something a closed manager cannot have: it is closed, and the
    answer is degraded.
    """
    outer = asyncio._get_running_loop()
    if outer is None:
        asyncio._set_running_loop(loop)
    try:
        try:
            coro.send(None)
        except StopIteration as done:
            result: T = done.value
            return result
        logger.debug("a call on the closed manager tried to wait; answering degraded")
        coro.close()
        return fallback()
    finally:
        if outer is None:
            asyncio._set_running_loop(None)


async def _take(keys: AsyncIterator[str], count: int) -> tuple[list[str], bool]:
    """Up to ``count`` more keys of a listing, and whether it may have more."""
    page: list[str] = []
    try:
        while len(page) < count:
            page.append(await keys.__anext__())
    except StopAsyncIteration:
        return page, False
    return page, True


def _no_page() -> tuple[list[str], bool]:
    return [], False


async def _observe(manager: AsyncCacheManager, observer: Observer) -> None:
    manager.add_observer(observer)


async def _unobserve(manager: AsyncCacheManager, observer: Observer) -> bool:
    return manager.remove_observer(observer)


async def _reset(manager: AsyncCacheManager) -> None:
    manager.reset_stats()  # on the portal loop, like every other access to the counters


async def _build(config: CacheConfig | None, client: Any) -> AsyncCacheManager:
    return AsyncCacheManager(config, client=client)


class CacheManager:
    """Redis cache with graceful degradation, with a synchronous API.

    Connects in its constructor: ``is_enabled()`` then tells whether Redis answered. Every
    method has the same name, arguments and return value as on :class:`AsyncCacheManager`
    and the same behaviour, because it runs that code.

    Args:
        config: the configuration; ``CacheConfig()`` when omitted.
        client: an existing ``redis.asyncio`` client; it will be used only from the facade's
            private event loop and is not closed by the facade.
    """

    def __init__(self, config: CacheConfig | None = None, *, client: Any = None) -> None:
        self._fork_lock = threading.Lock()
        self._start(config, client)
        cfg = self._async.config
        self._timeout = cfg.operation_timeout + _MARGIN
        self._bulk_timeout = cfg.bulk_timeout + cfg.operation_timeout + _MARGIN
        self.connect()

    def _start(self, config: CacheConfig | None, client: Any) -> None:
        portal = _Portal()
        try:
            manager = portal.call(_build(config, client), timeout=30)
        except BaseException:
            portal.stop()
            raise
        self._portal = portal
        self._async = manager
        self._pid = os.getpid()
        self._injected = client is not None
        self._finalizer = weakref.finalize(self, _shutdown, portal, manager)

    def _after_fork(self) -> None:
        """In a forked child (gunicorn --preload, Celery prefork) the portal thread and the
        parent's sockets are gone: start afresh, once, on first use."""
        with self._fork_lock:
            if self._pid == os.getpid():
                return
            closed = not self._finalizer.alive
            self._finalizer.detach()  # the parent's portal is not ours to stop
            config = self._async.config
            observers = self._async.observers
            # The parent's manager is kept alive, never finalized here: its connections'
            # finalizers would unregister their sockets from the parent's event loop, whose
            # epoll instance this process shares, and the parent would never hear a reply
            # on them again (its next call on the kept connection answered degraded).
            _INHERITED.append(self._async)
            if self._injected:
                logger.warning(
                    "CacheManager used after fork with an injected client; "
                    "building a new client from its config"
                )
            self._start(config, None)
            for observer in observers:  # the child's operations are reported too
                self._async.add_observer(observer)
            if closed:
                self._finalizer()

    @classmethod
    def from_env(cls, dotenv_path: str | os.PathLike[str] | None = None) -> CacheManager:
        """Create a manager configured from the environment (see ``CacheConfig.from_env``)."""
        return cls(CacheConfig.from_env(dotenv_path))

    @property
    def config(self) -> CacheConfig:
        """The (immutable) configuration in use."""
        return self._async.config

    @property
    def async_manager(self) -> AsyncCacheManager:
        """The AsyncCacheManager this facade drives (use it only on the facade's loop)."""
        return self._live()

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T] | None:
        """Schedule a coroutine on the facade's private event loop, where
        :attr:`async_manager` lives: how integrations (``@cached`` on a sync function, the
        sync methods of the framework adapters) share this manager, its pool and its stats.

        Returns:
            A ``concurrent.futures.Future`` of its result, or ``None`` (``coro`` closed) once
            the facade is closed.

        Raises:
            RuntimeError: called from the facade's own loop thread (it would deadlock).
        """
        self._live()
        future = self._portal.submit(coro)
        if future is None:
            coro.close()
        return future

    def _live(self) -> AsyncCacheManager:
        """The async manager, rebuilt first if this process is a fork of its creator."""
        if self._pid != os.getpid():
            self._after_fork()
        return self._async

    def _run(
        self, coro: Coroutine[Any, Any, T], fallback: Callable[[], T], *, bulk: bool = False
    ) -> T:
        """Run one call of the async manager; ``fallback()`` is its degraded answer, computed
        only when the portal does not deliver one."""
        portal = self._portal
        future = portal.start(coro)
        if future is None:  # closed: the closed manager answers in this thread, without I/O
            return _drive(coro, fallback, portal.loop)
        try:
            return future.result(self._bulk_timeout if bulk else self._timeout)
        except concurrent.futures.CancelledError:
            return fallback()  # cancelled by close() in the middle of a store operation
        except concurrent.futures.TimeoutError:
            # The core bounds every call itself; reaching this means the loop was starved.
            future.cancel()
            logger.warning("call did not finish in time; answering degraded")
            return fallback()

    # -- lifecycle ----------------------------------------------------------------------------

    def connect(self) -> bool:
        """Contact the store (done by the constructor); whether the cache is enabled."""
        return self._run(self._live().connect(), _false)

    def close(self) -> None:
        """Close connections and stop the private event loop. Idempotent; never raises.

        Calls that other threads have in the middle of a store operation return their
        degraded answer at once. Every later call answers degraded in the calling thread
        without I/O (bad arguments still raise, as on an open facade).
        """
        self._finalizer()

    def aclose(self) -> None:
        """Same as :meth:`close` (present for parity with AsyncCacheManager)."""
        self._finalizer()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def is_enabled(self) -> bool:
        """Whether the cache is working (see ``AsyncCacheManager.is_enabled``)."""
        if self._pid != os.getpid():
            self._after_fork()
        return self._finalizer.alive and self._live().is_enabled()

    # -- generic operations -------------------------------------------------------------------

    def get(self, key: str) -> Any | None:
        """Get value from cache (see ``AsyncCacheManager.get``)."""
        return self._run(self._live().get(key), _none)

    def set(self, key: str, value: Any, ttl: int | None = None) -> bool:
        """Set value with optional TTL in seconds (see ``AsyncCacheManager.set``)."""
        return self._run(self._live().set(key, value, ttl), _false)

    def delete(self, key: str) -> bool:
        """Delete a single key; ``True`` when an entry was removed."""
        return self._run(self._live().delete(key), _false)

    def delete_pattern(self, pattern: str) -> int:
        """Delete all keys matching a pattern under the prefix; the number deleted."""
        return self._run(self._live().delete_pattern(pattern), _zero, bulk=True)

    def scan_keys(
        self, pattern: str | None = None, *, namespace: str | None = None, count: int = 500
    ) -> Iterator[str]:
        """Every key under the prefix matching ``pattern`` (SCAN); see
        ``AsyncCacheManager.scan_keys``. Bad arguments raise here, before iterating."""
        keys = self._live().scan_keys(pattern, namespace=namespace, count=count)
        return self._drain(keys, count)

    def _drain(self, keys: AsyncIterator[str], count: int) -> Iterator[str]:
        while True:  # one trip through the portal per page, not per key
            page, more = self._run(_take(keys, count), _no_page, bulk=True)
            yield from page
            if not more:
                return

    def get_many(self, keys: Sequence[str]) -> list[Any | None]:
        """Get several keys in one round trip."""
        return self._run(self._live().get_many(keys), lambda: _nones(keys))

    def set_many(self, mapping: Mapping[str, Any], ttl: int | None = None) -> bool:
        """Store several values with one TTL."""
        return self._run(self._live().set_many(mapping, ttl), _false)

    def exists(self, key: str) -> bool:
        """Whether ``key`` exists."""
        return self._run(self._live().exists(key), _false)

    def ttl(self, key: str) -> int | None:
        """Seconds until ``key`` expires (-1 without expiry, None if absent)."""
        return self._run(self._live().ttl(key), _none)

    # -- domain caches ------------------------------------------------------------------------

    @overload
    def get_embedding(
        self,
        text: str,
        *,
        model: str | None = None,
        dimensions: int | None = None,
        as_numpy: Literal[False] = False,
    ) -> list[float] | None: ...

    @overload
    def get_embedding(
        self,
        text: str,
        *,
        model: str | None = None,
        dimensions: int | None = None,
        as_numpy: Literal[True],
    ) -> npt.NDArray[np.floating[Any]] | None: ...

    def get_embedding(
        self,
        text: str,
        *,
        model: str | None = None,
        dimensions: int | None = None,
        as_numpy: bool = False,
    ) -> list[float] | npt.NDArray[np.floating[Any]] | None:
        """Get cached embedding (see ``AsyncCacheManager.get_embedding``)."""
        coro = self._live().get_embedding(
            text,
            model=model,
            dimensions=dimensions,
            as_numpy=as_numpy,  # type: ignore[call-overload]
        )
        result: list[float] | npt.NDArray[np.floating[Any]] | None = self._run(coro, _none)
        return result

    def set_embedding(
        self,
        text: str,
        embedding: Sequence[float],
        ttl: int | None = None,
        *,
        model: str | None = None,
        dimensions: int | None = None,
    ) -> bool:
        """Cache embedding (default TTL: 24h)."""
        coro = self._live().set_embedding(text, embedding, ttl, model=model, dimensions=dimensions)
        return self._run(coro, _false)

    def get_embeddings(
        self,
        texts: Sequence[str],
        *,
        model: str | None = None,
        dimensions: int | None = None,
        as_numpy: bool = False,
    ) -> list[Any]:
        """Get several cached embeddings in one round trip; ``None`` where missing."""
        coro = self._live().get_embeddings(
            texts,
            model=model,
            dimensions=dimensions,
            as_numpy=as_numpy,  # type: ignore[call-overload]
        )
        result: list[Any] = self._run(coro, lambda: _nones(texts))
        return result

    def set_embeddings(
        self,
        texts: Sequence[str],
        embeddings: Sequence[Sequence[float]],
        ttl: int | None = None,
        *,
        model: str | None = None,
        dimensions: int | None = None,
    ) -> bool:
        """Cache several embeddings in one pipeline."""
        coro = self._live().set_embeddings(
            texts, embeddings, ttl, model=model, dimensions=dimensions
        )
        return self._run(coro, _false)

    def get_rag_results(self, agent_id: int, query: str) -> list[dict[str, Any]] | None:
        """Get cached RAG results."""
        return self._run(self._live().get_rag_results(agent_id, query), _none)

    def set_rag_results(
        self,
        agent_id: int,
        query: str,
        results: list[dict[str, Any]],
        ttl: int | None = None,
        *,
        generation: tuple[int, int] | None = None,
    ) -> bool:
        """Cache RAG results (default TTL: 5min)."""
        coro = self._live().set_rag_results(agent_id, query, results, ttl, generation=generation)
        return self._run(coro, _false)

    def get_rag_generation(self, agent_id: int) -> tuple[int, int] | None:
        """The agent's RAG generation (see ``AsyncCacheManager.get_rag_generation``)."""
        return self._run(self._live().get_rag_generation(agent_id), _none)

    def invalidate_rag_results(self, agent_id: int) -> int:
        """Clear all RAG cache for agent."""
        return self._run(self._live().invalidate_rag_results(agent_id), _zero)

    def invalidate_all_rag_results(self) -> bool:
        """Make every agent's cached RAG results unreadable."""
        return self._run(self._live().invalidate_all_rag_results(), _false)

    def get_circle_context(self, circle_id: int) -> dict[str, Any] | None:
        """Get cached circle context."""
        return self._run(self._live().get_circle_context(circle_id), _none)

    def set_circle_context(
        self, circle_id: int, context: dict[str, Any], ttl: int | None = None
    ) -> bool:
        """Cache circle context (default TTL: 10min)."""
        return self._run(self._live().set_circle_context(circle_id, context, ttl), _false)

    def invalidate_circle_context(self, circle_id: int) -> bool:
        """Clear circle context cache."""
        return self._run(self._live().invalidate_circle_context(circle_id), _false)

    def get_llm_response(
        self,
        model: str,
        *,
        prompt: str | None = None,
        messages: list[dict[str, Any]] | None = None,
        namespace: str | None = None,
        force: bool = False,
        **params: Any,
    ) -> dict[str, Any] | None:
        """Get a cached LLM response (see ``AsyncCacheManager.get_llm_response``)."""
        coro = self._live().get_llm_response(
            model, prompt=prompt, messages=messages, namespace=namespace, force=force, **params
        )
        return self._run(coro, _none)

    def set_llm_response(
        self,
        model: str,
        response: Any,
        *,
        prompt: str | None = None,
        messages: list[dict[str, Any]] | None = None,
        usage: dict[str, Any] | None = None,
        namespace: str | None = None,
        ttl: int | None = None,
        force: bool = False,
        **params: Any,
    ) -> bool:
        """Cache an LLM response (see ``AsyncCacheManager.set_llm_response``)."""
        coro = self._live().set_llm_response(
            model,
            response,
            prompt=prompt,
            messages=messages,
            usage=usage,
            namespace=namespace,
            ttl=ttl,
            force=force,
            **params,
        )
        return self._run(coro, _false)

    def invalidate_llm_responses(self, namespace: str | None = None) -> int:
        """Delete the cached LLM responses of one namespace."""
        return self._run(self._live().invalidate_llm_responses(namespace), _zero, bulk=True)

    # -- utilities ----------------------------------------------------------------------------

    def get_stats(self) -> dict[str, Any]:
        """Get cache statistics (hits, misses, hit rate); see ``AsyncCacheManager.get_stats``."""

        def fallback() -> dict[str, Any]:
            closed = not self._finalizer.alive  # the call was cancelled by close()
            reason = "closed" if closed else "get_stats did not finish in time"
            return {"enabled": False, "reason": reason}

        return self._run(self._live().get_stats(), fallback, bulk=True)

    def add_observer(self, observer: Observer) -> None:
        """Report every store operation to ``observer``; see
        ``AsyncCacheManager.add_observer``. It is called on this facade's loop thread.

        Raises:
            ArgumentTypeError: ``observer`` is not callable.
        """
        manager = self._live()
        if not callable(observer):
            manager.add_observer(observer)  # raises, naming the problem
        # On the loop thread, like every change to the observers (one that fails is removed
        # there): two threads never rewrite the list at once.
        self._run(_observe(manager, observer), _none)

    def remove_observer(self, observer: Observer) -> bool:
        """Stop reporting to ``observer``; whether it was registered."""
        return self._run(_unobserve(self._live(), observer), _false)

    def flush_stats(self) -> bool:
        """Fold this process's statistics into the store now; see
        ``AsyncCacheManager.flush_stats``."""
        return self._run(self._live().flush_stats(), _false)

    def reset_stats(self) -> None:
        """Zero the hit / miss / error counters."""
        self._run(_reset(self._live()), _none)

    def clear_all(self) -> int:
        """Clear all cache keys under the prefix."""
        return self._run(self._live().clear_all(), _zero, bulk=True)
