"""Store backends. Only this layer talks to redis; see :mod:`.base` for the interface."""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

from gathering_cache.backends.base import Progress, Store
from gathering_cache.backends.memory import MemoryStore
from gathering_cache.backends.null import NullStore
from gathering_cache.backends.redis_store import REDIS_AVAILABLE
from gathering_cache.errors import ArgumentTypeError, ConfigurationError

if TYPE_CHECKING:
    from gathering_cache.config import CacheConfig

__all__ = ["REDIS_AVAILABLE", "MemoryStore", "NullStore", "Progress", "Store", "create_store"]


def create_store(config: CacheConfig, client: Any = None) -> Store:
    """The store ``config`` asks for.

    Args:
        config: the cache configuration.
        client: an injected ``redis.asyncio`` client (``Redis``, ``RedisCluster``, a
            sentinel's ``master_for`` client, or a fakeredis ``FakeAsyncRedis``). It is used
            as given and not closed by the store. Without one, ``config.cluster_nodes`` /
            ``config.sentinel_nodes`` choose the topology.

    Raises:
        ArgumentTypeError: ``client`` is not an asyncio client (a sync ``redis.Redis``).
        ConfigurationError: ``client`` decodes responses (``decode_responses=True``); this
            one is also an ArgumentTypeError.
    """
    if client is not None:
        _check_client(client)  # a wrong client is refused even while the cache is disabled
    if client is None and config.backend == "memory":
        if not config.enabled:
            return NullStore(_DISABLED, backend="memory", describe=_NOWHERE)
        return MemoryStore(config.memory_max_entries)
    describe = _client_location(client) if client is not None else config.endpoint()
    if not config.enabled:
        return NullStore(_DISABLED, backend="redis", describe=describe, topology=config.topology)
    if not REDIS_AVAILABLE:
        return NullStore(
            "redis library not installed (pip install 'redis[hiredis]')",
            backend="redis",
            describe=describe,
            topology=config.topology,
        )
    from gathering_cache.backends.redis_topologies import redis_store

    limit = config.max_connections  # the pool's size: the policy keeps calls within it
    return redis_store(config, client, describe=describe, concurrency=limit)


_DISABLED = "disabled in config (enabled=False / CACHE_ENABLED=false)"
_NOWHERE: dict[str, Any] = {"host": None, "port": None, "db": None}


class _UnusableClientError(ConfigurationError, ArgumentTypeError):
    """An injected client configured in a way the store cannot use: a ConfigurationError of
    the ``client`` argument (as documented) and an ArgumentTypeError (a client of the wrong
    kind), so either catches it."""


def _check_client(client: Any) -> None:
    """Refuse, at construction, an injected client the store cannot work with."""
    execute = getattr(client, "execute_command", None)
    if not inspect.iscoroutinefunction(execute):
        # A sync redis.Redis would fail on the first call ("object bool can't be used in
        # 'await' expression"), long after the mistake.
        kind = f"{type(client).__module__}.{type(client).__qualname__}"
        raise ArgumentTypeError(
            f"client must be a redis.asyncio client (redis.asyncio.Redis, "
            f"redis.asyncio.RedisCluster or fakeredis.FakeAsyncRedis), not {kind}"
        )
    if _connection_kwargs(client).get("decode_responses") or getattr(
        _encoder(client), "decode_responses", False
    ):
        raise _UnusableClientError(
            "client",
            "the injected client must not use decode_responses=True (values are bytes)",
        )


def _connection_kwargs(client: Any) -> dict[str, Any]:
    """The connection keyword arguments of a standalone or cluster client (a cluster client
    has no connection_pool; it answers get_connection_kwargs())."""
    getter = getattr(client, "get_connection_kwargs", None)
    kwargs = getter() if callable(getter) else None
    if not isinstance(kwargs, dict):
        kwargs = getattr(getattr(client, "connection_pool", None), "connection_kwargs", None)
    return kwargs if isinstance(kwargs, dict) else {}


def _encoder(client: Any) -> Any:
    getter = getattr(client, "get_encoder", None)
    return getter() if callable(getter) else None


def _client_location(client: Any) -> dict[str, Any]:
    """Host, port and db of an injected client, as far as it tells (no secrets)."""
    kwargs = _connection_kwargs(client)
    location: dict[str, Any] = {"injected_client": True}
    location.update({k: kwargs[k] for k in ("host", "port", "db") if k in kwargs})
    if "host" not in location:  # a cluster client: its first startup node
        nodes = getattr(getattr(client, "nodes_manager", None), "startup_nodes", None)
        if isinstance(nodes, dict) and nodes:
            node = next(iter(nodes.values()))
            location.update(host=getattr(node, "host", None), port=getattr(node, "port", None))
    return location
