"""Key layout: how every cached entry is named in the store. Pure: no I/O.

All keys live under the configured ``key_prefix`` (``gathering:`` by default)::

    <prefix>embedding:<16 hex of sha256(text)>              the seed's, no model
    <prefix>embedding:<model>[:<dimensions>]:<hash>          with a model
    <prefix>rag:agent:<agent_id>:<16 hex of sha256(query)>
    <prefix>rag:gen:<agent_id> / rag:gen:all                  RAG generation counters
    <prefix>rag:entries:<agent_id>                            the agent's entry keys (a sorted
                                                              set scored by expiry)

Every key expires, counters and index sets included.
    <prefix>circle:<circle_id>
    <prefix>llm:<namespace>:<32 hex of sha256(request)>
    <prefix>lock:<key without prefix>                         single-flight locks
    <prefix>events                                            the event bridge's channel

User text is hashed, never embedded in a key, so glob metacharacters in a query cannot turn
into a pattern. The argument checks used by every public operation live here too.
"""

from __future__ import annotations

import functools
import hashlib
import re
from typing import Final
from urllib.parse import quote

from gathering_cache.errors import ArgumentTypeError, InvalidArgumentError, PatternError

__all__ = [
    "GENERIC",
    "NAMESPACES",
    "KeySpace",
    "check_dimensions",
    "check_id",
    "check_key",
    "check_model",
    "check_text",
    "glob_to_regex",
    "check_ttl",
    "text_hash",
]

_HEX16: Final = re.compile("[0-9a-f]{16}")

EMBEDDING: Final = "embedding"
RAG: Final = "rag"
CIRCLE: Final = "circle"
LLM: Final = "llm"
GENERIC: Final = "generic"
NAMESPACES: Final = (EMBEDDING, RAG, CIRCLE, LLM, GENERIC)
"""The namespaces hits and misses are counted under."""


def text_hash(text: str) -> str:
    """The seed's text digest: the first 16 hex characters of SHA-256 of the UTF-8 text."""
    return hashlib.sha256(_utf8(text, "text")).hexdigest()[:16]


