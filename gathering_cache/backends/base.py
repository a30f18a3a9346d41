"""The store interface every backend implements (standalone Redis, memory; later sentinel
and cluster). Domain code talks to this interface only and never branches on topology.

A store deals in bytes. It raises freely on infrastructure faults: the manager's degradation
policy, not the store, decides what the caller sees. ``fault_types`` names the exceptions that
count as infrastructure faults; anything else is a bug and propagates.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from gathering_cache.core.encoding import COUNTER_DIGITS, fresh_counter, parse_counter
from gathering_cache.errors import BackendError

__all__ = [
    "COUNTER_DIGITS",
    "Capabilities",
    "DataFault",
    "Progress",
    "Store",
    "Subscriber",
    "Tracker",
    "fresh_counter",
    "parse_counter",
]


class DataFault(BackendError):
    """An error reply about one call's own data or arguments (WRONGTYPE, NOPERM, an expiry
    the server refuses ...): that call's degraded answer, the breaker untouched. Like every
    :class:`~gathering_cache.BackendError`, never raised out of a cache operation."""


class Progress:
    """A counter a long operation updates as it goes, so a caller that gives up on it (a
    timeout) still learns how far it got; and the bound on each of its round trips."""

    __slots__ = ("done", "step_timeout")

    def __init__(self, step_timeout: float | None = None) -> None:
        self.done = 0
        self.step_timeout = step_timeout


class Subscriber(ABC):
    """One subscription to a pub/sub channel of a store."""

    @abstractmethod
    async def start(self) -> None:
        """Subscribe. Raises one of the store's ``fault_types`` when it cannot."""

    @abstractmethod
    async def get(self, timeout: float) -> bytes | None:
        """The next message, or ``None`` after ``timeout`` seconds without one."""

    @abstractmethod
    async def close(self) -> None:
        """Unsubscribe and release the connection; never raises."""


class Tracker(ABC):
    """Invalidation messages of a store for keys under one prefix (Redis client-side
    caching in broadcast mode): what a near cache must forget."""

    @abstractmethod
    async def start(self) -> None:
        """Establish tracking. Raises one of the store's ``fault_types`` when it cannot."""

    @abstractmethod
    async def get(self, timeout: float) -> list[str] | None:
        """The keys changed since the last call (``[]`` after ``timeout`` seconds without
        any), or ``None``: forget everything (a flush). Raises one of the store's
        ``fault_types`` once tracking is lost: invalidations may have been missed."""

    @abstractmethod
    async def close(self) -> None:
        """Stop tracking and release the connections; never raises."""

    def on_end(self, callback: Callable[[], None]) -> bool:
        """Have ``callback`` called as soon as the event loop handles the end of one of the
        tracker's connections (at once if one has already ended), in the very turn it sees
        it, before any task resumes (:meth:`get` learns of it a few turns later). Called
        right after :meth:`start`, without awaiting in between.

        ``callback`` is quick and never raises (it runs inside the loop's I/O handling);
        it may be called more than once. Returns whether the connections could be watched:
        ``False`` (this default) means losses are known from :meth:`get` only."""
        return False


@dataclass(frozen=True)
class Capabilities:
    """What the core needs to know about a store, declared by the store itself: the core
    adapts to these, and never asks which backend (or topology) it is talking to."""

    backend: str
    """The name shown in stats (``"redis"``, ``"memory"``)."""
    networked: bool
    """Calls leave the process (a round trip, and faults): an in-process layer in front of
    the store (the embedding LRU) earns its place, and events reach other processes."""
    loop_bound: bool
    """Its connections belong to the event loop that opened them: one manager per loop."""
    concurrency: int | None = None
    """The most calls it serves at once (a pool's size); more wait for a slot, and one that
    cannot get it in time is shed. ``None``: no limit."""
    disabled: str | None = None
    """Why the store can never answer (the cache disabled, the redis library missing), or
    ``None``: such a store is never called, and the cache runs degraded from the start."""
    indexes: bool = False
    """It keeps index sets (:meth:`Store.set_indexed`, :meth:`Store.pop_index`). Without
    them, values are stored alone and an invalidation that would read an index finds it
    empty: the entries are unreadable anyway (the RAG cache's counters) and expire."""
    locks: bool = False
    """It takes short-lived locks (:meth:`Store.acquire_locks`). Without them, single-flight
    works within the process only."""
    tracking: bool = False
    """It reports changes of keys under a prefix (:meth:`Store.tracker`), so a near cache
    in front of it can stay correct."""
    topology: str = "standalone"
    """The deployment behind the store: ``"standalone"`` (one server, or in-process),
    ``"cluster"`` (Redis Cluster) or ``"sentinel"`` (a primary found through sentinels).
    Shown in stats; chosen and built in ``backends/`` alone."""


