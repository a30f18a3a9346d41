"""LLM response cache: canonical keys, determinism rule, tenants, usage, the decorator."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gathering_cache import (
    ArgumentTypeError,
    AsyncCacheManager,
    InvalidArgumentError,
    SerializationError,
    cached_completion,
    is_deterministic,
)

MESSAGES = [{"role": "user", "content": "What is 2 + 2?"}]
USAGE = {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}


async def test_round_trip_with_usage(cache: AsyncCacheManager) -> None:
    ok = await cache.set_llm_response(
        "gpt-4o", {"content": "4"}, messages=MESSAGES, usage=USAGE, temperature=0
    )
    assert ok is True
    entry = await cache.get_llm_response("gpt-4o", messages=MESSAGES, temperature=0)
    assert entry is not None
    assert entry["response"] == {"content": "4"}
    assert entry["usage"] == USAGE
    assert entry["model"] == "gpt-4o"
    stats = await cache.get_stats()
    assert stats["llm_tokens_saved"] == 15
    assert stats["namespaces"]["llm"]["hits"] == 1
    key = cache.llm.key("gpt-4o", None, MESSAGES, None, {"temperature": 0})
    assert key.startswith("gathering:llm:shared:")
    assert 3590 <= (await cache.ttl(key) or 0) <= 3600


@pytest.mark.parametrize(
    "change",
    [
        {"model": "gpt-4o-mini"},
        {"messages": [{"role": "user", "content": "What is 2 + 3?"}]},
        {"top_p": 0.5},
        {"max_tokens": 10},
        {"seed": 7},
        {"tools": [{"type": "function", "function": {"name": "add"}}]},
        {"response_format": {"type": "json_object"}},
        {"stop": ["\n"]},
    ],
)
async def test_every_output_changing_parameter_changes_the_key(
    cache: AsyncCacheManager, change: dict[str, Any]
) -> None:
    base: dict[str, Any] = {"model": "gpt-4o", "messages": MESSAGES, "temperature": 0}
    await cache.set_llm_response(response="cached", **base)
    assert await cache.get_llm_response(**{**base, **change}) is None
    assert (await cache.get_llm_response(**base) or {}).get("response") == "cached"


async def test_key_is_canonical(cache: AsyncCacheManager) -> None:
    a = cache.llm.key("m", "p", None, None, {"temperature": 0, "tools": [{"b": 1, "a": 2}]})
    b = cache.llm.key("m", "p", None, None, {"tools": [{"a": 2, "b": 1}], "temperature": 0})
    c = cache.llm.key(
        "m",
        "p",
        None,
        None,
        {
            "temperature": 0,
            "tools": [{"a": 2, "b": 1}],
            "stream": True,
            "timeout": 30,
            "user": "u1",
        },
    )
    assert a == b == c


async def test_only_deterministic_calls_by_default(cache: AsyncCacheManager) -> None:
    assert is_deterministic({"temperature": 0})
    assert is_deterministic({"temperature": 0.0})
    assert is_deterministic({"temperature": 0.9, "seed": 42})
    assert not is_deterministic({"temperature": 0.7})
    assert not is_deterministic({})
    assert not is_deterministic({"temperature": False})

    assert await cache.set_llm_response("m", "r", prompt="p", temperature=0.7) is False
    assert await cache.get_llm_response("m", prompt="p", temperature=0.7) is None
    assert (await cache.get_stats())["total_keys"] == 0
    assert await cache.set_llm_response("m", "r", prompt="p", temperature=0.7, force=True)
    entry = await cache.get_llm_response("m", prompt="p", temperature=0.7, force=True)
    assert entry is not None
    assert entry["response"] == "r"
    assert (await cache.get_stats())["llm_skipped"] == 2


async def test_namespaces_isolate_tenants(cache: AsyncCacheManager) -> None:
    await cache.set_llm_response("m", "for agent 1", prompt="p", namespace="agent:1", seed=1)
    await cache.set_llm_response("m", "shared", prompt="p", seed=1)
    e1 = await cache.get_llm_response("m", prompt="p", namespace="agent:1", seed=1)
    assert e1 is not None
    assert e1["response"] == "for agent 1"
    assert await cache.get_llm_response("m", prompt="p", namespace="agent:2", seed=1) is None
    shared = await cache.get_llm_response("m", prompt="p", seed=1)
    assert shared is not None
    assert shared["response"] == "shared"
    assert await cache.invalidate_llm_responses("agent:1") == 1
    assert await cache.get_llm_response("m", prompt="p", namespace="agent:1", seed=1) is None
    assert await cache.get_llm_response("m", prompt="p", seed=1) is not None


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"model": "m"}, InvalidArgumentError, "exactly one"),
        ({"model": "m", "prompt": "p", "messages": MESSAGES}, InvalidArgumentError, "exactly"),
        ({"model": "", "prompt": "p"}, InvalidArgumentError, "model"),
        ({"model": None, "prompt": "p"}, ArgumentTypeError, "model"),
        ({"model": "m", "prompt": 5}, ArgumentTypeError, "prompt"),
        ({"model": "m", "messages": "hi"}, ArgumentTypeError, "messages"),
        ({"model": "m", "prompt": "p", "namespace": 3}, ArgumentTypeError, "namespace"),
        ({"model": "m", "prompt": "p", "tools": {1, 2}}, SerializationError, "hash"),
    ],
)
async def test_bad_requests(
    cache: AsyncCacheManager, kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        await cache.set_llm_response(response="r", temperature=0, **kwargs)
    with pytest.raises(error, match=match):
        await cache.get_llm_response(temperature=0, **kwargs)
    assert (await cache.get_stats())["total_keys"] == 0


async def test_unencodable_response_writes_nothing(cache: AsyncCacheManager) -> None:
    with pytest.raises(SerializationError):
        await cache.set_llm_response("m", object(), prompt="p", temperature=0)
    assert (await cache.get_stats())["total_keys"] == 0


# -- the decorator ------------------------------------------------------------------------------


class FakeLLM:
    def __init__(self, delay: float = 0.0) -> None:
        self.calls = 0
        self.delay = delay
        self.fail = False

    async def complete(
        self, model: str, messages: list[dict[str, str]], **params: Any
    ) -> dict[str, Any]:
        self.calls += 1
        await asyncio.sleep(self.delay)
        if self.fail:
            raise RuntimeError("rate limited")
        return {
            "choices": [{"message": {"content": f"answer {self.calls}"}}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
        }


async def test_decorator_answers_deterministic_calls_once(cache: AsyncCacheManager) -> None:
    llm = FakeLLM()
    complete = cached_completion(cache)(llm.complete)
    first = await complete("gpt-4o", MESSAGES, temperature=0)
    second = await complete(model="gpt-4o", messages=MESSAGES, temperature=0)
    assert first == second
    assert llm.calls == 1
    assert (await cache.get_stats())["llm_tokens_saved"] == 15

    await complete("gpt-4o", MESSAGES, temperature=0.8)
    await complete("gpt-4o", MESSAGES, temperature=0.8)
    assert llm.calls == 3  # not deterministic: not cached
    await complete("gpt-4o", MESSAGES, temperature=0.8, cache_force=True)
    await complete("gpt-4o", MESSAGES, temperature=0.8, cache_force=True)
    assert llm.calls == 4


async def test_decorator_single_flight_and_errors(cache: AsyncCacheManager) -> None:
    llm = FakeLLM(delay=0.05)
    complete = cached_completion(cache, namespace="circle:5")(llm.complete)
    results = await asyncio.gather(*(complete("m", MESSAGES, seed=3) for _ in range(50)))
    assert llm.calls == 1
    assert all(r == results[0] for r in results)

    llm.fail = True
    other = [{"role": "user", "content": "different"}]
    outcomes = await asyncio.gather(
        *(complete("m", other, seed=3) for _ in range(5)), return_exceptions=True
    )
    assert llm.calls == 2
    assert all(isinstance(o, RuntimeError) and "rate limited" in str(o) for o in outcomes)
    assert await cache.get_llm_response("m", messages=other, seed=3, namespace="circle:5") is None
    # tenant isolation: another namespace pays again
    llm.fail = False
    await complete("m", MESSAGES, seed=3, cache_namespace="circle:6")
    assert llm.calls == 3


async def test_the_decorator_never_breaks_the_call_it_wraps(
    cache: AsyncCacheManager, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[str] = []

    class Message:  # an SDK object orjson cannot encode
        def __init__(self, content: str) -> None:
            self.content = content

    class Response:  # an SDK response with model_dump()
        def __init__(self, text: str) -> None:
            self.text = text

        def model_dump(self, mode: str = "python") -> dict[str, str]:
            return {"text": self.text}

        @classmethod
        def model_validate(cls, data: dict[str, str]) -> Response:
            return cls(data["text"])

    async def complete(messages: Any, model: str = "default-model", **params: Any) -> Any:
        calls.append(model)
        if params.get("unstorable"):
            return {"obj": object()}
        return Response("hi")

    plain = cached_completion(cache)(complete)
    # unhashable request, uncached call: answered normally
    assert (await plain([Message("x")], temperature=0.7)).text == "hi"
    assert (await plain([Message("x")], temperature=0)).text == "hi"
    # the default model is part of the key; SDK objects are not cached without decode=
    first = await plain([{"role": "user", "content": "q"}], temperature=0)
    second = await plain([{"role": "user", "content": "q"}], temperature=0)
    assert type(first) is type(second) is Response
    assert calls == ["default-model"] * 4
    # with decode= they are cached, and a hit has the same type as a miss
    typed = cached_completion(cache, decode=Response.model_validate)(complete)
    a = await typed([{"role": "user", "content": "q"}], temperature=0)
    b = await typed([{"role": "user", "content": "q"}], temperature=0)
    assert isinstance(a, Response)
    assert isinstance(b, Response)
    assert b.text == "hi"
    assert len(calls) == 5
    # a response that cannot be stored is still returned
    assert "obj" in await plain([{"role": "user", "content": "z"}], temperature=0, unstorable=1)
    assert "not cached" in caplog.text
