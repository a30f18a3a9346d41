"""``cached_completion``: put the LLM response cache in front of an async completion function.

Deterministic calls are answered once (see :mod:`gathering_cache.caches.llm` for the key and
the determinism rule); concurrent equal calls share one execution, here and across processes.

It can wrap an SDK method as it is (``cached_completion(cache, decode=ChatCompletion.
model_validate)(client.chat.completions.create)``):

* parameters left at a default that is not JSON (the SDK's ``NotGiven`` / ``Omit`` sentinels,
  any object default) and values that are such sentinels are not part of the key;
* output-neutral parameters (``caches.llm.TRANSPORT_PARAMS``: ``timeout``, ``extra_headers``,
  ``user``, ``metadata``, ``prompt_cache_key``, ``safety_identifier``, ``service_tier`` ...)
  are left out of the key;
* ``stream=True`` calls bypass the cache (counted ``llm_skipped``): a stream is never served
  from, nor stored as, a whole response. Replaying chunks would hand back an object that is
  not the SDK's ``AsyncStream`` (no ``response``, no ``close()``), so a hit would not be the
  type a miss is;
* determinism: only ``temperature == 0`` or a ``seed`` is cached by default. Reasoning models
  (o1, o3, gpt-5 ...) take no ``temperature`` and ignore ``seed`` for their hidden reasoning:
  their answers are never reproducible, so they are not cached unless ``force=True`` (or
  ``cache_force=True`` per call) says that a stored answer is good enough.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any, TypeVar

from typing_extensions import ParamSpec

from gathering_cache.caches.llm import is_deterministic, make_entry
from gathering_cache.core.keys import check_namespace, check_ttl
from gathering_cache.core.singleflight import SingleFlight
from gathering_cache.errors import ArgumentTypeError, CacheError
from gathering_cache.manager import AsyncCacheManager

__all__ = ["CompletionPlans", "cached_completion"]

R = TypeVar("R")
P = ParamSpec("P")

_JSON_DEFAULTS = (str, int, float, bool, type(None), list, tuple, dict)
_SENTINELS = frozenset({"NotGiven", "Omit", "_NotGiven", "_Omit"})

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
) -> Callable[[Callable[P, Awaitable[R]]], Callable[P, Coroutine[Any, Any, R]]]:
    """Decorate an async completion function so deterministic calls are answered once.

    The function is called as ``fn(model, messages=... | prompt=..., **params)`` (any
    signature with a ``model`` and a ``messages`` or ``prompt`` parameter). Concurrent equal
    calls share one execution, here and across processes (single-flight, as for embeddings);
    a call that raises caches nothing and its error reaches every waiter.

    Per call, ``cache_namespace=`` and ``cache_force=`` override the decorator's values (a
    type checker accepts them only where the function takes ``**kwargs``). The wrapper keeps
    the function's signature (``ParamSpec``) and returns a coroutine, so
    ``asyncio.create_task(wrapped(...))`` type-checks and a misspelt argument does not.
    ``stream=True`` calls bypass the cache; see the module docstring for the key and the
    determinism rule.

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
    plans = CompletionPlans(
        cache,
        namespace=namespace,
        force=force,
        ttl=ttl,
        usage=usage,
        encode=encode,
        decode=decode,
        lock_ttl=lock_ttl,
        wait_timeout=wait_timeout,
    )

    def decorate(function: Callable[P, Awaitable[R]]) -> Callable[P, Coroutine[Any, Any, R]]:
        plan = plans.plan_for(function)

        @functools.wraps(function)
        async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            space, forced = plans.own_arguments(kwargs)
            answer: R = await plan(args, kwargs, space, forced, lambda: function(*args, **kwargs))
            return answer

        wrapper.flight = plans.flight  # type: ignore[attr-defined]
        return wrapper

    return decorate


Plan = Callable[
    [tuple[Any, ...], dict[str, Any], "str | None", bool, Callable[[], Awaitable[Any]]],
    Coroutine[Any, Any, Any],
]
"""One decorated function's cache logic: ``plan(args, kwargs, namespace, force, call)``
answers the call from the cache or by awaiting ``call()`` (the function itself, or, for a
sync function, its computation in the caller's thread) at most once."""


