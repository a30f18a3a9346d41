"""The cache core shared by the manager and every domain cache: one store behind the
degradation policy, every call through one guarded call that reports to the observers.
Domain modules (embeddings, rag, circle, llm) build their keys and call these methods; none
of them touches the store directly.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import logging
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from time import monotonic, perf_counter
from types import CoroutineType
from typing import Any, Final

from gathering_cache.backends import Progress, Store, create_store
from gathering_cache.backends.base import Subscriber, Tracker
from gathering_cache.config import CacheConfig
from gathering_cache.core import encoding
from gathering_cache.core.keys import (
    EVENTS,
    GENERIC,
    LOCK,
    STATS,
    KeySpace,
    check_key,
    check_ttl,
)
from gathering_cache.core.near import NearCache
from gathering_cache.core.observe import Observer, Operation, Outcome
from gathering_cache.core.policy import BreakerState, DegradationPolicy
from gathering_cache.core.stats import CacheStats
from gathering_cache.errors import ArgumentTypeError, BackendError, PatternError

__all__ = [
    "UNAVAILABLE",
    "CacheCore",
    "Judge",
    "Locks",
    "Messaging",
    "Telemetry",
    "Unavailable",
]

logger = logging.getLogger(__name__)

_MISSING: Any = object()


class Unavailable(enum.Enum):
    """The type of :data:`UNAVAILABLE` (an enum of one, so ``x is UNAVAILABLE`` narrows)."""

    UNAVAILABLE = "UNAVAILABLE"

    def __repr__(self) -> str:
        return "UNAVAILABLE"


UNAVAILABLE: Final = Unavailable.UNAVAILABLE
"""Returned by the ``*_raw`` reads when the store could not answer, unlike ``None`` (a miss)."""

_HIT, _MISS = Outcome.HIT, Outcome.MISS  # module globals: found faster than enum attributes


async def _ready(value: Any) -> Any:
    """``value``, as a coroutine (what :meth:`CacheCore.read` returns for a near-cache hit)."""
    return value


_new_operation = object.__new__  # an Operation whose slots the near cache's hit path fills

DeletionListener = Callable[[Sequence[str] | None], None]
"""Told which keys this process deletes (``None``: a pattern, anything may be gone)."""


Judge = Callable[[Any], tuple[Any, int, int, int]]
"""How a domain reads what the store answered: given the store's reply (or
:data:`UNAVAILABLE` when it gave none), ``(value for the caller, hits, invalid, bytes)``:
how many lookups the caller gets a value for, how many entries were found but refused
(undecodable, another shape), and the value bytes read back."""


class CacheCore:
    """Encoded, counted, fault-tolerant operations on one store.

    Every store call goes through :meth:`guarded`: the policy around it (ready check,
    deadline, breaker, limiter), then one :class:`~gathering_cache.core.observe.Operation`
    reported to the observers (the first is this cache's stats). The domain caches use the
    few primitives built on it (:meth:`read`, :meth:`read_many`, :meth:`write`,
    :meth:`write_many`, :meth:`delete`, :meth:`counters` ...), each with its namespace.
    """

    def __init__(self, config: CacheConfig, client: Any = None) -> None:
        self.config = config
        self.keys = KeySpace(config.key_prefix)
        self.stats = CacheStats()
        self.store: Store = create_store(config, client)
        self.policy = DegradationPolicy(
            fault_types=self.store.fault_types,
            operation_timeout=config.operation_timeout,
            failure_threshold=config.failure_threshold,
            recovery_interval=config.recovery_interval,
            max_concurrency=self.store.capabilities.concurrency,
            is_data_error=self.store.is_data_error,
        )
        # The endpoint (redacted URL or host:port) for error messages and the outage reason.
        self.policy.endpoint = getattr(self.store, "where", None)
        reason = self.store.capabilities.disabled
        if reason is not None:  # disabled in config, or redis missing: never called
            self.policy.disable(reason)
            if config.enabled:
                logger.warning("%s; running without cache (degraded mode)", reason)
        self._observers: tuple[Observer, ...] = (self.stats.observe,)
        self._internal: tuple[Observer, ...] = (self.stats.observe,)
        self._connected = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready_on: asyncio.AbstractEventLoop | None = None
        self._deletion_listeners: list[DeletionListener] = []
        self._warned_oversized = False
        # The near cache (L1), when asked for and the store reports invalidations; kept
        # correct by a tracking task started on connect (see _track).
        self.near: NearCache | None = None
        self._tracking: asyncio.Task[None] | None = None
        if config.near_cache and self.store.capabilities.tracking:
            self.near = NearCache(
                config.near_cache_size, config.near_cache_ttl, config.near_cache_namespaces
            )
            self.on_delete(self.near.invalidate)
        self.read_value = self.decoder(None)
        """The judge of a plain encoded value (the generic key-value API)."""

    # -- observers ----------------------------------------------------------------------------

    def add_observer(self, observer: Observer) -> None:
        """Report every store operation to ``observer`` from now on (see
        :data:`~gathering_cache.core.observe.Observer`)."""
        if not callable(observer):
            raise ArgumentTypeError(f"observer must be callable, not {type(observer).__name__}")
        self._observers = (*self._observers, observer)

    def add_internal_observer(self, observer: Observer) -> None:
        """Add an observer of the library's own (fleet stats), not listed in
        :attr:`observers`."""
        self._internal = (*self._internal, observer)
        self._observers = (*self._observers, observer)

    @property
    def observers(self) -> tuple[Observer, ...]:
        """The observers added (the library's own, this cache's stats first, excluded)."""
        return tuple(o for o in self._observers if o not in self._internal)

    def remove_observer(self, observer: Observer) -> bool:
        """Stop reporting to ``observer``; whether it was registered."""
        kept = tuple(o for o in self._observers if o != observer)
        removed = len(kept) != len(self._observers)
        self._observers = kept
        return removed

    def emit(self, operation: Operation) -> None:
        """Hand ``operation`` to every observer. One that raises is logged and removed: an
        observer's bug never reaches a cache call."""
        for observer in self._observers:
            try:
                observer(operation)
            except Exception:
                self._drop(observer)

    def _drop(self, observer: Observer) -> None:
        logger.exception("cache observer %r failed; it is removed", observer)
        self.remove_observer(observer)

    def report(self, op: str, namespace: str, outcome: Outcome, keys: int = 1) -> None:
        """Report an operation the domain decided without the store (an earlier step of
        it could not complete): its outcome, taking no time."""
        self.emit(Operation(op, namespace, outcome, 0.0, 0, keys))

    def on_delete(self, listener: DeletionListener) -> None:
        """Register an in-process layer (an LRU) to forget what this process deletes."""
        self._deletion_listeners.append(listener)

    def _notify_deleted(self, keys: Sequence[str] | None) -> None:
        for listener in self._deletion_listeners:
            listener(keys)

    # -- lifecycle ----------------------------------------------------------------------------

    async def connect(self) -> bool:
        """PING the store once; on failure the policy opens (degraded) and retries later."""
        if self._loop is None and self.store.capabilities.loop_bound:
            self._loop = asyncio.get_running_loop()
        if self._connected:
            return self.policy.available
        self._connected = True
        if self.policy.state is BreakerState.DISABLED:
            return False
        ok = await self.guarded("connect", GENERIC, self._ping, fallback=False)
        if not ok and self.policy.consecutive_failures:
            # The first contact failed: degrade at once rather than after `failure_threshold`.
            # (A call shed by local load is no verdict on the store.)
            self.policy.trip()
        if self.near is not None and self._tracking is None:
            self._tracking = asyncio.ensure_future(self._track(self.near))
        return self.policy.available

    async def _track(self, near: NearCache) -> None:
        """Keep the near cache correct for ever (cancelled by :meth:`aclose`): establish
        tracking, then apply each invalidation. Whenever tracking is lost (a connection
        dropped, a failover), the near cache is flushed and serves nothing until tracking
        is established again, so no invalidation can have been missed by what it serves."""
        setup = max(1.0, 2 * self.config.operation_timeout)
        warned = False
        while self._tracking is not None:  # None once aclose began
            near.flush(serving=False)
            tracker = self.store.tracker(self.config.key_prefix)
            try:
                # Not wait_for: on Python 3.11 a cancellation (aclose) that arrives as it
                # times out can be lost, and aclose would wait for ever.
                starting = asyncio.ensure_future(tracker.start())
                try:
                    await asyncio.wait({starting}, timeout=setup)
                finally:
                    if not starting.done():
                        starting.cancel()
                if starting.cancelled():
                    raise BackendError(f"tracking not established within {setup:g} s")
                starting.result()
                near.tracker = tracker
                near.flush(serving=True)
                # The end of a tracking connection stops the near cache in the very turn
                # of the loop that sees it (get() below learns of it a few turns later):
                # no caller can have heard of a later write through this loop before.
                # (After flush(serving=True): a connection already ended stops it at once.)
                tracker.on_end(functools.partial(_stop_serving, near, tracker))
                if warned:
                    logger.warning("near cache serving again (tracking re-established)")
                    warned = False
                while self._tracking is not None:
                    keys = await tracker.get(1.0)
                    if keys is None or keys:
                        near.invalidate(keys)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any loss of tracking means: flush
                if not warned:
                    logger.warning("near cache flushed and paused: tracking lost (%s)", exc)
                    warned = True
            finally:
                near.flush(serving=False)
                near.tracker = None  # what an old connection's end no longer stops
                await tracker.close()
            if self._tracking is not None:
                await asyncio.sleep(self.config.recovery_interval)

    async def _ping(self) -> bool:
        await self.store.connect()
        return True

    def used_here(self) -> bool:
        """Whether this cache has contacted its store, from the running event loop (the one
        its connections belong to): then a last write on close makes sense here."""
        loop = asyncio.get_running_loop()
        return self._connected and (self._loop is None or self._loop is loop)

    async def aclose(self) -> None:
        tracking, self._tracking = self._tracking, None
        if tracking is not None:
            tracking.cancel()
            await asyncio.wait({tracking}, timeout=2.0)  # bounded, whatever redis-py does
        self.policy.disable("closed")
        self._notify_deleted(None)  # in-process layers forget everything
        self._connected = True
        await self.store.aclose()

    async def ready(self) -> None:
        """Connect on first use, and check the manager stays on its loop. Callers test
        ``self._ready_on is not asyncio.get_running_loop()`` first, so the usual call costs
        one comparison."""
        loop = asyncio.get_running_loop()
        if self.policy.state is BreakerState.DISABLED:
            self._ready_on = loop  # disabled or closed: no I/O, so any loop will do
            return
        if self._loop is not None and loop is not self._loop:
            raise RuntimeError(
                "this AsyncCacheManager is bound to the event loop it first ran on (its "
                "connections belong to that loop); create one manager per event loop"
            )
        if self.store.capabilities.loop_bound:
            self._loop = loop
        if not self._connected:
            await self.connect()
        self._ready_on = loop

    # -- the guarded call ---------------------------------------------------------------------

    async def guarded(
        self,
        op: str,
        namespace: str,
        call: Callable[..., Awaitable[Any]],
        *args: Any,
        fallback: Any = None,
        judge: Judge | None = None,
        success: Outcome = Outcome.DONE,
        keys: int = 1,
        nbytes: int = 0,
        timeout: float | None = None,
        bulk: bool = False,
    ) -> Any:
        """Run ``call(*args)`` (a store method) under the policy and report it: the one place
        every store operation passes.

        Without ``judge``: the store's result, or ``fallback`` when it gave none; reported
        with ``success`` as its outcome (``STORED`` for a write). With ``judge`` (a read):
        what the judge makes of the reply, or of :data:`UNAVAILABLE`; a hit or a miss.
        ``keys`` and ``nbytes`` are what the operation concerns and sends.
        """
        if self._ready_on is not asyncio.get_running_loop():
            await self.ready()
        started = perf_counter()
        if timeout is None and not bulk:
            result = await self.policy.run(call, UNAVAILABLE, *args)
        else:
            result = await self.policy.run(call, UNAVAILABLE, *args, timeout=timeout, bulk=bulk)
        if judge is not None:
            outcome = self.policy.verdict if result is UNAVAILABLE else None
            result, hits, invalid, read = judge(result)
            if outcome is None:
                outcome = _HIT if hits else _MISS
            report = Operation(
                op, namespace, outcome, perf_counter() - started, read, keys, hits, invalid
            )
        elif result is UNAVAILABLE:
            result = fallback
            report = Operation(
                op, namespace, self.policy.verdict, perf_counter() - started, 0, keys
            )
        else:
            report = Operation(op, namespace, success, perf_counter() - started, nbytes, keys)
        for observer in self._observers:  # emit(), inlined: this runs on every cache call
            try:
                observer(report)
            except Exception:
                self._drop(observer)
        return result

    # -- reads --------------------------------------------------------------------------------

    def decoder(self, accept: Callable[[Any], bool] | type | None) -> Judge:
        """The judge of one encoded value: decoded, and when ``accept`` is given, of the
        shape it accepts (a domain's own type); anything else is a miss, counted invalid.
        ``accept`` a JSON type (``dict``, ``list``): a value of exactly that type (what the
        decoder makes of a JSON object, array ...), checked inline: every near-cache hit
        passes here."""
        if isinstance(accept, type):
            return self._json_decoder(accept)

        decode, undecodable = encoding.decode, encoding.DecodeError

        def judge(raw: Any) -> tuple[Any, int, int, int]:
            if raw is None or raw is UNAVAILABLE:
                return None, 0, 0, 0
            try:  # _decode(), inlined: every hit of the near cache passes here
                value = decode(raw)
            except undecodable as exc:
                logger.debug("undecodable entry treated as a miss: %s", exc)
                return None, 0, 1, len(raw)
            if accept is not None and not accept(value):
                logger.debug("entry of unexpected shape treated as a miss")
                return None, 0, 1, len(raw)
            return value, 1, 0, len(raw)

        return judge

    @staticmethod
    def _json_decoder(kind: type) -> Judge:
        """:meth:`decoder` accepting JSON values of type ``kind``, :func:`encoding.decode`
        inlined (the same checks, in the same order)."""
        head, parse, corrupt = encoding.json_parts()
        skip = len(head)

        def judge(raw: Any) -> tuple[Any, int, int, int]:
            if raw is None or raw is UNAVAILABLE:
                return None, 0, 0, 0
            if raw[:skip] != head:
                logger.debug("undecodable entry treated as a miss: unknown envelope")
                return None, 0, 1, len(raw)
            try:
                value = parse(raw[skip:])
            except corrupt as exc:
                logger.debug("undecodable entry treated as a miss: corrupt payload: %s", exc)
                return None, 0, 1, len(raw)
            if type(value) is not kind:
                logger.debug("entry of unexpected shape treated as a miss")
                return None, 0, 1, len(raw)
            return value, 1, 0, len(raw)

        return judge

    @staticmethod
    def _decode(raw: bytes, accept: Callable[[Any], bool] | None = None) -> Any:
        try:
            value = encoding.decode(raw)
        except encoding.DecodeError as exc:
            logger.debug("undecodable entry treated as a miss: %s", exc)
            return _MISSING
        if accept is not None and not accept(value):
            logger.debug("entry of unexpected shape treated as a miss")
            return _MISSING
        return value

    def read(self, namespace: str, key: str, judge: Judge) -> Coroutine[Any, Any, Any]:
        """One lookup (GET), judged by the domain. (Plain functions returning the guarded
        call's coroutine, here and below: one coroutine frame less on every read.) Served
        by the near cache when it holds the key for a namespace it serves."""
        near = self.near
        if near is None or not near.serving or namespace not in near.namespaces:
            return self.guarded("get", namespace, self.store.get, key, judge=judge)
        found = self.lookup(namespace, key, judge)  # the near cache's hit, served now
        return found if type(found) is CoroutineType else _ready(found)

    def lookup(self, namespace: str, key: str, judge: Judge) -> Any:
        """:meth:`read` without a coroutine frame on a near-cache hit: the value itself
        when the near cache holds ``key`` (the hit reported like any read), else the
        coroutine of the read (a :data:`~types.CoroutineType`, for the caller to await).
        Only for a domain whose judge never yields a coroutine (decoded values never are)."""
        near = self.near
        if near is None or not near.serving or namespace not in near.namespaces:
            return self.guarded("get", namespace, self.store.get, key, judge=judge)
        started = perf_counter()
        entry = near.entries.get(key)  # NearCache.get inlined: held and fresh is a hit
        if entry is None or entry[1] < started:
            near.get(key, started)  # a miss: counted (and an expired entry dropped) there
            epoch = near.epoch  # a value read while an invalidation arrives is not kept

            def keep(reply: Any) -> tuple[Any, int, int, int]:
                if type(reply) is bytes:
                    near.put(key, reply, epoch)
                return judge(reply)

            return self.guarded("get", namespace, self.store.get, key, judge=keep)
        near.entries.move_to_end(key)
        near.hits += 1
        # A hit: decoded again (the caller gets a value of its own, never the state held),
        # and reported like any read. The Operation's slots are filled here rather than by
        # its __init__, and emit() is inlined: a hit costs ~2 us in all, this is most of it.
        result, hits, invalid, nbytes = judge(entry[0])
        report = _new_operation(Operation)
        report.op = "get"
        report.namespace = namespace
        report.outcome = _HIT if hits else _MISS
        report.duration = perf_counter() - started
        report.nbytes = nbytes
        report.keys = 1
        report.hits = hits
        report.invalid = invalid
        for observer in self._observers:
            try:
                observer(report)
            except Exception:
                self._drop(observer)
        return result

    async def _read_many_near(
        self,
        near: NearCache,
        namespace: str,
        keys: Sequence[str],
        judge: Judge,
        lookups: int | None,
    ) -> Any:
        started = perf_counter()
        count = len(keys) if lookups is None else lookups
        held = [near.get(key, started) for key in keys]
        missing = [key for key, data in zip(keys, held, strict=True) if data is None]
        if not missing:
            result, hits, invalid, nbytes = judge(held)
            outcome = _HIT if hits else _MISS
            self.emit(
                Operation(
                    "get_many", namespace, outcome, perf_counter() - started, nbytes, count,
                    hits, invalid,
                )
            )  # fmt: skip
            return result
        epoch = near.epoch

        def merge(reply: Any) -> tuple[Any, int, int, int]:
            if reply is UNAVAILABLE:
                return judge(reply)
            fetched = iter(reply)
            for key, raw in zip(missing, reply, strict=False):  # the store checks lengths
                if type(raw) is bytes:
                    near.put(key, raw, epoch)
            return judge([data if data is not None else next(fetched) for data in held])

        return await self.guarded(
            "get_many", namespace, self.store.get_many, missing, judge=merge, keys=count
        )

    def near_stats(self) -> dict[str, Any]:
        """The near cache's hits, misses, size and invalidations (``enabled`` False when
        it is off, or the store reports no invalidations)."""
        if self.near is None:
            return {"enabled": False}
        return {"enabled": True, **self.near.snapshot()}

    def read_many(
        self, namespace: str, keys: Sequence[str], judge: Judge, lookups: int | None = None
    ) -> Coroutine[Any, Any, Any]:
        """Several keys in one round trip (MGET, cluster-safe), judged together by the
        domain; ``lookups``: how many lookups they serve (default one per key). Keys the
        near cache holds are not asked for."""
        near = self.near
        if near is not None and near.serving and namespace in near.namespaces:
            return self._read_many_near(near, namespace, keys, judge, lookups)
        return self.guarded(
            "get_many",
            namespace,
            self.store.get_many,
            keys,
            judge=judge,
            keys=len(keys) if lookups is None else lookups,
        )

    def get(
        self, key: str, namespace: str, accept: Callable[[Any], bool] | None = None
    ) -> Coroutine[Any, Any, Any]:
        """The decoded value under ``key`` or ``None``; a hit or a miss."""
        judge = self.read_value if accept is None else self.decoder(accept)
        return self.read(namespace, key, judge)

    async def get_many(self, keys: Sequence[str], namespace: str) -> list[Any]:
        if not keys:
            return []
        values: list[Any] | None = await self.read_many(namespace, keys, self._judge_values)
        return [None] * len(keys) if values is None else values

    def _judge_values(self, raws: Any) -> tuple[list[Any] | None, int, int, int]:
        if raws is UNAVAILABLE:
            return None, 0, 0, 0
        values: list[Any] = []
        hits = invalid = nbytes = 0
        for raw in raws:
            if raw is None:
                values.append(None)
                continue
            nbytes += len(raw)
            value = self._decode(raw)
            if value is _MISSING:
                invalid += 1
                values.append(None)
            else:
                hits += 1
                values.append(value)
        return values, hits, invalid, nbytes

    # -- writes -------------------------------------------------------------------------------

    def fits(self, items: Sequence[tuple[str, bytes]]) -> bool:
        """Whether every value is within ``max_value_bytes`` (what :meth:`write` stores)."""
        limit = self.config.max_value_bytes
        return all(len(data) <= limit for _, data in items)

    def oversized(self, items: Sequence[tuple[str, bytes]]) -> bool:
        """Whether any value is above ``max_value_bytes`` (then none is stored): each one
        counted in stats, the first ever logged once."""
        limit = self.config.max_value_bytes
        big = [(key, len(data)) for key, data in items if len(data) > limit]
        if not big:
            return False
        self.stats.oversized += len(big)
        if not self._warned_oversized:
            self._warned_oversized = True
            logger.warning(
                "not storing %r: %d bytes encoded, above max_value_bytes=%d "
                "(further oversized values are counted in stats, not logged)",
                big[0][0],
                big[0][1],
                limit,
            )
        return True

    async def set(self, key: str, value: Any, ttl: int | None, namespace: str = GENERIC) -> bool:
        return await self.write(namespace, key, encoding.encode(value), ttl)  # encode raises first

    async def set_many(self, mapping: Mapping[str, Any], ttl: int | None) -> bool:
        items = [(key, encoding.encode(value)) for key, value in mapping.items()]
        return await self.write_many(GENERIC, items, ttl)

    async def write(self, namespace: str, key: str, data: bytes, ttl: int | None) -> bool:
        """Store encoded bytes (SET EX); ``ttl`` None: ``default_ttl`` (every key expires)."""
        if len(data) > self.config.max_value_bytes and self.oversized([(key, data)]):
            return False
        if self.near is not None:
            self.near.invalidate((key,))
        ok: bool = await self.guarded(
            "set",
            namespace,
            self.store.set,
            key,
            data,
            self.config.default_ttl if ttl is None else ttl,
            fallback=False,
            success=Outcome.STORED,
            nbytes=len(data),
        )
        return ok

    async def write_many(
        self,
        namespace: str,
        items: list[tuple[str, bytes]],
        ttl: int | None,
        index: str | None = None,
    ) -> bool:
        """Store several encoded values with one TTL (no cross-slot transaction). With
        ``index``, also list their keys in that index (a sorted set by expiry, see
        :meth:`Store.set_indexed`) when the store keeps indexes; when it does not, they are
        stored alone (they expire with their TTL)."""
        if self.oversized(items):
            return False
        if not items:
            if self._ready_on is not asyncio.get_running_loop():
                await self.ready()
            return self.policy.available  # nothing to write: "stored" only if we could have
        expiry = self.config.default_ttl if ttl is None else ttl
        nbytes = sum(len(data) for _, data in items)
        if self.near is not None:
            self.near.invalidate([key for key, _ in items])
        if index is not None and self.store.capabilities.indexes:
            call: Callable[..., Awaitable[Any]] = self.store.set_indexed
            args: tuple[Any, ...] = (items, expiry, index)
        else:
            call, args = self.store.set_many, (items, expiry)
        ok: bool = await self.guarded(
            "set_many",
            namespace,
            call,
            *args,
            fallback=False,
            success=Outcome.STORED,
            keys=len(items),
            nbytes=nbytes,
        )
        return ok

    # -- other operations ---------------------------------------------------------------------

    async def delete(self, keys: Sequence[str], namespace: str = GENERIC) -> int:
        self._notify_deleted(keys)
        deleted: int = await self.guarded(
            "delete", namespace, self.store.delete, keys, fallback=0, keys=len(keys)
        )
        return deleted

    async def exists(self, key: str) -> bool:
        found: bool = await self.guarded("exists", GENERIC, self.store.exists, key, fallback=False)
        return found

    async def ttl(self, key: str) -> int | None:
        left: int | None = await self.guarded("ttl", GENERIC, self.store.ttl, key)
        return left

    async def delete_pattern(self, pattern: str, namespace: str = GENERIC) -> int:
        """Delete keys matching a pattern already checked to lie under the prefix."""
        self._notify_deleted(None)
        progress = Progress(step_timeout=self.config.socket_timeout)
        # Counters (RAG generations) go too: one recreated starts at a fresh random value, so
        # deleting it cannot revive what it invalidated (see Store.counters).
        await self.guarded(
            "delete_pattern",
            namespace,
            self.store.scan_delete,
            pattern,
            progress,
            fallback=0,
            timeout=self.config.bulk_timeout,
            bulk=True,
        )
        # On a fault part-way, report what was deleted before it.
        return progress.done

    async def scan_page(
        self, pattern: str, cursor: int, count: int
    ) -> tuple[int, list[str]] | None:
        """One step of listing keys (see :meth:`Store.scan_page`); ``None`` when the store
        cannot answer (the listing ends there, incomplete)."""
        page: tuple[int, list[str]] | None = await self.guarded(
            "scan", GENERIC, self.store.scan_page, pattern, cursor, count
        )
        return page

    async def count(self, pattern: str) -> int | None:
        progress = Progress(step_timeout=self.config.socket_timeout)
        found: int | None = await self.guarded(
            "count",
            GENERIC,
            self.store.count,
            pattern,
            progress,
            timeout=self.config.bulk_timeout,
            bulk=True,
        )
        return found

    async def pop_index(self, namespace: str, index: str) -> list[str]:
        """Read and delete an index set: its members, unchecked (the caller must check them);
        ``[]`` when the store cannot answer or keeps no indexes."""
        if not self.store.capabilities.indexes:
            return []
        members: list[str] = await self.guarded(
            "pop_index", namespace, self.store.pop_index, index, fallback=[]
        )
        return members

    async def counters(
        self, namespace: str, keys: Sequence[str], amount: int, ttl: int
    ) -> list[int] | None:
        """Get-or-create each counter, add ``amount``, extend its expiry to at least ``ttl``
        (see :meth:`Store.counters`); ``None`` when the store cannot answer."""
        values: list[int] | None = await self.guarded(
            "counters", namespace, self.store.counters, keys, amount, ttl, keys=len(keys)
        )
        return values

    async def publish(self, channel: str, message: bytes) -> int | None:
        """Send on a pub/sub channel; subscribers reached, or ``None`` when unavailable."""
        count: int | None = await self.guarded(
            "publish", EVENTS, self.store.publish, channel, message, nbytes=len(message)
        )
        return count

    async def acquire_locks(
        self, keys: Sequence[str], token: str, ttl_ms: int
    ) -> list[bool] | Unavailable:
        """Take what locks can be taken; :data:`UNAVAILABLE` when the store cannot answer
        (or keeps no locks: then nobody can coordinate)."""
        if not self.store.capabilities.locks:
            return UNAVAILABLE
        result: list[bool] | Unavailable = await self.guarded(
            "acquire_locks",
            LOCK,
            self.store.acquire_locks,
            keys,
            token,
            ttl_ms,
            fallback=UNAVAILABLE,
            keys=len(keys),
        )
        return result

    async def release_locks(self, keys: Sequence[str], token: str) -> int:
        if not keys or not self.store.capabilities.locks:
            return 0
        released: int = await self.guarded(
            "release_locks", LOCK, self.store.release_locks, keys, token, fallback=0, keys=len(keys)
        )
        return released


def _stop_serving(near: NearCache, tracker: Tracker) -> None:
    """The end of one of ``tracker``'s connections: the near cache stops serving (until
    tracking is established again), unless ``tracker`` is no longer the one it relies on."""
    if near.tracker is tracker:
        near.flush(serving=False)


class Messaging:
    """Publish / subscribe on the cache's store, under its policy: the handle the event
    bridge works through (``AsyncCacheManager.messaging``), so it never reaches the store
    or the core itself.

    Publishing and subscribing are guarded calls like every other (deadline, breaker,
    limiter): while the cache is degraded they fail fast, and their faults count. Waiting
    for the next message is a long poll on the subscription's own connection, bounded by
    the timeout the caller gives.
    """

    __slots__ = ("_core",)

    def __init__(self, core: CacheCore) -> None:
        self._core = core

    @property
    def config(self) -> CacheConfig:
        return self._core.config

    @property
    def disabled(self) -> str | None:
        """Why the cache will never reach its store (disabled in config, closed), or None."""
        policy = self._core.policy
        return policy.reason if policy.state is BreakerState.DISABLED else None

    @property
    def open(self) -> bool:
        """Whether the cache is still open (it may be degraded for a while)."""
        return self._core.policy.may_use_fallbacks

    @property
    def faults(self) -> tuple[type[BaseException], ...]:
        """What a subscription raises when the store fails (then subscribe again later)."""
        return (*self._core.store.fault_types, BackendError, TimeoutError, asyncio.TimeoutError)

    async def publish(self, channel: str, message: bytes) -> int | None:
        """Send on a channel: subscribers reached, or ``None`` when unavailable."""
        return await self._core.publish(channel, message)

    async def subscribe(self, channel: str) -> Subscriber:
        """A started subscription. Raises one of :attr:`faults` when the store cannot
        subscribe now (a fault, or the breaker open)."""
        core = self._core
        subscriber = core.store.subscriber(channel)

        async def start() -> bool:
            await subscriber.start()
            return True

        if not await core.guarded("subscribe", EVENTS, start, fallback=False):
            await subscriber.close()
            raise BackendError(
                f"cannot subscribe to {channel}: {core.policy.reason or core.policy.last_error}"
            )
        return subscriber


class Locks:
    """Short-lived locks in the store, under the policy: the handle single-flight works
    through (``AsyncCacheManager.locks``), so it never reaches the store or the core."""

    __slots__ = ("_core",)

    def __init__(self, core: CacheCore) -> None:
        self._core = core

    def key(self, key: str) -> str:
        """The lock key guarding the computation of ``key`` (a key under the prefix)."""
        return self._core.keys.lock(key)

    async def acquire(
        self, keys: Sequence[str], token: str, ttl_ms: int
    ) -> list[bool] | Unavailable:
        """Take what locks can be taken (owned by ``token``, expiring after ``ttl_ms``);
        :data:`UNAVAILABLE` when the store cannot answer."""
        return await self._core.acquire_locks(keys, token, ttl_ms)

    async def release(self, keys: Sequence[str], token: str) -> int:
        """Release the locks ``token`` still owns; how many were released."""
        return await self._core.release_locks(keys, token)


class Telemetry:
    """The fleet statistics and the store's introspection, under the policy: the handle the
    ops wing (fleet stats, CLI, dashboard) works through (``AsyncCacheManager.telemetry``),
    so it never reaches the store or the core itself.

    Its writes go through the guarded call like every other (deadline, breaker, limiter;
    every key expires) under the ``stats`` namespace, which the cache's own hit/miss/write
    counters leave out.
    """

    __slots__ = ("_core",)

    def __init__(self, core: CacheCore) -> None:
        self._core = core

    @property
    def config(self) -> CacheConfig:
        return self._core.config

    @property
    def keys(self) -> KeySpace:
        """The key layout (``stats_process``, ``stats_minute`` ...)."""
        return self._core.keys

    @property
    def breaker(self) -> dict[str, Any]:
        """The degradation policy's state and counters (as ``get_stats()["breaker"]``)."""
        return self._core.policy.snapshot()

    @property
    def available(self) -> bool:
        """Whether the store is answering (not degraded, disabled or closed)."""
        return self._core.policy.available

    @property
    def endpoint(self) -> str | None:
        """Where the store is (a redacted URL or host:port; never the password)."""
        return self._core.policy.endpoint

    @property
    def reason(self) -> str | None:
        """Why the cache is not working (disabled, closed, the last error), or ``None``."""
        policy = self._core.policy
        if policy.available:
            return None
        return policy.reason or policy.last_error or "degraded"

    async def count(self, pattern: str, deadline: float | None = None) -> int | None:
        """How many keys match ``pattern`` (confined to the prefix; SCAN); ``None`` when
        unavailable or not done by ``deadline`` (:func:`time.monotonic`; default:
        ``bulk_timeout`` from now). Reported under the ``stats`` namespace."""
        pattern = self._core.keys.check_pattern(pattern, "telemetry counts")
        core = self._core
        progress = Progress(step_timeout=core.config.socket_timeout)
        found: int | None = await core.guarded(
            "count",
            STATS,
            core.store.count,
            pattern,
            progress,
            timeout=self._left(deadline),
            bulk=True,
        )
        return found

    def deadline(self) -> float:
        """A deadline ``bulk_timeout`` from now (:func:`time.monotonic`): the budget of one
        whole report."""
        return monotonic() + self._core.config.bulk_timeout

    def _within(self, deadline: float | None) -> float | None:
        """One operation's timeout: ``operation_timeout``, or less when ``deadline`` is
        nearer."""
        if deadline is None:
            return None
        return min(self._core.config.operation_timeout, self._left(deadline))

    def _left(self, deadline: float | None) -> float:
        if deadline is None:
            return self._core.config.bulk_timeout
        return max(deadline - monotonic(), 0.001)

    async def delete(self, keys: Sequence[str]) -> int:
        """Delete keys under the prefix (the CLI's clear, batch by batch); how many were."""
        prefix = self._core.keys.prefix
        for key in keys:
            if not key.startswith(prefix):
                raise PatternError(f"{key!r} is outside the key prefix {prefix!r}")
        return await self._core.delete(list(keys)) if keys else 0

    def attach(self, observer: Observer) -> None:
        """Report every operation to ``observer``, as the library's own (see
        :meth:`CacheCore.add_internal_observer`)."""
        self._core.add_internal_observer(observer)

    async def write(self, items: list[tuple[str, bytes]], ttl: int) -> bool:
        """Store encoded statistics (one pipeline, each key expiring after ``ttl``)."""
        return await self._core.write_many(STATS, items, check_ttl(ttl))

    async def read(self, keys: Sequence[str]) -> list[bytes | None] | None:
        """The raw values under ``keys`` (one round trip); ``None`` when unavailable."""
        if not keys:
            return []
        values: list[bytes | None] | None = await self._core.guarded(
            "read_stats", STATS, self._core.store.get_many, keys, keys=len(keys)
        )
        return values

    async def scan(
        self, pattern: str, count: int = 1000, deadline: float | None = None
    ) -> list[str] | None:
        """Every key matching ``pattern`` (confined to the prefix), SCAN page by page;
        ``None`` when the store fails, or ``deadline`` passes, before the listing ends."""
        found: list[str] = []
        complete = await self.walk(pattern, found.extend, deadline, count)
        return found if complete else None

    async def walk(
        self,
        pattern: str,
        visit: Callable[[list[str]], object],
        deadline: float | None = None,
        count: int = 1000,
    ) -> bool:
        """Hand each SCAN page of the keys matching ``pattern`` (confined to the prefix) to
        ``visit``; whether the listing ended (``False``: the store failed, or ``deadline``,
        :func:`time.monotonic`, default ``bulk_timeout`` from now, passed first). Every page
        is reported under the ``stats`` namespace, never as the application's own."""
        pattern = self._core.keys.check_pattern(pattern, "telemetry lists")
        core = self._core
        if deadline is None:
            deadline = self.deadline()
        cursor = 0
        while True:
            if monotonic() >= deadline:
                return False
            page: tuple[int, list[str]] | None = await core.guarded(
                "scan",
                STATS,
                core.store.scan_page,
                pattern,
                cursor,
                count,
                timeout=self._left(deadline),
                bulk=True,
            )
            if page is None:
                return False
            cursor, keys = page
            visit(keys)
            if not cursor:
                return True

    async def server_info(self, deadline: float | None = None) -> dict[str, Any]:
        """What the server says about itself (see :meth:`Store.server_info`); ``{}`` when
        unavailable."""
        info: dict[str, Any] = await self._core.guarded(
            "server_info",
            STATS,
            self._core.store.server_info,
            fallback={},
            timeout=self._within(deadline),
        )
        return info

    async def memory_usage(
        self, keys: Sequence[str], deadline: float | None = None
    ) -> list[int | None]:
        """Bytes each key takes (MEMORY USAGE); ``None`` where unknown or unavailable."""
        if not keys:
            return []
        sizes: list[int | None] | None = await self._core.guarded(
            "memory_usage",
            STATS,
            self._core.store.memory_usage,
            keys,
            keys=len(keys),
            timeout=self._within(deadline),
        )
        return [None] * len(keys) if sizes is None else sizes


def checked_items(mapping: object, ttl: object) -> tuple[Mapping[str, Any], int | None]:
    """Check ``set_many`` arguments: a mapping of str keys, and a ttl."""
    if not isinstance(mapping, Mapping):
        raise ArgumentTypeError(f"mapping must be a Mapping, not {type(mapping).__name__}")
    for key in mapping:
        check_key(key)
    return mapping, check_ttl(ttl)
