"""CachedEmbedder: only misses reach the provider, once; single-flight in and across
processes; provider errors; the OpenAI-compatible HTTP provider against a loopback stub."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import pytest
import redis.asyncio as redis_asyncio

from gathering_cache import (
    ArgumentTypeError,
    AsyncCacheManager,
    CacheConfig,
    CachedEmbedder,
    EmbeddingService,
    OpenAIEmbeddings,
    ProviderError,
)
from tests.servers import RedisServer, free_port
from tests.stub_openai import StubEmbeddingServer, vector_for


class CountingProvider:
    """An async batch function that records calls and can be told to fail or be slow."""

    def __init__(self, delay: float = 0.0, dims: int = 4) -> None:
        self.calls: list[list[str]] = []
        self.delay = delay
        self.dims = dims
        self.fail_with: Exception | None = None

    async def __call__(self, texts: list[str]) -> list[list[float]]:
        self.calls.append(list(texts))
        await asyncio.sleep(self.delay)
        if self.fail_with is not None:
            raise self.fail_with
        return [vector_for(t, self.dims) for t in texts]

    @property
    def texts(self) -> int:
        return sum(len(c) for c in self.calls)


@pytest.fixture
def stub() -> Iterator[StubEmbeddingServer]:
    with StubEmbeddingServer() as server:
        yield server


async def test_second_embed_comes_from_the_cache(cache: AsyncCacheManager) -> None:
    provider = CountingProvider()
    embedder = CachedEmbedder(provider, cache, model="m")
    first = await embedder.embed("Hello world")
    second = await embedder.embed("Hello world")
    assert first == second == vector_for("Hello world", 4)
    assert len(provider.calls) == 1
    stats = embedder.stats.snapshot()
    assert stats["provider_calls"] == 1
    assert stats["hits_store"] == 1
    assert stats["estimated_cost_saved"] == 0.0001
    assert await cache.get_embedding("Hello world", model="m") == first


async def test_only_misses_go_to_the_provider_in_chunks(cache: AsyncCacheManager) -> None:
    provider = CountingProvider()
    embedder = CachedEmbedder(provider, cache, model="m", max_batch_size=4)
    await embedder.embed_many([f"t{i}" for i in range(5)])
    provider.calls.clear()
    texts = [f"t{i}" for i in range(15)] + ["t7", "t12", "t0"]
    result = await embedder.embed_many(texts)
    assert result == [vector_for(t, 4) for t in texts]
    assert [len(c) for c in provider.calls] == [4, 4, 2]  # 10 misses, 4 per call
    assert sorted(t for call in provider.calls for t in call) == sorted(
        f"t{i}" for i in range(5, 15)
    )
    stats = embedder.stats.snapshot()
    assert stats["requested"] == 23
    assert stats["texts_sent"] == 15
    assert stats["embeddings_saved"] == 8


async def test_concurrent_identical_requests_make_one_provider_call(
    cache: AsyncCacheManager,
) -> None:
    provider = CountingProvider(delay=0.05)
    embedder = CachedEmbedder(provider, cache, model="m")
    results = await asyncio.gather(*(embedder.embed("same text") for _ in range(100)))
    assert len(provider.calls) == 1
    assert all(r == results[0] for r in results)
    assert embedder.stats.coalesced == 99


async def test_overlapping_batches_share_work(cache: AsyncCacheManager) -> None:
    provider = CountingProvider(delay=0.05)
    embedder = CachedEmbedder(provider, cache, model="m")
    a, b = await asyncio.gather(
        embedder.embed_many(["x", "y", "z"]), embedder.embed_many(["z", "y", "w"])
    )
    assert a == [vector_for(t, 4) for t in "xyz"]
    assert b == [vector_for(t, 4) for t in "zyw"]
    assert provider.texts == 4


async def test_provider_error_reaches_every_waiter_and_nothing_is_cached(
    cache: AsyncCacheManager,
) -> None:
    provider = CountingProvider(delay=0.05)
    provider.fail_with = RuntimeError("quota exceeded")
    embedder = CachedEmbedder(provider, cache, model="m")
    outcomes = await asyncio.gather(
        *(embedder.embed("t") for _ in range(10)), return_exceptions=True
    )
    assert len(provider.calls) == 1
    assert all(isinstance(o, ProviderError) and "quota exceeded" in str(o) for o in outcomes)
    assert await cache.get_embedding("t", model="m") is None
    assert (await cache.get_stats())["total_keys"] == 0  # no value, and the lock released
    provider.fail_with = None
    assert await embedder.embed("t") == vector_for("t", 4)
    assert len(provider.calls) == 2


@pytest.mark.parametrize(
    ("answer", "match"),
    [
        (lambda texts: [[1.0, 2.0]], "1 vectors for 2 texts"),
        (lambda texts: [[1.0, 2.0], [1.0]], "different sizes"),
        (lambda texts: [[1.0, float("nan")], [1.0, 2.0]], "nan"),
        (lambda texts: [[1.0, "x"], [1.0, 2.0]], "bad vector #0"),
        (lambda texts: "nope", "str"),
    ],
)
async def test_bad_provider_answers_raise_and_cache_nothing(
    cache: AsyncCacheManager,
    answer: Any,
    match: str,
) -> None:
    embedder = CachedEmbedder(answer, cache, model="m")
    with pytest.raises(ProviderError, match=match):
        await embedder.embed_many(["a", "b"])
    assert (await cache.get_stats())["total_keys"] == 0


async def test_dimensions_are_enforced(cache: AsyncCacheManager) -> None:
    embedder = CachedEmbedder(CountingProvider(dims=4), cache, model="m", dimensions=3)
    with pytest.raises(ProviderError, match="dimensions=3"):
        await embedder.embed("a")


async def test_sync_provider_function(cache: AsyncCacheManager) -> None:
    calls: list[list[str]] = []

    def embed(texts: list[str]) -> list[list[float]]:
        calls.append(texts)
        return [vector_for(t, 4) for t in texts]

    embedder = CachedEmbedder(embed, cache, model="sync")
    assert await embedder.embed_many(["a", "b", "a"]) == [vector_for(t, 4) for t in "aba"]
    assert await embedder.embed("b") == vector_for("b", 4)
    assert calls == [["a", "b"]]


async def test_bad_texts(cache: AsyncCacheManager) -> None:
    embedder = CachedEmbedder(CountingProvider(), cache, model="m")
    with pytest.raises(ArgumentTypeError):
        await embedder.embed(42)  # type: ignore[arg-type]
    with pytest.raises(ArgumentTypeError, match=r"texts\[1\]"):
        await embedder.embed_many(["a", None])  # type: ignore[list-item]
    with pytest.raises(ArgumentTypeError):
        await embedder.embed_many("abc")
    assert await embedder.embed_many([]) == []


async def test_works_while_redis_is_down() -> None:
    cache = AsyncCacheManager(CacheConfig(host="127.0.0.1", port=free_port()))
    provider = CountingProvider()
    embedder = CachedEmbedder(provider, cache, model="m")
    assert await embedder.embed("a") == vector_for("a", 4)
    assert await embedder.embed("a") == vector_for("a", 4)  # the LRU remembers it
    assert len(provider.calls) == 1
    assert embedder.stats.hits_lru == 1
    await cache.aclose()


# -- the HTTP provider -------------------------------------------------------------------------


async def test_openai_provider_float_and_base64(stub: StubEmbeddingServer) -> None:
    formats: tuple[Literal["float", "base64"], ...] = ("float", "base64")
    for fmt in formats:
        provider = OpenAIEmbeddings(
            "text-embedding-3-small",
            api_key="sk-test-123",
            base_url=stub.base_url,
            encoding_format=fmt,
            dimensions=6,
        )
        vectors = await provider.embed(["alpha", "beta"])
        assert vectors == [vector_for("alpha", 6), vector_for("beta", 6)]
        await provider.aclose()
    body = stub.requests[-1]
    assert body == {
        "model": "text-embedding-3-small",
        "input": ["alpha", "beta"],
        "encoding_format": "base64",
        "dimensions": 6,
    }
    assert stub.headers[-1]["Authorization"] == "Bearer sk-test-123"
    assert "sk-test-123" not in repr(provider)


async def test_openai_provider_retries_429_and_5xx(stub: StubEmbeddingServer) -> None:
    provider = OpenAIEmbeddings("m", base_url=stub.base_url, backoff_base=0.01)
    stub.fail_next(429, 503, headers={"Retry-After": "0"})
    assert await provider.embed(["a"]) == [vector_for("a")]
    assert len(stub.requests) == 3

    stub.fail_next(500, 500, 500, 500)
    with pytest.raises(ProviderError, match="HTTP 500") as info:
        await provider.embed(["a"])
    assert info.value.status == 500
    assert len(stub.requests) == 3 + 4  # first attempt + 3 retries

    stub.fail_next(400)
    with pytest.raises(ProviderError, match="HTTP 400"):
        await provider.embed(["a"])
    assert len(stub.requests) == 8  # not retried
    await provider.aclose()


async def test_openai_provider_unreachable_raises_after_retries() -> None:
    provider = OpenAIEmbeddings(
        "m", base_url=f"http://127.0.0.1:{free_port()}/v1", backoff_base=0.01, max_retries=1
    )
    with pytest.raises(ProviderError, match="ConnectError"):
        await provider.embed(["a"])
    await provider.aclose()


async def test_embedder_over_http_provider(
    stub: StubEmbeddingServer, cache: AsyncCacheManager
) -> None:
    provider = OpenAIEmbeddings("m", base_url=stub.base_url)
    embedder = CachedEmbedder(provider, cache)
    assert embedder.model == "m"
    await embedder.embed_many(["a", "b"])
    await embedder.embed_many(["b", "c", "a"])
    assert [r["input"] for r in stub.requests] == [["a", "b"], ["c"]]
    await provider.aclose()


def test_seed_embedding_service_snippet(
    stub: StubEmbeddingServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-seed")
    monkeypatch.setenv("OPENAI_BASE_URL", stub.base_url)
    monkeypatch.setenv("OPENAI_EMBEDDING_MODEL", "text-embedding-3-small")
    monkeypatch.setenv("GATHERING_CACHE_BACKEND", "memory")
    snippet = textwrap.dedent(
        """
        embedder = EmbeddingService.from_env()
        embedding = await embedder.embed("Hello world")  # First call → API
        embedding = await embedder.embed("Hello world")  # Second call → CACHE ✅
        """
    )

    async def main() -> CachedEmbedder:
        namespace: dict[str, Any] = {"EmbeddingService": EmbeddingService}
        body = "async def _snippet():\n" + textwrap.indent(snippet, "    ")
        body += "\n    return embedder, embedding"
        exec(body, namespace)
        embedder: CachedEmbedder
        embedder, embedding = await namespace["_snippet"]()
        assert embedding == vector_for("Hello world")
        await embedder.aclose()
        assert isinstance(embedder, CachedEmbedder)
        return embedder

    embedder = asyncio.run(main())
    assert stub.texts_embedded() == 1
    assert embedder.stats.hits_store == 1


# -- across processes ----------------------------------------------------------------------------

WORKER = textwrap.dedent(
    """
    import asyncio, sys, time
    import redis.asyncio as redis_asyncio
    from gathering_cache import AsyncCacheManager, CacheConfig, CachedEmbedder

    url, start_at = sys.argv[1], float(sys.argv[2])
    texts = [f"shared text {i}" for i in range(20)]

    async def main():
        counter = redis_asyncio.Redis.from_url(url)

        async def provider(batch):
            await counter.incrby("test:provider_texts", len(batch))
            await asyncio.sleep(0.5)  # a slow paid API
            return [[float(len(t)), float(i)] for i, t in enumerate(batch)]

        async with AsyncCacheManager(CacheConfig(url=url)) as cache:
            embedder = CachedEmbedder(provider, cache, model="m", wait_timeout=5)
            await asyncio.sleep(max(0.0, start_at - time.time()))
            vectors = await embedder.embed_many(texts)
            assert len(vectors) == 20
            print(embedder.stats.texts_sent, embedder.stats.from_other_processes)
        await counter.aclose()

    asyncio.run(main())
    """
)


@pytest.mark.integration
async def test_cross_process_single_flight(redis_server: RedisServer, redis_url: str) -> None:
    await asyncio.to_thread(run_workers, redis_url)
    raw = redis_asyncio.Redis.from_url(redis_url)
    paid = int(await raw.get("test:provider_texts") or 0)
    locks = [k async for k in raw.scan_iter(match="gathering:lock:*")]
    await raw.aclose()
    assert paid == 20  # each distinct text paid for once across the three processes
    assert locks == []  # every lock released by its owner


def run_workers(redis_url: str) -> None:
    start_at = time.time() + 2.0
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, redis_url, str(start_at)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(3)
    ]
    outputs = [p.communicate(timeout=60) for p in processes]
    for process, (_, err) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, err
    sent = [int(out.split()[0]) for out, _ in outputs]
    waited = [int(out.split()[1]) for out, _ in outputs]
    assert sum(sent) == 20
    assert sum(waited) == 40


async def test_a_cancelled_owner_leaves_no_waiter_hanging(cache: AsyncCacheManager) -> None:
    provider = CountingProvider(delay=0.2)
    embedder = CachedEmbedder(provider, cache, model="m")
    owner = asyncio.create_task(embedder.embed("x"))
    await asyncio.sleep(0.05)
    waiter = asyncio.create_task(embedder.embed("x"))  # shares the owner's computation
    await asyncio.sleep(0.01)
    owner.cancel()
    with pytest.raises(asyncio.CancelledError):
        await owner
    assert embedder._inflight == {}
    # The waiter was not cancelled: it computes the text itself.
    assert await asyncio.wait_for(waiter, 5) == vector_for("x", 4)
    assert await asyncio.wait_for(embedder.embed("x"), 5) == vector_for("x", 4)
    assert len(provider.calls) == 2
