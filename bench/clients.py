"""The clients a benchmark compares, behind one tiny interface each workload uses."""

from __future__ import annotations

import struct
from array import array
from typing import Any

import orjson
import redis.asyncio as redis_asyncio

from gathering_cache import AsyncCacheManager, CacheConfig


class Raw:
    """The baseline: redis.asyncio + orjson, nothing else."""

    name = "raw redis.asyncio+orjson"
    wide = True  # takes 512 concurrent callers

    def __init__(self, url: str) -> None:
        # Enough sockets for the 512-coroutine run (one command in flight per socket).
        self.r = redis_asyncio.Redis.from_url(url, max_connections=600)

    async def get(self, key: str) -> Any:
        data = await self.r.get(key)
        return None if data is None else orjson.loads(data)

    async def set(self, key: str, value: Any) -> None:
        await self.r.set(key, orjson.dumps(value), ex=3600)

    async def get_many(self, keys: list[str]) -> list[Any]:
        return [None if d is None else orjson.loads(d) for d in await self.r.mget(keys)]

    async def close(self) -> None:
        await self.r.aclose()


class RawPacked(Raw):
    """Raw MGET of packed float32 vectors: the floor for a batch of embeddings."""

    name = "raw MGET float32"

    async def set(self, key: str, value: Any) -> None:
        await self.r.set(key, struct.pack(f"<{len(value)}f", *value), ex=3600)

    async def get_many(self, keys: list[str]) -> list[Any]:
        out = []
        for data in await self.r.mget(keys):
            if data is None:
                out.append(None)
            else:
                vector = array("f")
                vector.frombytes(data)
                out.append(vector.tolist())
        return out


class Ours:
    name = "gathering_cache"
    wide = True

    def __init__(self, url: str) -> None:
        self.cache = AsyncCacheManager(CacheConfig(url=url, max_connections=64))

    async def get(self, key: str) -> Any:
        return await self.cache.get(key)

    async def set(self, key: str, value: Any) -> None:
        await self.cache.set(key, value, ttl=3600)

    async def get_many(self, keys: list[str]) -> list[Any]:
        return await self.cache.get_many(keys)

    async def close(self) -> None:
        await self.cache.aclose()


class OursUnpipelined(Ours):
    """Ours with auto-pipelining off: every command on its own round trip."""

    name = "gathering_cache, auto_pipeline=False"

    def __init__(self, url: str) -> None:
        self.cache = AsyncCacheManager(
            CacheConfig(url=url, max_connections=64, auto_pipeline=False)
        )


class OursStatsOff(Ours):
    """The same client with fleet statistics off: W1 shows what recording and flushing them
    cost (the default, ``Ours``, flushes every 10 s)."""

    name = "gathering_cache (fleet stats off)"

    def __init__(self, url: str) -> None:
        self.cache = AsyncCacheManager(
            CacheConfig(url=url, max_connections=64, stats_flush_interval=0)
        )


class AioCache:
    name = "aiocache"

    def __init__(self, url: str) -> None:
        from aiocache import Cache

        host, port = url.split("//")[1].split("/")[0].split(":")
        self.c = Cache(Cache.REDIS, endpoint=host, port=int(port))

    async def get(self, key: str) -> Any:
        return await self.c.get(key)

    async def set(self, key: str, value: Any) -> None:
        await self.c.set(key, value, ttl=3600)

    async def get_many(self, keys: list[str]) -> list[Any]:
        return list(await self.c.multi_get(keys))

    async def close(self) -> None:
        await self.c.close()


class Cashews:
    name = "cashews"

    def __init__(self, url: str) -> None:
        from cashews import Cache

        self.c = Cache()
        self.c.setup(url, client_side=False)

    async def get(self, key: str) -> Any:
        return await self.c.get(key)

    async def set(self, key: str, value: Any) -> None:
        await self.c.set(key, value, expire=3600)

    async def get_many(self, keys: list[str]) -> list[Any]:
        return list(await self.c.get_many(*keys))

    async def close(self) -> None:
        await self.c.close()


COMPARED = [Raw, Ours, OursUnpipelined, AioCache, Cashews]
