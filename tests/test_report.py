"""Tuning recommendations: each one triggered by the figures it names, and only then."""

from __future__ import annotations

from typing import Any

from gathering_cache.ops.report import recommend


def figures(
    hits: int = 0, misses: int = 0, sets: int = 0, invalidations: int = 0
) -> dict[str, Any]:
    lookups = hits + misses
    return {
        "hits": hits,
        "misses": misses,
        "hit_rate": round(100 * hits / lookups, 2) if lookups else 0.0,
        "sets": sets,
        "errors": 0,
        "invalidations": invalidations,
    }


def report(server: dict[str, Any], **fleet: Any) -> dict[str, Any]:
    namespaces = fleet.pop("namespaces", {})
    return {
        "server": server,
        "fleet": {
            "hits": 0,
            "misses": 0,
            "sets": 0,
            "errors": 0,
            **fleet,
            "namespaces": namespaces,
        },
    }


def titles(found: list[dict[str, str]]) -> list[str]:
    return [r["title"] for r in found]


def test_a_healthy_cache_gets_no_advice() -> None:
    healthy = report(
        {"maxmemory": 1000, "used_memory": 100, "maxmemory_policy": "allkeys-lru", "rdb_save": ""},
        namespaces={"embedding": figures(90, 10, 10)},
        latency_ms={"p95": 1.0},
        by_process=[{"process": "a", "breaker": "closed"}],
    )
    assert recommend(healthy) == []


def test_each_recommendation_names_its_evidence() -> None:
    unhealthy = report(
        {
            "maxmemory": 1000,
            "used_memory": 900,
            "maxmemory_policy": "noeviction",
            "aof_enabled": 1,
            "rdb_save": "3600 1",
            "expired_keys": 500,
        },
        hits=10,
        misses=90,
        sets=20,
        errors=30,
        latency_ms={"p95": 250.0},
        namespaces={"rag": figures(10, 90, 20, invalidations=40)},
        by_process=[{"process": "worker-1", "pid": 1, "breaker": "open"}],
    )
    found = recommend(unhealthy, operation_timeout=0.5)
    assert titles(found) == [
        "Low hit rate in rag",
        "RAG results invalidated faster than they are read",
        "Memory near maxmemory with noeviction",
        "Persistence on for a pure cache",
        "Many failed operations",
        "Slow operations",
        "Breaker open in worker-1",
    ]
    evidence = {r["title"]: r["evidence"] for r in found}
    assert "hit rate 10.0% over 100 lookups" in evidence["Low hit rate in rag"]
    assert "expired 500 keys" in evidence["Low hit rate in rag"]
    assert (
        "40 invalidations, 10 hits" in evidence["RAG results invalidated faster than they are read"]
    )
    assert "(90%)" in evidence["Memory near maxmemory with noeviction"]
    assert evidence["Persistence on for a pure cache"] == "appendonly yes, save '3600 1'"
    assert evidence["Many failed operations"] == "30 errors in 120 operations"
    assert "p95 250.0 ms" in evidence["Slow operations"]


def test_no_memory_limit_and_too_few_lookups() -> None:
    found = recommend(
        report({"maxmemory": 0, "used_memory": 5000}, namespaces={"llm": figures(1, 9, 1)})
    )
    assert titles(found) == ["No memory limit"]  # 10 lookups: too few to judge the hit rate
