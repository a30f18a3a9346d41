"""Property-based: random operation sequences against a model dict with TTL semantics, on
the memory backend, fakeredis and a real redis-server."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis
from fakeredis import FakeAsyncRedis, FakeServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gathering_cache import AsyncCacheManager, CacheConfig
from gathering_cache.core.globmatch import compile_glob
from tests.servers import RedisServer

KEYS = [f"gathering:k{i}" for i in range(5)] + ["gathering:[x]", "gathering:a*b", "other:k0"]
PATTERNS = [
    "gathering:*",
    "gathering:k[0-2]",
    "gathering:k?",
    "gathering:\\[x\\]",
    "gathering:a\\*b",
]

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=10,
)
keys = st.sampled_from(KEYS)
ttls = st.none() | st.integers(min_value=30, max_value=3600)
operations = st.one_of(
    st.tuples(st.just("set"), keys, json_values, ttls),
    st.tuples(st.just("get"), keys),
    st.tuples(st.just("delete"), keys),
    st.tuples(st.just("exists"), keys),
    st.tuples(st.just("ttl"), keys),
    st.tuples(st.just("set_many"), st.dictionaries(keys, json_values, max_size=4), ttls),
    st.tuples(st.just("get_many"), st.lists(keys, max_size=5)),
    st.tuples(st.just("delete_pattern"), st.sampled_from(PATTERNS)),
    st.tuples(st.just("clear_all")),
)


async def check(cache: AsyncCacheManager, ops: list[tuple[Any, ...]]) -> None:
    model: dict[str, tuple[Any, int | None]] = {}

    def matching(pattern: str) -> list[str]:
        return [k for k in model if compile_glob(pattern).fullmatch(k)]

    for op in ops:
        name = op[0]
        if name == "set":
            _, key, value, ttl = op
            assert await cache.set(key, value, ttl) is True
            model[key] = (value, ttl or cache.config.default_ttl)  # every key expires
        elif name == "get":
            assert await cache.get(op[1]) == model.get(op[1], (None, None))[0]
        elif name == "delete":
            assert await cache.delete(op[1]) is (model.pop(op[1], None) is not None)
        elif name == "exists":
            assert await cache.exists(op[1]) is (op[1] in model)
        elif name == "ttl":
            got = await cache.ttl(op[1])
            if op[1] not in model:
                assert got is None
            elif model[op[1]][1] is None:
                assert got == -1
            else:
                expected = model[op[1]][1]
                assert expected is not None
                assert got is not None
                assert expected - 2 <= got <= expected
        elif name == "set_many":
            _, mapping, ttl = op
            assert await cache.set_many(mapping, ttl) is True
            model.update({k: (v, ttl or cache.config.default_ttl) for k, v in mapping.items()})
        elif name == "get_many":
            assert await cache.get_many(op[1]) == [model.get(k, (None, None))[0] for k in op[1]]
        elif name == "delete_pattern":
            doomed = matching(op[1])
            assert await cache.delete_pattern(op[1]) == len(doomed)
            for key in doomed:
                del model[key]
        elif name == "clear_all":
            doomed = matching("gathering:*")
            assert await cache.clear_all() == len(doomed)
            for key in doomed:
                del model[key]


SETTINGS = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@SETTINGS
@given(ops=st.lists(operations, max_size=30))
def test_memory_backend_behaves_like_the_model(ops: list[tuple[Any, ...]]) -> None:
    async def run() -> None:
        cache = AsyncCacheManager(CacheConfig(backend="memory"))
        await check(cache, ops)

    asyncio.run(run())


@SETTINGS
@given(ops=st.lists(operations, max_size=30))
def test_fakeredis_behaves_like_the_model(ops: list[tuple[Any, ...]]) -> None:
    async def run() -> None:
        cache = AsyncCacheManager(CacheConfig(), client=FakeAsyncRedis(server=FakeServer()))
        await check(cache, ops)
        await cache.aclose()

    asyncio.run(run())


@pytest.mark.integration
@SETTINGS
@given(ops=st.lists(operations, max_size=30))
def test_real_redis_behaves_like_the_model(
    redis_server: RedisServer, ops: list[tuple[Any, ...]]
) -> None:
    client = redis.Redis.from_url(redis_server.url)
    client.flushdb()
    client.close()

    async def run() -> None:
        async with AsyncCacheManager(CacheConfig(url=redis_server.url)) as cache:
            await check(cache, ops)

    asyncio.run(run())
