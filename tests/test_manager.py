"""AsyncCacheManager behaviour, run on every backend (memory, fakeredis, real redis-server)."""

from __future__ import annotations

import asyncio
import hashlib
import pickle
from typing import Any

import pytest

from gathering_cache import (
    ArgumentTypeError,
    AsyncCacheManager,
    InvalidArgumentError,
    PatternError,
    SerializationError,
)
from gathering_cache.backends import Progress
from tests.conftest import Factory


def sha16(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


async def plant(cache: AsyncCacheManager, key: str, data: bytes) -> None:
    """Write raw bytes under a key, bypassing encoding (as another program would)."""
    await cache._core.store.set(key, data, None)


# -- generic operations -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "text",
        42,
        3.25,
        True,
        [1, "two", None],
        {"nested": {"list": [1, 2, 3], "ok": False}},
        "",
        0,
        {"unicode": "héllo ✓ 日本"},
    ],
)
async def test_set_get_round_trip(cache: AsyncCacheManager, value: Any) -> None:
    assert await cache.set("any_key", value) is True
    assert await cache.get("any_key") == value


async def test_missing_key_is_none(cache: AsyncCacheManager) -> None:
    assert await cache.get("never-set") is None


async def test_set_with_ttl_and_without(cache: AsyncCacheManager) -> None:
    await cache.set("short", 1, ttl=100)
    await cache.set("forever", 1)  # "forever": default_ttl, as every key the library writes
    assert 98 <= (await cache.ttl("short") or 0) <= 100
    assert 86398 <= (await cache.ttl("forever") or 0) <= 86400
    assert await cache.ttl("absent") is None


async def test_entries_expire(cache: AsyncCacheManager) -> None:
    await cache.set("brief", "x", ttl=1)
    assert await cache.get("brief") == "x"
    await asyncio.sleep(1.1)
    assert await cache.get("brief") is None
    assert await cache.exists("brief") is False


async def test_delete_reports_removal(cache: AsyncCacheManager) -> None:
    await cache.set("k", 1)
    assert await cache.exists("k") is True
    assert await cache.delete("k") is True
    assert await cache.delete("k") is False
    assert await cache.exists("k") is False


async def test_get_many_and_set_many(cache: AsyncCacheManager) -> None:
    assert await cache.set_many({"a": 1, "b": [2], "c": {"x": 3}}, ttl=60) is True
    assert await cache.get_many(["c", "missing", "a", "b"]) == [{"x": 3}, None, 1, [2]]
    assert 58 <= (await cache.ttl("b") or 0) <= 60
    assert await cache.get_many([]) == []
    assert await cache.set_many({}) is True


async def test_set_many_with_unencodable_value_writes_nothing(cache: AsyncCacheManager) -> None:
    with pytest.raises(SerializationError, match="set"):
        await cache.set_many({"good": 1, "bad": {1, 2}})
    assert await cache.get("good") is None


# -- domain caches: the seed's keys and TTLs --------------------------------------------------


async def test_embedding_key_and_ttl(cache: AsyncCacheManager) -> None:
    assert await cache.set_embedding("Hello world", [0.1, 0.2, 0.3]) is True
    assert await cache.get_embedding("Hello world") == [0.1, 0.2, 0.3]
    key = f"gathering:embedding:{sha16('Hello world')}"
    assert key == "gathering:embedding:64ec88ca00b268e5"
    assert await cache.exists(key)
    assert 86390 <= (await cache.ttl(key) or 0) <= 86400
    assert await cache.get_embedding("Hello world!") is None


async def test_embedding_custom_ttl_and_int_items(cache: AsyncCacheManager) -> None:
    await cache.set_embedding("t", [1, 2, 3], ttl=50)
    assert await cache.get_embedding("t") == [1.0, 2.0, 3.0]
    assert 48 <= (await cache.ttl(f"gathering:embedding:{sha16('t')}") or 0) <= 50