class Store(ABC):
    """Narrow async key-value interface over bytes with TTLs."""

    #: What the core adapts to (see :class:`Capabilities`).
    capabilities: Capabilities
    #: Exceptions that mean "the store is unavailable", never "the caller made a mistake".
    fault_types: tuple[type[BaseException], ...] = ()

    @abstractmethod
    async def connect(self) -> None:
        """Check the store answers (PING). Raises one of ``fault_types`` when it does not."""

    @abstractmethod
    async def aclose(self) -> None:
        """Release connections the store owns."""

    @abstractmethod
    async def get(self, key: str) -> bytes | None:
        """The bytes under ``key``, or ``None``."""

    @abstractmethod
    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        """The bytes under each key, in order, ``None`` where missing (cluster-safe)."""

    @abstractmethod
    async def set(self, key: str, value: bytes, ttl: int | None) -> bool:
        """Store ``value`` under ``key``, expiring after ``ttl`` seconds (never if None).
        Returns True (a failure raises)."""

    @abstractmethod
    async def set_many(self, items: Sequence[tuple[str, bytes]], ttl: int | None) -> bool:
        """Store several values with the same TTL (no cross-slot transaction); True."""

    @abstractmethod
    async def delete(self, keys: Sequence[str]) -> int:
        """Delete keys; the number that existed."""

    @abstractmethod
    async def exists(self, key: str) -> bool:
        """Whether ``key`` exists."""

    @abstractmethod
    async def ttl(self, key: str) -> int | None:
        """Seconds left; -1 when the key has no expiry; None when it does not exist."""

    @abstractmethod
    async def scan_delete(self, pattern: str, progress: Progress) -> int:
        """Delete every key matching the glob ``pattern`` without blocking the server (SCAN +
        UNLINK in batches); the number deleted, also kept in ``progress.done``."""

    @abstractmethod
    async def scan_page(self, pattern: str, cursor: int, count: int) -> tuple[int, list[str]]:
        """One step of listing the keys matching ``pattern`` (SCAN, never KEYS): from
        ``cursor`` (0 to start), about ``count`` keys (a hint; a page may be empty), and the
        cursor of the next step (0: done). Keys present for the whole listing are listed at
        least once; keys that are not UTF-8 come back with replacement characters."""

    @abstractmethod
    async def count(self, pattern: str, progress: Progress) -> int:
        """How many keys match ``pattern`` (SCAN, never KEYS or DBSIZE)."""

    @abstractmethod
    async def counters(self, keys: Sequence[str], amount: int, ttl: int) -> list[int]:
        """Get-or-create, optionally increment, and keep alive a counter under each key.

        For each key, atomically on that key alone (one slot; cluster-safe): when the key is
        absent or holds anything but a counter (see :func:`parse_counter`; another type
        too), it is (re)created at :func:`fresh_counter` — a repair, never an error —
        otherwise ``amount`` is added (0: read). Its expiry is then extended to at least
        ``ttl`` seconds, never shortened. Returns the values, in order.
        """

    @abstractmethod
    async def publish(self, channel: str, message: bytes) -> int:
        """Send ``message`` on a pub/sub channel; how many subscribers got it."""

    @abstractmethod
    def subscriber(self, channel: str) -> Subscriber:
        """A (not yet started) subscription to ``channel``."""

    # -- optional: declared in ``capabilities``, never called unless declared ------------------

    async def set_indexed(self, items: Sequence[tuple[str, bytes]], ttl: int, index: str) -> bool:
        """Store values (SET EX) and add their keys to the index ``index`` (a sorted set
        scored by expiry; members whose entries have expired are dropped), whose own expiry
        is extended to at least ``ttl`` (never shortened: it lists entries that may live
        longer). One non-transactional pipeline; cluster-safe. True."""
        raise NotImplementedError(f"{type(self).__name__} keeps no indexes")

    async def pop_index(self, index: str) -> list[str]:
        """Read and delete the index ``index`` atomically (one key, one slot): its members,
        as stored (callers must check them: anyone who can write the set chose them).
        Members that are not UTF-8 come back with replacement characters, never raise."""
        raise NotImplementedError(f"{type(self).__name__} keeps no indexes")

    async def acquire_locks(self, keys: Sequence[str], token: str, ttl_ms: int) -> list[bool]:
        """Try to take a short-lived lock on each key (SET NX PX); which ones were taken."""
        raise NotImplementedError(f"{type(self).__name__} keeps no locks")

    async def release_locks(self, keys: Sequence[str], token: str) -> int:
        """Release the locks among ``keys`` still held with ``token``; never another owner's.
        Returns how many were released."""
        raise NotImplementedError(f"{type(self).__name__} keeps no locks")

    def tracker(self, prefix: str) -> Tracker:
        """A (not yet started) :class:`Tracker` of the keys under ``prefix``."""
        raise NotImplementedError(f"{type(self).__name__} reports no invalidations")

    # -- introspection, for operators (the CLI and dashboard); never on a cache call's path ----

    async def server_info(self) -> dict[str, Any]:
        """What the server says about itself, as flat fields (those it has among
        ``redis_version``, ``used_memory``, ``maxmemory``, ``maxmemory_policy``,
        ``aof_enabled``, ``rdb_save``, ``expired_keys``, ``evicted_keys``, ``uptime_in_seconds``),
        ``{}`` when it has nothing to say (a proxy or an ACL refusing INFO is no fault)."""
        return {}

    async def memory_usage(self, keys: Sequence[str]) -> list[int | None]:
        """Bytes each key takes in the store (MEMORY USAGE), in order; ``None`` for a key that
        is absent, or when the store cannot tell."""
        return [None] * len(keys)

    def is_data_error(self, exc: BaseException) -> bool:
        """Whether ``exc`` concerns one call's own data or arguments (a value of another type
        under the key, an ACL refusing this key), not the store's health: a miss for that
        call, not an outage. Stores say so by raising :class:`DataFault`."""
        return isinstance(exc, DataFault)

    def describe(self) -> dict[str, Any]:
        """Where the store lives, for stats. Never includes secrets."""
        return {}
