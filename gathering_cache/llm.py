"""LLM response cache: deterministic calls answered once, 1 h default.

Key: ``<prefix>llm:<ns-namespace | shared>:<32 hex of sha256(canonical request)>``. The
canonical request is the model, the prompt or messages, and every parameter that changes the output
(temperature, top_p, seed, max_tokens, tools, response_format, stop, ...), serialised with
sorted keys, so the same request always gets the same key and any change gets another. Only
transport parameters (``stream``, ``timeout``, ``extra_headers``, ``api_key``, ``user`` ...)
are left out. ``namespace`` (an agent, a circle, a user) keeps tenants apart: its segment is
``ns-<namespace, percent-encoded>``, and ``shared`` when none is given (no namespace can
produce that).

Only deterministic calls are cached by default: ``temperature == 0`` or a fixed ``seed``.
Others are skipped (reads return ``None``, writes ``False``, counted as ``llm_skipped``)
unless the caller passes ``force=True``. Each entry keeps the token usage, so a hit reports
the tokens it saved.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote

import orjson

from gathering_cache import encoding
from gathering_cache.core import CacheCore
from gathering_cache.errors import (
    ArgumentTypeError,
    CacheError,
    InvalidArgumentError,
    SerializationError,
)
from gathering_cache.keys import LLM, check_model, check_namespace, check_ttl
from gathering_cache.singleflight import SingleFlight

if TYPE_CHECKING:
    from gathering_cache.manager import AsyncCacheManager

__all__ = ["TRANSPORT_PARAMS", "LLMCache", "cached_completion", "is_deterministic"]

TRANSPORT_PARAMS = frozenset(
    {
        "stream",
        "stream_options",
        "timeout",
        "request_timeout",
        "extra_headers",
        "extra_query",
        "extra_body",
        "api_key",
        "api_base",
        "base_url",
        "user",
        "metadata",
        "store",
    }
)
"""Parameters that do not change a response and are left out of the key."""

R = TypeVar("R")

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


def _usage_tokens(usage: Any) -> int:
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
        self._core = core

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
                request, option=orjson.OPT_SORT_KEYS | orjson.OPT_SERIALIZE_NUMPY
            )
        except orjson.JSONEncodeError as exc:
            raise SerializationError(f"cannot hash the LLM request: {exc}") from None
        digest = hashlib.sha256(canonical).hexdigest()[:32]
        space = f"ns-{quote(namespace, safe='')}" if namespace is not None else "shared"
        return f"{self._core.keys.prefix}{LLM}:{space}:{digest}"

    def _cacheable(self, force: bool, params: Mapping[str, Any]) -> bool:
        if force or is_deterministic(params):
            return True
        self._core.stats.llm_skipped += 1
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
        entry: dict[str, Any] | None = await self._core.get(key, LLM, _is_entry)
        if entry is not None:
            self._core.stats.llm_tokens_saved += _usage_tokens(entry.get("usage"))
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
        expiry = check_ttl(ttl) or self._core.config.llm_response_ttl
        if usage is not None and not isinstance(usage, Mapping):
            raise ArgumentTypeError(f"usage must be a mapping, not {type(usage).__name__}")
        entry = {
            "response": response,
            "usage": dict(usage) if usage is not None else None,
            "model": model,
            "created_at": round(time.time(), 3),
        }
        data = encoding.encode(entry)  # an unencodable response raises, cacheable or not
        if not self._cacheable(force, params):
            return False
        return await self._core.set_raw(key, data, expiry)

    async def invalidate(self, namespace: str | None) -> int:
        namespace = check_namespace(namespace)
        space = f"ns-{quote(namespace, safe='')}" if namespace is not None else "shared"
        return await self._core.delete_pattern(f"{self._core.keys.prefix}{LLM}:{space}:*")


def _is_entry(value: Any) -> bool:
    return isinstance(value, dict) and "response" in value


def cached_completion(
    cache: AsyncCacheManager,
    *,
    namespace: str | None = None,
    force: bool = False,
    ttl: int | None = None,
    usage: Callable[[Any], Mapping[str, Any] | None] | None = None,
    encode: Callable[[Any], Any] | None = None,
    decode: Callable[[Any], Any] | None = None,
    lock_ttl: float = 60.0,
    wait_timeout: float = 30.0,
) -> Callable[[Callable[..., Awaitable[R]]], Callable[..., Awaitable[R]]]:
    """Decorate an async completion function so deterministic calls are answered once.

    The function is called as ``fn(model, messages=... | prompt=..., **params)`` (any
    signature with a ``model`` and a ``messages`` or ``prompt`` parameter). Concurrent equal
    calls share one execution, here and across processes (single-flight, as for embeddings);
    a call that raises caches nothing and its error reaches every waiter.

    Per call, ``cache_namespace=`` and ``cache_force=`` override the decorator's values.

    Args:
        cache: the cache manager.
        namespace: tenant isolation (agent, circle or user); ``None`` shares entries.
        force: cache non-deterministic calls too.
        ttl: entry lifetime (default ``llm_response_ttl``).
        usage: extracts token usage from a response (default: ``response["usage"]`` or
            ``response.usage``).
        encode / decode: turn a response into JSON-like data and back. Without them, JSON-like
            responses are cached as they are; objects with ``model_dump()`` (SDK responses)
            are cached only when ``decode`` is given (dumped with ``model_dump(mode="json")``),
            so a hit returns the same type as a miss.

    A request that cannot be hashed, a response that cannot be stored, or a cached entry
    that ``decode`` refuses (one written by an older version of the response type) is logged
    and answered by calling the function: the cache never breaks the call it wraps.

    Raises:
        ArgumentTypeError / InvalidArgumentError: a bad decorator argument (``namespace``,
            ``ttl``, ``lock_ttl`` (at least 0.001 s), ``wait_timeout``, or a hook that is not
            callable), when decorating rather than on every call.
    """
    if not isinstance(getattr(cache, "_core", None), CacheCore):  # manager imports this module
        raise ArgumentTypeError(f"cache must be an AsyncCacheManager, not {type(cache).__name__}")
    check_namespace(namespace)
    check_ttl(ttl)
    for name, hook in (("usage", usage), ("encode", encode), ("decode", decode)):
        if hook is not None and not callable(hook):
            raise ArgumentTypeError(f"{name} must be callable, not {type(hook).__name__}")
    flight: SingleFlight[Any] = SingleFlight(
        cache._core, lock_ttl=lock_ttl, wait_timeout=wait_timeout
    )
    llm = cache.llm

    def decorate(function: Callable[..., Awaitable[R]]) -> Callable[..., Awaitable[R]]:
        signature = inspect.signature(function)
        warned_causes: set[str] = set()

        @functools.wraps(function)
        async def wrapper(*args: Any, **kwargs: Any) -> R:
            # The cache's own argument: a bad one is a programming error, raised.
            space = check_namespace(kwargs.pop("cache_namespace", namespace))
            forced = kwargs.pop("cache_force", force)
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()  # a default model is part of the request too
            arguments = dict(bound.arguments)
            for name, parameter in signature.parameters.items():
                if parameter.kind is inspect.Parameter.VAR_KEYWORD and name in arguments:
                    arguments.update(arguments.pop(name))
                elif parameter.kind is inspect.Parameter.VAR_POSITIONAL:
                    arguments.pop(name, None)
            model = arguments.pop("model", None)
            prompt = arguments.pop("prompt", None)
            messages = arguments.pop("messages", None)
            if not (forced or is_deterministic(arguments)):
                cache._core.stats.llm_skipped += 1
                return await function(*args, **kwargs)
            try:
                key = llm.key(model, prompt, messages, space, arguments)
            except (CacheError, TypeError, ValueError) as exc:
                # The cache must never break the call it wraps: run it uncached. Warned once
                # per cause (the same unhashable argument recurs on every call).
                cause = f"{type(exc).__name__}: {exc}"
                if cause not in warned_causes and len(warned_causes) < _MAX_CAUSES:
                    warned_causes.add(cause)
                    logger.warning("not caching this LLM call (said once per cause): %s", exc)
                else:
                    logger.debug("not caching this LLM call: %s", exc)
                return await function(*args, **kwargs)
            entry = await llm.read(key)
            if entry is not None:
                found = _decoded(entry)
                if found is not _UNDECODABLE:
                    return found  # type: ignore[no-any-return]

            async def compute() -> Any:
                response = await function(*args, **kwargs)
                payload = _storable(response)
                if payload is _UNSTORABLE:
                    return response
                try:
                    await cache._core.set(
                        key,
                        {
                            "response": payload,
                            "usage": _usage(response, usage),
                            "model": model,
                            "created_at": round(time.time(), 3),
                        },
                        check_ttl(ttl) or cache.config.llm_response_ttl,
                    )
                except CacheError as exc:  # the answer was paid for: return it anyway
                    logger.warning("LLM response not cached: %s", exc)
                return response

            async def lookup() -> Any:
                found = await llm.read(key)
                if found is None:
                    return None
                value = _decoded(found)
                return None if value is _UNDECODABLE else value

            return await flight.run(key, compute, lookup)  # type: ignore[no-any-return]

        decode_failures: list[bool] = []

        def _decoded(entry: dict[str, Any]) -> Any:
            if decode is None:
                return entry["response"]
            try:
                return decode(entry["response"])
            except Exception as exc:
                # Stored data is not trusted: an entry of an older response schema (or planted)
                # is a miss, recomputed and overwritten, not an error in the caller's call.
                log = logger.debug if decode_failures else logger.warning
                decode_failures.append(True)
                del decode_failures[1:]
                log("cached LLM response refused by decode=, recomputing: %r", exc)
                return _UNDECODABLE

        warned: list[bool] = []

        def _storable(response: Any) -> Any:
            if encode is not None:
                return encode(response)
            if callable(getattr(response, "model_dump", None)):
                if decode is None:
                    # A hit would return a dict where a miss returned the object: refuse to
                    # make the two differ, and say how to cache such responses.
                    if not warned:
                        warned.append(True)
                        logger.warning(
                            "%s responses are not cached without decode= "
                            "(e.g. decode=%s.model_validate)",
                            type(response).__name__,
                            type(response).__name__,
                        )
                    return _UNSTORABLE
                return response.model_dump(mode="json")
            return response

        wrapper.flight = flight  # type: ignore[attr-defined]
        return wrapper

    return decorate


_UNSTORABLE: Any = object()
_UNDECODABLE: Any = object()
_MAX_CAUSES = 64
"""Distinct causes warned about per decorated function (then only debug-logged)."""


def _usage(response: Any, getter: Callable[[Any], Mapping[str, Any] | None] | None) -> Any:
    if getter is not None:
        found = getter(response)
    elif isinstance(response, Mapping):
        found = response.get("usage")
    else:
        found = getattr(response, "usage", None)
    dump = getattr(found, "model_dump", None)
    if callable(dump):
        found = dump()
    return dict(found) if isinstance(found, Mapping) else None