async def test_rag_results_keys_ttl_and_invalidation(cache: AsyncCacheManager) -> None:
    results = [{"id": 1, "content": "User prefers dark mode", "score": 0.92}]
    query = "What are the user's preferences?"
    assert await cache.set_rag_results(1, query, results) is True
    assert await cache.set_rag_results(1, "another", []) is True
    assert await cache.set_rag_results(10, query, results) is True
    key = f"gathering:rag:agent:1:{sha16(query)}"
    assert 290 <= (await cache.ttl(key) or 0) <= 300
    assert await cache.get_rag_results(1, query) == results
    assert await cache.get_rag_results(1, "another") == []

    assert await cache.invalidate_rag_results(1) == 2
    assert await cache.get_rag_results(1, query) is None
    # agent 10 shares the "1" digit but not the key segment: untouched
    assert await cache.get_rag_results(10, query) == results
    assert await cache.invalidate_rag_results(1) == 0


async def test_circle_context_keys_ttl_and_invalidation(cache: AsyncCacheManager) -> None:
    context = {"name": "Research Team", "members": [1, 2, 3], "active_tasks": 5}
    assert await cache.set_circle_context(circle_id=5, context=context) is True
    assert await cache.get_circle_context(circle_id=5) == context
    assert 590 <= (await cache.ttl("gathering:circle:5") or 0) <= 600
    assert await cache.invalidate_circle_context(circle_id=5) is True
    assert await cache.get_circle_context(circle_id=5) is None
    assert await cache.invalidate_circle_context(circle_id=5) is False


async def test_config_ttls_and_prefix_are_used(make_cache: Factory) -> None:
    cache = await make_cache(key_prefix="myapp:", rag_results_ttl=42, circle_context_ttl=77)
    await cache.set_rag_results(3, "q", [{"a": 1}])
    await cache.set_circle_context(4, {"b": 2})
    assert 40 <= (await cache.ttl(f"myapp:rag:agent:3:{sha16('q')}") or 0) <= 42
    assert 75 <= (await cache.ttl("myapp:circle:4") or 0) <= 77


# -- pattern deletion and clear_all ------------------------------------------------------------


async def test_delete_pattern_is_confined_to_the_prefix(cache: AsyncCacheManager) -> None:
    await cache.set("other-app:key", "theirs")
    await cache.set("gathering:embedding:x", 1)
    with pytest.raises(PatternError, match="outside the key prefix"):
        await cache.delete_pattern("*")
    with pytest.raises(PatternError):
        await cache.delete_pattern("other-app:*")
    with pytest.raises(ValueError, match="outside"):  # PatternError is a ValueError
        await cache.delete_pattern("gathering")
    assert await cache.get("other-app:key") == "theirs"
    assert await cache.get("gathering:embedding:x") == 1


async def test_seed_pattern_based_invalidation(cache: AsyncCacheManager) -> None:
    for agent in (1, 2):
        for n in range(3):
            await cache.set_rag_results(agent, f"q{n}", [{"n": n}])
    for n in range(4):
        await cache.set_embedding(f"text {n}", [float(n), 1.0])
    await cache.set("outside", "kept")

    assert await cache.delete_pattern("gathering:rag:agent:1:*") == 3
    assert await cache.get_rag_results(2, "q0") == [{"n": 0}]
    assert await cache.delete_pattern("gathering:embedding:*") == 4
    # agent 2's three entries, the two agents' index sets and the three generation counters
    # (agent 1, agent 2, all; see gathering_cache.caches.rag)
    assert await cache.delete_pattern("gathering:*") == 3 + 2 + 3
    assert await cache.get("outside") == "kept"


async def test_delete_pattern_handles_many_keys_in_batches(cache: AsyncCacheManager) -> None:
    await cache.set_many({f"gathering:bulk:{i}": i for i in range(1200)})
    await cache.set_many({f"gathering:keep:{i}": i for i in range(30)})
    assert await cache.delete_pattern("gathering:bulk:*") == 1200
    assert (await cache.get_stats())["total_keys"] == 30


async def test_clear_all_only_removes_prefixed_keys(cache: AsyncCacheManager) -> None:
    await cache.set("unrelated", 1)
    await cache.set_embedding("a", [1.0])
    await cache.set_circle_context(1, {"x": 1})
    await cache.set_rag_results(1, "q", [])
    assert await cache.clear_all() == 3 + 1 + 2  # and agent 1's index set and counters
    assert await cache.get("unrelated") == 1
    assert await cache.clear_all() == 0


