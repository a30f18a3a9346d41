"""Regressions of the agent helpers (MemoryManager, CachedEmbedder, the LLM decorator, the
OpenAI provider) and of argument validation: every bad argument is a specific library error
naming it, the same whatever the cache's state; stored data is never trusted on read."""

from __future__ import annotations

import asyncio
import gc
import math
from array import array
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fakeredis import FakeAsyncRedis, FakeServer

from gathering_cache import (
    ArgumentTypeError,
    AsyncCacheManager,
    CacheConfig,
    CachedEmbedder,
    CacheInvalidator,
    ConfigurationError,
    EmbeddingService,
    EventBus,
    InMemoryVectorStore,
    InvalidArgumentError,
    MemoryManager,
    OpenAIEmbeddings,
    SerializationError,
    cached_completion,
    is_deterministic,
    warm_rag_cache,
)
from gathering_cache.core.encoding import encode_vector
from tests.conftest import Factory
from tests.servers import RedisServer
from tests.stub_openai import StubEmbeddingServer, vector_for

QUERY = "What are the user's preferences?"
SURROGATE = "bad\udc80name"


async def provider(texts: list[str]) -> list[list[float]]:
    return [vector_for(text, 8) for text in texts]


@pytest.fixture
def memory(cache: AsyncCacheManager) -> MemoryManager:
    return MemoryManager(cache, provider, InMemoryVectorStore())


# -- MemoryManager.share with membership unknown (issue 9 #5) ----------------------------------


async def test_share_with_unknown_circle_invalidates_every_agent(memory: MemoryManager) -> None:
    cache = memory.cache
    for agent in (1, 2, 7):
        await memory.remember(agent, f"agent {agent} notes on user preferences")
        await memory.recall(agent, QUERY)
        assert await cache.get_rag_results(agent, QUERY) is not None
    memory_id = await memory.remember(1, "User prefers dark mode")
    await memory.recall(1, QUERY)
    assert await cache.get_circle_context(5) is None  # membership unknown
    await memory.share(memory_id, circle_id=5)  # as in docs/memory.md: no error
    for agent in (1, 2, 7):
        assert await cache.get_rag_results(agent, QUERY) is None


class CircleAwareStore(InMemoryVectorStore):
    """A store that resolves circle membership itself (as a database-backed one would)."""

    def __init__(self, circles: Mapping[int, list[int]]) -> None:
        super().__init__()
        self.circles = circles
        self.shared_with: list[tuple[list[int], int | None]] = []

    async def share(  # type: ignore[override]
        self, memory_id: str, agent_ids: list[int], *, circle_id: int | None = None
    ) -> int | None:
        self.shared_with.append((list(agent_ids), circle_id))
        members = self.circles.get(circle_id, []) if circle_id is not None else []
        return await super().share(memory_id, [*agent_ids, *members])


async def test_share_passes_the_circle_to_a_store_that_takes_it(
    cache: AsyncCacheManager,
) -> None:
    store = CircleAwareStore({5: [2, 3]})
    memory = MemoryManager(cache, provider, store)
    memory_id = await memory.remember(1, "User prefers dark mode")
    assert await memory.recall(2, QUERY) == []
    await memory.share(memory_id, circle_id=5)
    assert store.shared_with == [([], 5)]
    found = await memory.recall(2, QUERY)
    assert [r["content"] for r in found] == ["User prefers dark mode"]


async def test_share_checks_its_arguments(memory: MemoryManager) -> None:
    memory_id = await memory.remember(1, "x")
    with pytest.raises(ArgumentTypeError, match="memory_id"):
        await memory.share(5, members=[2])  # type: ignore[arg-type]
    with pytest.raises(ArgumentTypeError, match="members"):
        await memory.share(memory_id, members=2)  # type: ignore[arg-type]
    with pytest.raises(ArgumentTypeError, match="circle_id"):
        await memory.share(memory_id, circle_id="5")  # type: ignore[arg-type]
    with pytest.raises(ArgumentTypeError, match="memory_id"):
        await memory.forget(1, 5)  # type: ignore[arg-type]
    with pytest.raises(ArgumentTypeError, match="members"):
        await memory.share(memory_id, members={2: "x"})  # a mapping: ambiguous, refused
    await memory.share(memory_id, members={2, 3})  # any iterable of ids
    assert len(await memory.recall(3, QUERY)) == 1


# -- invalidate_cache from sync code (issue 9 #6, issue 10 #16) ---------------------------------