def _utf8(text: str, what: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate: no key can hold it
        raise InvalidArgumentError(f"{what} is not valid Unicode text: {exc.reason}") from None


@functools.lru_cache(maxsize=256)
def _model_segment(model: str) -> str:
    """A model name as a key segment: percent-encoded, so ``:`` and glob metacharacters in
    it can neither split the key nor act as a pattern."""
    return quote(model, safe="/")


def check_key(key: object) -> str:
    """Return ``key`` if it is a non-empty str, else raise naming the value."""
    if not isinstance(key, str):
        raise ArgumentTypeError(f"cache key must be a str, not {type(key).__name__}: {key!r}")
    if not key:
        raise InvalidArgumentError("cache key must not be empty")
    if not key.isascii():
        _utf8(key, "cache key")
    return key


def check_text(text: object, what: str = "text") -> str:
    """Return ``text`` if it is a str (empty allowed: it hashes like any other)."""
    if not isinstance(text, str):
        raise ArgumentTypeError(f"{what} must be a str, not {type(text).__name__}")
    return text


def check_id(value: object, name: str) -> int:
    """Return ``value`` if it is an int (bool excluded), else raise ArgumentTypeError."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ArgumentTypeError(f"{name} must be an int, not {type(value).__name__}: {value!r}")
    return value


def check_model(model: object) -> str | None:
    """Return ``model`` if it is ``None`` or a non-empty str."""
    if model is None:
        return None
    if not isinstance(model, str):
        raise ArgumentTypeError(f"model must be a str, not {type(model).__name__}")
    if not model:
        raise InvalidArgumentError("model must not be empty")
    return model


def check_dimensions(dimensions: object) -> int | None:
    """Return ``dimensions`` if it is ``None`` or a positive int."""
    if dimensions is None:
        return None
    if isinstance(dimensions, bool) or not isinstance(dimensions, int):
        raise ArgumentTypeError(f"dimensions must be an int, not {type(dimensions).__name__}")
    if dimensions <= 0:
        raise InvalidArgumentError(f"dimensions must be > 0, not {dimensions}")
    return dimensions


def check_ttl(ttl: object) -> int | None:
    """Return ``ttl`` if it is ``None`` or a positive int, else raise InvalidArgumentError."""
    if ttl is None:
        return None
    if isinstance(ttl, bool) or not isinstance(ttl, int) or ttl <= 0:
        raise InvalidArgumentError(f"ttl must be a positive int (seconds) or None, not {ttl!r}")
    return ttl


class KeySpace:
    """Builds the keys and patterns of every domain under one prefix."""

    __slots__ = ("prefix",)

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def embedding(self, text: str, model: str | None = None, dimensions: int | None = None) -> str:
        """``<prefix>embedding:<hash>`` (the seed's) with no model, else
        ``<prefix>embedding:<model>:<hash>`` or ``<prefix>embedding:<model>:<dims>:<hash>``.

        The model is percent-encoded (``:`` and glob metacharacters included), so two models,
        or one model at two sizes, never share an entry.
        """
        if model is None:
            return f"{self.prefix}{EMBEDDING}:{text_hash(text)}"
        name = _model_segment(model)
        if dimensions is None:
            return f"{self.prefix}{EMBEDDING}:{name}:{text_hash(text)}"
        return f"{self.prefix}{EMBEDDING}:{name}:{dimensions}:{text_hash(text)}"

    def rag(self, agent_id: int, query: str) -> str:
        return f"{self.prefix}{RAG}:agent:{agent_id}:{text_hash(query)}"

    def is_rag(self, agent_id: int, key: object) -> bool:
        """Whether ``key`` is a RAG entry key of ``agent_id`` (as :meth:`rag` builds them).

        What comes back from the store (an index set's members) was written by whoever can
        write under the prefix: only keys that pass this check may be acted upon.
        """
        head = f"{self.prefix}{RAG}:agent:{agent_id}:"
        return (
            isinstance(key, str)
            and len(key) == len(head) + 16
            and key.startswith(head)
            and _HEX16.fullmatch(key, len(head)) is not None
        )

    def rag_generation(self, agent_id: int | None) -> str:
        """The counter whose increment invalidates one agent's (or, for None, every) entry."""
        return f"{self.prefix}{RAG}:gen:{'all' if agent_id is None else agent_id}"

    def rag_index(self, agent_id: int) -> str:
        """The index of one agent's entry keys (to delete them without scanning). Named
        ``entries``, not ``index`` as the plain set of earlier versions was: a rolling
        upgrade must not meet a key of the other type."""
        return f"{self.prefix}{RAG}:entries:{agent_id}"

    def rag_agent_pattern(self, agent_id: int) -> str:
        return f"{self.prefix}{RAG}:agent:{agent_id}:*"

    def circle(self, circle_id: int) -> str:
        return f"{self.prefix}{CIRCLE}:{circle_id}"

    def lock(self, key: str) -> str:
        """The lock key guarding the computation of ``key`` (a key under the prefix)."""
        return f"{self.prefix}lock:{key[len(self.prefix) :]}"

    def everything(self) -> str:
        """The pattern that matches every key under the prefix."""
        return f"{self.prefix}*"

    def check_pattern(self, pattern: object) -> str:
        """Return ``pattern`` if it is confined to the prefix, else raise.

        The prefix holds no glob metacharacters (the config refuses them), so a pattern that
        starts with the literal prefix can only match keys under it.
        """
        if not isinstance(pattern, str):
            raise ArgumentTypeError(f"pattern must be a str, not {type(pattern).__name__}")
        if not pattern.startswith(self.prefix):
            raise PatternError(
                f"pattern {pattern!r} is outside the key prefix {self.prefix!r}; "
                "delete_pattern only deletes keys under the prefix"
            )
        return pattern


@functools.lru_cache(maxsize=256)
def glob_to_regex(pattern: str) -> re.Pattern[str]:
    """Compile a Redis glob pattern into an anchored regular expression."""
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        ch = pattern[i]
        if ch == "*":
            out.append(".*")
        elif ch == "?":
            out.append(".")
        elif ch == "\\" and i + 1 < n:
            i += 1
            out.append(re.escape(pattern[i]))
        elif ch == "[":
            end, body = _bracket(pattern, i + 1)
            if end < 0:  # no closing bracket: Redis matches the rest literally
                out.append(re.escape(ch))
            else:
                out.append(body)
                i = end
        else:
            out.append(re.escape(ch))
        i += 1
    return re.compile("".join(out), re.DOTALL)


def _bracket(pattern: str, start: int) -> tuple[int, str]:
    """Translate ``[...]`` starting after the ``[``; returns (index of ``]``, regex)."""
    i, n = start, len(pattern)
    negate = i < n and pattern[i] == "^"
    if negate:
        i += 1
    items: list[str] = []
    while i < n and pattern[i] != "]":
        ch = pattern[i]
        if ch == "\\" and i + 1 < n:
            i += 1
            items.append(re.escape(pattern[i]))
        elif i + 2 < n and pattern[i + 1] == "-" and pattern[i + 2] != "]":
            lo, hi = sorted((ch, pattern[i + 2]))
            items.append(f"{re.escape(lo)}-{re.escape(hi)}")
            i += 2
        else:
            items.append(re.escape(ch))
        i += 1
    if i >= n:
        return -1, ""
    if not items:
        return i, "[^\\s\\S]" if not negate else "[\\s\\S]"
    return i, f"[{'^' if negate else ''}{''.join(items)}]"
