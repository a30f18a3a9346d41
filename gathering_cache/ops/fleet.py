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
import string
import time
import uuid
from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Final

import orjson

from gathering_cache.core.keys import NAMESPACES, RAG
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
    "process_of",
    "survey",
]

logger = logging.getLogger(__name__)

BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
"""Upper bounds (seconds) of the latency histogram; one more bucket holds the rest."""
_FIRST_BUCKET: Final = BUCKETS[0]
# Module globals: found faster than enum attributes (the observer runs on every call).
_HIT, _MISS, _STORED, _DONE = Outcome.HIT, Outcome.MISS, Outcome.STORED, Outcome.DONE

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


_INVALIDATIONS: Final = frozenset({"delete", "delete_pattern"})
"""Operations that drop entries on purpose. In the RAG namespace an invalidation (of one
agent, or of every agent: ``invalidate_all``) is the increment of one generation counter (a
``counters`` operation on one key; a lookup reads two), counted once: the pop of the agent's
index and the deletion of what it listed that follow are not counted again."""


class Counts:
    """The counters of one namespace: hits, misses, sets, errors, cost saved, latencies."""

    __slots__ = ("cost", "errors", "hits", "invalidations", "latency", "misses", "saving", "sets")

    def __init__(self, saving: float = 0.0) -> None:
        self.hits = self.misses = self.sets = self.errors = self.invalidations = 0
        self.cost = 0.0
        self.saving = saving
        """Dollars one hit saves (:data:`HIT_SAVINGS` of its namespace): not a counter."""
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
    return {name: Counts(HIT_SAVINGS.get(name, 0.0)) for name in NAMESPACES}


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
        self._next_minute = float((self._minute + 1) * 60)  # a float: compared with the clock
        self._current = _table()
        self._pending: dict[int, dict[str, Counts]] = {}
        self._due = self.started + interval
        self._task: asyncio.Task[bool] | None = None
        self.closed = False

    # -- the observer: counts only ------------------------------------------------------------

    def observe(self, operation: Operation) -> None:
        """Count one operation (reads, writes, failures) in the current minute; start a
        flush when one is due."""
        # On every cache call (a near-cache hit costs ~2 us in all): the common cases first,
        # each with as few lookups as it can.
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
            if hits:
                counts.hits += hits
                saving = counts.saving
                if saving:
                    counts.cost += hits * saving
            counts.misses += operation.keys - hits
            if operation.invalid:
                counts.errors += operation.invalid
            if outcome is not _HIT and outcome is not _MISS:  # the store failed
                counts.errors += 1
        else:
            if op in WRITES:
                if outcome is _STORED:
                    counts.sets += operation.keys
            elif outcome is _DONE:
                if operation.namespace == RAG:
                    if op == "counters" and operation.keys == 1:
                        counts.invalidations += 1
                elif op in _INVALIDATIONS:
                    counts.invalidations += 1
                return  # counters, locks ...: neither lookups nor writes
            elif outcome not in FAILURES:
                return
            if outcome in FAILURES:
                counts.errors += 1
        duration = operation.duration
        # bisect_left(BUCKETS, duration), without the call for the usual case: under 0.5 ms.
        counts.latency[0 if duration <= _FIRST_BUCKET else bisect_left(BUCKETS, duration)] += 1
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
        self._next_minute = float((minute + 1) * 60)

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
        current = self._minute
        minutes = {**self._pending, current: self._current}
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
            # The minute that was current when serialised stays: if it rolled during the
            # write, counts added since are in it, and the next flush writes it again.
            for minute in minutes:
                if minute != current:
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


_ID_CHARS: Final = frozenset(string.ascii_letters + string.digits + "-_.")


def process_of(key: str, prefix: str) -> str | None:
    """The process id in a ``<prefix>stats:proc:<process>`` key name; ``None`` when the key
    is not one, or the id is not of the alphabet :func:`_process_id` writes (anyone who can
    write the store chooses key names)."""
    if not key.startswith(prefix):
        return None
    process = key[len(prefix) :]
    if not 0 < len(process) <= 80 or not _ID_CHARS.issuperset(process):
        return None
    return process


async def survey(
    telemetry: Telemetry, deadline: float | None = None
) -> tuple[int, list[str]] | None:
    """One SCAN pass over the prefix: how many keys it holds, and the processes' counters
    keys among them; ``None`` when the store failed, or ``deadline`` passed, first."""
    prefix = telemetry.keys.stats_process("")
    found: list[str] = []
    total = 0

    def visit(keys: list[str]) -> None:
        nonlocal total
        total += len(keys)
        found.extend(key for key in keys if key.startswith(prefix))

    if not await telemetry.walk(telemetry.keys.everything(), visit, deadline):
        return None
    return total, found


