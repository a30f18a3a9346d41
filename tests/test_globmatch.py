"""The glob matcher (gathering_cache.core.globmatch) against Redis's own: a table of tricky
patterns and random ones checked against a real redis-server, the cases from the issue
spelled out, and the pattern that used to backtrack for minutes."""

from __future__ import annotations

import contextlib
import random
import signal
from collections.abc import Iterator
from types import FrameType
from typing import cast

import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st

from gathering_cache import AsyncCacheManager
from gathering_cache.core.globmatch import compile_glob
from tests.conftest import Factory
from tests.servers import RedisServer

P = "gathering:"

KEYS = sorted(
    {
        "",
        P,
        *(P + c for c in "abcex-]^[\\*?!_`{"),
        *(P + s for s in ("é", "ÿ", "日本", "😀", "ab", "abc", "a-b", "aXbYc", "a]", "[a]")),
        *(P + s for s in ("{a,b}", "\\a", "x\\", "\\\\x", "a" * 30, "a" * 29 + "b", "éa")),
        "other:k",
        "a:b:c",
    }
)
"""The keys the table's patterns are tried on: ASCII metacharacters, multi-byte UTF-8."""

PATTERNS = [
    "*",
    "**",
    "",
    "?*?",
    "*:*:*",
    P + "*",
    P + "[a",  # unclosed: the class ends with the pattern and still takes one byte
    P + "[ab",
    P + "[^a",
    P + "[",  # unclosed and empty: matches nothing
    P + "[^",  # unclosed, empty and negated: any one byte
    P + "[a-]",  # the range ]..a, not "a or -"
    P + "[a-]b]",  # ... and the class goes on to the next ]
    P + "[-a]",
    P + "[z-a]",  # reversed range
    P + "[a-c-e]",
    P + "[a-\\]",  # the range \..a, then ]
    P + "[]",
    P + "[]a]",
    P + "[^]",
    P + "[\\]]",
    P + "[\\",  # unclosed, with a backslash that is the last byte
    P + "[\\-]",
    P + "[\\^a]",
    P + "[^^]",
    P + "[^-a]",
    P + "[[]",
    P + "[!a]",  # ! does not negate in Redis
    P + "\\",  # a trailing backslash is a literal backslash
    P + "*\\",
    P + "\\\\*",
    P + "\\*",
    P + "\\?",
    P + "\\[",
    P + "\\a",
    P + "?",  # one byte: not é, which is two
    P + "??",
    P + "???",
    P + "é",
    P + "[é]",  # a class of the two bytes of é, each alone
    P + "[é][é]",
    P + "[^a]",
    P + "[^a]?",
    P + "[a-ÿ]",  # range ends compared as signed chars: \xc3..a, then \xbf
    P + "*é",
    P + "*[^a-z]",
    P + "日*",
    P + "*😀",
    P + "{a,b}",  # no brace expansion
    P + "a**b",
    P + "a*b*c",
    P + "*a*a*",
    P + "x*",
    P + "*a" * 12 + "*b",  # the pattern that used to backtrack for minutes
    P + "*a" * 12 + "*",
]


@contextlib.contextmanager
def deadline(seconds: int) -> Iterator[None]:
    """Fail the test instead of hanging it when the block runs past a (very generous) bound.

    SIGALRM also interrupts a runaway regular expression: ``re`` checks for signals."""

    def expire(signum: int, frame: FrameType | None) -> None:
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def matching(pattern: str, keys: list[str]) -> list[str]:
    glob = compile_glob(pattern)
    return [key for key in keys if glob.fullmatch(key)]


def test_the_table_is_big_enough() -> None:
    assert len(set(PATTERNS)) == len(PATTERNS) >= 40


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        (P + "[a", [P + "a"]),
        (P + "[^a", [k for k in KEYS if len(k.encode()) == len(P) + 1 and k != P + "a"]),
        (P + "[", []),
        (P + "[a-]", [P + "]", P + "^", P + "_", P + "`", P + "a"]),
        (P + "[a-]b]", [P + "]", P + "^", P + "_", P + "`", P + "a", P + "b"]),
        (P + "\\", [P + "\\"]),
        (P + "[\\", [P + "\\"]),
        (P + "?", [k for k in KEYS if len(k.encode()) == len(P) + 1]),
        (P + "??", [P + "ab", P + "a]", P + "x\\", P + "\\a", P + "é", P + "ÿ"]),
        (P + "[é][é]", [P + "é"]),
        (P + "[a-ÿ]", [k for k in KEYS if len(k) == len(P) + 1 and k[-1] <= "a"]),
        ("", [""]),
    ],
)
def test_redis_rules_the_old_matcher_got_wrong(pattern: str, expected: list[str]) -> None:
    assert matching(pattern, KEYS) == sorted(expected)


