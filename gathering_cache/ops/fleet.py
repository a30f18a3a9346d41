"""Fleet-wide statistics: every process folds its counters into the store, the CLI and the
dashboard read them all.

A :class:`FleetRecorder` is an observer of the cache's operations (it counts in memory, never
does I/O on a cache call) and, every ``stats_flush_interval`` seconds and on close, writes
this process's counters in one pipeline through the guarded call::

    <prefix>stats:proc:<process>          cumulative counters, breaker state (expires after
                                          stats_window: a silent process drops out)
    <prefix>stats:min:<minute>:<process>  the counts of one minute (expires after the window)

A flush is started by the first operation after the interval has elapsed, so an idle process
writes nothing, and a process that dies loses at most the counts of one interval. Each write
replaces what the same process wrote before (values, not increments): a retried write
cannot count twice.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Final

import orjson

from gathering_cache.core.keys import NAMESPACES
from gathering_cache.core.observe import FAILURES, READS, WRITES, Operation, Outcome
from gathering_cache.core.stats import hit_rate

if TYPE_CHECKING:
    from gathering_cache.core.engine import Telemetry

__all__ = [
    "BUCKETS",
    "HIT_SAVINGS",
    "Counts",
    "FleetRecorder",
    "fleet_history",
    "fleet_stats",
    "percentile",
]

logger = logging.getLogger(__name__)

BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
"""Upper bounds (seconds) of the latency histogram; one more bucket holds the rest."""

HIT_SAVINGS: Final = {
    "embedding": 0.00002,
    "rag": 0.0004,
    "circle": 0.0,
    "llm": 0.002,
    "generic": 0.0,
}
"""Estimated dollars one hit saves, per namespace: an embedding call of ~1,000 tokens, a
RAG recall (an embedding and a vector search), an LLM completion of ~1,000 tokens. Circle
context and generic values save a database read, counted as nothing."""


_INVALIDATIONS: Final = frozenset({"delete", "delete_pattern", "pop_index"})
_RAG_DELETE: Final = ("delete", "rag")
"""Operations that drop entries on purpose. A RAG invalidation pops the agent's index, then
deletes what it listed: counted once, by the pop."""


class Counts:
    """The counters of one namespace: hits, misses, sets, errors, cost saved, latencies."""

    __slots__ = ("cost", "errors", "hits", "invalidations", "latency", "misses", "sets")

    def __init__(self) -> None:
        self.hits = self.misses = self.sets = self.errors = self.invalidations = 0
        self.cost = 0.0
        self.latency = [0] * (len(BUCKETS) + 1)

    def add(self, other: Counts) -> None:
        self.hits += other.hits
        self.misses += other.misses
        self.sets += other.sets
        self.errors += other.errors
        self.invalidations += other.invalidations
        self.cost += other.cost
        self.latency = [a + b for a, b in zip(self.latency, other.latency, strict=True)]

    def to_json(self) -> dict[str, Any]:
        return {
            "hits": self.hits,
            "misses": self.misses,
            "sets": self.sets,
            "errors": self.errors,
            "invalidations": self.invalidations,
            "cost": round(self.cost, 6),
            "latency": self.latency,
        }

    @classmethod
    def from_json(cls, data: Any) -> Counts:
        """Counts from what a process wrote; anything malformed reads as zero."""
        counts = cls()
        if not isinstance(data, dict):
            return counts
        for name in ("hits", "misses", "sets", "errors", "invalidations"):
            value = data.get(name)
            if type(value) is int and value >= 0:
                setattr(counts, name, value)
        cost = data.get("cost")
        if isinstance(cost, (int, float)) and cost >= 0:
            counts.cost = float(cost)
        latency = data.get("latency")
        if (
            isinstance(latency, list)
            and len(latency) == len(counts.latency)
            and all(type(n) is int and n >= 0 for n in latency)
        ):
            counts.latency = latency
        return counts

    def summary(self) -> dict[str, Any]:
        """Plain figures: hits, misses, hit rate, sets, errors, cost saved, latency p50/p95/p99
        (milliseconds, from the histogram's buckets) and the histogram itself (counts per
        bucket of :data:`BUCKETS`, then beyond)."""
        return {
            "hits": self.hits,
            "misses": self.misses,
            "hit_rate": hit_rate(self.hits, self.misses),
            "sets": self.sets,
            "errors": self.errors,
            "invalidations": self.invalidations,
            "cost_saved": round(self.cost, 4),
            "latency_ms": {f"p{q}": percentile(self.latency, q / 100) for q in (50, 95, 99)},
            "latency_histogram": list(self.latency),
        }


def percentile(histogram: Sequence[int], q: float) -> float | None:
    """The upper bound (milliseconds) of the bucket holding quantile ``q``; ``None`` with no
    samples (beyond the last bound: the last bound)."""
    total = sum(histogram)
    if not total:
        return None
    rank = q * total
    seen = 0
    for index, count in enumerate(histogram):
        seen += count
        if seen >= rank and count:
            bound = BUCKETS[min(index, len(BUCKETS) - 1)]
            return round(bound * 1000, 3)
    return round(BUCKETS[-1] * 1000, 3)


def _table() -> dict[str, Counts]:
    return {name: Counts() for name in NAMESPACES}


def _process_id() -> str:
    """``<host>-<pid>-<4 hex>``: unique per process start, no ``:`` or glob character."""
    host = "".join(c if c.isalnum() or c in "-_." else "_" for c in socket.gethostname())
    return f"{host[:40] or 'host'}-{os.getpid()}-{uuid.uuid4().hex[:4]}"


class FleetRecorder:
    """This process's share of the fleet statistics: an observer, and its periodic flush.

    Args:
        telemetry: the cache's telemetry handle (``AsyncCacheManager.telemetry``).
        interval: seconds between flushes (``stats_flush_interval``).
        window: seconds the history and a silent process's counters are kept.
        clock: the wall clock (seconds since the epoch) that places counts in minutes.
    """

    def __init__(
        self,
        telemetry: Telemetry,
        interval: float,
        window: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.telemetry = telemetry
        self._clock = clock
        self.interval = interval
        self.window = window
        self.process = _process_id()
        self.started = clock()
        self.flushed: float | None = None
        self.flushes = 0
        self._closed = _table()
        self._minute = int(self.started // 60)
        self._next_minute = (self._minute + 1) * 60
        self._current = _table()
        self._pending: dict[int, dict[str, Counts]] = {}
        self._due = self.started + interval
        self._task: asyncio.Task[bool] | None = None
        self.closed = False

    # -- the observer: counts only ------------------------------------------------------------

    def observe(self, operation: Operation) -> None:
        """Count one operation (reads, writes, failures) in the current minute; start a
        flush when one is due."""
        now = self._clock()
        if now >= self._next_minute:
            self._roll(now)
        counts = self._current.get(operation.namespace)
        if counts is None:
            return  # the statistics' own writes, locks, events
        op = operation.op
        outcome = operation.outcome
        if op in READS:
            hits = operation.hits
            counts.hits += hits
            counts.misses += operation.keys - hits
            if hits:
                counts.cost += hits * HIT_SAVINGS[operation.namespace]
            if operation.invalid:
                counts.errors += operation.invalid
        elif op in WRITES:
            if outcome is Outcome.STORED:
                counts.sets += operation.keys
        elif outcome is Outcome.DONE:
            if op in _INVALIDATIONS and (op, operation.namespace) != _RAG_DELETE:
                counts.invalidations += 1
            return  # counters, locks ...: neither lookups nor writes
        elif outcome not in FAILURES:
            return
        if outcome in FAILURES:
            counts.errors += 1
        counts.latency[bisect_left(BUCKETS, operation.duration)] += 1
        if now >= self._due:
            self._start_flush(now)

    def _roll(self, now: float) -> None:
        """A new minute: the finished one waits for the next flush, and joins the totals."""
        minute = int(now // 60)
        self._pending[self._minute] = self._current
        for name, counts in self._current.items():
            self._closed[name].add(counts)
        self._current = _table()
        self._minute = minute
        self._next_minute = (minute + 1) * 60

    @property
    def total(self) -> dict[str, Counts]:
        """This process's counters since it started, per namespace."""
        merged = _table()
        for name, counts in merged.items():
            counts.add(self._closed[name])
            counts.add(self._current[name])
        return merged

    def _start_flush(self, now: float) -> None:
        self._due = now + self.interval
        if self._task is not None or self.closed:
            return
        if not self.telemetry.available:  # degraded: try again an interval later
            return
        self._task = asyncio.get_running_loop().create_task(self.flush())
        self._task.add_done_callback(self._flushed)

    def _flushed(self, task: asyncio.Task[bool]) -> None:
        self._task = None
        if not task.cancelled() and task.exception() is not None:
            logger.warning("fleet statistics flush failed: %s", task.exception())

    # -- flushing -----------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """This process's cumulative counters, as written under ``stats:proc:<process>``."""
        return {
            "process": self.process,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": round(self.started, 3),
            "flushed": round(self._clock(), 3),
            "breaker": self.telemetry.breaker,
            "namespaces": {name: c.to_json() for name, c in self.total.items()},
        }

    async def flush(self) -> bool:
        """Write this process's counters and its unwritten minutes in one pipeline; whether
        the store took them (if not, the minutes are kept for the next flush)."""
        keys = self.telemetry.keys
        minutes = {**self._pending, self._minute: self._current}
        oldest = int(self._clock() // 60) - self.window // 60
        items = [(keys.stats_process(self.process), orjson.dumps(self.snapshot()))]
        for minute, table in minutes.items():
            active = {
                name: counts.to_json()
                for name, counts in table.items()
                if counts.hits
                or counts.misses
                or counts.sets
                or counts.errors
                or counts.invalidations
            }
            if active and minute >= oldest:
                items.append((keys.stats_minute(minute, self.process), orjson.dumps(active)))
        written = await self.telemetry.write(items, self.window)
        if written:
            for minute in minutes:
                if minute != self._minute:
                    self._pending.pop(minute, None)
            self.flushed = self._clock()
            self.flushes += 1
        else:
            for minute in [m for m in self._pending if m < oldest]:
                del self._pending[minute]
        return written

    async def aclose(self) -> None:
        """Wait for a flush under way, then flush once more (the close's); once."""
        if self.closed:
            return
        self.closed = True
        task = self._task
        if task is not None:
            await asyncio.gather(task, return_exceptions=True)
        if self.telemetry.available:  # degraded: the counts since the last flush are lost
            await self.flush()


# -- reading the fleet ------------------------------------------------------------------------


def _decode(raw: bytes | None) -> Any:
    if raw is None:
        return None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None


async def _processes(
    telemetry: Telemetry, live: FleetRecorder | None
) -> list[dict[str, Any]] | None:
    keys = await telemetry.scan(telemetry.keys.stats_processes())
    if keys is None:
        return None
    values = await telemetry.read(sorted(set(keys))) if keys else []
    if values is None:
        return None
    found: dict[str, dict[str, Any]] = {}
    for value in map(_decode, values):
        if isinstance(value, dict) and isinstance(value.get("process"), str):
            found[value["process"]] = value
    if live is not None:  # this process's own counters, as they are now
        found[live.process] = live.snapshot()
    return sorted(found.values(), key=lambda p: str(p.get("process")))


def _fold(tables: Iterable[Any]) -> dict[str, Counts]:
    folded = _table()
    for table in tables:
        if not isinstance(table, dict):
            continue
        for name, counts in folded.items():
            if name in table:
                counts.add(Counts.from_json(table[name]))
    return folded


async def fleet_stats(telemetry: Telemetry, live: FleetRecorder | None = None) -> dict[str, Any]:
    """Every process's counters, added up: what ``get_stats()["fleet"]`` shows.

    Returns:
        ``processes`` (how many flushed within the window), the totals (``hits``,
        ``misses``, ``hit_rate``, ``sets``, ``errors``, ``cost_saved``, ``latency_ms``),
        ``namespaces`` (the same per namespace) and ``by_process`` (each process's host,
        pid, last flush, breaker state and totals). ``available`` is ``False`` (and the
        figures are this process's alone) when the store could not be read.
    """
    processes = await _processes(telemetry, live)
    available = processes is not None
    if processes is None:
        processes = [] if live is None else [live.snapshot()]
    folded = _fold(p.get("namespaces") for p in processes)
    overall = Counts()
    for counts in folded.values():
        overall.add(counts)
    by_process = []
    for process in processes:
        own = Counts()
        for counts in _fold([process.get("namespaces")]).values():
            own.add(counts)
        breaker = process.get("breaker")
        by_process.append(
            {
                "process": process.get("process"),
                "host": process.get("host"),
                "pid": process.get("pid"),
                "flushed": process.get("flushed"),
                "breaker": breaker.get("state") if isinstance(breaker, dict) else None,
                "hits": own.hits,
                "misses": own.misses,
                "hit_rate": hit_rate(own.hits, own.misses),
            }
        )
    return {
        "available": available,
        "processes": len(processes),
        **overall.summary(),
        "namespaces": {name: counts.summary() for name, counts in folded.items()},
        "by_process": by_process,
    }


async def fleet_history(
    telemetry: Telemetry, minutes: int = 60, live: FleetRecorder | None = None
) -> dict[str, Any]:
    """The fleet's counts minute by minute over the last ``minutes`` (one MGET; the
    processes are those that flushed within the window).

    Returns:
        ``minutes`` (epoch seconds of each minute, oldest first) and ``namespaces``: per
        namespace, lists aligned with it of ``hits``, ``misses``, ``hit_rate`` (``None`` for
        a minute without lookups), ``cost`` and ``latency`` histograms.
    """
    processes = await _processes(telemetry, None) or []
    names = {str(p["process"]) for p in processes}
    if live is not None:
        names.add(live.process)
    now = int(time.time() // 60)
    span = list(range(now - minutes + 1, now + 1))
    in_memory: dict[int, dict[str, Counts]] = {}
    if live is not None:  # this process's minutes still in memory replace what it wrote
        in_memory = {**live._pending, live._minute: live._current}
    keys = [
        telemetry.keys.stats_minute(m, p)
        for m in span
        for p in sorted(names)
        if not (live is not None and p == live.process and m in in_memory)
    ]
    values = (await telemetry.read(keys) if keys else []) or [None] * len(keys)
    per_minute: dict[int, list[Any]] = {m: [] for m in span}
    for key, value in zip(keys, values, strict=True):
        minute = int(key.split(":")[-2])
        per_minute[minute].append(_decode(value))
    for minute, table in in_memory.items():
        if minute in per_minute:
            per_minute[minute].append({n: c.to_json() for n, c in table.items()})
    history: dict[str, dict[str, list[Any]]] = {
        name: {"hits": [], "misses": [], "hit_rate": [], "cost": [], "latency": []}
        for name in NAMESPACES
    }
    for minute in span:
        folded = _fold(per_minute[minute])
        for name, counts in folded.items():
            series = history[name]
            series["hits"].append(counts.hits)
            series["misses"].append(counts.misses)
            lookups = counts.hits + counts.misses
            series["hit_rate"].append(hit_rate(counts.hits, counts.misses) if lookups else None)
            series["cost"].append(round(counts.cost, 6))
            series["latency"].append(counts.latency)
    return {"minutes": [m * 60 for m in span], "namespaces": history}
