"""The cache core shared by the manager and every domain cache: encoding, key checks, stats
and the degradation policy around one store. Domain modules (embeddings, rag, circle) build
their keys and call these methods; none of them touches the store directly.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

from gathering_cache.backends import Progress, Store, create_store
from gathering_cache.backends.base import Subscriber
from gathering_cache.config import CacheConfig
from gathering_cache.core import encoding
from gathering_cache.core.keys import KeySpace, check_key, check_ttl
from gathering_cache.core.policy import BreakerState, DegradationPolicy
from gathering_cache.core.stats import CacheStats
from gathering_cache.errors import ArgumentTypeError, BackendError

__all__ = ["UNAVAILABLE", "CacheCore", "Locks", "Messaging", "Unavailable"]

logger = logging.getLogger(__name__)

_MISSING: Any = object()


class Unavailable(enum.Enum):
    """The type of :data:`UNAVAILABLE` (an enum of one, so ``x is UNAVAILABLE`` narrows)."""

    UNAVAILABLE = "UNAVAILABLE"

    def __repr__(self) -> str:
        return "UNAVAILABLE"


UNAVAILABLE: Final = Unavailable.UNAVAILABLE
"""Returned by the ``*_raw`` reads when the store could not answer, unlike ``None`` (a miss)."""

DeletionListener = Callable[[Sequence[str] | None], None]
"""Told which keys this process deletes (``None``: a pattern, anything may be gone)."""


class CacheCore:
    """Encoded, counted, fault-tolerant operations on one store."""

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
        self._connected = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready_on: asyncio.AbstractEventLoop | None = None
        self._deletion_listeners: list[DeletionListener] = []
        self._warned_oversized = False

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
        ok = await self.policy.run(self._ping, False)
        if not ok and self.policy.consecutive_failures:
            # The first contact failed: degrade at once rather than after `failure_threshold`.
            # (A call shed by local load is no verdict on the store.)
            self.policy.trip()
        return self.policy.available

    async def _ping(self) -> bool:
        await self.store.connect()
        return True

    async def aclose(self) -> None:
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

    # -- generic operations -------------------------------------------------------------------

    def _decode(self, raw: bytes, accept: Callable[[Any], bool] | None = None) -> Any:
        try:
            value = encoding.decode(raw)
        except encoding.DecodeError as exc:
            self.stats.errors += 1
            logger.debug("undecodable entry treated as a miss: %s", exc)
            return _MISSING
        if accept is not None and not accept(value):
            self.stats.errors += 1
            logger.debug("entry of unexpected shape treated as a miss")
            return _MISSING
        return value

    async def get_raw(self, key: str) -> bytes | Unavailable | None:
        """The bytes under ``key``; ``None`` on a miss; :data:`UNAVAILABLE` on a fault."""
        if self._ready_on is not asyncio.get_running_loop():
            await self.ready()
        result: bytes | Unavailable | None = await self.policy.run(self.store.get, UNAVAILABLE, key)
        return result

    async def get_many_raw(self, keys: Sequence[str]) -> list[bytes | None] | Unavailable:
        """The bytes under each key (one round trip); :data:`UNAVAILABLE` on a fault."""
        if self._ready_on is not asyncio.get_running_loop():
            await self.ready()
        result: list[bytes | None] | Unavailable = await self.policy.run(
            self.store.get_many, UNAVAILABLE, keys
        )
        return result

    async def get(
        self, key: str, namespace: str, accept: Callable[[Any], bool] | None = None
    ) -> Any:
        """The decoded value under ``key`` or ``None``; counted as a hit or a miss.

        ``accept`` checks the decoded value's shape (a domain's own type): a value it
        refuses is a miss, counted as an error, like bytes that do not decode.
        """
        if self._ready_on is not asyncio.get_running_loop():
            await self.ready()
        raw = await self.policy.run(self.store.get, UNAVAILABLE, key)
        counter = self.stats.namespaces[namespace]
        if raw is None or raw is UNAVAILABLE:
            counter.misses += 1
            return None
        value = self._decode(raw, accept)
        if value is _MISSING:
            counter.misses += 1
            return None
        counter.hits += 1
        return value

    async def get_many(self, keys: Sequence[str], namespace: str) -> list[Any]:
        if not keys:
            return []
        raws = await self.get_many_raw(keys)
        if raws is UNAVAILABLE:
            self.stats.miss(namespace, len(keys))
            return [None] * len(keys)
        values: list[Any] = []
        hits = 0
        for raw in raws:
            value = _MISSING if raw is None else self._decode(raw)
            if value is _MISSING:
                values.append(None)
            else:
                hits += 1
                values.append(value)
        self.stats.hit(namespace, hits)
        self.stats.miss(namespace, len(keys) - hits)
        return values

    async def set(self, key: str, value: Any, ttl: int | None) -> bool:
        return await self.set_raw(key, encoding.encode(value), ttl)  # encode raises first

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

    async def set_raw(self, key: str, data: bytes, ttl: int | None) -> bool:
        if self.oversized([(key, data)]):
            return False
        if self._ready_on is not asyncio.get_running_loop():
            await self.ready()
        if ttl is None:  # every key the library writes expires
            ttl = self.config.default_ttl
        ok = await self.policy.run(self.store.set, False, key, data, ttl)
        self._count_write(ok)
        return ok

    async def set_many(self, mapping: Mapping[str, Any], ttl: int | None) -> bool:
        items = [(key, encoding.encode(value)) for key, value in mapping.items()]
        return await self.set_many_raw(items, ttl)

    async def set_many_raw(self, items: list[tuple[str, bytes]], ttl: int | None) -> bool:
        if self.oversized(items):
            return False
        if self._ready_on is not asyncio.get_running_loop():
            await self.ready()
        if not items:
            return self.policy.available  # nothing to write: "stored" only if we could have
        if ttl is None:  # every key the library writes expires
            ttl = self.config.default_ttl
        ok = await self.policy.run(self.store.set_many, False, items, ttl)
        self._count_write(ok, len(items))
        return ok

    def _count_write(self, ok: bool, count: int = 1) -> None:
        if ok:
            self.stats.writes += count
        else:
            self.stats.write_failures += count

    async def delete(self, keys: Sequence[str]) -> int:
        if self._ready_on is not asyncio.get_running_loop():
            await self.ready()
        self._notify_deleted(keys)
        return await self.policy.run(self.store.delete, 0, keys)

    async def exists(self, key: str) -> bool:
        if self._ready_on is not asyncio.get_running_loop():
            await self.ready()
        return await self.policy.run(self.store.exists, False, key)

    async def ttl(self, key: str) -> int | None:
        if self._ready_on is not asyncio.get_running_loop():
            await self.ready()
        return await self.policy.run(self.store.ttl, None, key)

    async def delete_pattern(self, pattern: str) -> int:
        """Delete keys matching a pattern already checked to lie under the prefix."""
        if self._ready_on is not asyncio.get_running_loop():
            await self.ready()
        self._notify_deleted(None)
        progress = Progress(step_timeout=self.config.socket_timeout)
        # Counters (RAG generations) go too: one recreated starts at a fresh random value, so
        # deleting it cannot revive what it invalidated (see Store.counters).
        await self.policy.run(
            lambda: self.store.scan_delete(pattern, progress),
            0,
            timeout=self.config.bulk_timeout,
            bulk=True,
        )
        # On a fault part-way, report what was deleted before it.
        return progress.done

    async def count(self, pattern: str) -> int | None:
        if self._ready_on is not asyncio.get_running_loop():
            await self.ready()
        progress = Progress(step_timeout=self.config.socket_timeout)
        return await self.policy.run(
            lambda: self.store.count(pattern, progress),
            None,
            timeout=self.config.bulk_timeout,
            bulk=True,
        )

    async def set_indexed(self, items: list[tuple[str, bytes]], ttl: int, index: str) -> bool:
        if self.oversized(items):
            return False
        if self._ready_on is not asyncio.get_running_loop():
            await self.ready()
        ok = await self.policy.run(self.store.set_indexed, False, items, ttl, index)
        self._count_write(ok, len(items))
        return ok

    async def pop_index(self, index: str) -> list[str]:
        """Read and delete an index set: its members, unchecked (the caller must check them);
        ``[]`` when the store cannot answer."""
        if self._ready_on is not asyncio.get_running_loop():
            await self.ready()
        members: list[str] = await self.policy.run(self.store.pop_index, [], index)
        return members

    async def counters(self, keys: Sequence[str], amount: int, ttl: int) -> list[int] | None:
        """Get-or-create each counter, add ``amount``, extend its expiry to at least ``ttl``
        (see :meth:`Store.counters`); ``None`` when the store cannot answer."""
        if self._ready_on is not asyncio.get_running_loop():
            await self.ready()
        values: list[int] | None = await self.policy.run(
            self.store.counters, None, keys, amount, ttl
        )
        return values

    async def publish(self, channel: str, message: bytes) -> int | None:
        """Send on a pub/sub channel; subscribers reached, or ``None`` when unavailable."""
        if self._ready_on is not asyncio.get_running_loop():
            await self.ready()
        count: int | None = await self.policy.run(self.store.publish, None, channel, message)
        return count

    async def acquire_locks(
        self, keys: Sequence[str], token: str, ttl_ms: int
    ) -> list[bool] | Unavailable:
        """Take what locks can be taken; :data:`UNAVAILABLE` when the store cannot answer."""
        if self._ready_on is not asyncio.get_running_loop():
            await self.ready()
        result: list[bool] | Unavailable = await self.policy.run(
            self.store.acquire_locks, UNAVAILABLE, keys, token, ttl_ms
        )
        return result

    async def release_locks(self, keys: Sequence[str], token: str) -> int:
        if not keys:
            return 0
        if self._ready_on is not asyncio.get_running_loop():
            await self.ready()
        return await self.policy.run(self.store.release_locks, 0, keys, token)


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
        if core._ready_on is not asyncio.get_running_loop():
            await core.ready()
        subscriber = core.store.subscriber(channel)

        async def start() -> bool:
            await subscriber.start()
            return True

        if not await core.policy.run(start, False):
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


def checked_items(mapping: object, ttl: object) -> tuple[Mapping[str, Any], int | None]:
    """Check ``set_many`` arguments: a mapping of str keys, and a ttl."""
    if not isinstance(mapping, Mapping):
        raise ArgumentTypeError(f"mapping must be a Mapping, not {type(mapping).__name__}")
    for key in mapping:
        check_key(key)
    return mapping, check_ttl(ttl)
