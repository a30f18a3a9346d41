"""The Redis store, on ``redis.asyncio``. With :mod:`.redis_topologies` (cluster, sentinel),
the only module of the package that imports redis.

Client construction follows what was measured on redis-py 8.1 (see docs/configuration.md):
a pool of bounded size behind the policy's own limiter (a burst waits for a slot instead of
failing with MaxConnectionsError), redis-py's own asyncio ``Retry`` with jittered exponential
backoff (the sync ``Retry`` silently disables retries on the async client), sub-second
socket timeouts, and RESP2 pinned so every reply has one shape. Every operation used here
behaves the same on a cluster: MGET (``mget_nonatomic`` where the client has it), a
non-transactional pipeline of SET EX, multi-key UNLINK, and SCAN + UNLINK in batches, never
KEYS, DBSIZE or FLUSHDB.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any, Concatenate, TypeVar, cast

from typing_extensions import ParamSpec

from gathering_cache.backends.base import (
    COUNTER_DIGITS,
    Capabilities,
    DataFault,
    Progress,
    Store,
    Subscriber,
    Tracker,
    fresh_counter,
    parse_counter,
)
from gathering_cache.errors import BackendError

if sys.version_info >= (3, 11):
    from asyncio import timeout as _timeout

try:
    import redis.asyncio as redis_asyncio
    from redis.asyncio.connection import ConnectionPool, SSLConnection
    from redis.asyncio.retry import Retry
    from redis.backoff import ExponentialWithJitterBackoff
    from redis.exceptions import (
        AskError,
        ClusterDownError,
        DataError,
        NoPermissionError,
        OutOfMemoryError,
        ReadOnlyError,
        RedisClusterException,
        RedisError,
        ResponseError,
        TryAgainError,
    )

    from gathering_cache.backends.autopipeline import (
        CLUSTER_BATCHES,
        AutoPipeline,
        ClusterAutoPipeline,
    )

    # What a redis call raises when Redis (or the path to it) fails: RedisClusterException
    # (cluster unreachable, slots not covered) is not a RedisError; sockets raise OSError.
    _REDIS_FAULTS = (RedisError, RedisClusterException, OSError, asyncio.TimeoutError)
    REDIS_AVAILABLE = True
except ImportError:  # pragma: no cover - exercised in a subprocess test
    REDIS_AVAILABLE = False

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from gathering_cache.config import CacheConfig

__all__ = ["REDIS_AVAILABLE", "RedisStore", "build_client"]

logger = logging.getLogger(__name__)

SCAN_COUNT = 1000
"""SCAN COUNT hint: ~26x faster than the default 10 on a large keyspace (docs/benchmarks)."""
DELETE_BATCH = 500
"""Keys per UNLINK while deleting by pattern."""
_POP_ALL = 2**62
"""ZPOPMIN count meaning "every member" (Redis sizes the reply by the set, not the count)."""


_SERVER_STATE = frozenset(
    {
        "ASK",
        "BUSY",
        "CLUSTERDOWN",
        "LOADING",
        "MASTERDOWN",
        "MISCONF",
        "MOVED",
        "NOAUTH",
        "NOMASTERLINK",
        "NOREPLICAS",
        "OOM",
        "READONLY",
        "TRYAGAIN",
        "WRONGPASS",
    }
)
"""Error codes of replies that describe the server's state (loading, read-only replica,
out of memory, cluster down, ...): an outage, unlike a reply to one call's arguments."""

_SERVER_STATE_MESSAGES = ("DB index is out of range",)
"""Plain ``ERR`` replies that concern every call (the connection's handshake)."""

_PIPELINE_ERROR = " of pipeline caused error: "

_MALFORMED = (TypeError, ValueError, IndexError, KeyError, AttributeError)
"""What redis-py's reply parsing raises on a reply of the wrong shape."""


_INFO_FIELDS = (
    "redis_version",
    "uptime_in_seconds",
    "used_memory",
    "maxmemory",
    "maxmemory_policy",
    "aof_enabled",
    "rdb_changes_since_last_save",
    "expired_keys",
    "evicted_keys",
    "keyspace_hits",
    "keyspace_misses",
)
"""What :meth:`RedisStore.server_info` keeps of INFO (never anything about clients or auth)."""


def _reply_code(exc: BaseException, message: str) -> str | None:
    """The error code of a Redis error reply (``WRONGTYPE``, ``READONLY``, ...), if any."""
    code = getattr(exc, "status_code", None)  # redis-py >= 8 keeps it
    if isinstance(code, str):
        return code
    word = message.split(" ", 1)[0]  # older redis-py: the code leads the message
    return word if word.isupper() and word.isalpha() else None


