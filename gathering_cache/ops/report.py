"""What the CLI's ``stats`` and the dashboard show: keys and memory per namespace (memory
sampled with MEMORY USAGE, never every key), the fleet's counters and history, the server's
configuration, and tuning recommendations, each with the evidence that triggered it.

Everything is read through the cache's telemetry handle (SCAN only, under the policy); the
password is never part of it.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Final

from gathering_cache.core.keys import LISTED
from gathering_cache.ops.fleet import fleet_history, fleet_stats

if TYPE_CHECKING:
    from gathering_cache.manager import AsyncCacheManager

__all__ = ["NAMESPACES_SHOWN", "collect", "recommend"]

NAMESPACES_SHOWN: Final = LISTED
"""The namespaces with keys of their own (embedding, rag, circle, llm)."""

_LOW_HIT_RATE: Final = 30.0
_MIN_LOOKUPS: Final = 50


async def collect(
    cache: AsyncCacheManager, *, sample: int = 20, minutes: int = 60, history: bool = True
) -> dict[str, Any]:
    """Everything an operator looks at, as plain data (what ``stats --json`` prints and
    ``/api/stats`` serves).

    Args:
        cache: a connected manager.
        sample: keys per namespace whose MEMORY USAGE is read; a namespace's memory is their
            average times its key count.
        minutes: the history's length.
        history: whether to read the minute-by-minute history.
    """
    telemetry = cache.telemetry
    await cache.connect()
    prefix = cache.config.key_prefix
    info = await telemetry.server_info()
    namespaces: dict[str, dict[str, Any]] = {}
    for name in NAMESPACES_SHOWN:
        count = await telemetry.count(f"{prefix}{name}:*")
        keys: list[str] = []
        async for key in cache.scan_keys(namespace=name, count=max(sample, 10)):
            keys.append(key)
            if len(keys) >= sample:
                break
        sizes = [size for size in await telemetry.memory_usage(keys) if size is not None]
        memory = None
        if sizes and count is not None:
            memory = round(sum(sizes) / len(sizes) * count)
        elif count == 0:
            memory = 0
        namespaces[name] = {"keys": count, "memory_bytes": memory, "memory_sampled": len(sizes)}
    total_keys = await telemetry.count(f"{prefix}*")
    fleet = await fleet_stats(telemetry, cache.fleet)
    for name, figures in namespaces.items():
        figures.update(fleet["namespaces"][name])
    report: dict[str, Any] = {
        "time": round(time.time(), 3),
        "enabled": cache.is_enabled(),
        "reason": telemetry.reason,
        "endpoint": telemetry.endpoint,
        "key_prefix": prefix,
        "total_keys": total_keys,
        "server": info,
        "breaker": telemetry.breaker,
        "namespaces": namespaces,
        "fleet": fleet,
    }
    if history:
        report["history"] = await fleet_history(telemetry, minutes, cache.fleet)
    report["recommendations"] = recommend(report, cache.config.operation_timeout)
    return report


def _n(value: float) -> str:
    return f"{value:,.0f}"


def recommend(report: dict[str, Any], operation_timeout: float = 0.5) -> list[dict[str, str]]:
    """Tuning advice derived from a :func:`collect` report: each a ``title``, what to do
    (``advice``) and the figures that triggered it (``evidence``)."""
    found: list[dict[str, str]] = []
    info: dict[str, Any] = report.get("server") or {}
    fleet: dict[str, Any] = report.get("fleet") or {}
    namespaces: dict[str, dict[str, Any]] = fleet.get("namespaces") or {}
    expired = info.get("expired_keys")
    for name, figures in namespaces.items():
        lookups = figures["hits"] + figures["misses"]
        if lookups < _MIN_LOOKUPS or figures["hit_rate"] >= _LOW_HIT_RATE:
            continue
        evidence = (
            f"{name}: hit rate {figures['hit_rate']}% over {_n(lookups)} lookups, "
            f"{_n(figures['sets'])} entries written"
        )
        if isinstance(expired, int) and expired:
            evidence += f"; the server has expired {_n(expired)} keys (all clients)"
        found.append(
            {
                "title": f"Low hit rate in {name}",
                "advice": f"Lengthen the {name} TTL if entries expire before they are asked "
                "for again, or stop caching this namespace if its lookups rarely repeat.",
                "evidence": evidence,
            }
        )
    rag = namespaces.get("rag")
    if rag and rag["invalidations"] and rag["invalidations"] > rag["hits"]:
        found.append(
            {
                "title": "RAG results invalidated faster than they are read",
                "advice": "Don't cache the recalls of agents whose memories change this often "
                "(or batch their memory writes): each invalidation throws the cached results "
                "away before they pay off.",
                "evidence": f"rag: {_n(rag['invalidations'])} invalidations, "
                f"{_n(rag['hits'])} hits, {_n(rag['sets'])} results cached",
            }
        )
    maxmemory, used = info.get("maxmemory"), info.get("used_memory")
    policy = info.get("maxmemory_policy")
    if isinstance(maxmemory, int) and isinstance(used, int):
        if maxmemory and used >= 0.8 * maxmemory and policy == "noeviction":
            found.append(
                {
                    "title": "Memory near maxmemory with noeviction",
                    "advice": "Set maxmemory-policy allkeys-lru: with noeviction, writes fail "
                    "once memory is full, instead of the least used entries making room.",
                    "evidence": f"used_memory {_n(used)} B of maxmemory {_n(maxmemory)} B "
                    f"({100 * used / maxmemory:.0f}%), maxmemory_policy {policy}",
                }
            )
        elif not maxmemory:
            found.append(
                {
                    "title": "No memory limit",
                    "advice": "Set maxmemory (below the machine's memory) with "
                    "maxmemory-policy allkeys-lru, so a growing cache evicts instead of "
                    "swapping or being killed.",
                    "evidence": f"maxmemory 0 (unlimited), used_memory {_n(used)} B",
                }
            )
    persistence = []
    if info.get("aof_enabled"):
        persistence.append("appendonly yes")
    if info.get("rdb_save"):
        persistence.append(f"save {info['rdb_save']!r}")
    if persistence:
        found.append(
            {
                "title": "Persistence on for a pure cache",
                "advice": "Turn persistence off (save '' and appendonly no) if this Redis "
                "holds only the cache: snapshots and the AOF cost memory, disk and latency "
                "for data that can be recomputed.",
                "evidence": ", ".join(persistence),
            }
        )
    lookups = fleet.get("hits", 0) + fleet.get("misses", 0)
    operations = lookups + fleet.get("sets", 0)
    if operations >= _MIN_LOOKUPS and fleet.get("errors", 0) > 0.05 * operations:
        found.append(
            {
                "title": "Many failed operations",
                "advice": "Look at the server's health and the network; raise "
                "operation_timeout if calls time out under normal load.",
                "evidence": f"{_n(fleet['errors'])} errors in {_n(operations)} operations",
            }
        )
    p95 = (fleet.get("latency_ms") or {}).get("p95")
    if isinstance(p95, (int, float)) and p95 >= 500 * operation_timeout:
        found.append(
            {
                "title": "Slow operations",
                "advice": "p95 latency is at half the operation timeout or more: calls are "
                "close to degrading. Check the server's load, or raise operation_timeout.",
                "evidence": f"p95 {p95} ms, operation_timeout {operation_timeout * 1000:.0f} ms",
            }
        )
    for process in fleet.get("by_process") or []:
        if process.get("breaker") in ("open", "half_open"):
            found.append(
                {
                    "title": f"Breaker {process['breaker']} in {process['process']}",
                    "advice": "That process cannot reach Redis and runs degraded: check its "
                    "network path and credentials.",
                    "evidence": f"process {process['process']} (pid {process.get('pid')}) "
                    f"reported breaker {process['breaker']}",
                }
            )
    return found