class CompletionPlans:
    """What ``cached_completion`` (and its sync twin in the integrations) does around a
    completion function, on the async manager: the key, the lookup, single-flight, the
    write. Checks the decorator's arguments when built."""

    def __init__(
        self,
        cache: AsyncCacheManager,
        *,
        namespace: str | None,
        force: bool,
        ttl: int | None,
        usage: Callable[[Any], Mapping[str, Any] | None] | None,
        encode: Callable[[Any], Any] | None,
        decode: Callable[[Any], Any] | None,
        lock_ttl: float,
        wait_timeout: float,
    ) -> None:
        check_namespace(namespace)
        check_ttl(ttl)
        for name, hook in (("usage", usage), ("encode", encode), ("decode", decode)):
            if hook is not None and not callable(hook):
                raise ArgumentTypeError(f"{name} must be callable, not {type(hook).__name__}")
        self.namespace = namespace
        self.force = force
        self.ttl = ttl
        self.usage = usage
        self.encode = encode
        self.decode = decode
        self.flight: SingleFlight[Any] = SingleFlight(
            cache.locks, lock_ttl=lock_ttl, wait_timeout=wait_timeout
        )
        self.llm = cache.llm

    def own_arguments(self, kwargs: dict[str, Any]) -> tuple[str | None, bool]:
        """Take the cache's own per-call arguments out of ``kwargs`` (the function never
        sees them): a bad one is a programming error, raised."""
        space = check_namespace(kwargs.pop("cache_namespace", self.namespace))
        forced = bool(kwargs.pop("cache_force", self.force))
        return space, forced

    def plan_for(self, function: Callable[..., Any]) -> Plan:
        signature = inspect.signature(function)
        warned_causes: set[str] = set()
        decode_failures: list[bool] = []
        warned: list[bool] = []
        llm, flight, ttl, decode, encode = self.llm, self.flight, self.ttl, self.decode, self.encode
        usage = self.usage

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

        async def plan(
            args: tuple[Any, ...],
            kwargs: dict[str, Any],
            space: str | None,
            forced: bool,
            call: Callable[[], Awaitable[Any]],
        ) -> Any:
            arguments = _request(signature, args, kwargs)
            model = arguments.pop("model", None)
            prompt = arguments.pop("prompt", None)
            messages = arguments.pop("messages", None)
            if arguments.get("stream") or not (forced or is_deterministic(arguments)):
                llm.count_skipped()
                return await call()
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
                return await call()
            entry = await llm.read(key)
            if entry is not None:
                found = _decoded(entry)
                if found is not _UNDECODABLE:
                    return found

            async def compute() -> Any:
                response = await call()
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

            return await flight.run(key, compute, lookup)

        return plan


def _request(
    signature: inspect.Signature, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> dict[str, Any]:
    """The call's arguments by name, defaults included (a default model is part of the
    request too), without the ones that say nothing: a default that is not JSON (an SDK's
    ``NotGiven`` / ``Omit``, any object) and any value that is such a sentinel."""
    bound = signature.bind(*args, **kwargs)
    given = set(bound.arguments)
    bound.apply_defaults()
    arguments: dict[str, Any] = {}
    for name, value in bound.arguments.items():
        parameter = signature.parameters[name]
        if parameter.kind is inspect.Parameter.VAR_POSITIONAL:
            continue
        if parameter.kind is inspect.Parameter.VAR_KEYWORD:
            arguments.update((k, v) for k, v in value.items() if not _is_sentinel(v))
        elif _is_sentinel(value) or (name not in given and not isinstance(value, _JSON_DEFAULTS)):
            continue
        else:
            arguments[name] = value
    return arguments


def _is_sentinel(value: Any) -> bool:
    """An SDK's "not given" marker (openai's ``NOT_GIVEN`` / ``omit``), by its class name: the
    SDK is not imported here."""
    return type(value).__name__ in _SENTINELS


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
