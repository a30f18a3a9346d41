"""LiteLLM on the cache (the ``[litellm]`` extra; imports ``litellm``).

::

    import litellm
    from gathering_cache.integrations.litellm import litellm_cache

    litellm.cache = litellm_cache(cache)
    await litellm.acompletion(model=..., messages=..., caching=True)

LiteLLM decides what to cache and how to key it (``litellm.Cache``: its key hashes the model,
the messages or input and the output-affecting parameters; ``caching=True`` or
``litellm.enable_cache()``; per-call ``cache={"no-cache": True, "ttl": ...}``): this module
is the store under it, so ``completion`` / ``acompletion`` / ``embedding`` / ``aembedding``
hits come from gathering_cache (keys ``<prefix>litellm:<LiteLLM's key>``, JSON values, each
expiring). A :class:`~gathering_cache.CacheManager` serves the sync and async entry points;
an :class:`~gathering_cache.AsyncCacheManager` the async ones only. Redis down: every read
misses, LiteLLM calls the model.
"""

from __future__ import annotations

from typing import Any

from litellm.caching.base_cache import BaseCache
from litellm.caching.caching import Cache
from litellm.types.caching import LiteLLMCacheType

from gathering_cache.core.keys import check_ttl
from gathering_cache.errors import CacheError
from gathering_cache.integrations._portal import Bridge
from gathering_cache.manager import AsyncCacheManager
from gathering_cache.sync import CacheManager

__all__ = ["GatheringLiteLLMCache", "litellm_cache"]

_GLOB: dict[int, str] = {ord(c): f"\\{c}" for c in "*?[]\\"}


class GatheringLiteLLMCache(BaseCache):
    """LiteLLM's cache store interface (``litellm.caching.base_cache.BaseCache``) on the
    cache; usually built by :func:`litellm_cache`.

    Args:
        cache: the manager.
        ttl: entry lifetime when LiteLLM gives none (default ``llm_response_ttl``).
    """

    def __init__(self, cache: AsyncCacheManager | CacheManager, *, ttl: int | None = None):
        self._bridge = Bridge(cache)
        ttl = check_ttl(ttl) or self._bridge.manager.config.llm_response_ttl
        super().__init__(default_ttl=ttl)
        self._head = f"{self._bridge.prefix}litellm:"

    def _ttl(self, kwargs: dict[str, Any]) -> int:
        ttl = self.get_ttl(**kwargs)
        return max(1, int(ttl)) if ttl else int(self.default_ttl)

    async def _set_many(self, manager: AsyncCacheManager, items: dict[str, Any], ttl: int) -> None:
        try:
            await manager.set_many({self._head + k: v for k, v in items.items()}, ttl)
        except CacheError:  # a value LiteLLM hands over that is not JSON: not cached
            return

    async def _get_many(self, manager: AsyncCacheManager, keys: list[str]) -> list[Any]:
        return await manager.get_many([self._head + k for k in keys]) if keys else []

    def set_cache(self, key: str, value: Any, **kwargs: Any) -> None:
        ttl = self._ttl(kwargs)
        self._bridge.call_sync(lambda m: self._set_many(m, {key: value}, ttl), None)

    async def async_set_cache(self, key: str, value: Any, **kwargs: Any) -> None:
        ttl = self._ttl(kwargs)
        await self._bridge.call(lambda m: self._set_many(m, {key: value}, ttl), None)

    async def async_set_cache_pipeline(
        self, cache_list: list[tuple[str, Any]], **kwargs: Any
    ) -> None:
        ttl = self._ttl(kwargs)
        items = dict(cache_list)
        await self._bridge.call(lambda m: self._set_many(m, items, ttl), None)

    async def batch_cache_write(self, key: str, value: Any, **kwargs: Any) -> None:
        await self.async_set_cache(key, value, **kwargs)

    def get_cache(self, key: str, **kwargs: Any) -> Any:
        return self._bridge.call_sync(lambda m: self._get_many(m, [key]), [None])[0]

    async def async_get_cache(self, key: str, **kwargs: Any) -> Any:
        return (await self._bridge.call(lambda m: self._get_many(m, [key]), [None]))[0]

    def batch_get_cache(self, keys: list[str], **kwargs: Any) -> list[Any]:
        return self._bridge.call_sync(lambda m: self._get_many(m, list(keys)), [None] * len(keys))

    async def async_batch_get_cache(self, keys: list[str], **kwargs: Any) -> list[Any]:
        return await self._bridge.call(lambda m: self._get_many(m, list(keys)), [None] * len(keys))

    def delete_cache(self, key: str) -> None:
        self._bridge.call_sync(lambda m: m.delete(self._head + key), False)

    async def async_delete_cache(self, key: str) -> None:
        await self._bridge.call(lambda m: m.delete(self._head + key), False)

    def flush_cache(self) -> None:
        """Drop every LiteLLM entry of this cache (SCAN + UNLINK under the prefix)."""
        pattern = self._head.translate(_GLOB) + "*"
        self._bridge.call_sync(lambda m: m.delete_pattern(pattern), 0)

    async def disconnect(self) -> None:
        """Nothing to do: the manager belongs to the caller."""

    async def test_connection(self) -> dict[str, Any]:
        enabled = await self._bridge.call(lambda m: m.connect(), False)
        if enabled:
            return {"status": "success", "message": "gathering_cache store reachable"}
        return {"status": "failed", "message": "gathering_cache store unavailable", "error": None}


def litellm_cache(
    cache: AsyncCacheManager | CacheManager, *, ttl: int | None = None, **options: Any
) -> Cache:
    """A ``litellm.Cache`` whose store is gathering_cache: ``litellm.cache =
    litellm_cache(cache)``.

    Args:
        cache: the manager.
        ttl: entry lifetime when a call gives none (default ``llm_response_ttl``).
        options: passed to ``litellm.Cache`` (``supported_call_types``, ``mode``, ...).
    """
    wrapper = Cache(type=LiteLLMCacheType.LOCAL, **options)
    wrapper.cache = GatheringLiteLLMCache(cache, ttl=ttl)
    return wrapper
