"""Redis Cluster and Sentinel: which client and which store a config (or an injected client)
calls for. Topology is decided here, once, when the store is built; the core only sees
``Capabilities.topology`` and the :class:`~gathering_cache.backends.base.Store` interface.

What differs on a cluster, and how the cluster store deals with it:

- SCAN runs on one node at a time: :class:`ClusterStore` walks every primary, each step
  bounded like a standalone step (``Progress.step_timeout``), so ``count`` (summed over the
  primaries) and ``scan_delete`` see every key once.
- Multi-key reads go through ``mget_nonatomic`` (split per slot, order kept); writes are
  non-transactional pipelines; one-key scripts (counters, lock release) and ZPOPMIN
  (``pop_index``) touch one slot each. No operation needs a cross-slot transaction.
- Pub/sub messages are broadcast to every node of a cluster: subscribers and publishers
  meet on the primary that owns the channel's slot (so PUBLISH counts every subscriber),
  each subscriber over a plain connection of its own (redis-py's cluster pub/sub is
  missing from older versions).

On Sentinel the client asks the sentinels for the current primary of the service, and a
connection that finds a demoted primary (READONLY) reconnects to the new one. Every
reconnection asks the sentinels (:class:`_SentinelConnection`): redis-py's own re-sends
reconnect to the address a connection had, the demoted primary after a failover.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections.abc import AsyncIterator, Callable, Sequence
from typing import TYPE_CHECKING, Any

import redis.asyncio as redis_asyncio
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import ConnectionPool, SSLConnection
from redis.asyncio.sentinel import (
    Sentinel,
    SentinelConnectionPool,
    SentinelManagedConnection,
    SentinelManagedSSLConnection,
)
from redis.exceptions import SlotNotCoveredError

from gathering_cache.backends.base import Progress, Subscriber, Tracker
from gathering_cache.backends.redis_store import (
    SCAN_COUNT,
    RedisStore,
    RedisTracker,
    _mapped,
    _RedisSubscriber,
    build_client,
    connection_settings,
    tls_settings,
)
from gathering_cache.errors import BackendError

if TYPE_CHECKING:
    from gathering_cache.config import CacheConfig

logger = logging.getLogger(__name__)

__all__ = [
    "ClusterStore",
    "SentinelStore",
    "build_cluster_client",
    "build_sentinel",
    "redis_store",
]


def redis_store(
    config: CacheConfig, client: Any, *, describe: dict[str, Any], concurrency: int
) -> RedisStore:
    """The Redis store for ``config``: on the injected ``client`` (its kind decides the
    topology), else on a client built for ``config.topology``."""
    if client is not None:
        store_class: type[RedisStore] = RedisStore
        if isinstance(client, RedisCluster):
            store_class = ClusterStore
        elif isinstance(getattr(client, "connection_pool", None), SentinelConnectionPool):
            store_class = SentinelStore
        return store_class(
            client,
            owned=False,
            describe=describe,
            concurrency=concurrency,
            auto_pipeline=config.auto_pipeline,
            operation_timeout=config.operation_timeout,
        )
    if config.topology == "cluster":
        cluster: Any = build_cluster_client(config)  # the store's client type is Redis'
        return ClusterStore(
            cluster,
            owned=True,
            describe=describe,
            concurrency=concurrency,
            auto_pipeline=config.auto_pipeline,
            operation_timeout=config.operation_timeout,
        )
    if config.topology == "sentinel":
        sentinel = build_sentinel(config)
        primary = sentinel.master_for(config.sentinel_service, **_sentinel_data_settings(config))
        store = SentinelStore(
            primary,
            owned=True,
            describe=describe,
            concurrency=concurrency,
            auto_pipeline=config.auto_pipeline,
            operation_timeout=config.operation_timeout,
        )
        store.sentinels = list(sentinel.sentinels)
        return store
    return RedisStore(
        build_client(config),
        owned=True,
        describe=describe,
        concurrency=concurrency,
        auto_pipeline=config.auto_pipeline,
        operation_timeout=config.operation_timeout,
    )


# -- Cluster ---------------------------------------------------------------------------------------


def build_cluster_client(config: CacheConfig) -> RedisCluster:
    """A ``redis.asyncio.RedisCluster`` seeded with ``config.cluster_nodes``, with the same
    timeouts, retry, credentials and TLS as a standalone client (``max_connections`` per
    node)."""
    kwargs = connection_settings(config)
    del kwargs["db"]  # the config refuses db != 0 with a cluster
    if config.ssl:
        kwargs.update(ssl=True, **tls_settings(config))
    nodes = [ClusterNode(host, port) for host, port in config.addresses(config.cluster_nodes)]
    return RedisCluster(
        startup_nodes=nodes,
        # Serve the slots that are up while a failover is under way, rather than refusing
        # to start (or to refresh the slot map) until every slot is covered again.
        require_full_coverage=False,
        **kwargs,
    )


class ClusterStore(RedisStore):
    """The store on a ``redis.asyncio.RedisCluster``."""

    topology = "cluster"

    def __init__(self, client: Any, **kwargs: Any) -> None:
        self._rereading: asyncio.Task[None] | None = None
        self._reread_at = -_REREAD_PAUSE
        manager: Any = getattr(client, "nodes_manager", None)
        seeds = getattr(manager, "startup_nodes", None)
        if isinstance(seeds, dict) and not isinstance(seeds, _Seeds):
            manager.startup_nodes = _Seeds(seeds)
        # Before the store binds the client's execute_command (its hot path does). An
        # injected client gets its own method back when the store closes.
        self._unpatch: Callable[[], None] | None = None
        execute = getattr(client, "execute_command", None)
        if callable(execute) and not getattr(execute, "_rereads", False):
            own = "execute_command" in vars(client)
            client.execute_command = self._with_reread(execute)

            def unpatch() -> None:
                if own:
                    client.execute_command = execute
                else:
                    del client.execute_command

            self._unpatch = unpatch
        super().__init__(client, **kwargs)

    def _with_reread(self, execute: Any) -> Any:
        """``execute`` (the client's execute_command, which its own commands call too),
        asking for a fresh slot map when a slot is missing from the map.

        A map read while the cluster was down (CLUSTERDOWN, a slot without an owner) lacks
        the slot, and redis-py then fails every call for it without reading the map again
        (8.2 raises SlotNotCoveredError and retries on the same map; 6.1 lets a KeyError
        out of its lookup): the slot stayed unserved after the cluster recovered.
        ``aclose()`` is how redis-py itself asks for a fresh map (the next command reads
        it). The client is patched on the instance, an injected one too.
        """

        async def execute_command(*args: Any, **kwargs: Any) -> Any:
            try:
                return await execute(*args, **kwargs)
            except (KeyError, SlotNotCoveredError):
                self._reread_slots()
                raise

        execute_command._rereads = True  # type: ignore[attr-defined]
        return execute_command

    def _reread_slots(self) -> None:
        now = time.monotonic()
        if now - self._reread_at < _REREAD_PAUSE:
            return  # one fresh map at a time, at most every _REREAD_PAUSE seconds
        if self._rereading is None or self._rereading.done():
            self._reread_at = now
            self._rereading = asyncio.ensure_future(self._client.aclose())
            self._rereading.add_done_callback(_retrieved)

    async def aclose(self) -> None:
        rereading, self._rereading = self._rereading, None
        if rereading is not None:
            with contextlib.suppress(Exception):
                await rereading
        unpatch, self._unpatch = self._unpatch, None
        if unpatch is not None:
            unpatch()
        await super().aclose()

    async def _scan(self, pattern: str, progress: Progress) -> AsyncIterator[list[bytes]]:
        # Every primary in turn: a key lives on exactly one of them. Each step is one
        # bounded round trip, as on a standalone server.
        client: Any = self._client
        await self._step(client.initialize(), progress)  # a map to read first, if asked
        for node in client.get_primaries():
            cursor = 0
            while True:
                reply = await self._step(
                    client.scan(cursor, match=pattern, count=SCAN_COUNT, target_nodes=node),
                    progress,
                )
                cursor, keys = self._scan_reply(reply)
                if keys:
                    yield keys
                if not cursor:
                    break

    @_mapped
    async def delete(self, keys: Sequence[str]) -> int:
        if not keys:
            return 0
        # The cluster client's unlink() splits the keys per slot (a raw UNLINK of keys in
        # several slots is refused) and adds up the counts.
        return await self._integer("UNLINK", self._client.unlink(*keys))

    @_mapped
    async def scan_page(self, pattern: str, cursor: int, count: int) -> tuple[int, list[str]]:
        # One SCAN step on one primary. The cursor carries both: which primary (in the
        # order of their names) and where SCAN is on it; 0 once the last one is done. (If
        # the primaries change during a listing, a failover, keys may be listed twice or
        # missed on the moved slots.)
        client: Any = self._client
        if not client.get_primaries():
            await client.initialize()
        nodes = sorted(client.get_primaries(), key=lambda node: str(node.name))
        index, node_cursor = cursor % len(nodes), cursor // len(nodes)
        reply = await client.scan(
            node_cursor, match=pattern, count=count, target_nodes=nodes[index]
        )
        node_cursor, keys = self._scan_reply(reply)
        if node_cursor == 0:
            index += 1
            following = 0 if index >= len(nodes) else index
        else:
            following = node_cursor * len(nodes) + index
        return following, [key.decode("utf-8", "replace") for key in keys]

    @_mapped
    async def publish(self, channel: str, message: bytes) -> int:
        # To the node that owns the channel's slot, where every subscriber listens: the
        # message still reaches every node, but only that node's count covers them all.
        # (execute_command: older redis-py has no publish() on the asyncio cluster client.)
        client: Any = self._client
        node = await _channel_node(client, channel)
        return await self._integer(
            "PUBLISH", client.execute_command("PUBLISH", channel, message, target_nodes=node)
        )

    def subscriber(self, channel: str) -> Subscriber:
        return _ClusterSubscriber(self._client, channel, self.where)

    def tracker(self, prefix: str) -> Tracker:
        client: Any = self._client

        async def connections() -> list[Any]:  # one per primary: tracking is per node
            if not client.get_primaries():
                await client.initialize()
            return [
                node.connection_class(**node.connection_kwargs) for node in client.get_primaries()
            ]

        return RedisTracker(connections, prefix, self.where)


class _Seeds(dict):  # type: ignore[type-arg]
    """A cluster client's startup nodes (where it reads the slot map), never left empty.

    redis-py < 8 drops a node from them on each connection error or timeout it meets there;
    once every node had one (redis-py closes every connection itself to re-read the map
    after a few MOVED, failing the calls in flight on each node), the client can never read
    the map again ("Redis Cluster cannot be connected. Please provide at least one
    reachable node: None") and the cache would stay degraded for good. Emptied, they are
    the nodes the client was given again.
    """

    def __init__(self, nodes: dict[str, Any]) -> None:
        super().__init__(nodes)
        self._given = dict(nodes)

    def pop(self, name: str, *default: Any) -> Any:
        node = super().pop(name, *default)
        if not self:
            self.update(self._given)
        return node


async def _channel_node(client: Any, channel: str) -> Any:
    """The primary owning the slot ``channel`` hashes to (the slot map loaded first)."""
    if not client.get_primaries():
        await client.initialize()
    return client.get_node_from_key(channel)


class _ClusterSubscriber(Subscriber):
    """A subscription on the primary owning the channel's slot, over a connection of its
    own; the node is chosen when it starts, so a restart after a failover picks the new
    primary."""

    def __init__(self, client: Any, channel: str, where: str) -> None:
        self._cluster = client
        self._channel = channel
        self.where = where
        self._node_client: redis_asyncio.Redis | None = None
        self._inner: _RedisSubscriber | None = None

    @_mapped
    async def start(self) -> None:
        node = await _channel_node(self._cluster, self._channel)
        pool = ConnectionPool(
            connection_class=node.connection_class, max_connections=2, **node.connection_kwargs
        )
        self._node_client = redis_asyncio.Redis(connection_pool=pool)
        self._inner = _RedisSubscriber(self._node_client, self._channel, self.where)
        await self._inner.start()

    async def get(self, timeout: float) -> bytes | None:
        if self._inner is None:
            raise BackendError(f"subscriber at {self.where} not started")
        return await self._inner.get(timeout)

    async def close(self) -> None:
        inner, self._inner = self._inner, None
        if inner is not None:
            await inner.close()
        client, self._node_client = self._node_client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await client.connection_pool.disconnect()


# -- Sentinel --------------------------------------------------------------------------------------


def build_sentinel(config: CacheConfig) -> Sentinel:
    """A ``redis.asyncio.sentinel.Sentinel`` on ``config.sentinel_nodes``: the sentinels get
    ``sentinel_username`` / ``sentinel_password``, the same timeouts and TLS."""
    sentinel_kwargs: dict[str, Any] = {
        "socket_timeout": config.socket_timeout,
        "socket_connect_timeout": config.connect_timeout,
        "protocol": config.protocol,
        "username": config.sentinel_username,
        "password": (
            config.sentinel_password.get_secret_value() if config.sentinel_password else None
        ),
    }
    if config.ssl:
        sentinel_kwargs.update(ssl=True, **tls_settings(config))
    return Sentinel(
        config.addresses(config.sentinel_nodes),
        sentinel_kwargs=sentinel_kwargs,
        min_other_sentinels=0,
    )


def _sentinel_data_settings(config: CacheConfig) -> dict[str, Any]:
    kwargs = connection_settings(config)
    if config.ssl:
        kwargs.update(ssl=True, **tls_settings(config))
    return kwargs


class SentinelStore(RedisStore):
    """The store on the primary a sentinel set names (``Sentinel.master_for``).

    Once connected, it listens to the sentinels' ``+switch-master`` announcements and drops
    its pooled connections when its service moves: the next call asks the sentinels for the
    new primary. Without this, connections keep writing to the demoted primary until the
    sentinels reconfigure it as a replica (~10 s later), and those writes are lost.
    """

    topology = "sentinel"
    sentinels: list[Any]

    def __init__(self, client: Any, **kwargs: Any) -> None:
        super().__init__(client, **kwargs)
        self.sentinels = []  # the sentinels' own clients, closed with the store when owned
        pool = getattr(client, "connection_pool", None)
        manager = getattr(pool, "sentinel_manager", None)
        self._service = getattr(pool, "service_name", None)
        self._watched: list[Any] = list(getattr(manager, "sentinels", []) or [])
        self._watcher: asyncio.Task[None] | None = None
        self._closing = False
        self._trackers: weakref.WeakSet[RedisTracker] = weakref.WeakSet()
        self._following: tuple[str, int] | None = None  # the primary last switched to
        if pool is not None:
            _follow_the_sentinels(pool)
        #: How many switches of the primary this store has followed.
        self.switches = 0

    async def connect(self) -> None:
        # Watching starts whether or not the primary answers now: a store whose first
        # contact failed (the sentinels do not know the service yet, the primary is down)
        # recovers without connect() being called again, and must follow switches then too.
        if self._watcher is None and self._watched and self._service is not None:
            self._watcher = asyncio.ensure_future(self._watch_switches())
        await super().connect()

    async def _watch_switches(self) -> None:
        """Follow ``+switch-master`` on the sentinels, one at a time, for ever (cancelled by
        :meth:`aclose`); a sentinel that fails is replaced by the next after a pause."""
        turn = 0
        while not self._closing:
            sentinel = self._watched[turn % len(self._watched)]
            turn += 1
            pubsub = sentinel.pubsub()
            try:
                await pubsub.subscribe(_SWITCH_MASTER)
                await self._confirmed(pubsub)
                # A switch announced before this subscription took effect (or while the
                # last sentinel was unreachable) was missed: compare the primary the
                # sentinel names now with the one the pool connects to. Done again every
                # _WATCH_CHECK seconds, so a lost announcement (or a sentinel connection
                # that died silently) costs seconds, not the ~10 s until the demoted
                # primary refuses writes.
                await self._compare(sentinel)
                checked = time.monotonic()
                while not self._closing:
                    message = await pubsub.get_message(
                        ignore_subscribe_messages=True, timeout=_WATCH_POLL
                    )
                    if isinstance(message, dict) and message.get("type") == "message":
                        await self._switched(message.get("data"))
                    if time.monotonic() - checked >= _WATCH_CHECK:
                        await self._compare(sentinel)
                        checked = time.monotonic()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a sentinel down: try the next one shortly
                logger.debug("sentinel watch at %s failed: %s", self.where, exc)
                await asyncio.sleep(_WATCH_PAUSE)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call,unused-ignore]

    async def _confirmed(self, pubsub: Any) -> None:
        """Until the sentinel confirms the subscription: from then on, no announcement can
        be missed (SUBSCRIBE travels on a connection of its own, which the sentinel may
        read after a command sent later on another one)."""
        deadline = time.monotonic() + _WATCH_CONFIRM
        while time.monotonic() < deadline:
            message = await pubsub.get_message(timeout=_WATCH_POLL)
            if isinstance(message, dict) and message.get("type") == "subscribe":
                return
            if isinstance(message, dict) and message.get("type") == "message":
                await self._switched(message.get("data"))
        raise BackendError(f"the sentinel did not confirm SUBSCRIBE {_SWITCH_MASTER}")

    async def _compare(self, sentinel: Any) -> None:
        named = await sentinel.sentinel_get_master_addr_by_name(self._service)
        known = getattr(self._client.connection_pool, "master_address", None)
        if not named or not known:
            return
        address = _address(named)
        # (Once followed, the pool still names the old primary until a call reconnects.)
        if address not in (_address(known), self._following):
            self._following = address
            await self._moved(f"{self._service} now at {address[0]}:{address[1]}")

    async def _switched(self, data: object) -> None:
        text = data.decode(errors="replace") if isinstance(data, bytes) else str(data)
        fields = text.split(" ")
        if fields[0] != self._service:
            return
        # "<service> <old ip> <old port> <new ip> <new port>"
        if len(fields) == 5 and fields[4].isdigit():
            self._following = (fields[3], int(fields[4]))
        await self._moved(text)

    async def _moved(self, what: str) -> None:
        self.switches += 1
        logger.warning("Sentinel moved the primary of %s: %s", self._service, what)
        for tracker in list(self._trackers):  # they listen to the old primary
            tracker.lost("the sentinels moved the primary")
        with contextlib.suppress(Exception):
            await self._client.connection_pool.disconnect()

    def tracker(self, prefix: str) -> Tracker:
        tracker = super().tracker(prefix)
        if isinstance(tracker, RedisTracker):
            self._trackers.add(tracker)
        return tracker

    async def aclose(self) -> None:
        self._closing = True
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            # Bounded: some redis-py versions swallow a cancellation that arrives inside
            # their own read timeout; the flag then ends the loop at its next poll.
            watcher.cancel()
            await asyncio.wait({watcher}, timeout=2 * _WATCH_POLL)
        await super().aclose()
        if self._owned:
            for sentinel in self.sentinels:
                with contextlib.suppress(Exception):
                    await sentinel.aclose()


class _SentinelConnection(SentinelManagedConnection):
    """A connection to the primary that asks the sentinels where it is on every
    (re)connection.

    redis-py's own :class:`SentinelManagedConnection` does so only in ``connect()``; a command
    re-sent after its connection dropped (a retry) reconnects through ``connect_check_health``
    to the address the connection had. When the store drops its connections on
    ``+switch-master`` while a call is in flight, that address is the demoted primary, which
    keeps taking writes until the sentinels reconfigure it (~10 s, and those writes are
    lost). Seen in 5 of 95 failovers (redis-py 6.1).
    """

    _resolving = False

    async def connect_to(self, address: Any) -> None:
        self._resolving = True
        try:
            await super().connect_to(address)  # type: ignore[no-untyped-call,unused-ignore]
        finally:
            self._resolving = False

    async def connect_check_health(self, *args: Any, **kwargs: Any) -> None:
        if self.is_connected or self._resolving:
            await super().connect_check_health(*args, **kwargs)
        else:
            # Asks the sentinels for the primary, then connect_to() it.
            await self.connect()  # type: ignore[no-untyped-call,unused-ignore]


class _SentinelSSLConnection(_SentinelConnection, SSLConnection):
    """:class:`_SentinelConnection` over TLS."""


def _follow_the_sentinels(pool: Any) -> None:
    """Have ``pool`` make a :class:`_SentinelConnection` instead of redis-py's own for each
    new connection (connections already made keep their class)."""
    replacements: dict[Any, Any] = {
        SentinelManagedConnection: _SentinelConnection,
        SentinelManagedSSLConnection: _SentinelSSLConnection,
    }
    replacement = replacements.get(getattr(pool, "connection_class", None))
    if replacement is not None:
        pool.connection_class = replacement


def _retrieved(task: asyncio.Task[Any]) -> None:
    """Mark a background task's outcome seen (a failure there is no one's to raise)."""
    if not task.cancelled() and task.exception() is not None:
        logger.debug("slot map re-read failed: %s", task.exception())


def _address(pair: Any) -> tuple[str, int]:
    host, port = pair
    return (host.decode() if isinstance(host, bytes) else str(host), int(port))


_SWITCH_MASTER = "+switch-master"
_WATCH_POLL = 0.5
"""Seconds each wait for a sentinel announcement lasts (the closing flag is checked
between waits)."""
_WATCH_PAUSE = 0.5
"""Seconds between attempts to listen to a sentinel."""
_REREAD_PAUSE = 0.1
"""Seconds between two fresh slot maps a cluster store asks for (a slot missing from its
map fails every call for it until one is read)."""
_WATCH_CHECK = 2.0
"""Seconds between two comparisons of the primary the sentinel names with the one the pool
connects to (one round trip to the sentinel)."""
_WATCH_CONFIRM = 5.0
"""Seconds a sentinel has to confirm the subscription before the next one is tried."""
