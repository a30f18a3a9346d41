"""Key layout: how every cached entry is named in the store. Pure: no I/O.

All keys live under the configured ``key_prefix`` (``gathering:`` by default)::

    <prefix>embedding:<16 hex of sha256(text)>              no model (the original design's)
    <prefix>embedding:<model>[:<dimensions>]:<hash>          with a model
    <prefix>rag:agent:<agent_id>:<16 hex of sha256(query)>
    <prefix>rag:gen:<agent_id> / rag:gen:all                  RAG generation counters
    <prefix>rag:entries:<agent_id>                            the agent's entry keys (a sorted
                                                              set scored by expiry)
    <prefix>circle:<circle_id>
    <prefix>llm:ns-<namespace>:<32 hex of sha256(request)>   namespace percent-encoded
    <prefix>llm:shared:<32 hex of sha256(request)>            no namespace
    <prefix>lock:<key without prefix>                         single-flight locks
    <prefix>events                                            the event bridge's channel
    <prefix>stats:proc:<process>                              one process's counters (fleet
                                                              stats), kept for the window
    <prefix>stats:min:<minute>:<process>                      its counts of one minute

Every key the library writes expires, RAG counters and indexes included (the event channel
is a pub/sub channel, not a key).

User text is hashed, never embedded in a key, so glob metacharacters in a query cannot turn
into a pattern. The argument checks used by every public operation live here too.
"""

from __future__ import annotations

import functools
import hashlib
import math
import re
from collections.abc import Iterable
from typing import Final
from urllib.parse import quote

from gathering_cache.errors import ArgumentTypeError, InvalidArgumentError, PatternError

