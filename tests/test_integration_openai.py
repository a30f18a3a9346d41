"""The OpenAI SDK integration against the loopback stub, through the real ``openai`` package:
provider calls saved, hit type == miss type, SDK errors as the SDK's own, float32 storage,
Redis down → the SDK still answers."""

from __future__ import annotations

import base64
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from gathering_cache import (
    ArgumentTypeError,
    AsyncCacheManager,
    CacheConfig,
    CachedEmbedder,
    OpenAIEmbeddings,
)
from tests.servers import free_port
from tests.stub_openai import StubEmbeddingServer, vector_for

pytest.importorskip("openai")
import openai
from openai.types import CreateEmbeddingResponse
from openai.types.chat import ChatCompletion, ChatCompletionMessageParam

from gathering_cache.integrations.openai import CachedAsyncOpenAI, OpenAISDKEmbeddings

MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello"}]


@pytest.fixture
def stub() -> Iterator[StubEmbeddingServer]:
    with StubEmbeddingServer(dimensions=16) as server:
        yield server


def sdk(stub: StubEmbeddingServer) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(api_key="test", base_url=stub.base_url, max_retries=0)


async def test_sdk_provider_stores_float32_losslessly(
    cache: AsyncCacheManager, stub: StubEmbeddingServer
) -> None:
    provider = OpenAISDKEmbeddings(sdk(stub), "text-embedding-3-small")
    embedder = CachedEmbedder(provider, cache)
    first = await embedder.embed_many(["a", "b"])
    second = await embedder.embed_many(["b", "a", "c"])
    assert first == [vector_for("a", 16), vector_for("b", 16)]
    assert second[:2] == [vector_for("b", 16), vector_for("a", 16)]
    assert [r["input"] for r in stub.requests] == [["a", "b"], ["c"]]
    assert {r["encoding_format"] for r in stub.requests} == {"base64"}
    written: list[int] = []
    cache.add_observer(lambda op: written.append(op.nbytes) if op.outcome == "stored" else None)
    await embedder.embed("d")
    assert written == [2 + 16 * 4]  # float32: 4 bytes a dimension, plus the 2-byte header


async def test_cached_client_chat_and_embeddings(
    cache: AsyncCacheManager, stub: StubEmbeddingServer
) -> None:
    client = CachedAsyncOpenAI(sdk(stub), cache)
    miss = await client.chat.completions.create(model="m", messages=MESSAGES, temperature=0)
    hit = await client.chat.completions.create(model="m", messages=MESSAGES, temperature=0)
    assert type(hit) is type(miss) is ChatCompletion
    assert hit == miss
    assert stub.chats() == 1
    assert (await cache.get_stats())["llm_tokens_saved"] == 15

    one = await client.embeddings.create(model="e", input=["x", "y"])
    two = await client.embeddings.create(model="e", input=["y", "x", "z"])
    assert type(one) is type(two) is CreateEmbeddingResponse
    assert [d.embedding for d in two.data] == [vector_for(t, 16) for t in ("y", "x", "z")]
    assert [r["input"] for r in stub.requests if "input" in r] == [["x", "y"], ["z"]]
    full_hit = await client.embeddings.create(model="e", input="x")
    assert full_hit.usage.total_tokens == 0
    assert full_hit.data[0].embedding == vector_for("x", 16)
    packed = await client.embeddings.create(model="e", input="x", encoding_format="base64")
    raw = base64.b64decode(str(packed.data[0].embedding))
    assert list(struct.unpack("<16f", raw)) == vector_for("x", 16)
    assert client.base_url == client.client.base_url  # everything else is the client's


async def test_sdk_errors_are_the_sdks_own(
    cache: AsyncCacheManager, stub: StubEmbeddingServer
) -> None:
    client = CachedAsyncOpenAI(sdk(stub), cache)
    stub.fail_next(429)
    with pytest.raises(openai.RateLimitError):
        await client.embeddings.create(model="e", input=["x"])
    stub.fail_next(500)
    with pytest.raises(openai.InternalServerError):
        await client.chat.completions.create(model="m", messages=MESSAGES, temperature=0)
    assert (await client.embeddings.create(model="e", input=["x"])).data
    assert len(stub.requests) == 3


async def test_redis_down_the_sdk_still_answers(stub: StubEmbeddingServer) -> None:
    cache = AsyncCacheManager(CacheConfig(host="127.0.0.1", port=free_port()))
    client = CachedAsyncOpenAI(sdk(stub), cache)
    for _ in range(2):
        answer = await client.chat.completions.create(model="m", messages=MESSAGES, seed=1)
        assert isinstance(answer, ChatCompletion)
        vectors = await client.embeddings.create(model="e", input=["x"])
        assert vectors.data[0].embedding == vector_for("x", 16)
    assert stub.chats() == 2
    await cache.aclose()


async def test_wrong_clients_are_refused(cache: AsyncCacheManager) -> None:
    sync_client = openai.OpenAI(api_key="k", base_url="http://127.0.0.1:9/v1")
    with pytest.raises(ArgumentTypeError, match="AsyncOpenAI"):
        OpenAISDKEmbeddings(sync_client)
    with pytest.raises(ArgumentTypeError, match="AsyncOpenAI"):
        CachedAsyncOpenAI(sync_client, cache)  # type: ignore[arg-type]
    async_client = openai.AsyncOpenAI(api_key="k", base_url="http://127.0.0.1:9/v1")
    with pytest.raises(ArgumentTypeError, match="OpenAISDKEmbeddings"):
        OpenAIEmbeddings("m", base_url="http://127.0.0.1:9/v1", client=async_client)  # type: ignore[arg-type]


def test_from_env_uses_the_sdk(
    stub: StubEmbeddingServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import asyncio

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("OPENAI_BASE_URL", stub.base_url)
    monkeypatch.setenv("GATHERING_CACHE_BACKEND", "memory")

    async def main() -> None:
        async with CachedEmbedder.from_env() as embedder:
            assert isinstance(embedder.provider, OpenAISDKEmbeddings)
            assert await embedder.embed("hi") == vector_for("hi", 16)
            assert await embedder.embed("hi") == vector_for("hi", 16)

    asyncio.run(main())
    assert stub.texts_embedded() == 1
