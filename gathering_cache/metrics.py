"""Prometheus metrics for the cache: ``gathering_cache.metrics.register(manager,
registry=...)``. See :mod:`gathering_cache.ops.metrics` (needs the ``metrics`` extra)."""

from gathering_cache.ops.metrics import BREAKER_STATES, CacheCollector, register

__all__ = ["BREAKER_STATES", "CacheCollector", "register"]
