"""``cached_completion``: put the LLM response cache in front of an async completion function.

Deterministic calls are answered once (see :mod:`gathering_cache.caches.llm` for the key and
the determinism rule); concurrent equal calls share one execution, here and across processes.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from gathering_cache.caches.llm import is_deterministic, make_entry
from gathering_cache.core.keys import check_namespace, check_ttl
from gathering_cache.core.singleflight import SingleFlight
from gathering_cache.errors import ArgumentTypeError, CacheError
from gathering_cache.manager import AsyncCacheManager

__all__ = ["cached_completion"]

R = TypeVar("R")

logger = logging.getLogger(__name__)


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
    if not isinstance(cache, AsyncCacheManager):
        raise ArgumentTypeError(f"cache must be an AsyncCacheManager, not {type(cache).__name__}")
    check_namespace(namespace)
    check_ttl(ttl)
    for name, hook in (("usage", usage), ("encode", encode), ("decode", decode)):
        if hook is not None and not callable(hook):
            raise ArgumentTypeError(f"{name} must be callable, not {type(hook).__name__}")
    flight: SingleFlight[Any] = SingleFlight(
        cache.locks, lock_ttl=lock_ttl, wait_timeout=wait_timeout
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
                llm.count_skipped()
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
                    await llm.write(key, make_entry(payload, _usage(response, usage), model), ttl)
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
