"""Embedding cache: model-aware keys, packed lossless vectors, batches, the fallback LRU."""

from __future__ import annotations

import hashlib
import random
import struct
from typing import Any

import numpy as np
import pytest
import redis.asyncio as redis_asyncio
from fakeredis import FakeAsyncRedis, FakeServer

from gathering_cache import (
    ArgumentTypeError,
    AsyncCacheManager,
    CacheConfig,
    InvalidArgumentError,
)
from tests.conftest import Factory


def sha16(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def f32_vector(n: int, seed: int = 1) -> list[float]:
    """Values exactly representable in float32, as OpenAI's SDK returns them."""
    rng = random.Random(seed)
    return [struct.unpack("<f", struct.pack("<f", rng.uniform(-1, 1)))[0] for _ in range(n)]


async def raw_value(cache: AsyncCacheManager, key: str) -> bytes | None:
    return await cache._core.store.get(key)


async def test_seed_example_reads_back_exactly(cache: AsyncCacheManager) -> None:
    await cache.set_embedding("Hello world", [0.1, 0.2, 0.3])
    assert await cache.get_embedding("Hello world") == [0.1, 0.2, 0.3]
    raw = await raw_value(cache, f"gathering:embedding:{sha16('Hello world')}")
    assert raw is not None
    assert raw[:2] == b"\x01d"  # 0.1 is not exact in float32: float64, lossless
    assert len(raw) == 2 + 3 * 8


async def test_float32_representable_vectors_are_packed_as_float32(
    cache: AsyncCacheManager,
) -> None:
    vector = f32_vector(1536)
    await cache.set_embedding("doc", vector, model="text-embedding-3-small")
    assert await cache.get_embedding("doc", model="text-embedding-3-small") == vector
    raw = await raw_value(cache, f"gathering:embedding:text-embedding-3-small:{sha16('doc')}")
    assert raw is not None
    assert raw[:2] == b"\x01f"
    assert len(raw) == 2 + 1536 * 4


async def test_opt_in_lossy_float32(make_cache: Factory) -> None:
    cache = await make_cache(embedding_precision="float32")
    await cache.set_embedding("t", [0.1, 0.2, 0.3])
    got = await cache.get_embedding("t")
    assert got is not None
    assert got == [float(np.float32(v)) for v in (0.1, 0.2, 0.3)]
    assert got != [0.1, 0.2, 0.3]


async def test_models_and_dimensions_never_share_an_entry(cache: AsyncCacheManager) -> None:
    await cache.set_embedding("t", [1.0, 2.0], model="model-a")
    await cache.set_embedding("t", [3.0, 4.0, 5.0], model="model-a", dimensions=3)
    await cache.set_embedding("t", [6.0], model="org/model:b*")
    assert await cache.get_embedding("t", model="model-a") == [1.0, 2.0]
    assert await cache.get_embedding("t", model="model-a", dimensions=3) == [3.0, 4.0, 5.0]
    assert await cache.get_embedding("t", model="org/model:b*") == [6.0]
    assert await cache.get_embedding("t", model="model-b") is None
    assert await cache.get_embedding("t") is None  # the model-less key is separate
    assert await cache.exists(f"gathering:embedding:org/model%3Ab%2A:{sha16('t')}")


async def test_keys_and_errors_are_the_same_once_a_models_key_head_is_kept(
    cache: AsyncCacheManager,
) -> None:
    """The second call with a model takes the kept key head: the same keys (ASCII or not),
    and the same errors for a text UTF-8 cannot encode or a model of the wrong type."""
    for model in (None, "text-embedding-3-small", "org/model:b*"):
        await cache.set_embedding("first", [1.0], model=model)  # keeps the model's head
        for text in ("doc", "café ☕", ""):
            await cache.set_embedding(text, [2.0, 3.0], model=model)
            segment = "" if model is None else model.replace(":", "%3A").replace("*", "%2A") + ":"
            assert await cache.exists(f"gathering:embedding:{segment}{sha16(text)}")
            assert await cache.get_embedding(text, model=model) == [2.0, 3.0]
        with pytest.raises(InvalidArgumentError, match="text is not valid Unicode"):
            await cache.get_embedding("lone \ud800", model=model)
    with pytest.raises(ArgumentTypeError, match="model must be a str"):
        await cache.get_embedding("doc", model=["text-embedding-3-small"])  # type: ignore[call-overload]
    with pytest.raises(ArgumentTypeError, match="text must be a str"):
        await cache.get_embedding(b"doc", model="text-embedding-3-small")  # type: ignore[call-overload]


async def test_value_with_another_length_or_format_is_a_miss(cache: AsyncCacheManager) -> None:
    key = cache._embeddings.key("t", "m", 4)
    await cache._core.store.set(key, b"\x01f" + struct.pack("<3f", 1, 2, 3), None)
    assert await cache.get_embedding("t", model="m", dimensions=4) is None
    await cache.set(f"gathering:embedding:{sha16('j')}", [0.1, 0.2])  # JSON, not packed
    assert await cache.get_embedding("j") is None
    await cache._core.store.set(f"gathering:embedding:{sha16('x')}", b"\x01f\x00\x00\x80", None)
    assert await cache.get_embedding("x") is None
    stats = await cache.get_stats()
    assert stats["errors"] == 3
    assert stats["namespaces"]["embedding"]["misses"] == 3


async def test_as_numpy(cache: AsyncCacheManager) -> None:
    vector = np.array([0.5, 0.25], dtype=np.float32)
    await cache.set_embedding("a", vector, model="m")  # type: ignore[arg-type]
    await cache.set_embedding("b", [0.1, 0.2], model="m")
    a = await cache.get_embedding("a", model="m", as_numpy=True)
    b = await cache.get_embedding("b", model="m", as_numpy=True)
    assert a is not None
    assert b is not None
    assert a.dtype == np.float32
    assert a.tolist() == [0.5, 0.25]
    assert b.dtype == np.float64
    assert b.tolist() == [0.1, 0.2]
    many = await cache.get_embeddings(["a", "zz"], model="m", as_numpy=True)
    assert many[1] is None
    assert many[0] is not None
    assert many[0].tolist() == [0.5, 0.25]


async def test_batch_get_and_set(cache: AsyncCacheManager) -> None:
    texts = [f"text {i}" for i in range(100)]
    vectors = [f32_vector(8, seed=i) for i in range(100)]
    assert await cache.set_embeddings(texts[:90], vectors[:90], model="m") is True
    got = await cache.get_embeddings(texts, model="m")
    assert got[:90] == vectors[:90]
    assert got[90:] == [None] * 10
    ns = (await cache.get_stats())["namespaces"]["embedding"]
    assert (ns["hits"], ns["misses"]) == (90, 10)
    assert await cache.get_embeddings([], model="m") == []
    assert await cache.set_embeddings([], [], model="m") is True


async def test_duplicates_and_order_in_batches(cache: AsyncCacheManager) -> None:
    await cache.set_embeddings(["b", "a"], [[2.0], [1.0]])
    assert await cache.get_embeddings(["a", "b", "a", "c"]) == [[1.0], [2.0], [1.0], None]


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda c: c.set_embeddings(["a", "b"], [[1.0]]), InvalidArgumentError, "2 texts"),
        (lambda c: c.set_embeddings(["a", "b"], [[1.0], [float("nan")]]), ValueError, "nan"),
        (lambda c: c.set_embeddings("ab", [[1.0], [2.0]]), ArgumentTypeError, "single str"),
        (lambda c: c.set_embeddings(["a", 2], [[1.0], [2.0]]), ArgumentTypeError, "text"),
        (lambda c: c.get_embeddings("abc"), ArgumentTypeError, "single str"),
        (lambda c: c.set_embedding("a", [1.0, 2.0], dimensions=3), InvalidArgumentError, "3"),
        (lambda c: c.set_embedding("a", [1.0], model=""), InvalidArgumentError, "model"),
        (lambda c: c.set_embedding("a", [1.0], model=5), ArgumentTypeError, "model"),
        (lambda c: c.get_embedding("a", dimensions=0), InvalidArgumentError, "dimensions"),
        (lambda c: c.get_embedding("a", dimensions=1.5), ArgumentTypeError, "dimensions"),
        (lambda c: c.set_embedding("a", [1e308, 1e308, float("inf")]), ValueError, r"\[2\]"),
        (lambda c: c.set_embedding("a", [None]), ArgumentTypeError, "NoneType"),
    ],
)
async def test_bad_batch_input_writes_nothing(
    cache: AsyncCacheManager, call: Any, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        await call(cache)
    assert (await cache.get_stats())["total_keys"] == 0


async def test_large_finite_values_are_accepted(cache: AsyncCacheManager) -> None:
    # The sum overflows to inf; every value is still finite.
    assert await cache.set_embedding("big", [1e308, 1e308]) is True
    assert await cache.get_embedding("big") == [1e308, 1e308]


# -- the in-process LRU ------------------------------------------------------------------------


async def test_lru_answers_while_redis_is_down_and_never_across_models() -> None:
    server = FakeServer()
    config = CacheConfig(recovery_interval=60, embedding_lru_size=2)
    cache = AsyncCacheManager(config, client=FakeAsyncRedis(server=server))
    await cache.set_embedding("a", [1.0], model="m1")
    await cache.set_embedding("b", [2.0], model="m1")
    await cache.set_embedding("c", [3.0], model="m1")  # evicts "a" (capacity 2)
    assert await cache.get_embedding("b", model="m1") == [2.0]  # a Redis hit refreshes it
    server.connected = False
    assert await cache.get_embedding("b", model="m1") == [2.0]  # from the LRU
    assert await cache.get_embedding("c", model="m1") == [3.0]
    assert await cache.get_embedding("a", model="m1") is None  # evicted
    assert await cache.get_embedding("b", model="m2") is None  # another model
    assert await cache.get_embeddings(["b", "c", "a"], model="m1") == [[2.0], [3.0], None]
    # a set during the outage fails but is remembered locally
    assert await cache.set_embedding("d", [4.0], model="m1") is False
    assert await cache.get_embedding("d", model="m1") == [4.0]
    await cache.aclose()


async def test_lru_never_serves_what_redis_lost() -> None:
    server = FakeServer()
    config = CacheConfig(recovery_interval=0.01)
    client = FakeAsyncRedis(server=server)
    cache = AsyncCacheManager(config, client=client)
    await cache.set_embedding("a", [1.0])
    await client.flushall()  # a restart that loses the data
    assert await cache.get_embedding("a") is None
    server.connected = False
    assert await cache.get_embedding("a") is None  # the LRU entry went with the Redis miss
    await cache.aclose()


async def test_lru_forgets_what_this_process_deletes() -> None:
    server = FakeServer()
    cache = AsyncCacheManager(CacheConfig(), client=FakeAsyncRedis(server=server))
    await cache.set_embedding("a", [1.0])
    await cache.set_embedding("b", [2.0])
    await cache.delete(f"gathering:embedding:{sha16('a')}")
    server.connected = False
    assert await cache.get_embedding("a") is None
    assert await cache.get_embedding("b") == [2.0]
    server.connected = True
    cache._core.policy.state = cache._core.policy.state.CLOSED  # skip the cool-down
    assert await cache.clear_all() == 1
    server.connected = False
    assert await cache.get_embedding("b") is None
    await cache.aclose()


# -- real server: one round trip, memory per vector -------------------------------------------


@pytest.mark.integration
async def test_batch_is_one_round_trip_on_redis(redis_url: str) -> None:
    raw = redis_asyncio.Redis.from_url(redis_url)
    async with AsyncCacheManager(CacheConfig(url=redis_url)) as cache:
        texts = [f"t{i}" for i in range(100)]
        await cache.set_embeddings(texts[:90], [[float(i)] for i in range(90)], model="m")
        await raw.config_resetstat()
        await cache.get_embeddings(texts, model="m")
        stats = await raw.info("commandstats")
    await raw.aclose()
    assert stats["cmdstat_mget"]["calls"] == 1
    assert "cmdstat_get" not in stats


@pytest.mark.integration
async def test_memory_per_vector_within_target(redis_url: str) -> None:
    raw = redis_asyncio.Redis.from_url(redis_url)
    vector = f32_vector(1536)
    async with AsyncCacheManager(CacheConfig(url=redis_url)) as cache:
        await cache.set_embedding("doc", vector, model="text-embedding-3-small")
        key = cache._embeddings.key("doc", "text-embedding-3-small", None)
        ours = await raw.memory_usage(key)
        await raw.set(key + ":raw", struct.pack("<1536f", *vector))
        baseline = await raw.memory_usage(key + ":raw")
        await raw.set(key + ":json", __import__("orjson").dumps(vector))
        as_json = await raw.memory_usage(key + ":json")
    await raw.aclose()
    assert ours is not None
    assert baseline is not None
    assert as_json is not None
    assert ours <= 1.1 * baseline, (ours, baseline)
    assert as_json > 4 * ours