def _manager(backend: str, request: pytest.FixtureRequest) -> AsyncCacheManager:
    if backend == "memory":
        return AsyncCacheManager(CacheConfig(backend="memory"))
    if backend == "fakeredis":
        return AsyncCacheManager(CacheConfig(), client=FakeAsyncRedis(server=FakeServer()))
    server: RedisServer = request.getfixturevalue("redis_server")
    return AsyncCacheManager(CacheConfig(url=server.url, key_prefix="syncinv:"))


def test_invalidate_cache_from_sync_code_says_how_and_marks_nothing(
    backend: str, request: pytest.FixtureRequest
) -> None:
    loop = asyncio.new_event_loop()
    try:
        cache = _manager(backend, request)
        memory = MemoryManager(cache, provider)

        async def setup() -> None:
            await cache.clear_all()
            await memory.remember(1, "User prefers dark mode")
            await memory.recall(1, QUERY)

        loop.run_until_complete(setup())
        with pytest.raises(RuntimeError, match="run_coroutine_threadsafe"):
            memory.invalidate_cache(agent_id=1)  # sync code: no loop running here
        with pytest.raises(ArgumentTypeError):
            memory.invalidate_cache(agent_id="1")  # type: ignore[arg-type]

        async def recall_twice() -> int:
            before = memory.recalls_from_cache
            await memory.recall(1, QUERY)
            await memory.recall(1, QUERY)
            return memory.recalls_from_cache - before

        # Not marked dirty by the refused call: recalls still use the cache.
        assert loop.run_until_complete(recall_twice()) == 2
        loop.run_until_complete(cache.aclose())
    finally:
        loop.close()


# -- remember() metadata the cache cannot store (issue 10 #6) ------------------------------------


async def test_remember_refuses_metadata_the_cache_cannot_hold(memory: MemoryManager) -> None:
    store = memory.store
    assert isinstance(store, InMemoryVectorStore)
    await memory.remember(1, "User prefers dark mode")
    for bad in ({"when": datetime(2024, 5, 1)}, {"tags": {"a", "b"}}, {"score": math.nan}):
        with pytest.raises(SerializationError, match="metadata"):
            await memory.remember(1, "x", metadata=bad)
    assert len(store) == 1  # nothing stored
    await memory.recall(1, QUERY)
    found = await memory.recall(1, QUERY)
    assert [r["content"] for r in found] == ["User prefers dark mode"]
    assert memory.recalls_from_cache == 1


class DatedStore(InMemoryVectorStore):
    """A store that adds a field of its own the cache cannot hold."""

    async def search(
        self,
        agent_id: int,
        vector: list[float],
        limit: int,
        filters: Mapping[str, Any] | None = None,
    ) -> list[dict[str, Any]]:
        found = await super().search(agent_id, vector, limit, filters)
        return [{**r, "created_at": datetime(2024, 5, 1)} for r in found]


async def test_recall_answers_uncached_when_results_cannot_be_cached(
    cache: AsyncCacheManager, caplog: pytest.LogCaptureFixture
) -> None:
    store = DatedStore()
    memory = MemoryManager(cache, provider, store)
    await memory.remember(1, "User prefers dark mode")
    for _ in range(3):
        found = await memory.recall(1, QUERY)
        assert found[0]["created_at"] == datetime(2024, 5, 1)
    assert store.searches == 3
    warnings = [r for r in caplog.records if "not cached" in r.getMessage()]
    assert len([r for r in warnings if r.levelname == "WARNING"]) == 1


# -- recall(limit=), default_limit, warming (issue 10 #13) ---------------------------------------


async def test_recall_limit_is_checked(memory: MemoryManager) -> None:
    await memory.remember(1, "User prefers dark mode")
    await memory.remember(1, "User prefers metric units")
    for bad in ("5", True, 2.0):
        with pytest.raises(ArgumentTypeError, match="limit"):
            await memory.recall(1, QUERY, limit=bad)  # type: ignore[arg-type]
    for bad in (0, -1):
        with pytest.raises(InvalidArgumentError, match="limit"):
            await memory.recall(1, QUERY, limit=bad)
    assert len(await memory.recall(1, QUERY, limit=2)) == 2
    with pytest.raises(ArgumentTypeError, match="default_limit"):
        MemoryManager(memory.cache, provider, default_limit="5")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="concurrency"):
        await warm_rag_cache(memory, {1: [QUERY]}, concurrency=0)
    with pytest.raises(ArgumentTypeError, match="concurrency"):
        await warm_rag_cache(memory, {1: [QUERY]}, concurrency="4")  # type: ignore[arg-type]


