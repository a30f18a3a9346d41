"""``@cached``: the cache in front of any function, async or sync.

::

    @cached(cache, ttl=600)
    async def weather(city: str) -> dict[str, Any]: ...

Key: ``<prefix>fn:<namespace>:<32 hex of sha256(arguments as JSON)>``, the namespace being
the function's ``module.qualname`` unless given. The arguments are bound to the signature
(``f(1)`` and ``f(x=1)`` are one call, defaults included); a first parameter named ``self``
or ``cls`` is left out, so every instance shares the entries (pass ``key=`` otherwise).

Concurrent equal calls share one execution, in this process and across processes (the
manager's store locks); an infrastructure fault never reaches the caller (the function runs
uncached); a result that cannot be stored (not JSON-like) is returned and logged once.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar, overload

import orjson
from typing_extensions import ParamSpec

from gathering_cache.core.keys import check_namespace, check_ttl
from gathering_cache.core.singleflight import SingleFlight
from gathering_cache.errors import ArgumentTypeError, CacheError, InvalidArgumentError
from gathering_cache.integrations._portal import Handoff, run_async, run_sync
from gathering_cache.manager import AsyncCacheManager
from gathering_cache.sync import CacheManager

__all__ = ["cached"]

P = ParamSpec("P")
R = TypeVar("R")

logger = logging.getLogger(__name__)

_AREA = "fn"
_MAX_CAUSES = 64


class _Miss:
    pass


_MISS: Any = _Miss()


class _Warnings:
    """Log a warning once per cause, then at debug level."""

    def __init__(self) -> None:
        self.seen: set[str] = set()

    def __call__(self, message: str, cause: object) -> None:
        text = f"{type(cause).__name__}: {cause}"
        if text not in self.seen and len(self.seen) < _MAX_CAUSES:
            self.seen.add(text)
            logger.warning("%s (said once per cause): %s", message, text)
        else:
            logger.debug("%s: %s", message, text)


class cached:  # a decorator: named like a function
    """Cache a function's results: ``@cached(cache, ttl=600)``.

    Works on ``async def`` functions (with an :class:`AsyncCacheManager`, or a
    :class:`CacheManager` whose loop then does the cache's work) and on plain functions (with
    a :class:`CacheManager`: the function runs in the caller's thread, the cache work on the
    facade's loop, one pool and one set of stats for every thread). The decorated function
    keeps its signature (``ParamSpec``); an async one returns a coroutine.

    Args:
        cache: the manager.
        ttl: entry lifetime in seconds (default ``default_ttl``).
        namespace: the key segment (default ``module.qualname`` of the function); entries of
            one namespace are dropped with ``cache.delete_pattern(f"{prefix}fn:{ns}:*")``.
        key: builds the key's last segment from the call's arguments (called as the
            function is); default: a hash of the bound arguments as JSON.
        lock_ttl / wait_timeout: single-flight across processes (as in ``cached_completion``).
        encode / decode: turn a result into JSON-like data and back (a pydantic model:
            ``encode=lambda m: m.model_dump(mode="json"), decode=Model.model_validate``).

    Raises:
        ArgumentTypeError / InvalidArgumentError: a bad argument, when decorating; an async
            manager for a sync function.
    """

    def __init__(
        self,
        cache: AsyncCacheManager | CacheManager,
        *,
        ttl: int | None = None,
        namespace: str | None = None,
        key: Callable[..., str] | None = None,
        lock_ttl: float = 30.0,
        wait_timeout: float = 10.0,
        encode: Callable[[Any], Any] | None = None,
        decode: Callable[[Any], Any] | None = None,
    ) -> None:
        if not isinstance(cache, (AsyncCacheManager, CacheManager)):
            raise ArgumentTypeError(
                f"cache must be an AsyncCacheManager or a CacheManager, not {type(cache).__name__}"
            )
        for name, hook in (("key", key), ("encode", encode), ("decode", decode)):
            if hook is not None and not callable(hook):
                raise ArgumentTypeError(f"{name} must be callable, not {type(hook).__name__}")
        self.cache = cache
        self.ttl = check_ttl(ttl)
        self.namespace = check_namespace(namespace)
        self.key = key
        self.encode = encode
        self.decode = decode
        manager = cache.async_manager if isinstance(cache, CacheManager) else cache
        self.prefix = f"{manager.config.key_prefix}{_AREA}:"
        self.flight: SingleFlight[Any] = SingleFlight(
            manager.locks, lock_ttl=lock_ttl, wait_timeout=wait_timeout
        )

    @overload
    def __call__(
        self, function: Callable[P, Coroutine[Any, Any, R]]
    ) -> Callable[P, Coroutine[Any, Any, R]]: ...

    @overload
    def __call__(self, function: Callable[P, R]) -> Callable[P, R]: ...

    def __call__(self, function: Callable[P, Any]) -> Callable[P, Any]:
        if not callable(function):
            raise ArgumentTypeError(f"cached() decorates a function, not {function!r}")
        space = self.namespace or f"{function.__module__}.{function.__qualname__}"
        if not space:
            raise InvalidArgumentError("namespace must not be empty")
        call = _Call(self, function, f"{self.prefix}{space}:")
        if inspect.iscoroutinefunction(function):

            @functools.wraps(function)
            async def async_wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
                return await call.run_async(args, kwargs)

            return async_wrapper
        if isinstance(self.cache, AsyncCacheManager):
            raise ArgumentTypeError(
                f"{function.__qualname__} is not a coroutine function: a sync function needs "
                "a CacheManager (the sync facade), not an AsyncCacheManager"
            )

        @functools.wraps(function)
        def sync_wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
            return call.run_sync(args, kwargs)

        return sync_wrapper


class _Call:
    """One decorated function: its key, its reads and writes, its flight."""

    def __init__(self, options: cached, function: Callable[..., Any], head: str) -> None:
        self.options = options
        self.function = function
        self.head = head
        self.signature = inspect.signature(function)
        params = list(self.signature.parameters)
        self.skip = params[0] if params and params[0] in ("self", "cls") else None
        self.warn = _Warnings()
        manager = options.cache
        self.manager = manager.async_manager if isinstance(manager, CacheManager) else manager

    def key_of(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
        try:
            if self.options.key is not None:
                suffix = self.options.key(*args, **kwargs)
                if not isinstance(suffix, str) or not suffix:
                    raise ArgumentTypeError(f"key= must return a non-empty str, not {suffix!r}")
                return self.head + suffix
            bound = self.signature.bind(*args, **kwargs)
            bound.apply_defaults()
            arguments = {k: v for k, v in bound.arguments.items() if k != self.skip}
            canonical = orjson.dumps(
                arguments, option=orjson.OPT_SORT_KEYS | orjson.OPT_SERIALIZE_NUMPY
            )
        except TypeError as exc:  # unbindable: the function itself will say so
            if isinstance(exc, ArgumentTypeError):
                raise
            self.warn("not caching this call: its arguments cannot be hashed", exc)
            return None
        return self.head + hashlib.sha256(canonical).hexdigest()[:32]

    async def lookup(self, key: str) -> Any:
        found = await self.manager.get(key)
        if not isinstance(found, dict) or "v" not in found:
            return _MISS
        if self.options.decode is None:
            return found["v"]
        try:
            return self.options.decode(found["v"])
        except Exception as exc:  # stored data is not trusted: a miss
            self.warn("cached value refused by decode=, recomputing", exc)
            return _MISS

    async def store(self, key: str, value: Any) -> None:
        try:
            payload = value if self.options.encode is None else self.options.encode(value)
            await self.manager.set(key, {"v": payload}, self.options.ttl)
        except (CacheError, TypeError, ValueError) as exc:
            self.warn(f"{self.function.__qualname__} result not cached", exc)

    async def plan(self, key: str, compute: Callable[[], Awaitable[Any]]) -> Any:
        """Read, else compute once (single-flight) and store."""
        found = await self.lookup(key)
        if found is not _MISS:
            return found

        async def compute_and_store() -> Any:
            value = await compute()
            await self.store(key, value)
            return value

        async def lookup() -> Any:
            value = await self.lookup(key)
            return None if value is _MISS else value

        return await self.flight.run(key, compute_and_store, lookup)

    @property
    def flight(self) -> SingleFlight[Any]:
        return self.options.flight

    async def run_async(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        key = self.key_of(args, kwargs)
        if key is None:
            return await self.function(*args, **kwargs)

        async def compute() -> Any:
            return await self.function(*args, **kwargs)

        cache = self.options.cache
        if isinstance(cache, CacheManager):

            async def plan(handoff: Handoff[Any]) -> Any:
                return await self.plan(key, handoff.compute)

            return await run_async(cache, plan, compute)
        return await self.plan(key, compute)

    def run_sync(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        key = self.key_of(args, kwargs)
        if key is None:
            return self.function(*args, **kwargs)
        cache = self.options.cache
        assert isinstance(cache, CacheManager)  # checked when decorating

        async def plan(handoff: Handoff[Any]) -> Any:
            return await self.plan(key, handoff.compute)

        return run_sync(cache, plan, lambda: self.function(*args, **kwargs))