async def _processes(
    telemetry: Telemetry,
    live: FleetRecorder | None,
    keys: Sequence[str] | None = None,
    deadline: float | None = None,
) -> tuple[list[dict[str, Any]] | None, int]:
    """Each process's counters, its id taken from the key name (``None`` when the store
    could not list or read them), and how many entries were skipped as malformed."""
    if keys is None:
        keys = await telemetry.scan(telemetry.keys.stats_processes(), deadline=deadline)
        if keys is None:
            return None, 0
    prefix = telemetry.keys.stats_process("")
    skipped = 0
    ids: dict[str, str] = {}
    for key in keys:
        process = process_of(key, prefix)
        if process is None:
            skipped += 1
        else:
            ids[key] = process
    listed = sorted(ids)
    values = await telemetry.read(listed) if listed else []
    if values is None:
        return None, skipped
    found: dict[str, dict[str, Any]] = {}
    for key, raw in zip(listed, values, strict=True):
        if raw is None:
            continue  # expired since it was listed
        value = _decode(raw)
        if not isinstance(value, dict):
            skipped += 1
            continue
        found[ids[key]] = {**value, "process": ids[key]}
    if live is not None:  # this process's own counters, as they are now
        found[live.process] = live.snapshot()
    return [found[p] for p in sorted(found)], skipped


def _fold(tables: Iterable[Any]) -> dict[str, Counts]:
    folded = _table()
    for table in tables:
        if not isinstance(table, dict):
            continue
        for name, counts in folded.items():
            if name in table:
                counts.add(Counts.from_json(table[name]))
    return folded


async def fleet_stats(
    telemetry: Telemetry,
    live: FleetRecorder | None = None,
    *,
    keys: Sequence[str] | None = None,
    deadline: float | None = None,
) -> dict[str, Any]:
    """Every process's counters, added up: what ``get_stats()["fleet"]`` shows.

    Args:
        telemetry: the cache's telemetry handle.
        live: this process's recorder (its counters as they are now replace what it wrote).
        keys: the ``stats:proc:`` keys, when a scan already listed them (else one SCAN).
        deadline: when the listing must end (:func:`time.monotonic`; default
            ``bulk_timeout`` from now): past it, the fleet reads as unavailable.

    Returns:
        ``processes`` (how many flushed within the window), the totals (``hits``,
        ``misses``, ``hit_rate``, ``sets``, ``errors``, ``cost_saved``, ``latency_ms``),
        ``namespaces`` (the same per namespace), ``by_process`` (each process's host,
        pid, last flush, breaker state and totals) and ``skipped`` (malformed entries left
        out). ``available`` is ``False`` (and the figures are this process's alone) when
        the store could not be read in time.
    """
    processes, skipped = await _processes(telemetry, live, keys, deadline)
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
        "skipped": skipped,
    }


async def fleet_history(
    telemetry: Telemetry,
    minutes: int = 60,
    live: FleetRecorder | None = None,
    *,
    processes: Iterable[str] | None = None,
) -> dict[str, Any]:
    """The fleet's counts minute by minute over the last ``minutes`` (one MGET; the
    processes are those that flushed within the window).

    Returns:
        ``minutes`` (epoch seconds of each minute, oldest first) and ``namespaces``: per
        namespace, lists aligned with it of ``hits``, ``misses``, ``hit_rate`` (``None`` for
        a minute without lookups), ``cost`` and ``latency`` histograms.
    """
    if processes is None:
        listed, _ = await _processes(telemetry, None)
        processes = [str(p["process"]) for p in listed or []]
    prefix = telemetry.keys.stats_process("")
    names = {p for p in processes if process_of(prefix + p, prefix) is not None}
    if live is not None:
        names.add(live.process)
    now = int(time.time() // 60)
    span = list(range(now - minutes + 1, now + 1))
    in_memory: dict[int, dict[str, Counts]] = {}
    if live is not None:  # this process's minutes still in memory replace what it wrote
        in_memory = {**live._pending, live._minute: live._current}
    wanted = [
        (m, telemetry.keys.stats_minute(m, p))
        for m in span
        for p in sorted(names)
        if not (live is not None and p == live.process and m in in_memory)
    ]
    keys = [key for _, key in wanted]
    values = (await telemetry.read(keys) if keys else []) or [None] * len(keys)
    per_minute: dict[int, list[Any]] = {m: [] for m in span}
    for (minute, _), value in zip(wanted, values, strict=True):
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
