"""The seed document's snippets (../shared/seed/redis-cache.md), run as written with only the
import changed to ``gathering_cache``, on the memory backend and on a real redis-server; and
their awaited equivalents on AsyncCacheManager."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import redis

from gathering_cache import AsyncCacheManager, CacheConfig
from tests.servers import RedisServer

QUICK_START = """
from gathering_cache import CacheManager

# Auto-configure from environment
cache = CacheManager.from_env()

# Check if cache is working
if cache.is_enabled():
    print("✅ Redis cache is active!")
else:
    print("⚠️ Cache disabled, using degraded mode")
"""

TEST_CACHE = """
# Set a value
cache.set_embedding("Hello world", [0.1, 0.2, 0.3])

# Get it back
embedding = cache.get_embedding("Hello world")
print(embedding)  # [0.1, 0.2, 0.3]

# Check stats
stats = cache.get_stats()
print(f"Hit rate: {stats['hit_rate']}%")
"""

CIRCLE_CONTEXT = """
# Manual usage
context = {
    "name": "Research Team",
    "members": [1, 2, 3],
    "active_tasks": 5,
}

cache.set_circle_context(circle_id=5, context=context)

# Later...
cached = cache.get_circle_context(circle_id=5)  # CACHE ✅

# Invalidate on change
cache.invalidate_circle_context(circle_id=5)
"""

TESTING_DEGRADATION = """
from gathering_cache import CacheConfig, CacheManager

# Test without Redis
config = CacheConfig(enabled=False)
cache = CacheManager(config)

assert cache.is_enabled() is False
assert cache.get("any_key") is None
assert cache.set("any_key", "value") is False

# System still works!
"""

PATTERN_BASED_INVALIDATION = """
# Delete all RAG results for agent 1
cache.delete_pattern("gathering:rag:agent:1:*")

# Delete all embeddings
cache.delete_pattern("gathering:embedding:*")

# Delete everything
cache.delete_pattern("gathering:*")
"""

MANUAL_TESTING = """
# Test script
from gathering_cache import CacheManager

cache = CacheManager.from_env()

print(f"Cache enabled: {cache.is_enabled()}")

# Test embedding cache
cache.set_embedding("hello", [0.1, 0.2, 0.3])
print(f"Embedding: {cache.get_embedding('hello')}")

# Test stats
stats = cache.get_stats()
print(f"Stats: {stats}")

# Cleanup
cache.clear_all()
"""

INTEGRATION_TEST = """
cache = CacheManager.from_env()
assert cache.is_enabled()

# Test roundtrip
cache.set_embedding("test", [0.1, 0.2, 0.3])
result = cache.get_embedding("test")
assert result == [0.1, 0.2, 0.3]

# Cleanup
cache.clear_all()
"""

CUSTOM_CONFIGURATION = """
from gathering_cache import CacheConfig, CacheManager

