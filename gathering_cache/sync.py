"""``CacheManager``: the synchronous facade, for legacy callers and scripts.

It owns one :class:`AsyncCacheManager` running on a private event loop in one daemon thread
(a "portal"), and forwards each call with ``asyncio.run_coroutine_threadsafe(...).result()``.
There is no second implementation. This stays correct from many threads at once and from code
that is already inside a running event loop (a notebook, an async app calling legacy code),
where ``asyncio.run()`` per call would fail.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import threading
import weakref
from collections.abc import Coroutine, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, TypeVar, overload

from gathering_cache.config import CacheConfig
from gathering_cache.manager import AsyncCacheManager

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt
    from typing_extensions import Self

__all__ = ["CacheManager"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Extra seconds a caller waits on the portal beyond the core's own bound: a backstop only.
_MARGIN = 1.0


class _Portal:
    """An event loop running forever in a daemon thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._serve, name="gathering-cache-portal", daemon=True
        )
        self._thread.start()

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.close()

    def on_portal_thread(self) -> bool:
        return threading.get_ident() == self._thread.ident

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and not self.loop.is_closed()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        """Run ``coro`` on the portal loop and wait for its result.

        Raises:
            RuntimeError: called from the portal thread itself (it would deadlock).
            concurrent.futures.TimeoutError: no result within ``timeout`` (the coroutine is
                cancelled).
        """
        if threading.get_ident() == self._thread.ident:
            coro.close()
            raise RuntimeError(
                "CacheManager was called from its own event-loop thread (for example from a "
                "callback running on that loop); use the AsyncCacheManager there instead"
            )
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise

    def stop(self) -> None:
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=5)


def _shutdown(portal: _Portal, manager: AsyncCacheManager) -> None:
    """Close the async manager and stop the portal (also run at exit, via weakref.finalize)."""
    if portal.on_portal_thread():  # collected by code running on the portal loop itself
        task = portal.loop.create_task(manager.aclose())
        task.add_done_callback(lambda _: portal.loop.stop())
        return
    if portal.alive:
        try:
            portal.call(manager.aclose(), timeout=5)
        except Exception as exc:  # closing must not fail the caller or interpreter exit
            logger.debug("error while closing: %s", exc)
        portal.stop()


async def _reset(manager: AsyncCacheManager) -> None:
    manager.reset_stats()  # on the portal loop, like every other access to the counters


async def _build(config: CacheConfig | None, client: Any) -> AsyncCacheManager:
    return AsyncCacheManager(config, client=client)


