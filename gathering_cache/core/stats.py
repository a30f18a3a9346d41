"""Hit / miss counters of this cache's own lookups: the first observer of the core's
operations (see :mod:`gathering_cache.core.observe`). Pure: no I/O, no event loop.

Counts are per namespace (embedding, rag, circle, llm, generic) and in total; they are this
process's lookups, not the server-wide INFO counters another application also moves.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gathering_cache.core.keys import NAMESPACES, STATS
from gathering_cache.core.observe import READS, WRITES, Operation, Outcome

__all__ = ["CacheStats", "hit_rate"]


def hit_rate(hits: int, misses: int) -> float:
    """Hits as a percentage of lookups, rounded to 2 decimals; 0.0 with no lookups."""
    total = hits + misses
    return round(100.0 * hits / total, 2) if total else 0.0


@dataclass(slots=True)
class _Counter:
    hits: int = 0
    misses: int = 0


@dataclass
class CacheStats:
    """Mutable counters. ``errors`` counts undecodable entries read back (treated as misses)."""

    namespaces: dict[str, _Counter] = field(
        default_factory=lambda: {name: _Counter() for name in NAMESPACES}
    )
    errors: int = 0
    writes: int = 0
    write_failures: int = 0
    llm_tokens_saved: int = 0
    llm_skipped: int = 0
    oversized: int = 0

    def observe(self, operation: Operation) -> None:
        """Count one operation: a read's hits, misses and refused entries, a write's values
        stored or not."""
        if operation.op in READS:  # on every lookup: as few lookups as it can
            counter = self.namespaces.get(operation.namespace)
            if counter is not None:
                hits = operation.hits
                counter.hits += hits
                counter.misses += operation.keys - hits
            if operation.invalid:
                self.errors += operation.invalid
        elif operation.op in WRITES and operation.namespace != STATS:
            if operation.outcome is Outcome.STORED:
                self.writes += operation.keys
            else:
                self.write_failures += operation.keys

    @property
    def hits(self) -> int:
        return sum(c.hits for c in self.namespaces.values())

    @property
    def misses(self) -> int:
        return sum(c.misses for c in self.namespaces.values())

    def snapshot(self) -> dict[str, Any]:
        """The counters as plain data: totals, hit_rate and a ``namespaces`` breakdown."""
        hits, misses = self.hits, self.misses
        return {
            "hits": hits,
            "misses": misses,
            "hit_rate": hit_rate(hits, misses),
            "errors": self.errors,
            "writes": self.writes,
            "write_failures": self.write_failures,
            "llm_tokens_saved": self.llm_tokens_saved,
            "llm_skipped": self.llm_skipped,
            "oversized": self.oversized,
            "namespaces": {
                name: {
                    "hits": c.hits,
                    "misses": c.misses,
                    "hit_rate": hit_rate(c.hits, c.misses),
                }
                for name, c in self.namespaces.items()
            },
        }

    def reset(self) -> None:
        for counter in self.namespaces.values():
            counter.hits = counter.misses = 0
        self.errors = self.writes = self.write_failures = 0
        self.llm_tokens_saved = self.llm_skipped = self.oversized = 0