__all__ = [
    "GENERIC",
    "MAX_TTL",
    "NAMESPACES",
    "KeySpace",
    "check_count",
    "check_dimensions",
    "check_id",
    "check_key",
    "check_limit",
    "check_lock_ttl",
    "check_model",
    "check_namespace",
    "check_number",
    "check_text",
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
"""The namespaces whose lookups stats count (hits, misses)."""
LISTED: Final = (EMBEDDING, RAG, CIRCLE, LLM)
"""The namespaces with a key segment of their own (``scan_keys(namespace=...)``)."""
LOCK: Final = "lock"
"""The namespace of single-flight locks in operation reports (no lookups)."""
EVENTS: Final = "events"
"""The namespace of pub/sub traffic in operation reports (no lookups)."""
STATS: Final = "stats"
"""The namespace of the fleet statistics each process folds into the store."""
"""The namespaces hits and misses are counted under."""


def text_hash(text: str) -> str:
    """The text digest: the first 16 hex characters of SHA-256 of the UTF-8 text."""
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
    """Return ``text`` if it is a str that UTF-8 can encode (empty allowed: it hashes like
    any other); a lone surrogate raises InvalidArgumentError naming ``what``."""
    if not isinstance(text, str):
        raise ArgumentTypeError(f"{what} must be a str, not {type(text).__name__}")
    if not text.isascii():
        _utf8(text, what)
    return text


def check_id(value: object, name: str) -> int:
    """Return ``value`` if it is an int (bool excluded), else raise ArgumentTypeError."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ArgumentTypeError(f"{name} must be an int, not {type(value).__name__}: {value!r}")
    return value


def check_model(model: object) -> str | None:
    """Return ``model`` if it is ``None`` or a non-empty, encodable str."""
    if model is None:
        return None
    if not isinstance(model, str):
        raise ArgumentTypeError(f"model must be a str, not {type(model).__name__}")
    if not model:
        raise InvalidArgumentError("model must not be empty")
    if not model.isascii():
        _utf8(model, "model")  # it becomes a key segment: a lone surrogate cannot
    return model


def check_namespace(namespace: object) -> str | None:
    """Return ``namespace`` (an LLM cache tenant) if it is ``None`` or a non-empty,
    encodable str."""
    if namespace is None:
        return None
    if not isinstance(namespace, str):
        raise ArgumentTypeError(
            f"namespace must be a non-empty str or None, not {type(namespace).__name__}"
        )
    if not namespace:
        raise InvalidArgumentError("namespace must not be empty (None shares entries)")
    if not namespace.isascii():
        _utf8(namespace, "namespace")
    return namespace


def check_limit(limit: object, name: str = "limit") -> int:
    """Return ``limit`` if it is a positive int (bool excluded)."""
    if isinstance(limit, bool) or not isinstance(limit, int):
        raise ArgumentTypeError(f"{name} must be an int, not {type(limit).__name__}: {limit!r}")
    if limit <= 0:
        raise InvalidArgumentError(f"{name} must be > 0, not {limit}")
    return limit


def check_count(value: object, name: str) -> int:
    """Return ``value`` if it is an int >= 0 (bool excluded)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ArgumentTypeError(f"{name} must be an int, not {type(value).__name__}: {value!r}")
    if value < 0:
        raise InvalidArgumentError(f"{name} must be >= 0, not {value}")
    return value


def check_number(value: object, name: str, *, minimum: float = 0.0) -> float:
    """Return ``value`` (seconds, a price ...) as a float if it is a finite real number
    >= ``minimum`` (bool excluded)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ArgumentTypeError(f"{name} must be a number, not {type(value).__name__}: {value!r}")
    if not math.isfinite(value) or value < minimum:
        raise InvalidArgumentError(f"{name} must be a finite number >= {minimum}, not {value!r}")
    return float(value)


def check_lock_ttl(lock_ttl: object) -> int:
    """A single-flight lock lifetime in seconds, returned in whole milliseconds (what Redis
    ``SET PX`` takes). Below 1 ms it would round to ``PX 0``, which Redis refuses on every
    call (and cross-process single-flight would be silently off): refused."""
    seconds = check_number(lock_ttl, "lock_ttl", minimum=0.001)
    return max(1, round(seconds * 1000))


def check_dimensions(dimensions: object) -> int | None:
    """Return ``dimensions`` if it is ``None`` or a positive int."""
    if dimensions is None:
        return None
    if isinstance(dimensions, bool) or not isinstance(dimensions, int):
        raise ArgumentTypeError(f"dimensions must be an int, not {type(dimensions).__name__}")
    if dimensions <= 0:
        raise InvalidArgumentError(f"dimensions must be > 0, not {dimensions}")
    return dimensions


MAX_TTL: Final = 9 * 10**15
"""The longest TTL accepted, in seconds (~285 million years). Redis refuses an expiry that
does not fit in a signed 64-bit count of milliseconds since the epoch ("invalid expire
time"); this bound leaves room for the clock, so Redis takes every TTL up to it."""


def check_ttl(ttl: object) -> int | None:
    """Return ``ttl`` if it is ``None`` or an int in 1..:data:`MAX_TTL`, else raise
    InvalidArgumentError (the same on every backend, before anything is sent)."""
    if ttl is None:
        return None
    if isinstance(ttl, bool) or not isinstance(ttl, int) or ttl <= 0:
        raise InvalidArgumentError(f"ttl must be a positive int (seconds) or None, not {ttl!r}")
    if ttl > MAX_TTL:
        raise InvalidArgumentError(
            f"ttl must be at most {MAX_TTL} seconds (what Redis can store), not {ttl!r}"
        )
    return ttl


def _llm_space(namespace: str | None) -> str:
    return "shared" if namespace is None else f"ns-{quote(namespace, safe='')}"


_KEPT_KEYS: Final = 4096
"""How many circle keys a :class:`KeySpace` keeps (about 0.4 MB at most)."""


class KeySpace:
    """Builds the keys and patterns of every domain under one prefix."""

    __slots__ = ("circle_keys", "prefix")

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.circle_keys: dict[int, str] = {}
        """Keys of :meth:`checked_circle`, by id (at most :data:`_KEPT_KEYS`); a hit path
        may look an exact ``int`` up here before calling it."""

    def embedding(self, text: str, model: str | None = None, dimensions: int | None = None) -> str:
        """``<prefix>embedding:<hash>`` with no model (the original design's), else
        ``<prefix>embedding:<model>:<hash>`` or ``<prefix>embedding:<model>:<dims>:<hash>``.

        The model is percent-encoded (``:`` and glob metacharacters included), so two models,
        or one model at two sizes, never share an entry.
        """
        return self.embedding_head(model, dimensions) + text_hash(text)

    def embedding_head(self, model: str | None = None, dimensions: int | None = None) -> str:
        """What :meth:`embedding` puts before the text's digest (it ends with ``:``)."""
        if model is None:
            return f"{self.prefix}{EMBEDDING}:"
        name = _model_segment(model)
        if dimensions is None:
            return f"{self.prefix}{EMBEDDING}:{name}:"
        return f"{self.prefix}{EMBEDDING}:{name}:{dimensions}:"

    def rag(self, agent_id: int, query: str) -> str:
        return f"{self.prefix}{RAG}:agent:{agent_id}:{text_hash(query)}"

    def own_rag(self, agent_id: int, keys: Iterable[object]) -> list[str]:
        """Those of ``keys`` that are RAG entry keys of ``agent_id`` (as :meth:`rag` builds
        them), in order.

        What comes back from the store (an index set's members) was written by whoever can
        write under the prefix: only keys that pass this check may be acted upon.
        """
        head = f"{self.prefix}{RAG}:agent:{agent_id}:"
        start = len(head)
        size = start + 16
        match = _HEX16.fullmatch
        return [
            key
            for key in keys
            if isinstance(key, str)
            and len(key) == size
            and key.startswith(head)
            and match(key, start) is not None
        ]

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

    def checked_circle(self, circle_id: object) -> str:
        """:meth:`circle` of ``circle_id`` checked by :func:`check_id` (which raises
        ArgumentTypeError), the keys of recent ids kept: a near-cache hit neither checks nor
        formats again (only an exact ``int`` is looked up: ``True`` and ``1.0`` equal ``1``)."""
        if type(circle_id) is int:
            key = self.circle_keys.get(circle_id)
            if key is not None:
                return key
            key = f"{self.prefix}{CIRCLE}:{circle_id}"
            kept = self.circle_keys
            if len(kept) >= _KEPT_KEYS:
                kept.clear()  # bounded; the ids in use come back at once
            kept[circle_id] = key
            return key
        return self.circle(check_id(circle_id, "circle_id"))

    def llm(self, namespace: str | None, digest: str) -> str:
        """``<prefix>llm:shared:<digest>``, or ``<prefix>llm:ns-<namespace>:<digest>`` with the
        namespace percent-encoded (so it holds no ``:`` or glob metacharacter)."""
        return f"{self.prefix}{LLM}:{_llm_space(namespace)}:{digest}"

    def llm_pattern(self, namespace: str | None) -> str:
        """The pattern of every LLM response of one namespace (``None``: the shared one)."""
        return f"{self.prefix}{LLM}:{_llm_space(namespace)}:*"

    def lock(self, key: str) -> str:
        """The lock key guarding the computation of ``key`` (a key under the prefix)."""
        return f"{self.prefix}lock:{key[len(self.prefix) :]}"

    def stats_process(self, process: str) -> str:
        """One process's cumulative counters (``process`` as :meth:`process_id` checks)."""
        return f"{self.prefix}{STATS}:proc:{process}"

    def stats_processes(self) -> str:
        """The pattern of every process's counters."""
        return f"{self.prefix}{STATS}:proc:*"

    def stats_minute(self, minute: int, process: str) -> str:
        """One process's counts of one minute (``minute``: minutes since the epoch)."""
        return f"{self.prefix}{STATS}:min:{minute}:{process}"

    def everything(self) -> str:
        """The pattern that matches every key under the prefix."""
        return f"{self.prefix}*"

    def listing(self, pattern: object, namespace: object) -> str:
        """The pattern ``scan_keys`` lists: ``pattern`` (confined to the prefix), or every key
        under the prefix, or under ``<prefix><namespace>:`` for a domain namespace."""
        if namespace is None:
            return (
                self.everything()
                if pattern is None
                else self.check_pattern(pattern, "scan_keys lists")
            )
        if namespace not in LISTED:
            raise InvalidArgumentError(
                f"namespace must be one of {', '.join(LISTED)} (or None), not {namespace!r}"
            )
        head = f"{self.prefix}{namespace}:"
        if pattern is None:
            return f"{head}*"
        pattern = self.check_pattern(pattern, "scan_keys lists")
        if not pattern.startswith(head):
            raise PatternError(f"pattern {pattern!r} is outside namespace {namespace!r} ({head!r})")
        return pattern

    def check_pattern(self, pattern: object, what: str = "delete_pattern only deletes") -> str:
        """Return ``pattern`` if it is confined to the prefix, else raise.

        The prefix holds no glob metacharacters (the config refuses them), so a pattern that
        starts with the literal prefix can only match keys under it.
        """
        if not isinstance(pattern, str):
            raise ArgumentTypeError(f"pattern must be a str, not {type(pattern).__name__}")
        if not pattern.isascii():
            _utf8(pattern, "pattern")  # checked here, so the answer is the same when degraded
        if not pattern.startswith(self.prefix):
            raise PatternError(
                f"pattern {pattern!r} is outside the key prefix {self.prefix!r}; "
                f"{what} keys under the prefix"
            )
        return pattern
