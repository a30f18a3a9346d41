"""LLM response cache: deterministic calls answered once, 1 h default.

Key: ``<prefix>llm:<ns-namespace | shared>:<32 hex of sha256(canonical request)>``. The
canonical request is the model, the prompt or messages, and every parameter that changes the output
(temperature, top_p, seed, max_tokens, tools, response_format, stop, ...), serialised with
sorted keys, so the same request always gets the same key and any change gets another. Only
output-neutral parameters (:data:`TRANSPORT_PARAMS`: ``stream``, ``timeout``,
``extra_headers``, ``user``, ``prompt_cache_key`` ...) are left out; pydantic objects in the
request (an SDK message appended to the conversation) are hashed as their JSON dump.
``namespace`` (an agent, a circle, a user) keeps tenants apart: its segment is
``ns-<namespace, percent-encoded>``, and ``shared`` when none is given (no namespace can
produce that).

Only deterministic calls are cached by default: ``temperature == 0`` or a fixed ``seed``.
Others are skipped (reads return ``None``, writes ``False``, counted as ``llm_skipped``)
unless the caller passes ``force=True``. Each entry keeps the token usage, so a hit reports
the tokens it saved.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Mapping
from typing import Any

import orjson

from gathering_cache.core import encoding
from gathering_cache.core.engine import CacheCore
from gathering_cache.core.keys import LLM, check_model, check_namespace, check_ttl
from gathering_cache.errors import (
    ArgumentTypeError,
    InvalidArgumentError,
    SerializationError,
)

__all__ = [
    "TRANSPORT_PARAMS",
    "LLMCache",
    "is_deterministic",
    "is_entry",
    "make_entry",
    "usage_tokens",
]

TRANSPORT_PARAMS = frozenset(
    {
        # how the answer travels, not what it says
        "stream",
        "stream_options",
        "timeout",
        "request_timeout",
        "extra_headers",
        "extra_query",
        "api_key",
        "api_base",
        "base_url",
        "idempotency_key",
        # bookkeeping the provider keeps about the call
        "user",
        "metadata",
        "store",
        "safety_identifier",
        "service_tier",
        # the provider's own prompt cache: routing hints, same output
        "prompt_cache_key",
        "prompt_cache_retention",
        "prompt_cache_options",
    }
)
"""Output-neutral parameters, left out of the key: transport (``stream``, ``timeout``,
``extra_headers``, ``extra_query``, ``api_key`` ...), bookkeeping (``user``, ``metadata``,
``store``, ``safety_identifier``, ``service_tier``) and the provider's prompt-cache hints
(``prompt_cache_key`` ...). ``extra_body`` is kept: it can carry sampling parameters."""

logger = logging.getLogger(__name__)


def is_deterministic(params: Mapping[str, Any]) -> bool:
    """Whether a call with these parameters gives the same answer every time (as far as the
    provider allows): temperature 0, or a fixed seed."""
    if not isinstance(params, Mapping):
        raise ArgumentTypeError(f"params must be a mapping, not {type(params).__name__}")
    temperature = params.get("temperature")
    return (
        isinstance(temperature, (int, float))
        and not isinstance(temperature, bool)
        and temperature == 0
    ) or params.get("seed") is not None


def usage_tokens(usage: Any) -> int:
    """Tokens a response used, from its usage mapping (0 when unknown)."""
    if not isinstance(usage, Mapping):
        return 0
    total = usage.get("total_tokens")
    if isinstance(total, int):
        return total
    parts = (
        usage.get(k)
        for k in ("prompt_tokens", "completion_tokens", "input_tokens", "output_tokens")
    )
    return sum(p for p in parts if isinstance(p, int))


class LLMCache:
    """Get, set and invalidate LLM responses through the core."""

    def __init__(self, core: CacheCore) -> None:
        self._engine = core
        self._judge = core.decoder(is_entry)

    def key(
        self,
        model: str,
        prompt: str | None,
        messages: Any,
        namespace: str | None,
        params: Mapping[str, Any],
    ) -> str:
        """The cache key of one request; raises on bad arguments."""
        if check_model(model) is None:
            raise ArgumentTypeError("model is required")
        if (prompt is None) == (messages is None):
            raise InvalidArgumentError("give exactly one of prompt= or messages=")
        if prompt is not None and not isinstance(prompt, str):
            raise ArgumentTypeError(f"prompt must be a str, not {type(prompt).__name__}")
        if messages is not None and not isinstance(messages, (list, tuple)):
            raise ArgumentTypeError(f"messages must be a list, not {type(messages).__name__}")
        namespace = check_namespace(namespace)
        request = {
            "model": model,
            "prompt": prompt,
            "messages": messages,
            "params": {k: v for k, v in params.items() if k not in TRANSPORT_PARAMS},
        }
        try:
            canonical = orjson.dumps(
                request,
                default=_jsonable,
                option=orjson.OPT_SORT_KEYS | orjson.OPT_SERIALIZE_NUMPY,
            )
        except orjson.JSONEncodeError as exc:
            raise SerializationError(f"cannot hash the LLM request: {exc}") from None
        return self._engine.keys.llm(namespace, hashlib.sha256(canonical).hexdigest()[:32])

    def _cacheable(self, force: bool, params: Mapping[str, Any]) -> bool:
        if force or is_deterministic(params):
            return True
        self._engine.stats.llm_skipped += 1
        return False

    async def get(
        self,
        model: str,
        *,
        prompt: str | None = None,
        messages: Any = None,
        namespace: str | None = None,
        force: bool = False,
        params: Mapping[str, Any],
    ) -> dict[str, Any] | None:
        key = self.key(model, prompt, messages, namespace, params)
        if not self._cacheable(force, params):
            return None
        return await self.read(key)

    async def read(self, key: str) -> dict[str, Any] | None:
        entry: dict[str, Any] | None = await self._engine.read(LLM, key, self._judge)
        if entry is not None:
            self._engine.stats.llm_tokens_saved += usage_tokens(entry.get("usage"))
        return entry

    async def set(
        self,
        model: str,
        response: Any,
        *,
        prompt: str | None = None,
        messages: Any = None,
        usage: Mapping[str, Any] | None = None,
        namespace: str | None = None,
        ttl: int | None = None,
        force: bool = False,
        params: Mapping[str, Any],
    ) -> bool:
        key = self.key(model, prompt, messages, namespace, params)
        expiry = check_ttl(ttl) or self._engine.config.llm_response_ttl
        if usage is not None and not isinstance(usage, Mapping):
            raise ArgumentTypeError(f"usage must be a mapping, not {type(usage).__name__}")
        # An unencodable response raises, cacheable or not.
        data = encoding.encode(make_entry(response, usage, model))
        if not self._cacheable(force, params):
            return False
        return await self._engine.write(LLM, key, data, expiry)

    async def write(self, key: str, entry: dict[str, Any], ttl: int | None = None) -> bool:
        """Store an entry (:func:`make_entry`) under a key from :meth:`key`, for
        ``ttl`` seconds (default ``llm_response_ttl``).

        Raises:
            SerializationError: the entry cannot be encoded (nothing is written).
        """
        expiry = check_ttl(ttl) or self._engine.config.llm_response_ttl
        return await self._engine.write(LLM, key, encoding.encode(entry), expiry)

    def count_skipped(self) -> None:
        """Count a call left uncached because it is not deterministic (``llm_skipped``)."""
        self._engine.stats.llm_skipped += 1

    async def invalidate(self, namespace: str | None) -> int:
        pattern = self._engine.keys.llm_pattern(check_namespace(namespace))
        return await self._engine.delete_pattern(pattern, LLM)


def _jsonable(value: Any) -> Any:
    """orjson's fallback for the request: a pydantic object (an SDK message) as its JSON."""
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return dump(mode="json", exclude_none=True)
    raise TypeError(f"Type is not JSON serializable: {type(value).__name__}")


def make_entry(response: Any, usage: Mapping[str, Any] | None, model: str) -> dict[str, Any]:
    """The stored form of one LLM response (what :func:`is_entry` recognises): the response,
    its token usage (``None`` when unknown), the model and the time it was stored."""
    return {
        "response": response,
        "usage": dict(usage) if usage is not None else None,
        "model": model,
        "created_at": round(time.time(), 3),
    }


def is_entry(value: Any) -> bool:
    """Whether a decoded value has the shape of an LLM cache entry."""
    return isinstance(value, dict) and "response" in value
