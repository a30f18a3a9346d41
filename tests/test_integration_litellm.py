"""LiteLLM through its own entry points (``litellm.cache = ...`` then ``acompletion`` /
``completion`` / ``aembedding`` against the loopback stub): model calls saved, hit type ==
miss type, Redis down → LiteLLM still answers."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator

import pytest
import redis

from gathering_cache import AsyncCacheManager, CacheConfig, CacheManager
from tests.servers import RedisServer, free_port
from tests.stub_openai import StubEmbeddingServer, vector_for

# Offline: LiteLLM's price table from the package, not fetched (and retried) at import.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
pytest.importorskip("litellm")
import litellm
from litellm.types.utils import EmbeddingResponse, ModelResponse

from gathering_cache.integrations.litellm import GatheringLiteLLMCache, litellm_cache

SYNC_BACKENDS = ["memory", pytest.param("redis", marks=pytest.mark.integration)]
MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture(params=SYNC_BACKENDS)
def sync_cache(request: pytest.FixtureRequest) -> Iterator[CacheManager]:
    if request.param == "memory":
        config = CacheConfig(backend="memory")
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        flush = redis.Redis.from_url(server.url)
        flush.flushdb()
        flush.close()
        config = CacheConfig(url=server.url)
    with CacheManager(config) as cache:
        yield cache


@pytest.fixture
def stub() -> Iterator[StubEmbeddingServer]:
    with StubEmbeddingServer() as server:
        yield server


@pytest.fixture(autouse=True)
def no_global_cache() -> Iterator[None]:
    yield
    litellm.cache = None


async def written(prefix: str, cache: AsyncCacheManager | CacheManager) -> None:
    """Wait (bounded) for LiteLLM's write: it stores from a background task after answering."""
    manager = cache.async_manager if isinstance(cache, CacheManager) else cache
    for _ in range(500):
        if isinstance(cache, CacheManager):
            found = list(cache.scan_keys(f"{prefix}litellm:*"))
        else:
            found = [k async for k in manager.scan_keys(f"{prefix}litellm:*")]
        if found:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("LiteLLM wrote nothing to the cache")


async def test_acompletion_and_completion_hits(
    sync_cache: CacheManager, stub: StubEmbeddingServer
) -> None:
    litellm.cache = litellm_cache(sync_cache, ttl=120)
    call = {"model": "openai/m", "api_base": stub.base_url, "api_key": "k", "caching": True}
    miss = await litellm.acompletion(messages=MESSAGES, temperature=0, **call)
    await written(sync_cache.async_manager.config.key_prefix, sync_cache)
    hit = await litellm.acompletion(messages=MESSAGES, temperature=0, **call)
    sync_hit = litellm.completion(messages=MESSAGES, temperature=0, **call)
    assert stub.chats() == 1
    assert type(miss) is type(hit) is type(sync_hit) is ModelResponse
    assert hit.choices[0].message.content == miss.choices[0].message.content == "echo: hi"
    keys = list(sync_cache.scan_keys(f"{sync_cache.config.key_prefix}litellm:*"))
    assert len(keys) == 1
    assert 0 < (sync_cache.ttl(keys[0]) or 0) <= 120
    await litellm.acompletion(messages=MESSAGES, temperature=0.5, **call)
    assert stub.chats() == 2  # another request, another key


async def test_aembedding_hits(cache: AsyncCacheManager, stub: StubEmbeddingServer) -> None:
    litellm.cache = litellm_cache(cache)
    call = {"model": "openai/e", "api_base": stub.base_url, "api_key": "k", "caching": True}
    # One text per call: LiteLLM caches a batch's items by position, not by the "index" the
    # provider gives (the stub answers out of order on purpose; OpenAI answers in order).
    miss = await litellm.aembedding(input=["a"], **call)
    await written(cache.config.key_prefix, cache)
    hit = await litellm.aembedding(input=["a"], **call)
    assert type(miss) is type(hit) is EmbeddingResponse
    assert stub.texts_embedded() == 1
    assert hit.data[0]["embedding"] == pytest.approx(vector_for("a"))


async def test_store_interface_and_flush(cache: AsyncCacheManager) -> None:
    store = GatheringLiteLLMCache(cache, ttl=60)
    await store.async_set_cache_pipeline([("a", {"x": 1}), ("b", [2])])
    assert await store.async_batch_get_cache(["a", "b", "c"]) == [{"x": 1}, [2], None]
    await store.async_delete_cache("a")
    assert await store.async_get_cache("a") is None
    assert (await store.test_connection())["status"] == "success"


def test_redis_down_litellm_still_answers(stub: StubEmbeddingServer) -> None:
    with CacheManager(CacheConfig(host="127.0.0.1", port=free_port())) as down:
        litellm.cache = litellm_cache(down)
        call = {"model": "openai/m", "api_base": stub.base_url, "api_key": "k", "caching": True}
        first = litellm.completion(messages=MESSAGES, temperature=0, **call)
        second = litellm.completion(messages=MESSAGES, temperature=0, **call)
        assert type(first) is type(second) is ModelResponse
        assert stub.chats() == 2  # no cache, no error