def _scripts_refused(exc: ResponseError) -> bool:
    """Whether an error reply to EVAL says scripts are not allowed here (an ACL without
    +@scripting, a proxy or managed Redis without EVAL), not that this call failed."""
    if isinstance(exc, NoPermissionError):
        return True
    message = str(exc).lower()
    return "unknown command" in message and "eval" in message


def _short(value: object) -> str:
    """A reply (or the error parsing it) for a message: its type and size, not its data,
    which may be someone's cached value."""
    if isinstance(value, BaseException):
        return type(value).__name__  # its message may quote the reply, i.e. cached data
    if isinstance(value, (bytes, str, list, tuple, set, dict)):
        return f"{type(value).__name__} of length {len(value)}"
    return "None" if value is None else type(value).__name__


# One counter, atomically (one key: one slot, cluster-safe). ARGV: a fresh random value,
# the amount, the minimum expiry in ms. Anything but 1..COUNTER_DIGITS ASCII digits — another
# type, "garbage", "1.5", "-3" — is repaired with the fresh value rather than failing INCRBY
# on every call: a counter that cannot be incremented would make invalidation impossible.
# The fresh value comes from the client: scripts' math.random is deterministic.
_COUNTER = """
local value = false
if redis.call('type', KEYS[1])['ok'] == 'string' then
  local raw = redis.call('get', KEYS[1])
  if string.len(raw) <= DIGITS and (raw == '0' or string.find(raw, '^[1-9][0-9]*$')) then
    if ARGV[2] == '0' then
      value = tonumber(raw)
    else
      value = redis.call('incrby', KEYS[1], ARGV[2])
    end
  end
end
if not value then
  redis.call('set', KEYS[1], ARGV[1])
  value = tonumber(ARGV[1])
end
if redis.call('pttl', KEYS[1]) < tonumber(ARGV[3]) then
  redis.call('pexpire', KEYS[1], ARGV[3])
end
return value
""".replace("DIGITS", str(COUNTER_DIGITS))

_RELEASE_LOCK = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""


def build_client(config: CacheConfig) -> Redis:
    """Build a ``redis.asyncio.Redis`` on a bounded pool from ``config`` (the policy's
    limiter keeps calls within the pool, so it never runs out).

    Built from the fields alone, never with ``from_url``: the config has already read its
    ``url`` (host, port, db, credentials, TLS, query parameters) into the fields, so what
    ``config`` shows (``config.socket_timeout`` also bounds SCAN steps) is what the client
    does, and redis-py's rule that URL options beat keyword arguments cannot undo a field.
    """
    from redis.asyncio.connection import UnixDomainSocketConnection

    kwargs = connection_settings(config)
    if config.socket_path is not None:
        kwargs.update(connection_class=UnixDomainSocketConnection, path=config.socket_path)
    else:
        kwargs.update(host=config.host, port=config.port)
        if config.ssl:
            kwargs.update(connection_class=SSLConnection, **tls_settings(config))
    return redis_asyncio.Redis.from_pool(ConnectionPool(**kwargs))


def connection_settings(config: CacheConfig) -> dict[str, Any]:
    """The keyword arguments every topology's data connections share (pool size, timeouts,
    retry, protocol, db, credentials, client name); TLS is added by each builder."""
    return {
        # The degradation policy admits at most this many calls at once, so the pool never
        # runs out (no MaxConnectionsError) and needs no BlockingConnectionPool, whose
        # condition variable cost ~20 us per call here. One more: the connection the
        # auto-pipeline keeps between calls (it holds at most one beside those of its calls).
        "max_connections": config.max_connections + 1,
        # Measured on redis-py 8.1: socket_timeout=None made a sequential GET ~20 us slower
        # (124 vs 104 us p50) for ~5 % more throughput at 64 coroutines; a finite timeout is
        # the better trade, and it bounds each attempt inside the policy's deadline.
        "socket_timeout": config.socket_timeout,
        "socket_connect_timeout": config.connect_timeout,
        "retry": Retry(ExponentialWithJitterBackoff(base=0.01, cap=0.1), config.retry_attempts),
        "health_check_interval": config.health_check_interval,
        # RESP2 (the config refuses 3): one reply shape, and pub/sub messages arrive as
        # replies rather than as RESP3 push frames, which redis-py drops.
        "protocol": config.protocol,
        "db": config.db,
        "username": config.username,
        "password": config.password.get_secret_value() if config.password else None,
        "client_name": config.client_name,
    }


def tls_settings(config: CacheConfig) -> dict[str, Any]:
    """redis-py's TLS keyword arguments from ``config`` (used when ``config.ssl``)."""
    return {
        "ssl_ca_certs": config.ssl_ca_certs,
        "ssl_certfile": config.ssl_certfile,
        "ssl_keyfile": config.ssl_keyfile,
        "ssl_cert_reqs": config.ssl_cert_reqs,
        "ssl_check_hostname": config.ssl_check_hostname,
    }