# -- stats ------------------------------------------------------------------------------------


async def test_stats_count_own_lookups_per_namespace(cache: AsyncCacheManager) -> None:
    stats = await cache.get_stats()
    assert stats["enabled"] is True
    assert stats["hits"] == stats["misses"] == 0
    assert stats["hit_rate"] == 0.0

    await cache.set_embedding("e", [1.0])
    await cache.get_embedding("e")
    await cache.get_embedding("e")
    await cache.get_embedding("nope")
    await cache.get_rag_results(1, "q")
    await cache.set("gathering:x", 1)
    await cache.get("gathering:x")
    await cache.get_many(["gathering:x", "gathering:y"])

    stats = await cache.get_stats()
    assert stats["hits"] == 4
    assert stats["misses"] == 3
    assert stats["hit_rate"] == round(100 * 4 / 7, 2) == 57.14
    assert stats["namespaces"]["embedding"] == {"hits": 2, "misses": 1, "hit_rate": 66.67}
    assert stats["namespaces"]["rag"] == {"hits": 0, "misses": 1, "hit_rate": 0.0}
    assert stats["namespaces"]["generic"] == {"hits": 2, "misses": 1, "hit_rate": 66.67}
    assert stats["total_keys"] == 2 + 2  # and the RAG miss's generation counters (agent, all)
    for key in ("enabled", "host", "port", "db", "total_keys", "hits", "misses", "hit_rate"):
        assert key in stats

    cache.reset_stats()
    assert (await cache.get_stats())["hits"] == 0


async def test_total_keys_counts_only_the_prefix(cache: AsyncCacheManager) -> None:
    await cache.set_many({f"elsewhere:{i}": i for i in range(5)})
    await cache.set_many({f"gathering:{i}": i for i in range(3)})
    assert (await cache.get_stats())["total_keys"] == 3


# -- hostile or foreign data: a miss, never an exception -----------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        pickle.dumps({"evil": True}),
        b'{"plain": "json from another program"}',
        b"\x01j{not json",
        b"\x02jfuture format",
        b"",
    ],
)
async def test_foreign_bytes_are_a_counted_miss(cache: AsyncCacheManager, data: bytes) -> None:
    await plant(cache, "gathering:foreign", data)
    assert await cache.get("gathering:foreign") is None
    stats = await cache.get_stats()
    assert stats["errors"] == 1
    assert stats["misses"] == 1


async def test_wrong_shape_under_domain_key_is_a_miss(cache: AsyncCacheManager) -> None:
    await cache.set(f"gathering:embedding:{sha16('t')}", {"not": "a vector"})
    await cache.set("gathering:circle:1", ["not", "a", "dict"])
    await cache.set(f"gathering:rag:agent:1:{sha16('q')}", {"not": "a list"})
    assert await cache.get_embedding("t") is None
    assert await cache.get_circle_context(1) is None
    assert await cache.get_rag_results(1, "q") is None
    assert (await cache.get_stats())["errors"] == 3