# -- text arguments that cannot be encoded, in every state (issue 10 #12) -----------------------

STATES = ["connected", "disabled", "closed"]


@pytest.fixture(params=STATES)
async def any_state_cache(request: pytest.FixtureRequest, make_cache: Factory) -> AsyncCacheManager:
    state: str = request.param
    if state == "disabled":
        return await make_cache(enabled=False)
    cache = await make_cache()
    if state == "closed":
        await cache.aclose()
    return cache


async def test_surrogates_raise_the_same_error_in_every_state(
    any_state_cache: AsyncCacheManager,
) -> None:
    cache = any_state_cache
    with pytest.raises(InvalidArgumentError, match="model"):
        await cache.get_embedding("x", model=SURROGATE)
    with pytest.raises(InvalidArgumentError, match="model"):
        await cache.set_embedding("x", [0.5], model=SURROGATE)
    with pytest.raises(InvalidArgumentError, match="model"):
        await cache.get_embeddings(["x"], model=SURROGATE)
    with pytest.raises(InvalidArgumentError, match="model"):
        CachedEmbedder(provider, cache, model=SURROGATE)
    with pytest.raises(InvalidArgumentError, match="namespace"):
        await cache.get_llm_response("m", prompt="p", namespace=SURROGATE, temperature=0)
    with pytest.raises(InvalidArgumentError, match="namespace"):
        await cache.set_llm_response("m", "r", prompt="p", namespace=SURROGATE, temperature=0)
    with pytest.raises(InvalidArgumentError, match="namespace"):
        await cache.invalidate_llm_responses(SURROGATE)
    with pytest.raises(InvalidArgumentError, match="namespace"):
        cached_completion(cache, namespace=SURROGATE)
    with pytest.raises(InvalidArgumentError, match="model"):
        await cache.get_llm_response(SURROGATE, prompt="p", temperature=0)
    with pytest.raises(InvalidArgumentError, match="pattern"):
        await cache.delete_pattern(f"gathering:{SURROGATE}*")
    with pytest.raises(InvalidArgumentError, match="text"):
        await cache.get_embedding(SURROGATE)
    memory = MemoryManager(cache, provider)
    with pytest.raises(InvalidArgumentError):
        await memory.remember(1, SURROGATE)
    with pytest.raises(InvalidArgumentError):
        await memory.recall(1, SURROGATE)


async def test_a_surrogate_never_poisons_later_operations(cache: AsyncCacheManager) -> None:
    with pytest.raises(InvalidArgumentError):
        await cache.delete_pattern(f"gathering:{SURROGATE}*")
    with pytest.raises(InvalidArgumentError):
        await cache.invalidate_llm_responses(SURROGATE)
    assert await cache.set("gathering:k", 1) is True
    assert await cache.get("gathering:k") == 1
    assert await cache.delete_pattern("gathering:*") >= 1


async def test_cached_completion_refuses_a_bad_per_call_namespace(
    cache: AsyncCacheManager,
) -> None:
    calls = 0

    @cached_completion(cache)
    async def complete(model: str, messages: list[dict[str, str]], **params: Any) -> str:
        nonlocal calls
        calls += 1
        return "4"

    with pytest.raises(InvalidArgumentError, match="namespace"):
        await complete("m", [{"role": "user", "content": "2+2"}], cache_namespace=SURROGATE)
    assert calls == 0


# -- embedding arguments (issue 10 #13) ----------------------------------------------------------


async def test_embedding_batches_of_the_wrong_type(any_state_cache: AsyncCacheManager) -> None:
    cache = any_state_cache
    with pytest.raises(ArgumentTypeError, match="texts"):
        await cache.get_embeddings(5)  # type: ignore[call-overload]
    with pytest.raises(ArgumentTypeError, match="texts"):
        await cache.set_embeddings(5, [[0.5]])  # type: ignore[arg-type]
    with pytest.raises(ArgumentTypeError, match="embeddings"):
        await cache.set_embeddings(["a"], 5)  # type: ignore[arg-type]
    with pytest.raises(ArgumentTypeError, match="texts"):
        await cache.get_embeddings(b"ab")  # type: ignore[arg-type]


