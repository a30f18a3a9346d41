"""The Redis store, on ``redis.asyncio``. The only module of the package that imports redis.

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
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlsplit

from gathering_cache.backends.base import COUNTER_DIGITS, Progress, Store, Subscriber, fresh_counter

if sys.version_info >= (3, 11):
    from asyncio import timeout as _timeout
else:  # pragma: no cover - Python 3.10
    from async_timeout import timeout as _timeout

try:
    import redis.asyncio as redis_asyncio
    from redis.asyncio.connection import ConnectionPool, SSLConnection
    from redis.asyncio.retry import Retry
    from redis.backoff import ExponentialWithJitterBackoff
    from redis.exceptions import (
        NoPermissionError,
        RedisClusterException,
        RedisError,
        ResponseError,
    )

    REDIS_AVAILABLE = True
except ImportError:  # pragma: no cover - exercised in a subprocess test
    REDIS_AVAILABLE = False

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from gathering_cache.config import CacheConfig

__all__ = ["REDIS_AVAILABLE", "RedisStore", "build_client"]

SCAN_COUNT = 1000
"""SCAN COUNT hint: ~26x faster than the default 10 on a large keyspace (docs/benchmarks)."""
DELETE_BATCH = 500
"""Keys per UNLINK while deleting by pattern."""


# One counter, atomically (one key: one slot, cluster-safe). ARGV: a fresh random value,
# the amount, the minimum expiry in ms. Anything but 1..COUNTER_DIGITS ASCII digits — another
# type, "garbage", "1.5", "-3" — is repaired with the fresh value rather than failing INCRBY
# on every call: a counter that cannot be incremented would make invalidation impossible.
# The fresh value comes from the client: scripts' math.random is deterministic.
_COUNTER = """
local value = false
if redis.call('type', KEYS[1])['ok'] == 'string' then
  local raw = redis.call('get', KEYS[1])
  if string.len(raw) <= DIGITS and string.find(raw, '^[0-9]+$') then
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
    limiter keeps calls within the pool, so it never runs out)."""
    kwargs: dict[str, Any] = {
        # The degradation policy admits at most this many calls at once, so the pool never
        # runs out (no MaxConnectionsError) and needs no BlockingConnectionPool, whose
        # condition variable cost ~20 us per call here.
        "max_connections": config.max_connections,
        # Measured on redis-py 8.1: socket_timeout=None made a sequential GET ~20 us slower
        # (124 vs 104 us p50) for ~5 % more throughput at 64 coroutines; a finite timeout is
        # the better trade, and it bounds each attempt inside the policy's deadline.
        "socket_timeout": config.socket_timeout,
        "socket_connect_timeout": config.connect_timeout,
        "retry": Retry(ExponentialWithJitterBackoff(base=0.01, cap=0.1), config.retry_attempts),
        "health_check_interval": config.health_check_interval,
        "protocol": 2,
        "username": config.username,
        "password": config.password.get_secret_value() if config.password else None,
    }
    ssl_kwargs = {
        "ssl_ca_certs": config.ssl_ca_certs,
        "ssl_certfile": config.ssl_certfile,
        "ssl_keyfile": config.ssl_keyfile,
        "ssl_cert_reqs": config.ssl_cert_reqs,
        "ssl_check_hostname": config.ssl_check_hostname,
    }
    if config.url:
        if urlsplit(config.url).scheme == "rediss":
            kwargs.update(ssl_kwargs)
        pool = ConnectionPool.from_url(config.url, **kwargs)
    else:
        kwargs.update(host=config.host, port=config.port, db=config.db)
        if config.ssl:
            kwargs.update(ssl_kwargs, connection_class=SSLConnection)
        pool = ConnectionPool(**kwargs)
    return redis_asyncio.Redis.from_pool(pool)


class RedisStore(Store):
    """A store on a ``redis.asyncio`` client (built from config, or injected)."""

    kind = "redis"

    def __init__(self, client: Redis, *, owned: bool, describe: dict[str, Any]) -> None:
        self._client = client
        self._owned = owned
        self._describe = describe
        # RedisCluster splits multi-key reads per slot only through mget_nonatomic.
        self._mget = cast(
            "Callable[..., Awaitable[list[bytes | None]]]",
            getattr(client, "mget_nonatomic", client.mget),
        )
        # RedisClusterException (cluster unreachable, slots not covered) is not a RedisError.
        self.fault_types = (RedisError, RedisClusterException, OSError, asyncio.TimeoutError)
        # The hottest call goes straight to the client: one coroutine layer less per GET.
        self.get = client.get  # type: ignore[method-assign,assignment]

    @property
    def client(self) -> Redis:
        return self._client

    async def connect(self) -> None:
        await self._client.ping()

    async def aclose(self) -> None:
        if self._owned:
            await self._client.aclose()

    async def get(self, key: str) -> bytes | None:
        return cast("bytes | None", await self._client.get(key))

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        if not keys:
            return []
        return await self._mget(list(keys))

    async def set(self, key: str, value: bytes, ttl: int | None) -> bool:
        await self._client.set(key, value, ex=ttl)
        return True

    async def set_many(self, items: Sequence[tuple[str, bytes]], ttl: int | None) -> bool:
        if not items:
            return True
        async with self._client.pipeline(transaction=False) as pipe:
            for key, value in items:
                pipe.set(key, value, ex=ttl)
            await pipe.execute()
        return True

    async def delete(self, keys: Sequence[str]) -> int:
        if not keys:
            return 0
        return int(await self._client.unlink(*keys))

    async def exists(self, key: str) -> bool:
        return bool(await self._client.exists(key))

    async def ttl(self, key: str) -> int | None:
        remaining = int(await self._client.ttl(key))
        return None if remaining == -2 else remaining

    async def _step(self, awaitable: Awaitable[Any], progress: Progress) -> Any:
        """One round trip of a long operation, bounded on its own: a hung server is noticed
        after one step, while a large but healthy keyspace may take many steps."""
        if progress.step_timeout is None:
            return await awaitable
        async with _timeout(progress.step_timeout):
            return await awaitable

    async def _scan(self, pattern: str, progress: Progress) -> AsyncIterator[list[bytes]]:
        if hasattr(self._client, "get_nodes"):  # RedisCluster: scan_iter walks every primary
            batch: list[bytes] = []
            async for key in self._client.scan_iter(match=pattern, count=SCAN_COUNT):
                batch.append(key)
                if len(batch) >= SCAN_COUNT:
                    yield batch
                    batch = []
            if batch:
                yield batch
            return
        cursor = 0
        while True:
            cursor, keys = await self._step(
                self._client.scan(cursor, match=pattern, count=SCAN_COUNT), progress
            )
            if keys:
                yield keys
            if not cursor:
                return

    async def scan_delete(self, pattern: str, progress: Progress) -> int:
        async for keys in self._scan(pattern, progress):
            for start in range(0, len(keys), DELETE_BATCH):
                chunk = keys[start : start + DELETE_BATCH]
                progress.done += int(await self._step(self._client.unlink(*chunk), progress))
        return progress.done

    async def count(self, pattern: str, progress: Progress) -> int:
        async for keys in self._scan(pattern, progress):
            progress.done += len(keys)
        return progress.done

    def is_data_error(self, exc: BaseException) -> bool:
        # WRONGTYPE: a foreign value under the key. NOPERM: an ACL that does not cover this
        # key or channel. Both concern one call, not the health of Redis.
        if isinstance(exc, NoPermissionError):
            return True
        return isinstance(exc, ResponseError) and str(exc).startswith("WRONGTYPE")

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
            await pipe.execute()
        return True

    async def pop_index(self, index: str) -> list[str]:
        async with self._client.pipeline(transaction=True) as pipe:  # one key: one slot
            pipe.zrange(index, 0, -1)
            pipe.delete(index)
            members, _ = await pipe.execute()
        # Anyone who can write the set chose its members: never raise on them.
        return [m.decode(errors="replace") if isinstance(m, bytes) else str(m) for m in members]

    async def counters(self, keys: Sequence[str], amount: int, ttl: int) -> list[int]:
        if not keys:
            return []
        if len(keys) == 1:
            args = self._counter_args(amount, ttl)
            return [int(await self._client.eval(_COUNTER, 1, keys[0], *args))]
        # One script per key in a non-transactional pipeline: keys in different slots.
        async with self._client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.eval(_COUNTER, 1, key, *self._counter_args(amount, ttl))
            return [int(value) for value in await pipe.execute()]

    @staticmethod
    def _counter_args(amount: int, ttl: int) -> tuple[int, int, int]:
        return fresh_counter(), amount, ttl * 1000

    async def publish(self, channel: str, message: bytes) -> int:
        return int(await self._client.publish(channel, message))

    def subscriber(self, channel: str) -> Subscriber:
        return _RedisSubscriber(self._client, channel)

    async def acquire_locks(self, keys: Sequence[str], token: str, ttl_ms: int) -> list[bool]:
        if not keys:
            return []
        async with self._client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.set(key, token, nx=True, px=ttl_ms)
            return [bool(taken) for taken in await pipe.execute()]

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


class _RedisSubscriber(Subscriber):
    """A pub/sub subscription on its own connection (RESP2, so messages are not dropped as
    RESP3 push frames)."""

    def __init__(self, client: Redis, channel: str) -> None:
        self._pubsub = client.pubsub(ignore_subscribe_messages=True)
        self._channel = channel

    async def start(self) -> None:
        await self._pubsub.subscribe(self._channel)

    async def get(self, timeout: float) -> bytes | None:
        message = await self._pubsub.get_message(timeout=timeout)
        if message is None or message.get("type") != "message":
            return None
        data = message["data"]
        return data if isinstance(data, bytes) else str(data).encode()

    async def close(self) -> None:
        with contextlib.suppress(Exception):  # closing a broken connection may fail again
            await self._pubsub.aclose()  # type: ignore[no-untyped-call,unused-ignore]
