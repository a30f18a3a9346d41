"""``AsyncCacheManager``: the asyncio cache manager, the library's only implementation.

It exposes the whole cache API as coroutines (generic operations, embeddings, RAG results,
circle context, stats, clear_all, close) over one store. The sync :class:`CacheManager`
facade drives an instance of this class on a private event loop.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Mapping, Sequence
from types import CoroutineType, TracebackType
from typing import TYPE_CHECKING, Any, Literal, overload

from gathering_cache.backends.base import Capabilities
from gathering_cache.caches.circle import CircleCache
from gathering_cache.caches.embeddings import EmbeddingCache
from gathering_cache.caches.llm import LLMCache
from gathering_cache.caches.rag import RagCache
from gathering_cache.config import CacheConfig
from gathering_cache.core.engine import CacheCore, Locks, Messaging, Telemetry, checked_items
from gathering_cache.core.keys import GENERIC, check_key, check_limit, check_ttl
from gathering_cache.core.observe import Observer
from gathering_cache.errors import ArgumentTypeError
from gathering_cache.ops.fleet import FleetRecorder, fleet_stats, survey

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt
    from typing_extensions import Self

logger = logging.getLogger(__name__)

__all__ = ["AsyncCacheManager"]


class AsyncCacheManager:
    """Redis cache with graceful degradation, for asyncio code.

    Every operation returns promptly whatever Redis does: when Redis is missing, down, slow
    or the cache is disabled, reads return ``None``, writes ``False`` and deletions ``0``,
    and the application keeps working. Bad arguments raise (see :mod:`gathering_cache.errors`)
    before anything is written.

    Use one manager per event loop (its connections belong to the loop that opened them)::

        async with AsyncCacheManager.from_env() as cache:
            await cache.set_embedding("Hello world", [0.1, 0.2, 0.3])
            await cache.get_embedding("Hello world")

    Args:
        config: the configuration; ``CacheConfig()`` (the defaults) when omitted.
        client: an existing ``redis.asyncio`` client to use instead of building one from
            ``config`` (a ``Redis``, a ``RedisCluster`` or a fakeredis ``FakeAsyncRedis``). The
            manager does not close an injected client.

    Raises:
        ArgumentTypeError: ``config`` is not a ``CacheConfig``, or ``client`` is not a
            ``redis.asyncio`` client (a sync ``redis.Redis``, say). A client created with
            ``decode_responses=True`` raises an error that is also a ``ConfigurationError``.
    """

    def __init__(self, config: CacheConfig | None = None, *, client: Any = None) -> None:
        if config is None:
            config = CacheConfig()
        elif not isinstance(config, CacheConfig):
            raise ArgumentTypeError(f"config must be a CacheConfig, not {type(config).__name__}")
        self._core = CacheCore(config, client)
        self._embeddings = EmbeddingCache(self._core)
        self._rag = RagCache(self._core)
        self._circles = CircleCache(self._core)
        self._llm = LLMCache(self._core)
        self._messaging = Messaging(self._core)
        self._locks = Locks(self._core)
        self._telemetry = Telemetry(self._core)
        self._fleet: FleetRecorder | None = None
        if config.stats_flush_interval > 0 and config.enabled:
            self._fleet = FleetRecorder(
                self._telemetry, config.stats_flush_interval, config.stats_window
            )
            self._telemetry.attach(self._fleet.observe)

    @classmethod
    def from_env(cls, dotenv_path: str | os.PathLike[str] | None = None) -> AsyncCacheManager:
        """Create a manager configured from the environment (see ``CacheConfig.from_env``)."""
        return cls(CacheConfig.from_env(dotenv_path))

    @property
    def config(self) -> CacheConfig:
        """The (immutable) configuration in use."""
        return self._core.config

    @property
    def embeddings(self) -> EmbeddingCache:
        """The embedding cache (lower-level: :class:`CachedEmbedder` builds on it)."""
        return self._embeddings

    @property
    def capabilities(self) -> Capabilities:
        """What the store behind this cache is: its backend name, whether it is networked
        (shared with other processes), loop-bound, its concurrency limit, and why it is
        disabled (``None`` when it is not)."""
        return self._core.store.capabilities

    @property
    def messaging(self) -> Messaging:
        """Publish / subscribe on the cache's store under its policy (used by
        :class:`~gathering_cache.RedisEventBridge`)."""
        return self._messaging

    @property
    def locks(self) -> Locks:
        """Short-lived locks in the store under the policy: what single-flight (in
        ``CachedEmbedder`` and ``cached_completion``) coordinates processes with."""
        return self._locks

    @property
    def telemetry(self) -> Telemetry:
        """Fleet statistics and the store's introspection under the policy (used by the
        CLI, the dashboard and the metrics collector)."""
        return self._telemetry

    @property
    def fleet(self) -> FleetRecorder | None:
        """This process's fleet-statistics recorder (``None`` when
        ``stats_flush_interval`` is 0 or the cache is disabled)."""
        return self._fleet

    @property
    def llm(self) -> LLMCache:
        """The LLM response cache (lower-level: ``cached_completion`` builds on it)."""
        return self._llm

    # -- observers ----------------------------------------------------------------------------

    def add_observer(self, observer: Observer) -> None:
        """Report every store operation of this cache to ``observer``: a callable given one
        :class:`~gathering_cache.Operation` (op, namespace, outcome, duration, bytes, keys,
        hits) right after each operation ends, on the event loop. It must be quick and must
        not block; one that raises is logged once and removed. The cache's own statistics
        are such an observer; metrics and tracing attach the same way.

        Raises:
            ArgumentTypeError: ``observer`` is not callable.
        """
        self._core.add_observer(observer)

    def remove_observer(self, observer: Observer) -> bool:
        """Stop reporting to ``observer``; whether it was registered."""
        return self._core.remove_observer(observer)

    @property
    def observers(self) -> tuple[Observer, ...]:
        """The observers added with :meth:`add_observer`, in order."""
        return self._core.observers

    # -- lifecycle ----------------------------------------------------------------------------

    async def connect(self) -> bool:
        """Contact the store once. Never raises.

        Called by ``async with`` and lazily by the first operation. When Redis does not answer
        the manager runs degraded and probes again every ``recovery_interval`` seconds.

        Returns:
            Whether the cache is enabled (the same as :meth:`is_enabled` afterwards).
        """
        return await self._core.connect()

    async def aclose(self) -> None:
        """Fold this process's statistics into the store one last time, then close the
        connections this manager opened; later calls answer degraded."""
        try:
            # The last flush is I/O: only where this manager's connections live, and only
            # once it has talked to the store (closing an unused manager connects nowhere).
            if self._fleet is not None and self._core.used_here():
                await self._fleet.aclose()
        except Exception:  # a bug in the flush must not keep the manager open
            logger.exception("the final statistics flush failed; closing anyway")
        finally:
            await self._core.aclose()

    async def close(self) -> None:
        """Alias of :meth:`aclose`, awaitable."""
        await self.aclose()

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def is_enabled(self) -> bool:
        """Whether the cache is working: enabled in config and the store reachable.

        ``False`` while disabled, closed, or degraded after failures; it turns ``True`` again
        by itself once Redis answers. Before the first contact it reflects the config alone.
        """
        return self._core.policy.available

    # -- generic operations -------------------------------------------------------------------

    async def get(self, key: str) -> Any | None:
        """Get the value stored under ``key`` (a full key, used as given).

        Returns:
            The value, or ``None`` on a miss, an undecodable entry, or when unavailable.

        Raises:
            ArgumentTypeError: ``key`` is not a str. InvalidArgumentError: it is empty.
        """
        return await self._core.get(check_key(key), GENERIC)

    async def set(self, key: str, value: Any, ttl: int | None = None) -> bool:
        """Store a JSON-like value under ``key``, expiring after ``ttl`` seconds.

        ``ttl=None`` uses ``default_ttl`` (24 h): every key the library writes expires.
        Tuples come back as lists.

        Returns:
            ``True`` when stored; ``False`` when the cache is unavailable.

        Raises:
            ArgumentTypeError / InvalidArgumentError: bad key or ttl.
            SerializationError: the value cannot be encoded (nothing is written).
        """
        return await self._core.set(check_key(key), value, check_ttl(ttl))

    async def delete(self, key: str) -> bool:
        """Delete one key. Returns ``True`` when an entry was removed."""
        return await self._core.delete([check_key(key)]) > 0

    async def delete_pattern(self, pattern: str) -> int:
        """Delete every key matching a glob pattern that starts with ``key_prefix``.

        Uses SCAN (COUNT 1000) and UNLINK in batches, never KEYS, so the server is never
        blocked; bounded by ``bulk_timeout``.

        Returns:
            The number of keys deleted (those deleted before a fault, on a fault).

        Raises:
            PatternError: the pattern does not start with ``key_prefix``; nothing is deleted.
        """
        return await self._core.delete_pattern(self._core.keys.check_pattern(pattern))

    def scan_keys(
        self, pattern: str | None = None, *, namespace: str | None = None, count: int = 500
    ) -> AsyncIterator[str]:
        """Every key under ``key_prefix`` matching ``pattern``, listed with SCAN (never KEYS),
        one page of about ``count`` keys per round trip: ``async for key in
        cache.scan_keys(namespace="embedding"): ...``.

        Args:
            pattern: a glob pattern starting with ``key_prefix`` (default: every key under it).
            namespace: ``"embedding"``, ``"rag"``, ``"circle"`` or ``"llm"``: only keys under
                ``<key_prefix><namespace>:`` (a pattern must then lie under it too).
            count: the SCAN page size hint.

        A key may be listed twice (SCAN's guarantee is "at least once" for keys present
        throughout). When the store fails mid-way the listing ends early, without raising.

        Raises:
            PatternError: the pattern is outside the prefix (or the namespace).
            InvalidArgumentError: an unknown namespace, or ``count`` < 1. Raised by this call,
                before any iteration.
        """
        return self._scan(self._core.keys.listing(pattern, namespace), check_limit(count, "count"))

    async def _scan(self, pattern: str, count: int) -> AsyncIterator[str]:
        cursor = 0
        while True:
            page = await self._core.scan_page(pattern, cursor, count)
            if page is None:
                return
            cursor, keys = page
            for key in keys:
                yield key
            if not cursor:
                return

    async def get_many(self, keys: Sequence[str]) -> list[Any | None]:
        """Get several keys in one round trip; ``None`` where missing, in input order."""
        if isinstance(keys, (str, bytes)) or not isinstance(keys, Sequence):
            raise ArgumentTypeError(
                f"keys must be a sequence of str, not {type(keys).__name__}"
                + (" (a single str)" if isinstance(keys, str) else "")
            )
        return await self._core.get_many([check_key(key) for key in keys], GENERIC)

    async def set_many(self, mapping: Mapping[str, Any], ttl: int | None = None) -> bool:
        """Store several values with one TTL in one pipeline (not atomic across keys).

        Every value is encoded first: one unencodable value raises and nothing is written.
        """
        items, expiry = checked_items(mapping, ttl)
        return await self._core.set_many(items, expiry)

    async def exists(self, key: str) -> bool:
        """Whether ``key`` exists (``False`` when unavailable)."""
        return await self._core.exists(check_key(key))

    async def ttl(self, key: str) -> int | None:
        """Seconds until ``key`` expires: -1 without expiry, ``None`` if absent or unavailable."""
        return await self._core.ttl(check_key(key))

    # -- embeddings ---------------------------------------------------------------------------

    @overload
    async def get_embedding(
        self,
        text: str,
        *,
        model: str | None = None,
        dimensions: int | None = None,
        as_numpy: Literal[False] = False,
    ) -> list[float] | None: ...

    @overload
    async def get_embedding(
        self,
        text: str,
        *,
        model: str | None = None,
        dimensions: int | None = None,
        as_numpy: Literal[True],
    ) -> npt.NDArray[np.floating[Any]] | None: ...

    async def get_embedding(
        self,
        text: str,
        *,
        model: str | None = None,
        dimensions: int | None = None,
        as_numpy: bool = False,
    ) -> list[float] | npt.NDArray[np.floating[Any]] | None:
        """Get the cached embedding of ``text``.

        Args:
            text: the embedded text.
            model: the embedding model; with one, the entry is the model's own (pass it
                whenever you know it). Without, the model-less key is used.
            dimensions: the vector size the model was asked for, when the model has several.
                A stored vector of another length is a miss.
            as_numpy: return a numpy array (float32 or float64, as stored) instead of a list.

        Returns:
            The vector exactly as stored, or ``None``. During an outage (a fault, an open
            breaker, a shed call) the in-process LRU answers for vectors this process has
            seen; not while the cache is disabled or the manager closed.
        """
        return await self._embeddings.get(text, model, dimensions, as_numpy)

    async def set_embedding(
        self,
        text: str,
        embedding: Sequence[float],
        ttl: int | None = None,
        *,
        model: str | None = None,
        dimensions: int | None = None,
    ) -> bool:
        """Cache the embedding of ``text`` (default TTL ``embedding_ttl``, 24 h).

        The vector is stored as packed float32 when that is exact, else float64 (or always
        float32 with ``embedding_precision="float32"``).

        Raises:
            ArgumentTypeError: text not a str, or the embedding not a sequence of numbers.
            InvalidArgumentError: empty embedding, NaN or infinity in it, a length other than
                ``dimensions``, or a bad ttl.
        """
        return await self._embeddings.set(text, embedding, ttl, model, dimensions)

    @overload
    async def get_embeddings(
        self,
        texts: Sequence[str],
        *,
        model: str | None = None,
        dimensions: int | None = None,
        as_numpy: Literal[False] = False,
    ) -> list[list[float] | None]: ...

    @overload
    async def get_embeddings(
        self,
        texts: Sequence[str],
        *,
        model: str | None = None,
        dimensions: int | None = None,
        as_numpy: Literal[True],
    ) -> list[npt.NDArray[np.floating[Any]] | None]: ...

    async def get_embeddings(
        self,
        texts: Sequence[str],
        *,
        model: str | None = None,
        dimensions: int | None = None,
        as_numpy: bool = False,
    ) -> list[Any]:
        """Get the cached embeddings of several texts in one round trip (MGET; per-slot on a
        cluster). ``None`` where missing, in input order."""
        return await self._embeddings.get_many(texts, model, dimensions, as_numpy)

    async def set_embeddings(
        self,
        texts: Sequence[str],
        embeddings: Sequence[Sequence[float]],
        ttl: int | None = None,
        *,
        model: str | None = None,
        dimensions: int | None = None,
    ) -> bool:
        """Cache several embeddings in one pipeline (no transaction, cluster-safe).

        Every vector is checked first: one bad vector raises and nothing is written.
        """
        return await self._embeddings.set_many(texts, embeddings, ttl, model, dimensions)

    # -- RAG results --------------------------------------------------------------------------

    async def get_rag_results(self, agent_id: int, query: str) -> list[dict[str, Any]] | None:
        """Get cached RAG results of an unfiltered ``query`` by ``agent_id``."""
        return await self._rag.get(agent_id, query)

    async def set_rag_results(
        self,
        agent_id: int,
        query: str,
        results: list[dict[str, Any]],
        ttl: int | None = None,
        *,
        generation: tuple[int, int] | None = None,
    ) -> bool:
        """Cache RAG results (default TTL ``rag_results_ttl``, 5 min).

        Args:
            generation: what :meth:`get_rag_generation` returned *before* the results were
                computed. With it, results computed while the agent's memories changed are
                never served; without it, the current generation is read (one more round
                trip) and such a race is possible.

        Raises:
            ArgumentTypeError: agent_id not an int (bool included), query not a str, results
                not a list.
            SerializationError: results cannot be encoded (nothing is written).
        """
        return await self._rag.set(agent_id, query, results, ttl, generation)

    async def get_rag_generation(self, agent_id: int) -> tuple[int, int] | None:
        """The agent's RAG generation, to pass to :meth:`set_rag_results` after computing
        results (``None`` when unavailable)."""
        return await self._rag.generation(agent_id)

    async def invalidate_rag_results(self, agent_id: int) -> int:
        """Clear all cached RAG results of ``agent_id``; the number of entries removed.

        Never scans: the agent's generation counter is incremented (after which none of its
        entries is readable) and its indexed entries are unlinked; see
        :mod:`gathering_cache.caches.rag`.
        """
        return await self._rag.invalidate(agent_id)

    async def invalidate_all_rag_results(self) -> bool:
        """Make every agent's cached RAG results unreadable at once (O(1); the entries then
        expire with their TTL). ``False`` when unavailable."""
        return await self._rag.invalidate_all()

    # -- circle context -----------------------------------------------------------------------

    async def get_circle_context(self, circle_id: int) -> dict[str, Any] | None:
        """Get the cached context of a circle."""
        context = self._circles.get(circle_id)  # a near-cache hit: the value, no coroutine
        if type(context) is CoroutineType:
            return await context  # type: ignore[no-any-return]
        return context  # type: ignore[no-any-return]

    async def set_circle_context(
        self, circle_id: int, context: dict[str, Any], ttl: int | None = None
    ) -> bool:
        """Cache a circle's context (default TTL ``circle_context_ttl``, 10 min)."""
        return await self._circles.set(circle_id, context, ttl)

    async def invalidate_circle_context(self, circle_id: int) -> bool:
        """Clear a circle's cached context; ``True`` when an entry was removed."""
        return await self._circles.invalidate(circle_id)

    # -- LLM responses ------------------------------------------------------------------------

    async def get_llm_response(
        self,
        model: str,
        *,
        prompt: str | None = None,
        messages: list[dict[str, Any]] | None = None,
        namespace: str | None = None,
        force: bool = False,
        **params: Any,
    ) -> dict[str, Any] | None:
        """Get a cached LLM response.

        Args:
            model: the model name.
            prompt / messages: the request (exactly one of them).
            namespace: tenant isolation (an agent, a circle, a user).
            force: read even when the call is not deterministic.
            **params: every generation parameter (temperature, top_p, seed, max_tokens,
                tools, response_format, ...); they are part of the key.

        Returns:
            ``{"response", "usage", "model", "created_at"}``, or ``None`` on a miss, when
            unavailable, or when the call is not deterministic (temperature 0 or a seed)
            and ``force`` is not set.
        """
        return await self._llm.get(
            model,
            prompt=prompt,
            messages=messages,
            namespace=namespace,
            force=force,
            params=params,
        )

    async def set_llm_response(
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
        """Cache an LLM response (default TTL ``llm_response_ttl``, 1 h) with its token usage.

        Returns ``False`` without writing when the call is not deterministic and ``force``
        is not set.

        Raises:
            InvalidArgumentError: neither or both of prompt / messages. SerializationError:
                the response or a parameter cannot be encoded.
        """
        return await self._llm.set(
            model,
            response,
            prompt=prompt,
            messages=messages,
            usage=usage,
            namespace=namespace,
            ttl=ttl,
            force=force,
            params=params,
        )

    async def invalidate_llm_responses(self, namespace: str | None = None) -> int:
        """Delete the cached LLM responses of one namespace (``None``: the shared one)."""
        return await self._llm.invalidate(namespace)

    # -- utilities ----------------------------------------------------------------------------

    async def get_stats(self) -> dict[str, Any]:
        """Statistics of this cache.

        Keys: ``enabled``; ``reason`` (when not enabled); ``backend``; ``topology``
        (``"standalone"``, ``"cluster"`` or ``"sentinel"``); ``host``, ``port``,
        ``db``; ``key_prefix``; ``total_keys`` (keys under the prefix, counted with SCAN;
        ``None`` when unavailable or not counted within ``bulk_timeout``); ``hits``,
        ``misses``, ``hit_rate`` (percent, 2 decimals) of this process's own lookups;
        ``errors`` (undecodable entries read);
        ``writes`` / ``write_failures``; ``oversized`` (values above ``max_value_bytes``);
        ``llm_tokens_saved`` / ``llm_skipped``; ``namespaces`` (hits, misses, hit rate per
        embedding / rag / circle / llm / generic); ``breaker`` (state, consecutive failures,
        last error, outages, seconds degraded, calls shed, data errors, bulk timeouts);
        ``near_cache`` (``enabled``, and when on: ``serving``, ``hits``, ``misses``,
        ``size``, ``invalidations``);
        ``fleet``: every process's counters folded into the store, added up (see
        :func:`gathering_cache.ops.fleet.fleet_stats`; this process's as they are now).
        Never includes the password.
        """
        core = self._core
        await core.ready()
        policy = core.policy
        # One SCAN pass within one bulk_timeout: the keys, and the processes' counters.
        deadline = self._telemetry.deadline()
        listed = await survey(self._telemetry, deadline)
        total_keys = None if listed is None else listed[0]
        stats: dict[str, Any] = {"enabled": policy.available}
        if not policy.available:
            stats["reason"] = policy.reason or "degraded"
        stats["backend"] = core.store.capabilities.backend
        stats["topology"] = core.store.capabilities.topology
        location: dict[str, Any] = {"host": None, "port": None, "db": None}
        location.update(core.store.describe())
        stats.update(location)
        stats["key_prefix"] = core.config.key_prefix
        stats["total_keys"] = total_keys
        stats.update(core.stats.snapshot())
        stats["breaker"] = policy.snapshot()
        stats["near_cache"] = core.near_stats()
        stats["fleet"] = await fleet_stats(
            self._telemetry,
            self._fleet,
            keys=None if listed is None else listed[1],
            deadline=deadline,
        )
        return stats

    async def flush_stats(self) -> bool:
        """Fold this process's statistics into the store now (done every
        ``stats_flush_interval`` seconds and on close); whether the store took them
        (``False`` too when fleet statistics are off)."""
        if self._fleet is None:
            return False
        return await self._fleet.flush()

    def reset_stats(self) -> None:
        """Zero this process's counters (hits, misses, errors, writes, oversized, LLM)."""
        self._core.stats.reset()

    async def clear_all(self) -> int:
        """Delete every key under ``key_prefix`` (and nothing else); the number deleted."""
        return await self._core.delete_pattern(self._core.keys.everything())
