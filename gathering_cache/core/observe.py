"""The observer seam: every store operation the cache runs is reported here, once.

The core runs each store call through one guarded call (:meth:`CacheCore.guarded
<gathering_cache.core.engine.CacheCore.guarded>`): the degradation policy around it, then one
:class:`Operation` record handed to every observer. The cache's own statistics are one
observer; metrics, tracing or a log of slow calls are others, added with
:meth:`AsyncCacheManager.add_observer <gathering_cache.AsyncCacheManager.add_observer>`.

Pure: no I/O, no event loop.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Final

__all__ = ["READS", "WRITES", "Observer", "Operation", "Outcome"]


class Outcome(str, enum.Enum):
    """How one store operation ended."""

    HIT = "hit"
    """A read that found what it looked for (a batch read: at least one key)."""
    MISS = "miss"
    """A read that found nothing usable (absent, undecodable, of another shape, stale)."""
    STORED = "stored"
    """A write the store acknowledged."""
    DONE = "done"
    """Any other operation (delete, count, counters, locks, publish ...) that succeeded."""
    FAULT = "fault"
    """The store failed (connection refused or lost, an error reply about its health)."""
    TIMEOUT = "timeout"
    """The call ran past its deadline (``operation_timeout``, or ``bulk_timeout``)."""
    SHED = "shed"
    """Local load: no connection slot came free in time; the store was not asked."""
    SKIPPED = "skipped"
    """The store was not asked: the breaker is open (an outage), or the cache is disabled
    or closed, or an earlier step of the same operation could not complete."""
    REJECTED = "rejected"
    """The store refused this call's own data (a value of another type under the key, an
    ACL refusing the key): a miss for that call, not an outage."""


FAILURES: Final = frozenset(
    {Outcome.FAULT, Outcome.TIMEOUT, Outcome.SHED, Outcome.SKIPPED, Outcome.REJECTED}
)
"""Outcomes in which the store gave no answer: the caller got a degraded one."""

READS: Final = frozenset({"get", "get_many"})
"""Operations that are lookups: their ``keys`` count as hits or misses."""
WRITES: Final = frozenset({"set", "set_many"})
"""Operations that store values: their ``keys`` count as writes or write failures."""


class Operation:
    """One store operation as the observers see it.

    Attributes:
        op: what ran: ``"get"``, ``"get_many"``, ``"set"``, ``"set_many"``, ``"delete"``,
            ``"delete_pattern"``, ``"exists"``, ``"ttl"``, ``"count"``, ``"counters"``,
            ``"acquire_locks"``, ``"release_locks"``, ``"publish"``, ``"subscribe"``,
            ``"connect"``.
        namespace: the domain it served: ``"embedding"``, ``"rag"``, ``"circle"``,
            ``"llm"``, ``"generic"`` (the key-value API), ``"lock"``, ``"events"``.
        outcome: how it ended (:class:`Outcome`).
        duration: seconds from the call to its answer, degraded or not.
        nbytes: value bytes moved (read back, or sent to be stored).
        keys: how many entries it concerned (lookups for a read, values for a write).
        hits: for a read, how many of ``keys`` the caller got a value for (this can be
            nonzero on a fault: the embedding cache answers from its in-process copy).
        invalid: for a read, entries found but refused (undecodable, another shape).
    """

    __slots__ = ("duration", "hits", "invalid", "keys", "namespace", "nbytes", "op", "outcome")

    def __init__(
        self,
        op: str,
        namespace: str,
        outcome: Outcome,
        duration: float,
        nbytes: int = 0,
        keys: int = 1,
        hits: int = 0,
        invalid: int = 0,
    ) -> None:
        self.op = op
        self.namespace = namespace
        self.outcome = outcome
        self.duration = duration
        self.nbytes = nbytes
        self.keys = keys
        self.hits = hits
        self.invalid = invalid

    @property
    def misses(self) -> int:
        """For a read, the lookups the caller got nothing for."""
        return self.keys - self.hits

    @property
    def failed(self) -> bool:
        """Whether the store gave no answer (the caller got a degraded one)."""
        return self.outcome in FAILURES

    def __repr__(self) -> str:
        return (
            f"Operation({self.op!r}, {self.namespace!r}, {self.outcome.value}, "
            f"{self.duration * 1e6:.0f} us, {self.nbytes} B, keys={self.keys}, "
            f"hits={self.hits}, invalid={self.invalid})"
        )


Observer = Callable[[Operation], None]
"""Called with each :class:`Operation`, on the event loop, right after it ends. It must be
quick and must not block (count, enqueue; never I/O). An observer that raises is logged once
and removed; the cache call is unaffected."""