async def test_single_flight_lock_ttl_is_checked(cache: AsyncCacheManager) -> None:
    for bad in (0.0004, 0, -1, math.nan, math.inf):
        with pytest.raises(InvalidArgumentError, match="lock_ttl"):
            CachedEmbedder(provider, cache, lock_ttl=bad)
        with pytest.raises(InvalidArgumentError, match="lock_ttl"):
            cached_completion(cache, lock_ttl=bad)
    for wrong in ("30", True, None):
        with pytest.raises(ArgumentTypeError, match="lock_ttl"):
            CachedEmbedder(provider, cache, lock_ttl=wrong)  # type: ignore[arg-type]
        with pytest.raises(ArgumentTypeError, match="lock_ttl"):
            cached_completion(cache, lock_ttl=wrong)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="wait_timeout"):
        CachedEmbedder(provider, cache, wait_timeout=-1)
    with pytest.raises(InvalidArgumentError, match="wait_timeout"):
        cached_completion(cache, wait_timeout=math.nan)
    with pytest.raises(InvalidArgumentError, match="ttl"):
        cached_completion(cache, ttl=0)
    with pytest.raises(ArgumentTypeError, match="decode"):
        cached_completion(cache, decode="json")  # type: ignore[arg-type]
    with pytest.raises(ArgumentTypeError, match="cache"):
        cached_completion("cache")  # type: ignore[arg-type]
    with pytest.raises(ArgumentTypeError, match="max_batch_size"):
        CachedEmbedder(provider, cache, max_batch_size=True)
    # The smallest accepted lock lives 1 ms: a lock the store takes (PX 0 would be refused).
    embedder = CachedEmbedder(provider, cache, model="m", lock_ttl=0.001)
    assert embedder.lock_ttl_ms == 1
    taken = await cache.embeddings.acquire_locks(["t"], "m", None, "tok", embedder.lock_ttl_ms)
    assert taken == [True]


# -- array-likes, float32 range, planted vectors (issue 10 #14) ----------------------------------


async def test_numpy_views_are_accepted_everywhere(cache: AsyncCacheManager) -> None:
    grid = np.arange(12, dtype=np.float64).reshape(3, 4)
    views = {
        "strided": grid[0, ::2],
        "transposed": grid.T[:, 1],
        "fortran": np.asfortranarray(grid)[:, 2],
        "reversed": grid[1, ::-1],
    }
    for name, view in views.items():
        assert await cache.set_embedding(name, view) is True
        assert await cache.get_embedding(name) == view.tolist()
    assert await cache.set_embeddings(list(views), list(views.values())) is True
    assert await cache.set("gathering:grid", {"t": grid.T, "f": np.asfortranarray(grid)}) is True
    assert await cache.get("gathering:grid") == {"t": grid.T.tolist(), "f": grid.tolist()}
    results = [{"id": "m1", "vector": grid[:, 0]}]
    assert await cache.set_rag_results(1, QUERY, results) is True
    assert await cache.get_rag_results(1, QUERY) == [{"id": "m1", "vector": [0.0, 4.0, 8.0]}]
    with pytest.raises(SerializationError, match="finite"):
        await cache.set("gathering:nan", np.array([1.0, 0.0, math.nan])[::2])


async def test_float32_precision_refuses_values_beyond_its_range(make_cache: Factory) -> None:
    cache = await make_cache(embedding_precision="float32")
    for vector in ([0.5, 1e39], [-3.5e38]):
        with pytest.raises(InvalidArgumentError, match="float32"):
            await cache.set_embedding("big", vector)
        with pytest.raises(InvalidArgumentError, match="float32"):
            await cache.set_embeddings(["ok", "big"], [[0.5], vector])
    assert await cache.get_embeddings(["big", "ok"]) == [None, None]  # nothing written
    assert await cache.set_embedding("max", [3.4e38]) is True
    stored = await cache.get_embedding("max")
    assert stored is not None
    assert math.isfinite(stored[0])


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("typecode", ["f", "d"])
async def test_planted_non_finite_vectors_are_misses(
    cache: AsyncCacheManager, bad: float, typecode: str
) -> None:
    key = cache.embeddings.key("planted", "m", None)
    header = b"\x01f" if typecode == "f" else b"\x01d"
    await cache._core.store.set(key, header + array(typecode, [0.5, bad]).tobytes(), 60)
    assert await cache.get_embedding("planted", model="m") is None
    assert await cache.get_embeddings(["planted"], model="m") == [None]
    embedder = CachedEmbedder(provider, cache, model="m")
    assert await embedder.embed("planted") == vector_for("planted", 8)  # recomputed
    assert embedder.stats.texts_sent == 1
    assert await cache.get_embedding("planted", model="m") == vector_for("planted", 8)