def test_a_compiled_pattern_is_reused_and_takes_bytes() -> None:
    assert compile_glob(P + "*") is compile_glob(P + "*")
    assert compile_glob(P + "?").fullmatch(b"gathering:\xff")
    assert compile_glob(P + "??").fullmatch("gathering:é".encode())
    # The empty key matches only "" and "*" (KEYS and SCAN skip the matcher for "*").
    assert compile_glob("*").fullmatch("")
    assert compile_glob("").fullmatch("")
    assert not compile_glob("**").fullmatch("")


def test_backtracking_patterns_finish() -> None:
    key = P + "a" * 30  # 40 characters: the case, minutes with the old matcher
    with deadline(30):
        assert not compile_glob(P + "*a" * 12 + "*b").fullmatch(key)
        assert compile_glob(P + "*a" * 12 + "*").fullmatch(key)
        long_key = "a" * 20_000
        assert not compile_glob("*a" * 200 + "*b").fullmatch(long_key)
        assert compile_glob("*a" * 200 + "*a").fullmatch(long_key)
        assert not compile_glob("*?" * 200 + "*[^a]").fullmatch(long_key)


async def test_delete_pattern_does_not_backtrack(make_cache: Factory) -> None:
    cache: AsyncCacheManager = await make_cache()
    key = P + "a" * 30
    await cache.set(key, 1)
    with deadline(30):
        assert await cache.delete_pattern(P + "*a" * 12 + "*b") == 0
        assert await cache.get(key) == 1
        assert await cache.delete_pattern(P + "*a" * 12 + "*") == 1
    assert await cache.get(key) is None


async def test_delete_pattern_matches_bytes_like_redis(make_cache: Factory) -> None:
    cache: AsyncCacheManager = await make_cache()
    await cache.set_many({P + "a": 1, P + "é": 2, P + "b": 3, P + "^": 4, P + "-": 5})
    assert await cache.delete_pattern(P + "[a-]") == 2  # the range ]..a: a and ^
    assert await cache.get(P + "-") == 5
    assert await cache.delete_pattern(P + "[b") == 1  # an unclosed class
    assert await cache.delete_pattern(P + "?") == 1  # -, but not é: it is two bytes
    assert await cache.get(P + "é") == 2
    assert await cache.delete_pattern(P + "??") == 1


ALPHABET = "ab*?[]^-\\é"
_rng = random.Random(20261204)
RANDOM_KEYS = sorted(
    {"".join(_rng.choice("ab]-\\^[*?é") for _ in range(_rng.randint(1, 8))) for _ in range(300)}
    | {a + b for a in "ab]-\\^[*?é" for b in "ab]-\\^[*?é"}
)


@pytest.fixture(scope="module")
def server_keys(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A client on a database of its own holding KEYS plus the property test's keys."""
    client = redis.Redis(host="127.0.0.1", port=redis_server.port, db=7)
    client.flushdb()
    client.mset(dict.fromkeys(KEYS + RANDOM_KEYS, 1))
    yield client
    client.flushdb()
    client.close()


def server_matching(client: redis.Redis, pattern: str, keys: list[str]) -> list[str]:
    found = {key.decode() for key in cast("list[bytes]", client.keys(pattern))}
    return sorted(found & set(keys))


@pytest.mark.integration
@pytest.mark.parametrize("pattern", PATTERNS)
def test_table_agrees_with_redis(server_keys: redis.Redis, pattern: str) -> None:
    with deadline(30):
        assert matching(pattern, KEYS) == server_matching(server_keys, pattern, KEYS)


@pytest.mark.integration
@settings(max_examples=300, deadline=None)
@given(pattern=st.text(alphabet=ALPHABET, max_size=12))
def test_random_patterns_agree_with_redis(server_keys: redis.Redis, pattern: str) -> None:
    assert matching(pattern, RANDOM_KEYS) == server_matching(server_keys, pattern, RANDOM_KEYS)