class CacheManager:
    """Redis cache with graceful degradation, with the seed's synchronous API.

    Connects in its constructor, like the seed: ``is_enabled()`` then tells whether Redis
    answered. Every method has the same name, arguments and return value as on
    :class:`AsyncCacheManager` and the same behaviour, because it runs that code.

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
            if self._injected:
                logger.warning(
                    "CacheManager used after fork with an injected client; "
                    "building a new client from its config"
                )
            self._start(config, None)
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

    def _live(self) -> AsyncCacheManager:
        """The async manager, rebuilt first if this process is a fork of its creator."""
        if self._pid != os.getpid():
            self._after_fork()
        return self._async

    def _run(self, coro: Coroutine[Any, Any, T], fallback: T, *, bulk: bool = False) -> T:
        if not self._finalizer.alive:
            # Closed: the portal is gone, but the (closed, so I/O-free) async manager still
            # checks the arguments and answers degraded; run it on a throwaway loop.
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                return pool.submit(asyncio.run, coro).result()
        try:
            return self._portal.call(coro, self._bulk_timeout if bulk else self._timeout)
        except concurrent.futures.TimeoutError:
            # The core bounds every call itself; reaching this means the loop was starved.
            logger.warning("call did not finish in time; answering degraded")
            return fallback

    # -- lifecycle ----------------------------------------------------------------------------

    def connect(self) -> bool:
        """Contact the store (done by the constructor); whether the cache is enabled."""
        return self._run(self._live().connect(), False)

    def close(self) -> None:
        """Close connections and stop the private event loop. Idempotent."""
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
        return self._run(self._live().get(key), None)

    def set(self, key: str, value: Any, ttl: int | None = None) -> bool:
        """Set value with optional TTL in seconds (see ``AsyncCacheManager.set``)."""
        return self._run(self._live().set(key, value, ttl), False)

    def delete(self, key: str) -> bool:
        """Delete a single key; ``True`` when an entry was removed."""
        return self._run(self._live().delete(key), False)

    def delete_pattern(self, pattern: str) -> int:
        """Delete all keys matching a pattern under the prefix; the number deleted."""
        return self._run(self._live().delete_pattern(pattern), 0, bulk=True)

    def get_many(self, keys: Sequence[str]) -> list[Any | None]:
        """Get several keys in one round trip."""
        return self._run(self._live().get_many(keys), [None] * len(keys))

    def set_many(self, mapping: Mapping[str, Any], ttl: int | None = None) -> bool:
        """Store several values with one TTL."""
        return self._run(self._live().set_many(mapping, ttl), False)

    def exists(self, key: str) -> bool:
        """Whether ``key`` exists."""
        return self._run(self._live().exists(key), False)

    def ttl(self, key: str) -> int | None:
        """Seconds until ``key`` expires (-1 without expiry, None if absent)."""
        return self._run(self._live().ttl(key), None)

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
        result: list[float] | npt.NDArray[np.floating[Any]] | None = self._run(coro, None)
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
        return self._run(coro, False)

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
        result: list[Any] = self._run(coro, [None] * len(texts))
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
        return self._run(coro, False)

    def get_rag_results(self, agent_id: int, query: str) -> list[dict[str, Any]] | None:
        """Get cached RAG results."""
        return self._run(self._live().get_rag_results(agent_id, query), None)

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
        return self._run(coro, False)

    def get_rag_generation(self, agent_id: int) -> tuple[int, int] | None:
        """The agent's RAG generation (see ``AsyncCacheManager.get_rag_generation``)."""
        return self._run(self._live().get_rag_generation(agent_id), None)

    def invalidate_rag_results(self, agent_id: int) -> int:
        """Clear all RAG cache for agent."""
        return self._run(self._live().invalidate_rag_results(agent_id), 0)

    def invalidate_all_rag_results(self) -> bool:
        """Make every agent's cached RAG results unreadable."""
        return self._run(self._live().invalidate_all_rag_results(), False)

    def get_circle_context(self, circle_id: int) -> dict[str, Any] | None:
        """Get cached circle context."""
        return self._run(self._live().get_circle_context(circle_id), None)

    def set_circle_context(
        self, circle_id: int, context: dict[str, Any], ttl: int | None = None
    ) -> bool:
        """Cache circle context (default TTL: 10min)."""
        return self._run(self._live().set_circle_context(circle_id, context, ttl), False)

    def invalidate_circle_context(self, circle_id: int) -> bool:
        """Clear circle context cache."""
        return self._run(self._live().invalidate_circle_context(circle_id), False)

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
        return self._run(coro, None)

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
        return self._run(coro, False)

    def invalidate_llm_responses(self, namespace: str | None = None) -> int:
        """Delete the cached LLM responses of one namespace."""
        return self._run(self._live().invalidate_llm_responses(namespace), 0, bulk=True)

    # -- utilities ----------------------------------------------------------------------------

    def get_stats(self) -> dict[str, Any]:
        """Get cache statistics (hits, misses, hit rate); see ``AsyncCacheManager.get_stats``."""
        fallback = {"enabled": False, "reason": "get_stats did not finish in time"}
        return self._run(self._live().get_stats(), fallback, bulk=True)

    def reset_stats(self) -> None:
        """Zero the hit / miss / error counters."""
        self._run(_reset(self._live()), None)

    def clear_all(self) -> int:
        """Clear all cache keys under the prefix."""
        return self._run(self._live().clear_all(), 0, bulk=True)
