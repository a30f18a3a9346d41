"""Pure modules, no event loop: key layout, encoding, stats, glob matching."""

from __future__ import annotations

import hashlib
import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gathering_cache import (
    ArgumentTypeError,
    Operation,
    Outcome,
    PatternError,
    SerializationError,
)
from gathering_cache.core.encoding import DecodeError, decode, encode, prepend
from gathering_cache.core.globmatch import compile_glob
from gathering_cache.core.keys import KeySpace, check_id, check_key, check_ttl, text_hash
from gathering_cache.core.stats import CacheStats, hit_rate


def test_text_hash_is_the_seeds() -> None:
    assert text_hash("Hello world") == hashlib.sha256(b"Hello world").hexdigest()[:16]
    assert len(text_hash("")) == 16
    assert text_hash("é") == hashlib.sha256("é".encode()).hexdigest()[:16]


def test_key_layout() -> None:
    keys = KeySpace("gathering:")
    assert keys.embedding("hi") == f"gathering:embedding:{text_hash('hi')}"
    assert keys.rag(7, "q") == f"gathering:rag:agent:7:{text_hash('q')}"
    assert keys.rag_agent_pattern(7) == "gathering:rag:agent:7:*"
    assert keys.circle(5) == "gathering:circle:5"
    assert keys.everything() == "gathering:*"


def test_checked_circle_keys_are_kept_but_still_checked() -> None:
    keys = KeySpace("gathering:")
    assert keys.checked_circle(1) == "gathering:circle:1"
    assert keys.checked_circle(1) is keys.checked_circle(1)  # kept, not formatted again
    # True and 1.0 equal the kept 1: they must still be refused, not served its key.
    for bad in (True, 1.0, "1", None):
        with pytest.raises(ArgumentTypeError, match="circle_id must be an int"):
            keys.checked_circle(bad)
    for circle_id in range(5000):  # bounded: the keys of many ids do not pile up
        assert keys.checked_circle(circle_id) == f"gathering:circle:{circle_id}"
    assert len(keys.circle_keys) <= 4096


def test_pattern_check() -> None:
    keys = KeySpace("gathering:")
    assert keys.check_pattern("gathering:rag:*") == "gathering:rag:*"
    for bad in ("*", "gathering*", "other:gathering:*", "?athering:*", "[g]athering:*"):
        with pytest.raises(PatternError):
            keys.check_pattern(bad)


def test_argument_checks() -> None:
    assert check_key("k") == "k"
    assert check_id(0, "agent_id") == 0
    assert check_id(-3, "agent_id") == -3
    assert check_ttl(None) is None
    assert check_ttl(1) == 1
    with pytest.raises(TypeError, match="agent_id must be an int, not bool"):
        check_id(False, "agent_id")


@pytest.mark.parametrize(
    "value", [None, True, 0, -1.5, "s", [1, [2, {"a": None}]], {"k": "v"}, 2**63 - 1]
)
def test_encode_round_trip(value: object) -> None:
    assert decode(encode(value)) == value


def test_encode_numpy_arrays() -> None:
    np = pytest.importorskip("numpy")
    assert decode(encode(np.array([1.5, 2.5], dtype=np.float32))) == [1.5, 2.5]
    assert decode(encode({"v": np.arange(3)})) == {"v": [0, 1, 2]}


def test_envelope_is_versioned() -> None:
    data = encode({"a": 1})
    assert data[:2] == b"\x01j"
    with pytest.raises(DecodeError):
        decode(b"\x02j" + data[2:])
    with pytest.raises(DecodeError):
        decode(pickle.dumps({"a": 1}))
    with pytest.raises(DecodeError):
        decode(data[:-1])


def test_unencodable_value_names_the_type() -> None:
    class Custom:
        pass

    with pytest.raises(SerializationError, match="Custom"):
        encode(Custom())
    with pytest.raises(TypeError):
        encode({1, 2})


