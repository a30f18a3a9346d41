"""sync_cached_completion: the LLM cache in front of a synchronous completion function, on
the sync facade's loop (the function runs in the caller's thread)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from gathering_cache import CacheConfig, CacheManager, sync_cached_completion
from tests.stub_openai import StubEmbeddingServer

MESSAGES = [{"role": "user", "content": "What is 2 + 2?"}]


@pytest.fixture
def cache() -> Iterator[CacheManager]:
    with CacheManager(CacheConfig(backend="memory")) as manager:
        yield manager


class Provider:
    def __init__(self, delay: float = 0.0) -> None:
        self.calls = 0
        self.threads: set[int] = set()
        self.delay = delay
        self.lock = threading.Lock()

    def __call__(self, model: str, messages: Any = None, **params: Any) -> dict[str, Any]:
        with self.lock:
            self.calls += 1
        self.threads.add(threading.get_ident())
        time.sleep(self.delay)
        return {"content": f"{model}: {messages[-1]['content']}", "usage": {"total_tokens": 9}}


def test_deterministic_calls_are_answered_once_in_the_callers_thread(
    cache: CacheManager,
) -> None:
    provider = Provider()
    complete = sync_cached_completion(cache)(provider)
    first = complete("m", messages=MESSAGES, temperature=0)
    second = complete("m", messages=MESSAGES, temperature=0)
    assert first == second == provider("m", messages=MESSAGES)
    assert provider.calls == 2  # the two wrapped calls computed once (plus the direct one)
    assert provider.threads == {threading.get_ident()}  # never on the facade's loop thread
    stats = cache.get_stats()
    assert stats["llm_tokens_saved"] == 9
    assert stats["namespaces"]["llm"]["hits"] == 1


def test_streams_and_non_deterministic_calls_bypass_the_cache(cache: CacheManager) -> None:
    provider = Provider()
    complete = sync_cached_completion(cache)(provider)
    for _ in range(2):
        complete("m", messages=MESSAGES, temperature=0.7)
        complete("m", messages=MESSAGES, temperature=0, stream=True)
    assert provider.calls == 4
    assert cache.get_stats()["llm_skipped"] == 4
    forced = sync_cached_completion(cache, force=True)(provider)
    forced("m", messages=MESSAGES, temperature=0.7)
    forced("m", messages=MESSAGES, temperature=0.7)
    assert provider.calls == 5


def test_concurrent_threads_share_one_computation(cache: CacheManager) -> None:
    provider = Provider(delay=0.2)
    complete = sync_cached_completion(cache)(provider)
    results: list[Any] = []
    threads = [
        threading.Thread(target=lambda: results.append(complete("m", messages=MESSAGES, seed=1)))
        for _ in range(6)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert len(results) == 6
    assert all(result == results[0] for result in results)
    assert provider.calls == 1


def test_errors_reach_the_caller_and_nothing_is_cached(cache: CacheManager) -> None:
    calls = 0

    def failing(model: str, messages: Any = None, **params: Any) -> dict[str, Any]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ValueError("provider down")
        return {"content": "ok"}

    complete = sync_cached_completion(cache)(failing)
    with pytest.raises(ValueError, match="provider down"):
        complete("m", messages=MESSAGES, temperature=0)
    assert complete("m", messages=MESSAGES, temperature=0) == {"content": "ok"}
    assert complete("m", messages=MESSAGES, temperature=0) == {"content": "ok"}
    assert calls == 2


def test_redis_down_or_the_facade_closed_still_answers() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    provider = Provider()
    with CacheManager(CacheConfig(port=port)) as down:
        complete = sync_cached_completion(down)(provider)
        assert complete("m", messages=MESSAGES, temperature=0)["content"] == "m: What is 2 + 2?"
        complete("m", messages=MESSAGES, temperature=0)
    assert provider.calls == 2  # computed each time, never raised
    complete("m", messages=MESSAGES, temperature=0, cache_namespace="t")  # closed facade
    assert provider.calls == 3


def test_bad_arguments_raise_when_decorating() -> None:
    with pytest.raises(TypeError, match="CacheManager"):
        sync_cached_completion(object())  # type: ignore[arg-type]
    with (
        CacheManager(CacheConfig(backend="memory")) as cache,
        pytest.raises(TypeError, match="callable"),
    ):
        sync_cached_completion(cache, decode=42)  # type: ignore[arg-type]


def test_the_sync_openai_sdk_is_cached_with_its_own_type(cache: CacheManager) -> None:
    openai = pytest.importorskip("openai")
    from openai.types.chat import ChatCompletion

    with StubEmbeddingServer() as stub:
        client = openai.OpenAI(api_key="test", base_url=stub.base_url, max_retries=0)
        create = sync_cached_completion(cache, decode=ChatCompletion.model_validate)(
            client.chat.completions.create
        )
        miss = create(model="gpt-4o-mini", messages=MESSAGES, temperature=0)
        hit = create(model="gpt-4o-mini", messages=MESSAGES, temperature=0, user="u-2")
        assert type(miss) is type(hit) is ChatCompletion
        assert hit == miss
        assert stub.chats() == 1
        client.close()
