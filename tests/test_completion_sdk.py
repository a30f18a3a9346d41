"""cached_completion put directly on the real OpenAI SDK's ``chat.completions.create``, against
the loopback stub: sentinel defaults and output-neutral parameters stay out of the key, a
stream is never served from a whole entry, a hit is the SDK's own type, SDK errors pass
through, and the wrapper keeps the SDK's signature for mypy."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator

import pytest

from gathering_cache import AsyncCacheManager, cached_completion
from tests.stub_openai import StubEmbeddingServer

pytest.importorskip("openai")
import openai
from openai.types.chat import ChatCompletion, ChatCompletionMessageParam

MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "What is 2 + 2?"}]


@pytest.fixture
def stub() -> Iterator[StubEmbeddingServer]:
    with StubEmbeddingServer() as server:
        yield server


def client_for(stub: StubEmbeddingServer) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(api_key="test", base_url=stub.base_url, max_retries=0)


async def test_the_sdk_method_is_cached_with_its_own_type(
    cache: AsyncCacheManager, stub: StubEmbeddingServer, caplog: pytest.LogCaptureFixture
) -> None:
    client = client_for(stub)
    create = cached_completion(cache, decode=ChatCompletion.model_validate)(
        client.chat.completions.create
    )
    with caplog.at_level(logging.WARNING, logger="gathering_cache"):
        miss = await create(model="gpt-4o-mini", messages=MESSAGES, temperature=0)
        hit = await create(model="gpt-4o-mini", messages=MESSAGES, temperature=0)
        # Output-neutral parameters do not fragment the key.
        again = await create(
            model="gpt-4o-mini",
            messages=MESSAGES,
            temperature=0,
            user="u-1",
            metadata={"run": "a"},
            prompt_cache_key="pk",
            safety_identifier="s-1",
            service_tier="auto",
            extra_headers={"X-Trace": "1"},
            timeout=30,
        )
    assert stub.chats() == 1
    assert type(hit) is type(miss) is type(again) is ChatCompletion
    assert hit == miss
    assert hit.choices[0].message.content == "echo: What is 2 + 2?"
    assert [r.message for r in caplog.records] == []  # no warning about sentinels
    assert (await cache.get_stats())["llm_tokens_saved"] == 30
    # A parameter that changes the output does make another key.
    await create(model="gpt-4o-mini", messages=MESSAGES, temperature=0, max_tokens=3)
    assert stub.chats() == 2


async def test_a_stream_is_never_served_from_a_whole_entry(
    cache: AsyncCacheManager, stub: StubEmbeddingServer
) -> None:
    client = client_for(stub)
    create = cached_completion(cache, decode=ChatCompletion.model_validate)(
        client.chat.completions.create
    )
    await create(model="m", messages=MESSAGES, temperature=0)
    for _ in range(2):
        stream = await create(model="m", messages=MESSAGES, temperature=0, stream=True)
        pieces = [chunk.choices[0].delta.content async for chunk in stream]
        assert "".join(p or "" for p in pieces) == "echo: What is 2 + 2?"
    assert stub.chats() == 3  # both streams reached the provider
    assert (await cache.get_stats())["llm_skipped"] == 2


async def test_reasoning_calls_without_temperature_are_cached_only_when_forced(
    cache: AsyncCacheManager, stub: StubEmbeddingServer
) -> None:
    client = client_for(stub)
    create = cached_completion(cache, decode=ChatCompletion.model_validate)(
        client.chat.completions.create
    )
    for _ in range(2):
        await create(model="o3-mini", messages=MESSAGES, reasoning_effort="low")
    assert stub.chats() == 2
    forced = cached_completion(cache, force=True, decode=ChatCompletion.model_validate)(
        client.chat.completions.create
    )
    for _ in range(2):
        await forced(model="o3-mini", messages=MESSAGES, reasoning_effort="low")
    assert stub.chats() == 3


async def test_sdk_errors_pass_through_as_the_sdks_own(
    cache: AsyncCacheManager, stub: StubEmbeddingServer
) -> None:
    client = client_for(stub)
    create = cached_completion(cache, decode=ChatCompletion.model_validate)(
        client.chat.completions.create
    )
    stub.fail_next(429)
    with pytest.raises(openai.RateLimitError):
        await create(model="m", messages=MESSAGES, temperature=0)
    # Nothing was cached: the next call reaches the provider.
    answer = await create(model="m", messages=MESSAGES, temperature=0)
    assert isinstance(answer, ChatCompletion)
    assert stub.chats() == 2


async def test_an_sdk_message_in_the_conversation_is_hashed_as_its_json(
    cache: AsyncCacheManager, stub: StubEmbeddingServer
) -> None:
    client = client_for(stub)
    create = cached_completion(cache, decode=ChatCompletion.model_validate)(
        client.chat.completions.create
    )
    first = await create(model="m", messages=MESSAGES, seed=1)
    assert isinstance(first, ChatCompletion)
    follow_up = [*MESSAGES, first.choices[0].message, {"role": "user", "content": "and 3+3?"}]
    for _ in range(2):
        await create(model="m", messages=follow_up, seed=1)  # type: ignore[arg-type]
    assert stub.chats() == 2


async def test_the_wrapper_keeps_the_sdk_signature(
    cache: AsyncCacheManager, stub: StubEmbeddingServer
) -> None:
    """Checked by mypy --strict over tests/: a coroutine for create_task, and a misspelt
    argument refused (the ignore below is itself an error if mypy accepted the call)."""
    client = client_for(stub)
    create = cached_completion(cache, decode=ChatCompletion.model_validate)(
        client.chat.completions.create
    )
    task = asyncio.create_task(create(model="m", messages=MESSAGES, temperature=0))
    assert isinstance(await task, ChatCompletion)
    with pytest.raises(TypeError, match="messages"):
        await create(model="m", mesages=MESSAGES, temperature=0)  # type: ignore[call-overload]


async def test_concurrent_equal_sdk_calls_share_one_request(
    cache: AsyncCacheManager, stub: StubEmbeddingServer
) -> None:
    client = client_for(stub)
    create = cached_completion(cache, decode=ChatCompletion.model_validate)(
        client.chat.completions.create
    )
    answers = await asyncio.gather(
        *(create(model="m", messages=MESSAGES, temperature=0) for _ in range(8))
    )
    assert stub.chats() == 1
    assert all(isinstance(a, ChatCompletion) for a in answers)
