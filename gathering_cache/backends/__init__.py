"""Store backends. Only this layer talks to redis; see :mod:`.base` for the interface."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gathering_cache.backends.base import Progress, Store
from gathering_cache.backends.memory import MemoryStore
from gathering_cache.backends.null import NullStore
from gathering_cache.backends.redis_store import REDIS_AVAILABLE
from gathering_cache.errors import ConfigurationError

if TYPE_CHECKING:
    from gathering_cache.config import CacheConfig

__all__ = ["REDIS_AVAILABLE", "MemoryStore", "NullStore", "Progress", "Store", "create_store"]


def create_store(config: CacheConfig, client: Any = None) -> Store:
    """The store ``config`` asks for.

    Args:
        config: the cache configuration.
        client: an injected ``redis.asyncio`` client (``Redis``, ``RedisCluster``, or a
            fakeredis ``FakeAsyncRedis``). It is used as given and not closed by the store.
    """
    if not config.enabled:
        return NullStore("disabled in config (enabled=False / CACHE_ENABLED=false)")
    if config.backend == "memory" and client is None:
        return MemoryStore(config.memory_max_entries)
    if not REDIS_AVAILABLE:
        return NullStore("redis library not installed (pip install 'redis[hiredis]')")
    from gathering_cache.backends.redis_store import RedisStore, build_client

    if client is not None:
        kwargs = getattr(getattr(client, "connection_pool", None), "connection_kwargs", {})
        if isinstance(kwargs, dict) and kwargs.get("decode_responses"):
            raise ConfigurationError(
                "client",
                "the injected client must not use decode_responses=True (values are bytes)",
            )
        return RedisStore(client, owned=False, describe=_client_location(client))
    return RedisStore(build_client(config), owned=True, describe=config.endpoint())


def _client_location(client: Any) -> dict[str, Any]:
    """Host, port and db of an injected client, as far as its pool tells (no secrets)."""
    kwargs = getattr(getattr(client, "connection_pool", None), "connection_kwargs", None)
    location: dict[str, Any] = {"injected_client": True}
    if isinstance(kwargs, dict):
        location.update({k: kwargs[k] for k in ("host", "port", "db") if k in kwargs})
    return location
