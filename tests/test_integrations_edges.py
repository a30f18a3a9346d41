"""The edges of the integrations: bad arguments raise, untrusted stored data is a miss,
unstorable results are returned uncached, a closed facade answers, errors cross the portal."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gathering_cache import (
    ArgumentTypeError,
    AsyncCacheManager,
    CacheConfig,
    CacheManager,
    ConfigurationError,
    ProviderError,
    cached,
)
from gathering_cache.integrations._portal import Bridge
from tests.stub_openai import StubEmbeddingServer


@pytest.fixture
def facade() -> Iterator[CacheManager]:
    with CacheManager(CacheConfig(backend="memory")) as cache:
        yield cache


# -- @cached ------------------------------------------------------------------------------------


async def test_codecs_and_refused_entries(
    cache: AsyncCacheManager, caplog: pytest.LogCaptureFixture
) -> None:
    calls = 0

    @cached(cache, namespace="pairs", encode=list, decode=tuple)
    async def pair(x: int) -> tuple[int, int]:
        nonlocal calls
        calls += 1
        return (x, x)

    assert await pair(1) == (1, 1)
    assert await pair(1) == (1, 1)
    assert calls == 1
    # A planted entry decode= refuses is a miss, recomputed.
    keys = [k async for k in cache.scan_keys(f"{cache.config.key_prefix}fn:pairs:*")]
    key = keys[0]
    await cache.set(key, {"v": 5})
    with caplog.at_level(logging.WARNING, logger="gathering_cache"):
        assert await pair(1) == (1, 1)
    assert calls == 2
    assert "refused by decode" in caplog.text


async def test_unstorable_results_and_bad_keys(
    cache: AsyncCacheManager, caplog: pytest.LogCaptureFixture
) -> None:
    marker = object()

    @cached(cache)
    async def make(x: int) -> object:
        return marker

    with caplog.at_level(logging.WARNING, logger="gathering_cache"):
        assert await make(1) is marker
        assert await make(1) is marker
    assert "not cached" in caplog.text

    @cached(cache, key=lambda x: x)
    async def bad_key(x: Any) -> int:
        return 1

    with pytest.raises(ArgumentTypeError, match="key="):
        await bad_key(5)
    with pytest.raises(ArgumentTypeError):
        cached(cache)(5)  # type: ignore[call-overload]


def test_sync_function_with_unhashable_arguments_runs_uncached(facade: CacheManager) -> None:
    calls = 0

    @cached(facade)
    def size(items: Any) -> int:
        nonlocal calls
        calls += 1
        return len(items)

    assert size({1, 2}) == size({1, 2}) == 2  # a set is not JSON: not cached
    assert calls == 2


async def test_async_function_on_the_facade_errors_and_closed(facade: CacheManager) -> None:
    @cached(facade)
    async def fail(x: int) -> int:
        raise LookupError(x)

    with pytest.raises(LookupError):
        await fail(1)

    @cached(facade)
    async def ok(x: int) -> int:
        return x

    facade.close()
    assert await ok(3) == 3  # closed: computed, uncached


# -- the bridge ------------------------------------------------------------------------------------


async def test_bridge(facade: CacheManager, cache: AsyncCacheManager) -> None:
    with pytest.raises(ArgumentTypeError):
        Bridge("cache")  # type: ignore[arg-type]
    bridge = Bridge(facade)
    assert await bridge.call(lambda m: m.set(f"{bridge.prefix}k", 1), False)
    assert bridge.call_sync(lambda m: m.get(f"{bridge.prefix}k"), None) == 1
    with pytest.raises(ArgumentTypeError, match="CacheManager"):
        Bridge(cache).call_sync(lambda m: m.get("k"), None)
    facade.close()
    degraded: Any = "degraded"
    assert await bridge.call(lambda m: m.get(f"{bridge.prefix}k"), degraded) == "degraded"
    assert bridge.call_sync(lambda m: m.get(f"{bridge.prefix}k"), degraded) == "degraded"


# -- OpenAISDKEmbeddings ---------------------------------------------------------------------------


async def test_sdk_provider_arguments_and_answers(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    openai = pytest.importorskip("openai")
    from gathering_cache import OpenAISDKEmbeddings

    with StubEmbeddingServer(dimensions=4) as stub:
        client = openai.AsyncOpenAI(api_key="k", base_url=stub.base_url, max_retries=0)
        with pytest.raises(ConfigurationError):
            OpenAISDKEmbeddings(client, "")
        provider = OpenAISDKEmbeddings(client, "m", dimensions=3)
        assert "OpenAISDKEmbeddings" in repr(provider)
        assert len((await provider.embed(["a"]))[0]) == 3
        assert stub.requests[-1]["dimensions"] == 3
        with pytest.raises(ArgumentTypeError):
            await provider.embed("a")  # type: ignore[arg-type]
        stub.fail_next(400)
        with pytest.raises(openai.BadRequestError):
            await provider.embed(["a"])

        async def short(*args: Any, **kwargs: Any) -> Any:
            return openai.types.CreateEmbeddingResponse(
                object="list", data=[], model="m", usage={"prompt_tokens": 0, "total_tokens": 0}
            )

        monkeypatch.setattr(client.embeddings, "create", short)
        with pytest.raises(ProviderError, match="0 vectors for 1"):
            await provider.embed(["a"])
        await provider.aclose()  # not its client: left open
        await client.close()

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(ConfigurationError, match="OPENAI_API_KEY"):
        OpenAISDKEmbeddings.from_env()
    with pytest.raises(ConfigurationError, match="no such file"):
        OpenAISDKEmbeddings.from_env(tmp_path / "missing.env")


async def test_openai_wrapper_passes_token_inputs_through() -> None:
    # Not on the backend-parametrised fixture: a skip (no openai) of its real-server variant
    # would fail a CI run, where a skipped integration test is a failure.
    openai = pytest.importorskip("openai")
    from gathering_cache.integrations.openai import CachedAsyncOpenAI

    cache = AsyncCacheManager(CacheConfig(backend="memory"))
    with StubEmbeddingServer(dimensions=4) as stub:
        sdk = openai.AsyncOpenAI(api_key="k", base_url=stub.base_url, max_retries=0)
        client = CachedAsyncOpenAI(sdk, cache)
        with pytest.raises(openai.BadRequestError):  # the stub embeds texts only
            await client.embeddings.create(model="e", input=[[1, 2, 3]])
        assert stub.requests[-1]["input"] == [[1, 2, 3]]  # sent as given, uncached
        await sdk.close()
    await cache.aclose()


# -- LangChain, LlamaIndex, LiteLLM ----------------------------------------------------------------


async def test_langchain_edges(facade: CacheManager) -> None:
    pytest.importorskip("langchain_core")
    from langchain_core.embeddings import DeterministicFakeEmbedding

    from gathering_cache.integrations.langchain import (
        GatheringByteStore,
        GatheringEmbeddings,
        GatheringLLMCache,
    )

    with pytest.raises(ArgumentTypeError):
        GatheringByteStore(facade, namespace="")
    with pytest.raises(ArgumentTypeError):
        GatheringEmbeddings("model", facade, model="m")  # type: ignore[arg-type]
    embeddings = GatheringEmbeddings(DeterministicFakeEmbedding(size=4), facade, model="f")
    assert await embeddings.aembed_query("q") == embeddings.embed_query("q")
    llm_cache = GatheringLLMCache(facade)
    facade.set(llm_cache._key("p", "llm"), [{"neither": 1}])  # planted: a miss
    assert llm_cache.lookup("p", "llm") is None
    await llm_cache.aupdate("p", "llm", [])
    assert await llm_cache.alookup("p", "llm") == []


def test_llama_index_edges(facade: CacheManager) -> None:
    pytest.importorskip("llama_index.core")
    from llama_index.core.embeddings import MockEmbedding

    from gathering_cache.integrations.llama_index import GatheringEmbedding, GatheringKVStore

    with pytest.raises(ArgumentTypeError):
        GatheringKVStore(facade).get(5)  # type: ignore[arg-type]
    with pytest.raises(ArgumentTypeError):
        GatheringEmbedding("model", facade)  # type: ignore[arg-type]
    wrapped = GatheringEmbedding(MockEmbedding(embed_dim=4), facade)
    assert wrapped.get_text_embedding("t") == [0.5] * 4
    assert asyncio.run(wrapped.aget_text_embedding("t")) == [0.5] * 4
    assert asyncio.run(wrapped.aget_query_embedding("q")) == [0.5] * 4


def test_litellm_store_sync_methods(facade: CacheManager) -> None:
    import os

    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    pytest.importorskip("litellm")
    from gathering_cache.integrations.litellm import GatheringLiteLLMCache

    store = GatheringLiteLLMCache(facade)
    store.set_cache("a", {"x": 1}, ttl=30)
    store.set_cache("bad", object())  # not JSON: not cached, no error
    assert store.batch_get_cache(["a", "bad"]) == [{"x": 1}, None]
    assert store.get_cache("a") == {"x": 1}
    store.delete_cache("a")
    assert store.get_cache("a") is None
    store.set_cache("b", 1)
    store.flush_cache()
    assert store.get_cache("b") is None
    asyncio.run(store.batch_cache_write("c", 2))
    assert store.get_cache("c") == 2
    asyncio.run(store.disconnect())
    facade.close()
    assert asyncio.run(store.test_connection())["status"] == "failed"
