"""``sync_cached_completion``: :func:`~gathering_cache.cached_completion` for a synchronous
completion function (the OpenAI SDK's sync ``client.chat.completions.create``, LiteLLM's
``completion`` ...), on the sync facade's loop.

The function itself runs in the caller's thread; the lookup, the single-flight (in the
process and across processes) and the write run on the facade's loop, sharing its pool,
stats and flights with the async code on the same :class:`~gathering_cache.CacheManager`.
Everything else (the key, output-neutral parameters, streams bypassed, the determinism
rule, ``cache_namespace=`` / ``cache_force=`` per call) is as for ``cached_completion``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from typing_extensions import ParamSpec

from gathering_cache.agents.completions import CompletionPlans
from gathering_cache.errors import ArgumentTypeError
from gathering_cache.integrations._portal import Handoff, run_sync
from gathering_cache.sync import CacheManager

__all__ = ["sync_cached_completion"]

R = TypeVar("R")
P = ParamSpec("P")


def sync_cached_completion(
    cache: CacheManager,
    *,
    namespace: str | None = None,
    force: bool = False,
    ttl: int | None = None,
    usage: Callable[[Any], Mapping[str, Any] | None] | None = None,
    encode: Callable[[Any], Any] | None = None,
    decode: Callable[[Any], Any] | None = None,
    lock_ttl: float = 60.0,
    wait_timeout: float = 30.0,
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorate a synchronous completion function so deterministic calls are answered once.

    The arguments are those of :func:`~gathering_cache.cached_completion`, with the sync
    facade as ``cache``. When the facade is closed, the function is simply called.

    Raises:
        ArgumentTypeError: ``cache`` is not a ``CacheManager``; and as ``cached_completion``
            for the other arguments, when decorating.
    """
    if not isinstance(cache, CacheManager):
        raise ArgumentTypeError(f"cache must be a CacheManager, not {type(cache).__name__}")
    plans = CompletionPlans(
        cache.async_manager,
        namespace=namespace,
        force=force,
        ttl=ttl,
        usage=usage,
        encode=encode,
        decode=decode,
        lock_ttl=lock_ttl,
        wait_timeout=wait_timeout,
    )

    def decorate(function: Callable[P, R]) -> Callable[P, R]:
        if not callable(function):
            raise ArgumentTypeError(
                f"sync_cached_completion() decorates a function, not {function!r}"
            )
        plan = plans.plan_for(function)

        @functools.wraps(function)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            space, forced = plans.own_arguments(kwargs)

            def steps(handoff: Handoff[R]) -> Any:
                return plan(args, kwargs, space, forced, handoff.compute)

            answer: R = run_sync(cache, steps, lambda: function(*args, **kwargs))
            return answer

        wrapper.flight = plans.flight  # type: ignore[attr-defined]
        return wrapper

    return decorate
