"""Redis glob patterns, matched exactly as Redis 7.0 matches them. Pure: no I/O.

The memory store answers ``delete_pattern`` / ``count`` with this matcher, and the Redis
store filters the keys it must keep with it, so both stores select the same keys as
``KEYS`` / ``SCAN MATCH`` on a real server. Redis's rules (``stringmatchlen`` in
``src/util.c``), on the UTF-8 bytes of the pattern and the key, not on code points:

* ``*`` matches any run of bytes (several ``*`` in a row act as one); ``?`` any one byte.
* ``\\x`` matches ``x`` literally; a ``\\`` that ends the pattern matches a backslash.
* ``[...]`` matches one byte from the class; ``[^...]`` one byte not in it. Inside,
  ``\\x`` is ``x`` literally, and ``a-z`` is a range whose ends are swapped when reversed and
  compared as *signed* chars (so ``[a-\\xff]`` is the range ``\\xff``..``a``). The range test
  comes before the closing bracket's, so ``[a-]`` is the range ``]``..``a`` and the class goes
  on to the next ``]``. A class that is never closed ends with the pattern and still matches
  one byte (``x[ab`` matches ``xa``); ``[]`` matches nothing and ``[^]`` any one byte.
* The pattern must cover the whole key. ``*`` alone selects every key, even the empty one
  (``KEYS`` and ``SCAN`` take that shortcut); otherwise the empty key matches only the
  empty pattern.

Every token but ``*`` matches exactly one byte, so a pattern is a list of fixed-length
segments separated by stars. The first segment must match at the start of the key, the last
one at its end, and each one between is taken at its leftmost place after the previous one:
the leftmost place never loses a match (it leaves the most room after it), so nothing is
ever retried and the work is at most ``len(pattern) x len(key)`` byte tests. The regular
expressions this module replaces retried every split of the key between the stars, which is
exponential on ``*a*a*a...*b``. The pattern still compiles to one ``re`` pattern (so the
byte tests run in C): each middle segment is ``(?=(?P<sN>.*?SEGMENT))(?P=sN)``, the leftmost
occurrence found by a lookahead, which ``re`` never backtracks into, then consumed whole.
"""

from __future__ import annotations

import functools
import re
from typing import Final

__all__ = ["Glob", "compile_glob"]

_STAR: Final = None
_ALL_BYTES: Final = frozenset(range(256))

Token = frozenset[int] | None
"""One byte's allowed values, or ``None`` for a star."""


def _signed(byte: int) -> int:
    """A byte as C's (signed, on the platforms Redis runs on) ``char``: Redis compares range
    ends that way."""
    return byte - 256 if byte >= 128 else byte


def _tokens(pattern: bytes) -> list[Token]:
    """Split ``pattern`` into stars (runs collapsed) and one-byte classes, by Redis's rules.

    Args:
        pattern: the glob pattern's bytes.

    Returns:
        ``None`` for each star, else the frozenset of byte values the token accepts.
    """
    out: list[Token] = []
    i, n = 0, len(pattern)
    while i < n:
        ch = pattern[i]
        if ch == 0x2A:  # *
            if not out or out[-1] is not _STAR:
                out.append(_STAR)
            i += 1
        elif ch == 0x3F:  # ?
            out.append(_ALL_BYTES)
            i += 1
        elif ch == 0x5B:  # [
            accepted, i = _bracket(pattern, i + 1)
            out.append(accepted)
        elif ch == 0x5C and i + 1 < n:  # \x: x literally; a final \ is itself
            out.append(frozenset((pattern[i + 1],)))
            i += 2
        else:
            out.append(frozenset((ch,)))
            i += 1
    return out


def _bracket(pattern: bytes, i: int) -> tuple[frozenset[int], int]:
    """The class that starts at ``pattern[i]`` (just after its ``[``): the bytes it accepts
    and the index after it. The order of the tests is Redis's, and it matters: an escape
    wins over ``]``, and a range over ``]`` (``[a-]``)."""
    n = len(pattern)
    negate = i < n and pattern[i] == 0x5E  # ^
    if negate:
        i += 1
    accepted: set[int] = set()
    while i < n:
        ch = pattern[i]
        if ch == 0x5C and n - i >= 2:  # \x
            accepted.add(pattern[i + 1])
            i += 2
        elif ch == 0x5D:  # ]
            i += 1
            break
        elif n - i >= 3 and pattern[i + 1] == 0x2D:  # a-z, whatever z is (even ])
            low, high = sorted((_signed(ch), _signed(pattern[i + 2])))
            accepted.update(b for b in range(256) if low <= _signed(b) <= high)
            i += 3
        else:
            accepted.add(ch)
            i += 1
    # Falling off the end without a ] is not an error: the class ends with the pattern.
    return (_ALL_BYTES - accepted if negate else frozenset(accepted)), i


def _class_regex(accepted: frozenset[int]) -> bytes:
    if len(accepted) == 256:
        return b"."  # compiled with DOTALL
    if not accepted:
        return b"(?!)"
    if len(accepted) == 1:
        return re.escape(bytes(accepted))
    ranges: list[bytes] = []
    values = sorted(accepted)
    start = prev = values[0]
    for value in [*values[1:], -1]:
        if value != prev + 1:
            ranges.append(
                b"\\x%02x" % start if start == prev else b"\\x%02x-\\x%02x" % (start, prev)
            )
            start = value
        prev = value
    return b"[" + b"".join(ranges) + b"]"


def _utf8(text: str | bytes) -> bytes:
    # surrogatepass: a lone surrogate cannot reach Redis, but must not make a match raise.
    return text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass")


class Glob:
    """A compiled Redis glob pattern; build one with :func:`compile_glob`."""

    __slots__ = ("_all", "_regex", "pattern")

    def __init__(self, pattern: str | bytes) -> None:
        """Compile ``pattern`` (a str is matched as its UTF-8 bytes)."""
        self.pattern = pattern
        raw = _utf8(pattern)
        segments: list[list[frozenset[int]]] = [[]]
        for token in _tokens(raw):
            if token is None:
                segments.append([])
            else:
                segments[-1].append(token)
        parts = [_class_regex(c) for c in segments[0]]
        for number, middle in enumerate(segments[1:-1]):
            body = b"".join(_class_regex(c) for c in middle)
            parts.append(b"(?=(?P<s%d>.*?%s))(?P=s%d)" % (number, body, number))
        if len(segments) > 1:
            parts.append(b".*")
            parts.extend(_class_regex(c) for c in segments[-1])
        self._regex = re.compile(b"".join(parts), re.DOTALL)
        # The empty key matches only the empty pattern, and "*": KEYS and SCAN do not call
        # the matcher for "*", it selects every key.
        self._all = raw in (b"", b"*")

    def fullmatch(self, key: str | bytes) -> bool:
        """Whether the whole ``key`` (a str is taken as its UTF-8 bytes) matches, as in
        ``KEYS pattern`` on Redis."""
        data = _utf8(key)
        if not data:
            return self._all
        return self._regex.fullmatch(data) is not None

    def __repr__(self) -> str:
        return f"compile_glob({self.pattern!r})"


@functools.lru_cache(maxsize=256)
def compile_glob(pattern: str | bytes) -> Glob:
    """Compile a Redis glob ``pattern`` once; later calls with it return the same object.

    Args:
        pattern: the pattern, as given to ``SCAN MATCH``; a str is matched as UTF-8 bytes.

    Returns:
        A :class:`Glob` whose :meth:`Glob.fullmatch` tells whether a key matches.
    """
    return Glob(pattern)
