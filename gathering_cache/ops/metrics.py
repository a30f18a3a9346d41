"""Prometheus metrics: an observer that counts every store operation, exposed as a collector.

``register(manager, registry=...)`` (also ``gathering_cache.metrics.register``) adds the
observer to the cache and the collector to a ``prometheus_client`` registry (the default
one when none is given). Counting costs a few dictionary updates per operation; the
families are built only when the registry is scraped:

    gathering_cache_hits_total{namespace}
    gathering_cache_misses_total{namespace}
    gathering_cache_sets_total{namespace}
    gathering_cache_errors_total{namespace,kind}        kind: fault, timeout, shed, skipped,
                                                        rejected, invalid (an entry refused)
    gathering_cache_operation_duration_seconds{operation}  (histogram)
    gathering_cache_cost_saved_dollars_total{namespace}    (estimated, see HIT_SAVINGS)
    gathering_cache_breaker_state                          0 closed, 1 half-open, 2 open
                                                           (or disabled / closed)

These are this process's figures (Prometheus adds processes up by itself); the fleet
statistics in the store are what the CLI and the dashboard show.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import defaultdict
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Final

from gathering_cache.core.keys import NAMESPACES, STATS
from gathering_cache.core.observe import READS, WRITES, Operation, Outcome
from gathering_cache.ops.fleet import HIT_SAVINGS
from gathering_cache.sync import CacheManager

if TYPE_CHECKING:
    from prometheus_client.registry import CollectorRegistry

    from gathering_cache.manager import AsyncCacheManager

__all__ = ["BREAKER_STATES", "DURATION_BUCKETS", "CacheCollector", "register"]

DURATION_BUCKETS: Final = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
)
"""Upper bounds (seconds) of the operation duration histogram (then +Inf)."""

BREAKER_STATES: Final = {"closed": 0, "half_open": 1, "open": 2, "disabled": 2}
"""The gauge's value for each breaker state (a disabled or closed cache never answers)."""


class CacheCollector:
    """Counts a cache's operations (an observer) and yields them as metric families (a
    ``prometheus_client`` collector).

    Args:
        manager: an :class:`~gathering_cache.AsyncCacheManager` or a
            :class:`~gathering_cache.CacheManager`.
    """

    def __init__(self, manager: AsyncCacheManager | CacheManager) -> None:
        self._manager = manager.async_manager if isinstance(manager, CacheManager) else manager
        self.hits: defaultdict[str, int] = defaultdict(int)
        self.misses: defaultdict[str, int] = defaultdict(int)
        self.sets: defaultdict[str, int] = defaultdict(int)
        self.errors: defaultdict[tuple[str, str], int] = defaultdict(int)
        self.cost: defaultdict[str, float] = defaultdict(float)
        self.durations: dict[str, list[int]] = {}
        self.duration_sums: defaultdict[str, float] = defaultdict(float)
        for name in NAMESPACES:  # every namespace shows, at 0, from the first scrape
            self.hits[name] = self.misses[name] = self.sets[name] = 0
            self.cost[name] = 0.0

    def observe(self, operation: Operation) -> None:
        """Count one operation (the observer)."""
        namespace = operation.namespace
        if namespace == STATS:
            return
        op = operation.op
        if op in READS:
            self.hits[namespace] += operation.hits
            self.misses[namespace] += operation.keys - operation.hits
            self.cost[namespace] += operation.hits * HIT_SAVINGS.get(namespace, 0.0)
        elif op in WRITES and operation.outcome is Outcome.STORED:
            self.sets[namespace] += operation.keys
        if operation.failed:
            self.errors[namespace, operation.outcome.value] += 1
        if operation.invalid:
            self.errors[namespace, "invalid"] += operation.invalid
        buckets = self.durations.get(op)
        if buckets is None:
            buckets = self.durations[op] = [0] * (len(DURATION_BUCKETS) + 1)
        buckets[bisect_left(DURATION_BUCKETS, operation.duration)] += 1
        self.duration_sums[op] += operation.duration

    def collect(self) -> Iterator[Any]:
        """The metric families (called by the registry on each scrape)."""
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        for name, doc, values in (
            ("gathering_cache_hits", "Lookups answered from the cache.", self.hits),
            ("gathering_cache_misses", "Lookups the cache could not answer.", self.misses),
            ("gathering_cache_sets", "Values the store acknowledged.", self.sets),
            (
                "gathering_cache_cost_saved_dollars",
                "Estimated dollars saved by hits (embedding, RAG and LLM calls not made).",
                self.cost,
            ),
        ):
            family = CounterMetricFamily(name, doc, labels=["namespace"])
            for namespace, value in sorted(values.items()):
                family.add_metric([namespace], value)
            yield family
        errors = CounterMetricFamily(
            "gathering_cache_errors",
            "Operations the store gave no answer to (kind: fault, timeout, shed, skipped, "
            "rejected), and entries found but refused (kind: invalid).",
            labels=["namespace", "kind"],
        )
        for (namespace, kind), value in sorted(self.errors.items()):
            errors.add_metric([namespace, kind], value)
        yield errors
        duration = HistogramMetricFamily(
            "gathering_cache_operation_duration_seconds",
            "Seconds from a store operation's call to its answer, degraded or not.",
            labels=["operation"],
        )
        for op, counts in sorted(self.durations.items()):
            cumulative, buckets = 0, []
            for bound, count in zip((*DURATION_BUCKETS, float("inf")), counts, strict=True):
                cumulative += count
                buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
            duration.add_metric([op], buckets, sum_value=self.duration_sums[op])
        yield duration
        state = self._manager.telemetry.breaker["state"]
        yield GaugeMetricFamily(
            "gathering_cache_breaker_state",
            "The circuit breaker: 0 closed, 1 half-open, 2 open (or the cache disabled).",
            value=BREAKER_STATES.get(state, 2),
        )


def register(
    manager: AsyncCacheManager | CacheManager, registry: CollectorRegistry | None = None
) -> CacheCollector:
    """Count ``manager``'s operations into Prometheus metrics.

    Args:
        manager: the cache (async manager or sync facade).
        registry: the ``prometheus_client`` registry; the default ``REGISTRY`` when omitted.

    Returns:
        The collector (its counters are plain attributes, for tests and custom exports).

    Raises:
        ImportError: ``prometheus-client`` is not installed (``pip install
            'gathering-cache[metrics]'``).
    """
    try:
        from prometheus_client import REGISTRY
    except ImportError as exc:  # pragma: no cover - the extra is installed in tests
        raise ImportError(
            "gathering_cache.metrics needs prometheus-client: "
            "pip install 'gathering-cache[metrics]'"
        ) from exc
    collector = CacheCollector(manager)
    manager.add_observer(collector.observe)
    (REGISTRY if registry is None else registry).register(collector)
    return collector