async def _bounded_310(awaitable: Awaitable[Any], timeout: float) -> Any:  # pragma: no cover
    """``awaitable`` bounded by ``timeout`` on Python 3.10.

    There, ``async_timeout`` loses its cancellation when redis-py's own read timeout (an
    inner ``async_timeout``) expires in the same loop iteration: the inner one turns it into
    a redis ``TimeoutError``, which redis-py retries, so a step against a hung server took
    ``(retry_attempts + 1) x socket_timeout`` instead of one. Cancelling again every 10 ms
    until the step ends bounds it as on 3.11+ (where ``asyncio.timeout`` counts
    cancellations). As everywhere on 3.10, a caller's cancellation that arrives after the
    bound fired is reported as the timeout.
    """
    task = asyncio.current_task()
    if task is None:
        raise RuntimeError("a store step must run inside an asyncio task")
    loop = task.get_loop()
    fired = False
    handle: asyncio.TimerHandle | None = None

    def fire() -> None:
        nonlocal fired, handle
        fired = True
        task.cancel()
        handle = loop.call_later(0.01, fire)

    handle = loop.call_later(timeout, fire)
    try:
        return await awaitable
    except asyncio.CancelledError:
        if fired:
            raise asyncio.TimeoutError(f"step exceeded {timeout:g} s") from None
        raise
    finally:
        if handle is not None:
            handle.cancel()


def _is_data_reply(exc: BaseException) -> bool:
    """Whether ``exc`` is an error reply to this call's own arguments or keys (WRONGTYPE,
    "invalid expire time", "value is not an integer", NOPERM from an ACL, ...): that
    call's degraded answer, the breaker untouched. Replies that describe the server's
    state (LOADING, READONLY, MASTERDOWN, CLUSTERDOWN, TRYAGAIN, BUSY, OOM, NOAUTH,
    MISCONF, ...) remain faults, like every connection error and timeout."""
    if isinstance(exc, DataError):
        return True  # redis-py refused the arguments before sending them
    if not isinstance(exc, ResponseError) or isinstance(
        exc, (ReadOnlyError, OutOfMemoryError, ClusterDownError, TryAgainError, AskError)
    ):
        return False
    message = str(exc)
    _, annotated, reply = message.partition(_PIPELINE_ERROR)
    if annotated:  # "Command # 2 (SET ...) of pipeline caused error: <reply>"
        message = reply
    if _reply_code(exc, message) in _SERVER_STATE:
        return False
    return not any(text in message for text in _SERVER_STATE_MESSAGES)


P = ParamSpec("P")
R = TypeVar("R")