config = CacheConfig(
    host="redis.example.com",
    port=6380,
    db=1,
    password="secret",
    embedding_ttl=7200,      # 2 hours
    rag_results_ttl=600,     # 10 minutes
    circle_context_ttl=1200, # 20 minutes
    key_prefix="myapp:",     # Custom prefix
)
"""


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.integration)])
def seed_env(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path) -> str:  # type: ignore[no-untyped-def]
    """The environment the seed's .env describes, pointing at a real server or none."""
    monkeypatch.chdir(tmp_path)
    for name in ("REDIS_URL", "REDIS_PASSWORD", "REDIS_USERNAME", "GATHERING_CACHE_KEY_PREFIX"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CACHE_ENABLED", "true")
    monkeypatch.setenv("REDIS_DB", "0")
    if request.param == "memory":
        monkeypatch.setenv("GATHERING_CACHE_BACKEND", "memory")
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        flush = redis.Redis.from_url(server.url)
        flush.flushdb()
        flush.close()
        monkeypatch.setenv("GATHERING_CACHE_BACKEND", "redis")
        monkeypatch.setenv("REDIS_HOST", "127.0.0.1")
        monkeypatch.setenv("REDIS_PORT", str(server.port))
    backend: str = request.param
    return backend


def run(snippet: str, namespace: dict[str, object]) -> dict[str, object]:
    exec(compile(textwrap.dedent(snippet), "<seed snippet>", "exec"), namespace)
    return namespace


def test_quick_start_test_cache_and_manual_testing(
    seed_env: str, capsys: pytest.CaptureFixture[str]
) -> None:
    ns = run(QUICK_START, {})
    assert "✅ Redis cache is active!" in capsys.readouterr().out
    cache = ns["cache"]
    cache.clear_all()  # type: ignore[attr-defined]
    run(TEST_CACHE, ns)
    out = capsys.readouterr().out
    assert "[0.1, 0.2, 0.3]" in out
    assert "Hit rate: 100.0%" in out
    run(MANUAL_TESTING, ns)
    out = capsys.readouterr().out
    assert "Cache enabled: True" in out
    assert "Embedding: [0.1, 0.2, 0.3]" in out
    # A second manager on the memory backend has a store of its own; on Redis both share one.
    assert f"'total_keys': {1 if seed_env == 'memory' else 2}" in out
    assert ns["cache"].get_stats()["total_keys"] == 0  # type: ignore[attr-defined]
    for manager in (cache, ns["cache"]):
        manager.close()  # type: ignore[attr-defined]


def test_quick_start_without_redis_reports_degraded(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from tests.servers import free_port

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.delenv("GATHERING_CACHE_BACKEND", raising=False)
    monkeypatch.setenv("REDIS_HOST", "127.0.0.1")
    monkeypatch.setenv("REDIS_PORT", str(free_port()))
    ns = run(QUICK_START, {})
    assert "⚠️ Cache disabled, using degraded mode" in capsys.readouterr().out
    ns["cache"].close()  # type: ignore[attr-defined]


def test_circle_context_and_pattern_invalidation(seed_env: str) -> None:
    ns = run("from gathering_cache import CacheManager\ncache = CacheManager.from_env()", {})
    cache = ns["cache"]
    cache.clear_all()  # type: ignore[attr-defined]
    run(CIRCLE_CONTEXT, ns)
    assert ns["cached"] == ns["context"]
    assert cache.get_circle_context(circle_id=5) is None  # type: ignore[attr-defined]

    cache.set_rag_results(1, "q", [{"a": 1}])  # type: ignore[attr-defined]
    cache.set_rag_results(2, "q", [{"a": 2}])  # type: ignore[attr-defined]
    cache.set_embedding("e", [1.0])  # type: ignore[attr-defined]
    cache.set_circle_context(9, {"n": 9})  # type: ignore[attr-defined]
    run(PATTERN_BASED_INVALIDATION, ns)
    # Before the reads: a RAG miss creates the agent's generation counters (see caches/rag.py).
    assert cache.get_stats()["total_keys"] == 0  # type: ignore[attr-defined]
    assert cache.get_rag_results(1, "q") is None  # type: ignore[attr-defined]
    assert cache.get_rag_results(2, "q") is None  # type: ignore[attr-defined]
    cache.close()  # type: ignore[attr-defined]


def test_testing_degradation() -> None:
    ns = run(TESTING_DEGRADATION, {})
    ns["cache"].close()  # type: ignore[attr-defined]


def test_integration_snippet(seed_env: str) -> None:
    from gathering_cache import CacheManager

    ns = run(INTEGRATION_TEST, {"CacheManager": CacheManager})
    assert ns["result"] == [0.1, 0.2, 0.3]
    ns["cache"].close()  # type: ignore[attr-defined]


def test_custom_configuration() -> None:
    ns = run(CUSTOM_CONFIGURATION, {})
    config = ns["config"]
    assert isinstance(config, CacheConfig)
    assert (config.host, config.port, config.db, config.key_prefix) == (
        "redis.example.com",
        6380,
        1,
        "myapp:",
    )


# -- awaited equivalents ------------------------------------------------------------------------


async def test_awaited_equivalents(seed_env: str) -> None:
    async with AsyncCacheManager.from_env() as cache:
        assert cache.is_enabled()
        await cache.clear_all()
        await cache.set_embedding("Hello world", [0.1, 0.2, 0.3])
        assert await cache.get_embedding("Hello world") == [0.1, 0.2, 0.3]
        assert (await cache.get_stats())["hit_rate"] == 100.0

        context = {"name": "Research Team", "members": [1, 2, 3], "active_tasks": 5}
        await cache.set_circle_context(circle_id=5, context=context)
        assert await cache.get_circle_context(circle_id=5) == context
        assert await cache.invalidate_circle_context(circle_id=5) is True

        await cache.set_rag_results(1, "q", [{"a": 1}])
        assert await cache.delete_pattern("gathering:rag:agent:1:*") == 1
        assert await cache.delete_pattern("gathering:embedding:*") == 1
        # agent 1's RAG index and its generation counters (agent 1, all)
        assert await cache.delete_pattern("gathering:*") == 3

    disabled = AsyncCacheManager(CacheConfig(enabled=False))
    assert disabled.is_enabled() is False
    assert await disabled.get("any_key") is None
    assert await disabled.set("any_key", "value") is False