@pytest.mark.parametrize(
    ("value", "where"),
    [
        (float("nan"), "value"),
        ([1.0, None, float("inf")], r"value\[2\]"),
        ({"a": {"b": [float("-inf")]}}, r"value\['a'\]\['b'\]\[0\]"),
        ((None, float("nan")), r"value\[1\]"),
    ],
)
def test_non_finite_floats_are_refused_not_turned_into_null(value: object, where: str) -> None:
    with pytest.raises(SerializationError, match=where):
        encode(value)


def test_non_finite_numpy_values_are_refused() -> None:
    np = pytest.importorskip("numpy")
    with pytest.raises(SerializationError, match="finite"):
        encode({"v": np.array([1.0, np.nan])})
    assert decode(encode([None, np.float64(1.5)])) == [None, 1.5]


def test_hit_rate() -> None:
    assert hit_rate(0, 0) == 0.0
    assert hit_rate(1, 2) == 33.33
    assert hit_rate(8543, 1234) == 87.38  # the seed's example


def test_stats_snapshot() -> None:
    stats = CacheStats()
    stats.observe(Operation("get_many", "embedding", Outcome.HIT, 0.001, 30, keys=3, hits=3))
    stats.observe(Operation("get", "rag", Outcome.MISS, 0.001))
    snap = stats.snapshot()
    assert (snap["hits"], snap["misses"], snap["hit_rate"]) == (3, 1, 75.0)
    assert snap["namespaces"]["embedding"]["hit_rate"] == 100.0
    assert set(snap["namespaces"]) == {"embedding", "rag", "circle", "llm", "generic"}
    stats.reset()
    assert stats.snapshot()["hits"] == 0


GLOB_CASES = [
    ("gathering:*", ["gathering:", "gathering:a:b"], ["gatherin", "x:gathering:"]),
    ("a?c", ["abc", "a.c"], ["ac", "abbc"]),
    ("a[bc]d", ["abd", "acd"], ["aad", "abcd"]),
    ("a[^b]d", ["aad", "acd"], ["abd"]),
    ("a[b-d]e", ["abe", "ace", "ade"], ["aee", "a-e"]),
    ("a\\*b", ["a*b"], ["axb"]),
    ("a[\\]]b", ["a]b"], ["a\\b"]),
    ("a.b+c", ["a.b+c"], ["axbbc"]),
    ("rag:agent:1:*", ["rag:agent:1:abc"], ["rag:agent:10:abc"]),
]


@pytest.mark.parametrize(("pattern", "matching", "other"), GLOB_CASES)
def test_memory_glob_follows_redis_rules(
    pattern: str, matching: list[str], other: list[str]
) -> None:
    glob = compile_glob(pattern)
    for key in matching:
        assert glob.fullmatch(key), (pattern, key)
    for key in other:
        assert not glob.fullmatch(key), (pattern, key)


@pytest.mark.integration
async def test_memory_glob_agrees_with_real_redis(raw_redis) -> None:  # type: ignore[no-untyped-def]
    keys = sorted({k for _, matching, other in GLOB_CASES for k in matching + other})
    for key in keys:
        await raw_redis.set(key, 1)
    for pattern, _, _ in GLOB_CASES:
        found = sorted([k.decode() async for k in raw_redis.scan_iter(match=pattern, count=1000)])
        expected = [k for k in keys if compile_glob(pattern).fullmatch(k)]
        assert found == expected, pattern


_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.text(max_size=5)
    | st.floats(allow_nan=False, allow_infinity=False)
)
_JSONISH = st.recursive(
    _SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=3), inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=200, deadline=None)
@given(
    numbers=st.lists(st.integers(0, 2**53), min_size=0, max_size=3).map(tuple),
    value=_JSONISH,
)
def test_prepend_is_encoding_the_wrapped_list(numbers: tuple[int, ...], value: object) -> None:
    """A value encoded once, wrapped after the numbers, is byte for byte the encoding of the
    wrapped list (RAG entries are written this way: encoded once, not twice)."""
    assert prepend(numbers, encode(value)) == encode([*numbers, value])
    assert decode(prepend(numbers, encode(value))) == [*numbers, value]