def test_large_finite_vectors_still_decode() -> None:
    from gathering_cache.core.encoding import decode_vector

    for vector in ([3.0e38, -2.0e38, 1.0], [1e300, -1e308]):
        assert decode_vector(encode_vector(vector)).tolist() == vector


# -- cached_completion: an entry decode= refuses is a miss ----------------------------------------


async def test_cached_completion_recomputes_an_entry_decode_refuses(
    cache: AsyncCacheManager,
) -> None:
    calls = 0

    class Answer:
        def __init__(self, text: str) -> None:
            self.text = text

        def model_dump(self, mode: str = "python") -> dict[str, str]:
            return {"text": self.text}

        @classmethod
        def model_validate(cls, data: Any) -> Answer:
            if not isinstance(data, dict) or "text" not in data:
                raise ValueError("old schema")
            return cls(data["text"])

    @cached_completion(cache, decode=Answer.model_validate)
    async def complete(model: str, prompt: str, temperature: float = 0) -> Answer:
        nonlocal calls
        calls += 1
        return Answer("4")

    key = cache.llm.key("m", "2+2", None, None, {"temperature": 0})
    await cache._core.set(key, {"response": {"content": "4"}, "usage": None}, 60)  # old schema
    first = await complete("m", prompt="2+2")
    assert first.text == "4"
    assert calls == 1
    second = await complete("m", prompt="2+2")  # the entry was overwritten: a hit
    assert second.text == "4"
    assert calls == 1


# -- the OpenAI provider's configuration (issue 9 #12, issue 10 #13) ------------------------------


def test_from_env_without_an_api_key_fails_at_construction(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)  # no .env
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.setenv("CACHE_BACKEND", "memory")
    for build in (OpenAIEmbeddings.from_env, EmbeddingService.from_env, MemoryManager.from_env):
        with pytest.raises(ConfigurationError, match="OPENAI_API_KEY"):
            build()
    with pytest.raises(ConfigurationError, match="api_key"):
        OpenAIEmbeddings()
    monkeypatch.setenv("OPENAI_API_KEY", "")
    with pytest.raises(ConfigurationError, match="OPENAI_API_KEY"):
        OpenAIEmbeddings.from_env()


def test_a_local_server_needs_no_key(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("CACHE_BACKEND", "memory")
    with StubEmbeddingServer() as stub:
        monkeypatch.setenv("OPENAI_BASE_URL", stub.base_url)

        async def embed() -> list[float]:
            async with EmbeddingService.from_env() as embedder:
                return await embedder.embed("hello")

        assert asyncio.run(embed()) == vector_for("hello", stub.dimensions)
        assert "Authorization" not in stub.headers[0]
    assert OpenAIEmbeddings(api_key="sk-test").model == "text-embedding-3-small"


def test_openai_provider_arguments_are_checked() -> None:
    local = "http://127.0.0.1:1/v1"
    with pytest.raises(ArgumentTypeError, match="client"):
        OpenAIEmbeddings(base_url=local, client="x")  # type: ignore[arg-type]
    with pytest.raises(ArgumentTypeError, match="model"):
        OpenAIEmbeddings(5, base_url=local)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="model"):
        OpenAIEmbeddings("", base_url=local)
    with pytest.raises(ArgumentTypeError, match="base_url"):
        OpenAIEmbeddings(base_url=None)  # type: ignore[arg-type]
    with pytest.raises(ArgumentTypeError, match="dimensions"):
        OpenAIEmbeddings(base_url=local, dimensions="256")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="encoding_format"):
        OpenAIEmbeddings(base_url=local, encoding_format="json")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="max_retries"):
        OpenAIEmbeddings(base_url=local, max_retries=-1)
    with pytest.raises(InvalidArgumentError, match="timeout"):
        OpenAIEmbeddings(base_url=local, timeout=0)
    with pytest.raises(ArgumentTypeError, match="api_key"):
        OpenAIEmbeddings(base_url=local, api_key=123)  # type: ignore[arg-type]


# -- next to the reported items: other arguments, other array-likes -----------------------------


