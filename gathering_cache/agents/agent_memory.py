"""Agent memory with a cached recall: :class:`MemoryManager` over a :class:`VectorStore`.

``remember`` / ``forget`` / ``share`` change an agent's memories and publish the events that
invalidate the affected RAG caches (see :mod:`gathering_cache.events.invalidation`); ``recall``
answers unfiltered queries from the RAG cache (5 min) and embeds the query through a
:class:`~gathering_cache.CachedEmbedder` (24 h), so a repeated recall costs one Redis round
trip instead of an embedding API call and a vector search. Filtered queries skip the RAG
cache.

:class:`InMemoryVectorStore` (cosine similarity; numpy when installed) is shipped for examples
and tests; any object with ``add`` / ``search`` / ``delete`` (and ``share``) can take its place.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import itertools
import logging
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from gathering_cache.agents.cached_embedder import BatchFunction, CachedEmbedder
from gathering_cache.agents.providers import EmbeddingProvider
from gathering_cache.core import encoding
from gathering_cache.core.keys import check_id, check_limit, check_text
from gathering_cache.errors import ArgumentTypeError, InvalidArgumentError, SerializationError
from gathering_cache.events.bridge import RedisEventBridge
from gathering_cache.events.bus import Event, EventBus, EventType
from gathering_cache.events.invalidation import CacheInvalidator
from gathering_cache.manager import AsyncCacheManager

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["InMemoryVectorStore", "MemoryManager", "VectorStore"]

logger = logging.getLogger(__name__)


def _optional_id(value: object, name: str) -> int | None:
    return None if value is None else check_id(value, name)


@functools.lru_cache(maxsize=64)
def _accepts_cached(function: Any, name: str) -> bool:
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):  # a builtin without a signature: do not guess
        return False
    return name in parameters or any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()
    )


def _accepts(method: Any, name: str) -> bool:
    """Whether ``method`` takes a keyword argument ``name``."""
    return _accepts_cached(getattr(method, "__func__", method), name)


@runtime_checkable
class VectorStore(Protocol):
    """Where memories live. ``search`` returns dicts with at least ``id``, ``content`` and
    ``score``, best first, among the memories ``agent_id`` can see."""

    async def add(
        self, agent_id: int, content: str, vector: list[float], metadata: dict[str, Any]
    ) -> str: ...

    async def search(
        self,
        agent_id: int,
        vector: list[float],
        limit: int,
        filters: Mapping[str, Any] | None = None,
    ) -> list[dict[str, Any]]: ...

    async def delete(self, memory_id: str) -> bool: ...


@dataclass
class _Memory:
    id: str
    agent_id: int
    content: str
    vector: list[float]
    norm: float
    metadata: dict[str, Any]
    visible_to: set[int] = field(default_factory=set)


class InMemoryVectorStore:
    """Memories in a dict, searched by cosine similarity (for examples, tests, prototypes)."""

    def __init__(self) -> None:
        self._memories: dict[str, _Memory] = {}
        self._ids = itertools.count(1)
        self.searches = 0

    def __len__(self) -> int:
        return len(self._memories)

    async def add(
        self, agent_id: int, content: str, vector: list[float], metadata: dict[str, Any]
    ) -> str:
        memory_id = f"mem-{next(self._ids)}"
        norm = math.sqrt(sum(v * v for v in vector)) or 1.0
        self._memories[memory_id] = _Memory(
            memory_id, agent_id, content, list(vector), norm, dict(metadata), {agent_id}
        )
        return memory_id

    async def share(self, memory_id: str, agent_ids: Sequence[int]) -> int | None:
        """Make a memory visible to more agents; its owner, or ``None`` if unknown."""
        memory = self._memories.get(memory_id)
        if memory is None:
            return None
        memory.visible_to.update(agent_ids)
        return memory.agent_id

    def audience(self, memory_id: str) -> tuple[int, set[int]] | None:
        """The owner of a memory and every agent who can see it, or ``None`` if unknown."""
        memory = self._memories.get(memory_id)
        return None if memory is None else (memory.agent_id, set(memory.visible_to))

    async def search(
        self,
        agent_id: int,
        vector: list[float],
        limit: int,
        filters: Mapping[str, Any] | None = None,
    ) -> list[dict[str, Any]]:
        self.searches += 1
        query_norm = math.sqrt(sum(v * v for v in vector)) or 1.0
        scored = []
        for memory in self._memories.values():
            if agent_id not in memory.visible_to:
                continue
            if filters and any(memory.metadata.get(k) != v for k, v in filters.items()):
                continue
            dot = sum(a * b for a, b in zip(vector, memory.vector, strict=False))
            scored.append((dot / (query_norm * memory.norm), memory))
        scored.sort(key=lambda pair: pair[0], reverse=True)
        return [
            {
                "id": memory.id,
                "agent_id": memory.agent_id,
                "content": memory.content,
                "score": round(score, 6),
                "metadata": memory.metadata,
            }
            for score, memory in scored[:limit]
        ]

    async def delete(self, memory_id: str) -> bool:
        return self._memories.pop(memory_id, None) is not None


class MemoryManager:
    """Remember, recall and forget agent memories, with recall cached (see module doc).

    Args:
        cache: the cache manager (RAG results, embeddings, circle context).
        embedder: a :class:`CachedEmbedder`, or a provider / batch function to wrap in one.
        vector_store: where memories live (an :class:`InMemoryVectorStore` by default).
        bus: the event bus (a new one by default); remember / forget / share publish on it,
            and a :class:`CacheInvalidator` subscribed to it keeps the caches fresh.
        default_limit: results per recall when no ``limit`` is given.
    """

    def __init__(
        self,
        cache: AsyncCacheManager,
        embedder: CachedEmbedder | EmbeddingProvider | BatchFunction,
        vector_store: VectorStore | None = None,
        bus: EventBus | None = None,
        *,
        default_limit: int = 5,
    ) -> None:
        if not isinstance(cache, AsyncCacheManager):
            raise ArgumentTypeError(
                f"cache must be an AsyncCacheManager, not {type(cache).__name__}"
            )
        if vector_store is not None and not isinstance(vector_store, VectorStore):
            raise ArgumentTypeError(
                "vector_store must have add / search / delete (a VectorStore), not "
                f"{type(vector_store).__name__}"
            )
        if bus is not None and not isinstance(bus, EventBus):
            raise ArgumentTypeError(f"bus must be an EventBus, not {type(bus).__name__}")
        self.cache = cache
        self.embedder = (
            embedder if isinstance(embedder, CachedEmbedder) else CachedEmbedder(embedder, cache)
        )
        self.store: VectorStore = (
            vector_store if vector_store is not None else InMemoryVectorStore()
        )
        self.bus = bus if bus is not None else EventBus()
        self.invalidator = CacheInvalidator(cache, self.bus)
        self.default_limit = check_limit(default_limit, "default_limit")
        self.bridge: RedisEventBridge | None = None
        self.recalls = 0
        self.recalls_from_cache = 0
        # Agents whose background invalidation (invalidate_cache) has not finished: their
        # cache is not read meanwhile. The tasks also keep them alive (asyncio holds only weak
        # references to tasks).
        self._dirty: dict[int, set[asyncio.Task[int]]] = {}
        self._warned_uncacheable = False
        self._owned: list[Any] = []

    @classmethod
    def from_env(cls, dotenv_path: str | os.PathLike[str] | None = None) -> MemoryManager:
        """A manager wired from the environment: the cache (REDIS_*, CACHE_ENABLED,
        GATHERING_CACHE_*), the embedder (OPENAI_*), an in-memory vector store, and — on
        Redis — an event bridge to the other processes, started on first use. :meth:`aclose`
        releases them.

        Raises:
            ConfigurationError: OPENAI_API_KEY is not set while OPENAI_BASE_URL is OpenAI's
                own API (the default), or another invalid setting.
        """
        embedder = CachedEmbedder.from_env(dotenv_path)
        manager = cls(embedder.cache, embedder)
        manager._owned = [embedder]
        if embedder.cache.capabilities.networked:  # events reach other processes
            manager.bridge = RedisEventBridge(manager.bus, embedder.cache)
        return manager

    async def aclose(self) -> None:
        if self.bridge is not None:
            await self.bridge.stop()
        for owned in self._owned:
            await owned.aclose()
        self._owned = []

    async def __aenter__(self) -> Self:
        await self._start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def _start(self) -> None:
        if self.bridge is not None and self.bridge._task is None:
            await self.bridge.start()

    # -- writing memories ---------------------------------------------------------------------

    async def remember(
        self,
        agent_id: int,
        content: str,
        *,
        metadata: Mapping[str, Any] | None = None,
        circle_id: int | None = None,
        project_id: int | None = None,
    ) -> str:
        """Store a memory of ``agent_id``; publishes MEMORY_CREATED (the agent's RAG cache is
        cleared before this returns). Returns the memory id.

        Raises:
            ArgumentTypeError: an id that is not an int, content not a str, metadata not a
                mapping.
            InvalidArgumentError: content that is not valid Unicode (a lone surrogate).
            SerializationError: metadata that is not JSON-like (a datetime, a set, NaN ...):
                recall results carry it into the cache. Nothing is stored.
        """
        await self._start()
        agent_id = check_id(agent_id, "agent_id")
        check_text(content, "content")
        circle_id = _optional_id(circle_id, "circle_id")
        project_id = _optional_id(project_id, "project_id")
        if metadata is not None and not isinstance(metadata, Mapping):
            raise ArgumentTypeError(f"metadata must be a mapping, not {type(metadata).__name__}")
        stored = dict(metadata or {})
        try:
            # Search results carry the metadata into the RAG cache: what it cannot hold
            # (a datetime, a set ...) would make every later recall of this agent fail.
            encoding.encode(stored)
        except SerializationError as exc:
            raise SerializationError(
                f"metadata must be JSON-like (str, number, bool, None, list, dict), since "
                f"recall results are cached: {exc}"
            ) from None
        vector = await self.embedder.embed(content)
        memory_id = await self.store.add(agent_id, content, vector, stored)
        await self.bus.publish(
            Event(
                EventType.MEMORY_CREATED,
                {"memory_id": memory_id, "agent_id": agent_id},
                source_agent_id=agent_id,
                circle_id=circle_id,
                project_id=project_id,
            )
        )
        return memory_id

    async def share(
        self,
        memory_id: str,
        *,
        members: Iterable[int] | None = None,
        circle_id: int | None = None,
        project_id: int | None = None,
    ) -> None:
        """Make a memory visible to other agents (a circle's or a project's members) and
        publish MEMORY_SHARED: every agent that can now see it gets a fresh recall.

        ``members`` may be omitted for a circle whose context (with ``members``) is cached;
        with membership unknown, every agent's RAG results are invalidated (O(1)), and the
        vector store is asked to share with no agent named: a store whose ``share`` takes
        ``circle_id=`` / ``project_id=`` keywords receives them and resolves the members
        itself; :class:`InMemoryVectorStore`, which knows no circles, widens nobody's view.

        Raises:
            ArgumentTypeError: memory_id not a str, members not an iterable of ints (a list,
                a set ...), an id that is not an int.
            InvalidArgumentError: unknown memory, or a store without ``share``.
        """
        await self._start()
        if not isinstance(memory_id, str):
            raise ArgumentTypeError(f"memory_id must be a str, not {type(memory_id).__name__}")
        circle_id = _optional_id(circle_id, "circle_id")
        project_id = _optional_id(project_id, "project_id")
        if members is not None:
            if isinstance(members, (str, bytes, Mapping)) or not isinstance(members, Iterable):
                raise ArgumentTypeError(
                    f"members must be a sequence of agent ids, not {type(members).__name__}"
                )
            members = [check_id(m, "members[]") for m in members]
        elif circle_id is not None:
            context = await self.cache.get_circle_context(circle_id)
            if context is not None and isinstance(context.get("members"), list):
                members = [
                    m for m in context["members"] if isinstance(m, int) and not isinstance(m, bool)
                ]
        share = getattr(self.store, "share", None)
        if share is None:
            raise InvalidArgumentError("this vector store cannot share memories")
        scope = {
            name: value
            for name, value in (("circle_id", circle_id), ("project_id", project_id))
            if value is not None and _accepts(share, name)
        }
        owner = await share(memory_id, list(members or []), **scope)
        if owner is None:
            raise InvalidArgumentError(f"unknown memory {memory_id!r}")
        data: dict[str, Any] = {"memory_id": memory_id, "agent_id": owner}
        if members is not None:
            data["members"] = list(members)
        # Without members, CacheInvalidator looks for the circle's cached context once more,
        # then invalidates every agent's RAG results.
        await self.bus.publish(
            Event(
                EventType.MEMORY_SHARED,
                data,
                source_agent_id=owner,
                circle_id=circle_id,
                project_id=project_id,
            )
        )

    async def forget(self, agent_id: int, memory_id: str) -> bool:
        """Delete a memory of ``agent_id``; publishes MEMORY_DELETED naming everyone who could
        see it, so no cached recall keeps serving it. ``False`` if it did not exist.

        Raises:
            InvalidArgumentError: the memory belongs to another agent.
        """
        await self._start()
        agent_id = check_id(agent_id, "agent_id")
        if not isinstance(memory_id, str):
            raise ArgumentTypeError(f"memory_id must be a str, not {type(memory_id).__name__}")
        audience = getattr(self.store, "audience", None)
        seen_by = audience(memory_id) if callable(audience) else None
        if seen_by is not None and seen_by[0] != agent_id:
            raise InvalidArgumentError(
                f"memory {memory_id!r} belongs to agent {seen_by[0]}, not {agent_id}"
            )
        deleted = await self.store.delete(memory_id)
        if deleted:
            data: dict[str, Any] = {"memory_id": memory_id, "agent_id": agent_id}
            if seen_by is not None:
                data["members"] = sorted(seen_by[1])
            await self.bus.publish(Event(EventType.MEMORY_DELETED, data, source_agent_id=agent_id))
        return deleted

    # -- reading --------------------------------------------------------------------------------

    async def recall(
        self,
        agent_id: int,
        query: str,
        *,
        limit: int | None = None,
        filters: Mapping[str, Any] | None = None,
    ) -> list[dict[str, Any]]:
        """The memories of ``agent_id`` closest to ``query``, best first.

        Unfiltered recalls of the default size go through the RAG cache; filtered ones (and
        other limits) always search. Results the cache cannot hold (a custom store's
        datetime field) are returned uncached, with one warning.

        Raises:
            ArgumentTypeError: agent_id or limit not an int, query not a str, filters not a
                mapping.
            InvalidArgumentError: limit <= 0, a query that is not valid Unicode.
        """
        await self._start()
        agent_id = check_id(agent_id, "agent_id")
        check_text(query, "query")
        if filters is not None and not isinstance(filters, Mapping):
            raise ArgumentTypeError(f"filters must be a mapping, not {type(filters).__name__}")
        limit = self.default_limit if limit is None else check_limit(limit)
        self.recalls += 1
        cacheable = not filters and limit == self.default_limit
        if cacheable and agent_id in self._dirty:
            cacheable = not await self._invalidating(agent_id)
        generation = None
        if cacheable:
            cached = await self.cache.get_rag_results(agent_id, query)
            # Stored data is not trusted: recall returns dicts, whatever was planted.
            if cached is not None and all(isinstance(r, dict) for r in cached):
                self.recalls_from_cache += 1
                return cached
            # Read before computing: results computed across an invalidation are never served.
            generation = await self.cache.get_rag_generation(agent_id)
        vector = await self.embedder.embed(query)
        results = await self.store.search(agent_id, vector, limit, filters or None)
        if cacheable and generation is not None:
            try:
                await self.cache.set_rag_results(agent_id, query, results, generation=generation)
            except (SerializationError, ArgumentTypeError) as exc:
                # The store returned what the cache cannot hold (remember() refuses such
                # metadata, but another store may add fields of its own): answer uncached.
                self._warn_uncacheable(exc)
        return results

    def _warn_uncacheable(self, exc: Exception) -> None:
        log = logger.debug if self._warned_uncacheable else logger.warning
        self._warned_uncacheable = True
        log("recall results not cached (said once): %s", exc)

    def invalidate_cache(self, agent_id: int) -> asyncio.Task[int]:
        """Clear the RAG cache of ``agent_id``.

        Called from async code, without ``await``: this process stops reading the
        agent's cache at once, and the invalidation runs in the background. Await the
        returned task to wait for it (its result is the number of entries removed).

        Raises:
            ArgumentTypeError: agent_id is not an int.
            RuntimeError: no event loop is running in this thread (sync code). The manager's
                connections belong to the loop it runs on, so the invalidation must run
                there: from sync code on another thread, use
                ``asyncio.run_coroutine_threadsafe(memory.cache.invalidate_rag_results(agent_id),
                loop).result()``. Nothing is changed.
        """
        agent_id = check_id(agent_id, "agent_id")
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            # Checked before marking the agent: a mark without a task would never be cleared.
            raise RuntimeError(
                "memory.invalidate_cache() schedules the invalidation on the running event "
                "loop, and none is running in this thread. Call it from async code (no await "
                "needed), `await memory.cache.invalidate_rag_results(agent_id)`, or from "
                "another thread: asyncio.run_coroutine_threadsafe("
                "memory.cache.invalidate_rag_results(agent_id), loop).result()"
            ) from None
        task = loop.create_task(self.cache.invalidate_rag_results(agent_id))
        self._dirty.setdefault(agent_id, set()).add(task)

        def done(_: asyncio.Task[int]) -> None:
            tasks = self._dirty.get(agent_id)
            if tasks is not None:
                tasks.discard(task)
                if not tasks:
                    del self._dirty[agent_id]

        task.add_done_callback(done)
        return task

    async def _invalidating(self, agent_id: int) -> bool:
        """Whether an invalidation of ``agent_id`` started by :meth:`invalidate_cache` is still
        running. A task whose loop was closed before it finished never will (nor will its
        done callback run): its invalidation is done here instead, so the agent is neither
        served stale results nor kept off the cache forever."""
        tasks = self._dirty.get(agent_id, set())
        orphaned = [t for t in tasks if not t.done() and t.get_loop().is_closed()]
        tasks.difference_update([t for t in tasks if t.done()] + orphaned)
        if orphaned:
            await self.cache.invalidate_rag_results(agent_id)
        if tasks:
            return True
        self._dirty.pop(agent_id, None)
        return False

    def stats(self) -> dict[str, Any]:
        return {
            "recalls": self.recalls,
            "recalls_from_cache": self.recalls_from_cache,
            "embedder": self.embedder.stats.snapshot(),
            "bridge": self.bridge.stats() if self.bridge is not None else None,
        }
