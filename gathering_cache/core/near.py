"""The near cache (L1): encoded values of chosen namespaces kept in this process, in front
of the store, and kept correct by the store's invalidation messages (Redis client-side
caching in broadcast mode, see :meth:`~gathering_cache.backends.base.Store.tracker`).

Pure: no I/O. The core feeds it what it reads, what this process writes or deletes, and
the invalidations the tracker receives; it serves only while the tracker is established
(``serving``), and is flushed whenever tracking is lost (the end of a tracking connection
stops it in the very turn of the event loop that sees it, see ``Tracker.on_end``), so a
value another process changed is never served after its invalidation could have been
missed.

A read that raced with an invalidation (the value read before, the invalidation received
while the reply travelled) is not kept: :meth:`NearCache.put` takes the ``epoch`` seen when
the read started, and refuses when an invalidation arrived since.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from time import perf_counter

__all__ = ["NearCache"]


class NearCache:
    """A bounded LRU of encoded values with a time bound, fed by invalidations. Its clock
    is :func:`time.perf_counter` (monotonic, and what the core times operations with)."""

    __slots__ = (
        "entries",
        "epoch",
        "hits",
        "invalidations",
        "max_entries",
        "misses",
        "namespaces",
        "serving",
        "tracker",
        "ttl",
    )

    def __init__(self, max_entries: int, ttl: float, namespaces: Iterable[str]) -> None:
        self.max_entries = max_entries
        self.ttl = ttl
        self.namespaces = frozenset(namespaces)
        self.entries: OrderedDict[str, tuple[bytes, float]] = OrderedDict()
        """Key -> (encoded value, expiry), least recently used first. Read directly only by
        the core's single-key hit path (:meth:`get` inlined there); changed only here."""
        self.epoch = 0
        """Counts invalidations and flushes: a read keeps its value only if none came."""
        self.serving = False
        """Whether tracking is established: until then nothing is served or kept."""
        self.tracker: object = None
        """What keeps it correct while it serves (the core's tracker; opaque here)."""
        self.hits = 0
        self.misses = 0
        self.invalidations = 0

    def get(self, key: str, now: float | None = None) -> bytes | None:
        """The encoded value under ``key`` if held and fresh (a hit), else ``None``.
        ``now``: :func:`time.perf_counter` when the caller has just read it (one clock
        read less on the hit path)."""
        if not self.serving:
            return None
        entry = self.entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        data, expires = entry
        if expires < (perf_counter() if now is None else now):
            del self.entries[key]
            self.misses += 1
            return None
        self.entries.move_to_end(key)
        self.hits += 1
        return data

    def put(self, key: str, data: bytes, epoch: int) -> None:
        """Keep ``data`` read under ``key`` by a read that started at ``epoch``."""
        if not self.serving or epoch != self.epoch:
            return
        self.entries[key] = (data, perf_counter() + self.ttl)
        self.entries.move_to_end(key)
        while len(self.entries) > self.max_entries:
            self.entries.popitem(last=False)

    def invalidate(self, keys: Iterable[str] | None) -> None:
        """Forget ``keys`` (``None``: everything), changed elsewhere or here."""
        self.epoch += 1
        self.invalidations += 1
        if keys is None:
            self.entries.clear()
            return
        for key in keys:
            self.entries.pop(key, None)

    def flush(self, serving: bool) -> None:
        """Forget everything; serve again only if ``serving`` (tracking established)."""
        self.epoch += 1
        self.entries.clear()
        self.serving = serving

    def snapshot(self) -> dict[str, int | bool]:
        """Hits, misses, size, invalidations and whether it serves, for stats."""
        return {
            "serving": self.serving,
            "hits": self.hits,
            "misses": self.misses,
            "size": len(self.entries),
            "invalidations": self.invalidations,
        }