def _mapped(
    method: Callable[Concatenate[Any, P], Awaitable[R]],
) -> Callable[Concatenate[Any, P], Coroutine[Any, Any, R]]:
    """Map the redis faults a store method raises to the library's own, once, here:
    :class:`DataFault` for an error reply about the call's own data or arguments,
    :class:`~gathering_cache.BackendError` for everything else (the cause chained). The core
    then knows only the library's exceptions."""

    @functools.wraps(method)
    async def call(self: Any, /, *args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await method(self, *args, **kwargs)
        except BackendError:
            raise
        except _REDIS_FAULTS as exc:
            raise _fault(exc, getattr(self, "where", "Redis")) from exc

    return call


def _fault(exc: BaseException, where: str) -> BackendError:
    kind = DataFault if _is_data_reply(exc) else BackendError
    message = str(exc) or type(exc).__name__
    if where not in message:
        message = f"{message} (at {where})"
    return kind(f"{type(exc).__name__}: {message}")


class RedisStore(Store):
    """A store on a ``redis.asyncio`` client (built from config, or injected): a standalone
    server, or the primary a sentinel set names (see :mod:`.redis_topologies`)."""

    #: The deployment, shown in stats (``Capabilities.topology``).
    topology = "standalone"

    def __init__(
        self,
        client: Redis,
        *,
        owned: bool,
        describe: dict[str, Any],
        concurrency: int | None = None,
        auto_pipeline: bool = False,
        operation_timeout: float = 0.5,
    ) -> None:
        self.capabilities = Capabilities(
            backend="redis",
            networked=True,
            loop_bound=True,
            concurrency=concurrency,
            indexes=True,
            locks=True,
            tracking=True,
            topology=self.topology,
        )
        self._client = client
        self._owned = owned
        self._describe = describe
        self.where = _where(describe)
        # Whether EVAL may be used: an ACL without +@scripting (or a proxy without scripts)
        # refuses it, and the counters fall back to plain commands (see counters()).
        self._scripts = True
        # Every redis fault leaves a method as a BackendError (see _mapped).
        self.fault_types = (BackendError,)
        # The single-key commands of concurrent callers share round trips (on a cluster,
        # one batch per node).
        cluster = hasattr(client, "get_nodes")
        pipelining = ClusterAutoPipeline if cluster else AutoPipeline
        batching = auto_pipeline and (CLUSTER_BATCHES or not cluster)
        self.pipeline = pipelining(client, operation_timeout) if batching else None
        self._send: Callable[..., Awaitable[Any]] = (
            client.execute_command if self.pipeline is None else self.pipeline.execute
        )
        # RedisCluster splits multi-key reads per slot only through mget_nonatomic.
        self._mget = cast(
            "Callable[..., Awaitable[list[bytes | None]]]",
            getattr(client, "mget_nonatomic", None) if cluster else self._mget_one,
        )

    def _mget_one(self, keys: list[str]) -> Awaitable[Any]:
        return self._send("MGET", *keys)

    @property
    def client(self) -> Redis:
        return self._client

    def _malformed(self, command: str, reply: object) -> BackendError:
        """A reply of the wrong shape: a fault of the server (or of what sits in front of
        it), never the caller's, so a degraded answer rather than an exception."""
        return BackendError(f"malformed reply to {command} from {self.where}: {_short(reply)}")

    @_mapped
    async def connect(self) -> None:
        try:
            pong = await self._client.ping()
        except ResponseError as exc:
            if _is_data_reply(exc):
                return  # an error reply proves the server answers (an ACL without +ping)
            raise
        except _MALFORMED as exc:
            raise self._malformed("PING", exc) from exc
        if pong is not True:
            raise self._malformed("PING", pong)

    async def aclose(self) -> None:
        if self.pipeline is not None:
            await self.pipeline.aclose()  # its kept connection back to the (maybe injected) pool
        if not self._owned:
            return
        try:
            await self._client.aclose()
        except RuntimeError as exc:
            if "closed" not in str(exc):
                raise
            # Closed from another loop after the one that opened the connections ended
            # (asyncio.run per call): they died with it; nothing is left to close.
            logger.debug("connections of a closed event loop dropped: %s", exc)

    # get / get_many / set: the hot path, mapped inline (as _mapped would: one coroutine
    # frame less on every cache call).

    async def get(self, key: str) -> bytes | None:
        try:
            value = await self._send("GET", key)
        except _MALFORMED as exc:
            raise self._malformed("GET", exc) from exc
        except BackendError:
            raise
        except _REDIS_FAULTS as exc:
            raise _fault(exc, self.where) from exc
        if value is None or type(value) is bytes:
            return value
        raise self._malformed("GET", value)

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        if not keys:
            return []
        try:
            values: object = await self._mget(list(keys))
        except _MALFORMED as exc:
            raise self._malformed("MGET", exc) from exc
        except BackendError:
            raise
        except _REDIS_FAULTS as exc:
            raise _fault(exc, self.where) from exc
        if (
            type(values) is not list
            or len(values) != len(keys)
            or not all(v is None or type(v) is bytes for v in values)
        ):
            raise self._malformed("MGET", values)
        return values

    async def set(self, key: str, value: bytes, ttl: int | None) -> bool:
        try:
            if ttl is None:
                reply = await self._send("SET", key, value)
            else:
                reply = await self._send("SET", key, value, "EX", ttl)
        except _MALFORMED as exc:
            raise self._malformed("SET", exc) from exc
        except BackendError:
            raise
        except _REDIS_FAULTS as exc:
            raise _fault(exc, self.where) from exc
        # +OK: redis-py's callback makes it True, a pipelined reply is the raw b"OK"; anything
        # else stored nothing.
        if reply is not True and reply != b"OK":
            raise self._malformed("SET", reply)
        return True

    @_mapped
    async def set_many(self, items: Sequence[tuple[str, bytes]], ttl: int | None) -> bool:
        if not items:
            return True
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for key, value in items:
                    pipe.set(key, value, ex=ttl)
                replies: object = await pipe.execute()
        except _MALFORMED as exc:
            raise self._malformed("SET", exc) from exc
        if (
            type(replies) is not list
            or len(replies) != len(items)
            or not all(r is True for r in replies)
        ):
            raise self._malformed("SET", replies)
        return True

    async def _integer(self, command: str, awaitable: Awaitable[Any]) -> int:
        try:
            reply = await awaitable
        except _MALFORMED as exc:
            raise self._malformed(command, exc) from exc
        if type(reply) is not int:
            raise self._malformed(command, reply)
        return reply

    async def _replies(self, command: str, awaitable: Awaitable[Any]) -> list[Any]:
        """A pipeline's replies, checked to be a list (a fault otherwise)."""
        try:
            replies = await awaitable
        except _MALFORMED as exc:
            raise self._malformed(command, exc) from exc
        if type(replies) is not list:
            raise self._malformed(command, replies)
        return replies

    @_mapped
    async def server_info(self) -> dict[str, Any]:
        try:
            info = await self._client.info()
        except ResponseError:  # INFO refused (an ACL, a proxy, fakeredis): nothing to say
            return {}
        except _MALFORMED as exc:
            raise self._malformed("INFO", exc) from exc
        if not isinstance(info, dict):
            raise self._malformed("INFO", info)
        fields = {name: info[name] for name in _INFO_FIELDS if name in info}
        try:
            save = await self._client.config_get("save")
        except ResponseError:  # CONFIG is often refused to applications; INFO still tells
            return fields
        if isinstance(save, dict) and isinstance(save.get("save"), str):
            fields["rdb_save"] = save["save"]
        return fields

    @_mapped
    async def memory_usage(self, keys: Sequence[str]) -> list[int | None]:
        if not keys:
            return []
        pipe = self._client.pipeline(transaction=False)
        for key in keys:
            pipe.memory_usage(key, samples=5)
        try:
            replies = await self._replies("MEMORY USAGE", pipe.execute(raise_on_error=False))
        except ResponseError:
            return [None] * len(keys)
        return [reply if type(reply) is int else None for reply in replies]

    @_mapped
    async def delete(self, keys: Sequence[str]) -> int:
        if not keys:
            return 0
        return await self._integer("UNLINK", self._send("UNLINK", *keys))

    @_mapped
    async def exists(self, key: str) -> bool:
        return bool(await self._integer("EXISTS", self._send("EXISTS", key)))

    @_mapped
    async def ttl(self, key: str) -> int | None:
        remaining = await self._integer("TTL", self._send("TTL", key))
        return None if remaining == -2 else remaining

    async def _step(self, awaitable: Awaitable[Any], progress: Progress) -> Any:
        """One round trip of a long operation, bounded on its own: a hung server is noticed
        after one step, while a large but healthy keyspace may take many steps."""
        try:
            if progress.step_timeout is None:
                return await awaitable
            if sys.version_info >= (3, 11):
                async with _timeout(progress.step_timeout):
                    return await awaitable
            return await _bounded_310(awaitable, progress.step_timeout)  # pragma: no cover
        except _MALFORMED as exc:
            raise self._malformed("SCAN", exc) from exc

    def _keys(self, keys: object) -> list[bytes]:
        if type(keys) is not list or not all(type(k) is bytes for k in keys):
            raise self._malformed("SCAN", keys)
        return keys

    async def _scan(self, pattern: str, progress: Progress) -> AsyncIterator[list[bytes]]:
        """The keys matching ``pattern``, in batches, one bounded SCAN step each."""
        cursor = 0
        while True:
            reply = await self._step(
                self._client.scan(cursor, match=pattern, count=SCAN_COUNT), progress
            )
            cursor, keys = self._scan_reply(reply)
            if keys:
                yield keys
            if not cursor:
                return

    def _scan_reply(self, reply: object) -> tuple[int, list[bytes]]:
        """(next cursor, keys) of a SCAN reply. A cluster client sent to one node answers
        its cursor as ``{node: cursor}``."""
        if type(reply) is not tuple or len(reply) != 2:
            raise self._malformed("SCAN", reply)
        cursor = reply[0]
        if isinstance(cursor, dict) and len(cursor) == 1:
            cursor = next(iter(cursor.values()))
        if type(cursor) is not int:
            raise self._malformed("SCAN", reply)
        return cursor, self._keys(reply[1])

    @_mapped
    async def scan_delete(self, pattern: str, progress: Progress) -> int:
        async for keys in self._scan(pattern, progress):
            for start in range(0, len(keys), DELETE_BATCH):
                chunk = keys[start : start + DELETE_BATCH]
                progress.done += int(await self._step(self._client.unlink(*chunk), progress))
        return progress.done

    @_mapped
    async def scan_page(self, pattern: str, cursor: int, count: int) -> tuple[int, list[str]]:
        try:
            reply = await self._client.scan(cursor, match=pattern, count=count)
        except _MALFORMED as exc:  # redis-py's SCAN callback unpacks the reply
            raise self._malformed("SCAN", exc) from exc
        if type(reply) is not tuple or len(reply) != 2 or type(reply[0]) is not int:
            raise self._malformed("SCAN", reply)
        return reply[0], [key.decode("utf-8", "replace") for key in self._keys(reply[1])]

    @_mapped
    async def count(self, pattern: str, progress: Progress) -> int:
        async for keys in self._scan(pattern, progress):
            progress.done += len(keys)
        return progress.done

    def is_data_error(self, exc: BaseException) -> bool:
        """A :class:`DataFault` (what the methods raise), or a redis error reply about one
        call's own data or arguments (see :func:`_is_data_reply`)."""
        return isinstance(exc, DataFault) or _is_data_reply(exc)

    @_mapped
    async def set_indexed(self, items: Sequence[tuple[str, bytes]], ttl: int, index: str) -> bool:
        async with self._client.pipeline(transaction=False) as pipe:
            for key, value in items:
                pipe.set(key, value, ex=ttl)
            # Scored by expiry (GT: a member's score only grows), and the members whose
            # entries have expired dropped, so the index never outgrows the live entries.
            now = time.time()
            pipe.zadd(index, {key: now + ttl for key, _ in items}, gt=True)
            pipe.zremrangebyscore(index, "-inf", now)
            # Never shorten: the set lists entries that may outlive this one. NX gives a new
            # set its first expiry (GT alone treats "no expiry" as infinite).
            pipe.expire(index, ttl, nx=True)
            pipe.expire(index, ttl, gt=True)
            replies = await self._replies("SET", pipe.execute())
        if len(replies) != len(items) + 4 or not all(r is True for r in replies[: len(items)]):
            raise self._malformed("SET", replies)
        return True

    @_mapped
    async def pop_index(self, index: str) -> list[str]:
        # ZPOPMIN of every member: read and delete in one command on one key, so atomic on
        # every topology without MULTI (redis-py's cluster pipelines refuse or mishandle
        # transactions, depending on the version) or a script. An emptied set is deleted.
        # Sent as is (auto-pipelined where the store batches): the reply is the flat RESP2
        # list (member, score, member, ...), or redis-py's (member, score) pairs, scores
        # converted to floats, when the client's own execute_command answers. Members only
        # are wanted; scores are never parsed.
        try:
            reply: object = await self._send("ZPOPMIN", index, _POP_ALL)
        except _MALFORMED as exc:
            raise self._malformed("ZPOPMIN", exc) from exc
        if not isinstance(reply, list):
            raise self._malformed("ZPOPMIN", reply)
        if reply and isinstance(reply[0], (list, tuple)):
            members = [
                pair[0] if isinstance(pair, (list, tuple)) and pair else pair for pair in reply
            ]
        else:
            members = reply[::2]
        # Anyone who can write the index chose its members: never raise on them.
        return [m.decode(errors="replace") if isinstance(m, bytes) else str(m) for m in members]

    @_mapped
    async def counters(self, keys: Sequence[str], amount: int, ttl: int) -> list[int]:
        if not keys:
            return []
        if self._scripts:
            try:
                return await self._counters_by_script(keys, amount, ttl)
            except ResponseError as exc:
                if not _scripts_refused(exc):
                    raise
                self._scripts = False
                logger.warning(
                    "Redis refuses scripts (%s) at %s; RAG generation counters use plain "
                    "commands instead",
                    exc,
                    self.where,
                )
        return [await self._counter_by_commands(key, amount, ttl) for key in keys]

    async def _counter_by_commands(self, key: str, amount: int, ttl: int) -> int:
        """The counter operation without a script, for servers that refuse EVAL: one MULTI
        on one key (one slot) creates the counter if absent, adds ``amount`` (or reads it)
        and extends its expiry; a value that is not a counter is then repaired with a fresh
        one, which is no less safe than the script (a repaired counter invalidates)."""
        ttl_ms = ttl * 1000
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.set(key, fresh_counter(), nx=True, px=ttl_ms)
            if amount:
                pipe.incrby(key, amount)
            else:
                pipe.get(key)
            pipe.pexpire(key, ttl_ms, nx=True)  # GT alone treats "no expiry" as infinite
            pipe.pexpire(key, ttl_ms, gt=True)
            replies = await self._replies("MULTI", pipe.execute(raise_on_error=False))
        if len(replies) != 4:
            raise self._malformed("MULTI", replies)
        reply = replies[1]
        if isinstance(reply, int) and not isinstance(reply, bool):
            value = parse_counter(str(reply).encode())
        else:
            value = parse_counter(reply)
        if value is not None:
            return value
        if isinstance(reply, BaseException) and not _is_data_reply(reply):
            raise reply
        value = fresh_counter()
        await self._client.set(key, value, px=ttl_ms)
        return value

    async def _counters_by_script(self, keys: Sequence[str], amount: int, ttl: int) -> list[int]:
        if len(keys) == 1:
            args = self._counter_args(amount, ttl)
            return [await self._integer("EVAL", self._client.eval(_COUNTER, 1, keys[0], *args))]
        # One script per key in a non-transactional pipeline: keys in different slots.
        async with self._client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.eval(_COUNTER, 1, key, *self._counter_args(amount, ttl))
            replies = await self._replies("EVAL", pipe.execute())
        if len(replies) != len(keys) or not all(type(r) is int for r in replies):
            raise self._malformed("EVAL", replies)
        return replies

    @staticmethod
    def _counter_args(amount: int, ttl: int) -> tuple[int, int, int]:
        return fresh_counter(), amount, ttl * 1000

    @_mapped
    async def publish(self, channel: str, message: bytes) -> int:
        return await self._integer("PUBLISH", self._client.publish(channel, message))

    def subscriber(self, channel: str) -> Subscriber:
        return _RedisSubscriber(self._client, channel, self.where)

    def tracker(self, prefix: str) -> Tracker:
        pool: Any = self._client.connection_pool

        async def connections() -> list[Any]:  # one, not from the pool: it never returns
            return [pool.connection_class(**pool.connection_kwargs)]

        return RedisTracker(connections, prefix, self.where)

    @_mapped
    async def acquire_locks(self, keys: Sequence[str], token: str, ttl_ms: int) -> list[bool]:
        if not keys:
            return []
        async with self._client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.set(key, token, nx=True, px=ttl_ms)
            return [bool(taken) for taken in await pipe.execute()]

    @_mapped
    async def release_locks(self, keys: Sequence[str], token: str) -> int:
        # Compare-and-delete must be atomic, or a lock that expired and was taken by another
        # process could be deleted. A one-key script is cluster-safe (one slot).
        if not keys:
            return 0
        async with self._client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.eval(_RELEASE_LOCK, 1, key, token)
            return sum(int(r) for r in await pipe.execute())

    def describe(self) -> dict[str, Any]:
        return dict(self._describe)


def _where(describe: dict[str, Any]) -> str:
    """The store's endpoint for messages: the redacted URL, else host:port (no secrets)."""
    url = describe.get("url")
    if isinstance(url, str):
        return url
    host, port = describe.get("host"), describe.get("port")
    if host is None:
        return "an injected client" if describe.get("injected_client") else "Redis"
    return f"{host}:{port}" if port is not None else str(host)


class _RedisSubscriber(Subscriber):
    """A pub/sub subscription on its own connection (RESP2, so messages are not dropped as
    RESP3 push frames)."""

    def __init__(self, client: Redis, channel: str, where: str) -> None:
        self._pubsub = client.pubsub(ignore_subscribe_messages=True)
        self._channel = channel
        self.where = where

    @_mapped
    async def start(self) -> None:
        try:
            await self._pubsub.subscribe(self._channel)
        except _MALFORMED as exc:
            raise BackendError(f"malformed reply to SUBSCRIBE: {_short(exc)}") from exc

    @_mapped
    async def get(self, timeout: float) -> bytes | None:
        # Replies that are not messages (the subscription's confirmation, which redis-py
        # hands back as None) do not end the wait: None only after ``timeout`` seconds.
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            try:
                message = await self._pubsub.get_message(timeout=left)
            except _MALFORMED as exc:
                raise BackendError(f"malformed pub/sub message: {_short(exc)}") from exc
            if message is None:
                continue
            if not isinstance(message, dict):
                raise BackendError(f"malformed pub/sub message: {_short(message)}")
            if message.get("type") == "message":
                data = message.get("data")
                return data if isinstance(data, bytes) else str(data).encode()

    async def close(self) -> None:
        # UNSUBSCRIBE first: a proxy (or fakeredis) may keep the subscription of a connection
        # that is merely closed. Either step may fail again on a broken connection.
        with contextlib.suppress(Exception):
            if self._pubsub.subscribed:
                await self._pubsub.unsubscribe(self._channel)
        with contextlib.suppress(Exception):
            await self._pubsub.aclose()  # type: ignore[no-untyped-call,unused-ignore]


_INVALIDATE = "__redis__:invalidate"


class RedisTracker(Tracker):
    """CLIENT TRACKING in broadcast mode on connections of its own (one per primary): each
    connection redirects its invalidations to itself, then subscribes to them (RESP2), so
    losing the connection loses both at once, and is noticed: :meth:`get` raises."""

    def __init__(
        self, connections: Callable[[], Awaitable[list[Any]]], prefix: str, where: str
    ) -> None:
        self._make = connections
        self._prefix = prefix
        self.where = where
        self._connections: list[Any] = []
        self._readers: list[asyncio.Task[None]] = []
        # What the readers received, in order: keys, None (a flush) or the error that ended
        # a reader; handed out by get(). (No asyncio.Queue + wait_for: on Python 3.11 a
        # cancellation arriving as wait_for times out could leave the caller hanging.)
        self._items: list[list[str] | BaseException | None] = []
        self._ready = asyncio.Event()
        self._on_end: list[Callable[[], None]] = []

    def on_end(self, callback: Callable[[], None]) -> bool:
        # A hook on the protocol of each connection (eof_received / connection_lost): the
        # loop calls it while handling the socket's end, before any task resumes.
        watched = []
        for connection in self._connections:
            reader = getattr(connection, "_reader", None)
            transport = getattr(getattr(connection, "_writer", None), "transport", None)
            if reader is None or transport is None:  # not connected (any more)
                callback()
                return True
            protocol = transport.get_protocol()
            if not (hasattr(protocol, "eof_received") and hasattr(protocol, "connection_lost")):
                return False  # an unknown transport: losses are known from get()
            watched.append((reader, transport, protocol))
        if not watched:
            return False
        self._on_end.append(callback)  # lost() tells it too
        for reader, transport, protocol in watched:
            _chain(protocol, "eof_received", callback)
            _chain(protocol, "connection_lost", callback)
            if reader.at_eof() or transport.is_closing():  # ended before we looked
                callback()
        return True

    @_mapped
    async def start(self) -> None:
        self._connections = await self._make()
        for connection in self._connections:
            await self._track(connection)
        for connection in self._connections:
            self._readers.append(asyncio.ensure_future(self._read(connection)))

    async def _track(self, connection: Any) -> None:
        await connection.connect()
        await connection.send_command("CLIENT", "ID")
        own = await connection.read_response()
        if type(own) is not int:
            raise BackendError(f"malformed reply to CLIENT ID from {self.where}: {_short(own)}")
        await connection.send_command(
            "CLIENT", "TRACKING", "ON", "REDIRECT", own, "BCAST", "PREFIX", self._prefix
        )
        reply = await connection.read_response()
        if reply not in (b"OK", "OK", True):
            raise BackendError(f"CLIENT TRACKING refused at {self.where}: {_short(reply)}")
        await connection.send_command("SUBSCRIBE", _INVALIDATE)
        confirmation = await connection.read_response()
        if not isinstance(confirmation, list) or confirmation[:1] not in ([b"subscribe"],):
            raise BackendError(f"malformed reply to SUBSCRIBE from {self.where}")

    async def _read(self, connection: Any) -> None:
        try:
            while True:
                message = await connection.read_response(timeout=_FOREVER)
                if message is None:
                    continue
                if not isinstance(message, list) or len(message) != 3:
                    raise BackendError(f"malformed invalidation from {self.where}")
                keys = message[2]
                if keys is None:
                    self._push(None)
                elif isinstance(keys, list):
                    self._push(
                        [
                            k.decode(errors="replace") if isinstance(k, bytes) else str(k)
                            for k in keys
                        ]
                    )
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # tracking lost: the consumer must flush
            self._push(exc)

    def _push(self, item: list[str] | BaseException | None) -> None:
        self._items.append(item)
        self._ready.set()

    def lost(self, why: str) -> None:
        """Declare tracking lost (the primary moved): the next :meth:`get` raises, and what
        :meth:`on_end` watches for is told at once."""
        self._push(BackendError(f"tracking lost at {self.where}: {why}"))
        for callback in self._on_end:
            callback()

    async def get(self, timeout: float) -> list[str] | None:
        if not self._items:
            self._ready.clear()
            waiter = asyncio.ensure_future(self._ready.wait())
            try:
                await asyncio.wait({waiter}, timeout=timeout)
            finally:
                waiter.cancel()
        items, self._items = self._items, []
        # A lost connection first (the consumer flushes everything anyway), then a flush,
        # else every key received, in one batch.
        for item in items:
            if isinstance(item, BackendError):
                raise item
            if isinstance(item, BaseException):
                raise _fault(item, self.where) from item
        if any(item is None for item in items):
            return None
        return [key for item in items if isinstance(item, list) for key in item]

    async def close(self) -> None:
        readers, self._readers = self._readers, []
        connections, self._connections = self._connections, []
        for connection in connections:  # ends the readers' reads too
            with contextlib.suppress(Exception):
                await connection.disconnect()
        for reader in readers:
            reader.cancel()
        if readers:  # bounded: a cancellation swallowed by a redis-py read must not hang us
            await asyncio.wait(readers, timeout=1.0)


_FOREVER = 3600.0
"""A read timeout the tracker's connections never reach in practice (a finite one: older
redis-py reads ``None`` as "the socket timeout")."""


def _chain(protocol: Any, name: str, callback: Callable[[], None]) -> None:
    """Call ``callback`` first whenever the loop calls ``protocol.<name>``."""
    original = getattr(protocol, name)

    def hooked(*args: Any) -> Any:
        try:
            callback()
        except Exception:  # never break the loop's handling of the socket
            logger.exception("near cache: the end-of-tracking callback failed")
        return original(*args)

    setattr(protocol, name, hooked)