# -- bad input: a clear error, nothing written --------------------------------------------------


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda c: c.get(123), ArgumentTypeError, "must be a str, not int"),
        (lambda c: c.get(b"bytes"), ArgumentTypeError, "bytes"),
        (lambda c: c.set("", 1), InvalidArgumentError, "empty"),
        (lambda c: c.set(None, 1), TypeError, "NoneType"),
        (lambda c: c.set("k", 1, ttl=0), InvalidArgumentError, "ttl"),
        (lambda c: c.set("k", 1, ttl=-5), ValueError, "ttl"),
        (lambda c: c.set("k", 1, ttl=1.5), ValueError, "ttl"),
        (lambda c: c.set("k", 1, ttl="60"), ValueError, "ttl"),
        (lambda c: c.set("k", 1, ttl=True), ValueError, "ttl"),
        (lambda c: c.set("k", {1, 2}), SerializationError, "set"),
        (lambda c: c.set("k", object()), TypeError, "object"),
        (lambda c: c.set("k", {1: "non-str key"}), SerializationError, "dict"),
        (lambda c: c.set("k", 2**70), SerializationError, "int"),
        (lambda c: c.set("k", {"score": float("nan")}), SerializationError, "finite"),
        (lambda c: c.set_many({"k": [float("inf")]}), SerializationError, "finite"),
        (lambda c: c.set_many([("k", 1)]), ArgumentTypeError, "Mapping"),
        (lambda c: c.set_many({"k": 1, 5: 2}), ArgumentTypeError, "int"),
        (lambda c: c.get_many("k"), ArgumentTypeError, "single str"),
        (lambda c: c.set_embedding("k", [1.0, float("nan")]), InvalidArgumentError, "nan"),
        (lambda c: c.set_embedding("k", [float("inf")]), ValueError, "inf"),
        (lambda c: c.set_embedding("k", []), InvalidArgumentError, "empty"),
        (lambda c: c.set_embedding("k", "0.1,0.2"), ArgumentTypeError, "str"),
        (lambda c: c.set_embedding("k", [0.1, "x"]), ArgumentTypeError, r"embedding\[1\]"),
        (lambda c: c.set_embedding("k", [True, 1.0]), ArgumentTypeError, "bool"),
        (lambda c: c.set_embedding(42, [1.0]), ArgumentTypeError, "text"),
        (lambda c: c.set_rag_results("1", "q", []), ArgumentTypeError, "agent_id"),
        (lambda c: c.set_rag_results(True, "q", []), ArgumentTypeError, "agent_id"),
        (lambda c: c.set_rag_results(1, "q", {"a": 1}), ArgumentTypeError, "list"),
        (lambda c: c.set_rag_results(1, "q", [{"x": {1, 2}}]), SerializationError, "set"),
        (lambda c: c.get_rag_results(1.0, "q"), ArgumentTypeError, "agent_id"),
        (lambda c: c.invalidate_rag_results("1"), ArgumentTypeError, "agent_id"),
        (lambda c: c.set_circle_context("5", {}), ArgumentTypeError, "circle_id"),
        (lambda c: c.set_circle_context(5, [1]), ArgumentTypeError, "dict"),
        (lambda c: c.invalidate_circle_context(None), ArgumentTypeError, "circle_id"),
        (lambda c: c.delete_pattern(b"gathering:*"), ArgumentTypeError, "pattern"),
    ],
)
async def test_bad_input_raises_and_writes_nothing(
    cache: AsyncCacheManager, call: Any, error: type[Exception], match: str
) -> None:
    await cache.set("sentinel", "untouched")
    with pytest.raises(error, match=match):
        await call(cache)
    stats = await cache.get_stats()
    assert await cache._core.store.count("*", Progress()) == 1  # every key, any prefix
    assert stats["writes"] == 1
    assert await cache.get("sentinel") == "untouched"
    assert await cache.get("k") is None


async def test_glob_metacharacters_in_text_are_hashed(cache: AsyncCacheManager) -> None:
    await cache.set_rag_results(1, "*", [{"a": 1}])
    await cache.set_rag_results(1, "[a-z]?", [{"b": 2}])
    await cache.set_embedding("*", [1.0])
    assert await cache.get_rag_results(1, "*") == [{"a": 1}]
    assert await cache.get_rag_results(1, "x") is None
    assert await cache.get_embedding("?") is None
    assert await cache.invalidate_rag_results(1) == 2
    assert await cache.get_embedding("*") == [1.0]


async def test_oversized_values_are_not_stored(
    make_cache: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    cache = await make_cache(max_value_bytes=1000)
    assert await cache.set("gathering:big", "x" * 2000) is False
    assert await cache.set("gathering:big2", "y" * 2000) is False
    assert await cache.set_many({"gathering:small": 1, "gathering:big": "x" * 2000}) is False
    assert await cache.set_embedding("t", [0.1] * 200) is False  # 1,602 bytes as float64
    assert await cache.set("gathering:fits", "z" * 900) is True
    assert await cache.get("gathering:big") is None
    assert await cache.get("gathering:small") is None  # the batch was refused whole
    stats = await cache.get_stats()
    assert stats["oversized"] == 4
    assert stats["total_keys"] == 1
    warnings = [r for r in caplog.records if "max_value_bytes" in r.getMessage()]
    assert len(warnings) == 1