async def test_helper_constructors_check_their_arguments(memory: MemoryManager) -> None:
    cache = memory.cache
    with pytest.raises(ArgumentTypeError, match="vector_store"):
        MemoryManager(cache, provider, "store")  # type: ignore[arg-type]
    with pytest.raises(ArgumentTypeError, match="bus"):
        MemoryManager(cache, provider, bus="bus")  # type: ignore[arg-type]
    with pytest.raises(ArgumentTypeError, match="memory"):
        await warm_rag_cache("memory", {1: [QUERY]})  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="query"):
        await warm_rag_cache(memory, {1: [QUERY, SURROGATE]})
    with pytest.raises(ArgumentTypeError, match="cache"):
        CacheInvalidator("cache", EventBus())  # type: ignore[arg-type]
    with pytest.raises(ArgumentTypeError, match="bus"):
        CacheInvalidator(cache, "bus")  # type: ignore[arg-type]
    with pytest.raises(ArgumentTypeError, match="params"):
        is_deterministic(0)  # type: ignore[arg-type]


async def test_a_provider_may_return_a_numpy_matrix(cache: AsyncCacheManager) -> None:
    def encode(texts: list[str]) -> Any:  # as sentence-transformers' encode() does
        return np.asfortranarray(np.array([vector_for(t, 8) for t in texts], dtype=np.float32))

    embedder = CachedEmbedder(encode, cache, model="st")
    assert await embedder.embed_many(["a", "b"]) == [vector_for("a", 8), vector_for("b", 8)]
    assert await cache.get_embedding("b", model="st") == vector_for("b", 8)


async def test_the_openai_provider_refuses_a_single_string() -> None:
    with StubEmbeddingServer() as stub:
        provider = OpenAIEmbeddings("m", base_url=stub.base_url)
        with pytest.raises(ArgumentTypeError, match="texts"):
            await provider.embed("hello")  # type: ignore[arg-type]
        with pytest.raises(InvalidArgumentError, match=r"texts\[1\]"):
            await provider.embed(["ok", SURROGATE])
        assert stub.requests == []
        await provider.aclose()


@pytest.mark.parametrize("state", ["disabled", "closed"])
async def test_the_embedding_lru_does_not_answer_when_disabled_or_closed(
    make_cache: Factory, state: str
) -> None:
    cache = await make_cache(enabled=state != "disabled")
    await cache.set_embedding("seen", [0.5, 0.25])
    await cache.get_embedding("seen")
    if state == "closed":
        await cache.aclose()
    assert await cache.get_embedding("seen") is None
    assert await cache.get_embeddings(["seen"]) == [None]


@pytest.mark.filterwarnings(
    "ignore::RuntimeWarning",  # the never-run task's coroutine, collected
    "ignore::pytest.PytestUnraisableExceptionWarning",
)
def test_an_invalidation_whose_loop_closed_is_done_by_the_next_recall() -> None:
    cache = AsyncCacheManager(CacheConfig(backend="memory"))  # usable from any loop
    memory = MemoryManager(cache, provider)
    first = asyncio.new_event_loop()

    async def remember_recall_invalidate() -> None:
        await memory.remember(1, "User prefers dark mode")
        await memory.recall(1, QUERY)
        memory.invalidate_cache(1)  # returns before the task runs

    first.run_until_complete(remember_recall_invalidate())
    first.close()  # the invalidation task never ran (or never finished: its own never ran)
    second = asyncio.new_event_loop()
    try:

        async def recall_twice() -> tuple[int, int]:
            store = memory.store
            assert isinstance(store, InMemoryVectorStore)
            before = (store.searches, memory.recalls_from_cache)
            await memory.recall(1, QUERY)  # not the entry cached before the invalidation
            await memory.recall(1, QUERY)  # and the agent uses the cache again
            return store.searches - before[0], memory.recalls_from_cache - before[1]

        assert second.run_until_complete(recall_twice()) == (1, 1)
    finally:
        second.close()
        gc.collect()  # the never-run coroutines, collected under this test's warning filters


async def test_recall_never_serves_planted_results_that_are_not_memories(
    memory: MemoryManager,
) -> None:
    await memory.remember(1, "User prefers dark mode")
    generation = await memory.cache.get_rag_generation(1)
    planted: list[Any] = [1, "two", None]
    await memory.cache.set_rag_results(1, QUERY, planted, generation=generation)
    found = await memory.recall(1, QUERY)
    assert [r["content"] for r in found] == ["User prefers dark mode"]
    assert memory.recalls_from_cache == 0
    assert await memory.recall(1, QUERY) == found  # the good results replaced them
    assert memory.recalls_from_cache == 1
