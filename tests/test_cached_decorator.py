"""@cached: async and sync functions, one execution per key (in and across threads), the
signature kept for mypy, errors passed through and nothing cached for them, degradation."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from gathering_cache import (
    ArgumentTypeError,
    AsyncCacheManager,
    CacheConfig,
    CacheManager,
    SyncCachedEmbedder,
    cached,
)
from tests.conftest import Factory
from tests.servers import RedisServer, free_port

SYNC_BACKENDS = ["memory", pytest.param("redis", marks=pytest.mark.integration)]


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


async def test_async_function_computed_once_per_arguments(cache: AsyncCacheManager) -> None:
    calls: list[tuple[str, int]] = []

    @cached(cache, ttl=60)
    async def lookup(city: str, days: int = 1) -> dict[str, Any]:
        calls.append((city, days))
        await asyncio.sleep(0.01)
        return {"city": city, "days": days}

    first = await asyncio.gather(*(lookup("Paris") for _ in range(10)))
    assert calls == [("Paris", 1)]  # single-flight: ten callers, one execution
    assert await lookup(city="Paris", days=1) == first[0]  # the same call, bound
    assert calls == [("Paris", 1)]
    await lookup("Rome")
    assert len(calls) == 2
    keys = [k async for k in cache.scan_keys(f"{cache.config.key_prefix}fn:*")]
    assert len(keys) == 2
    for k in keys:
        assert 0 < (await cache.ttl(k) or 0) <= 60


async def test_errors_reach_every_caller_and_nothing_is_cached(cache: AsyncCacheManager) -> None:
    calls = 0

    @cached(cache)
    async def flaky(x: int) -> int:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.01)
        if calls == 1:
            raise ValueError("boom")
        return x * 2

    outcomes = await asyncio.gather(*(flaky(2) for _ in range(3)), return_exceptions=True)
    assert calls == 1
    assert all(isinstance(o, ValueError) for o in outcomes)
    assert await flaky(2) == 4
    assert await flaky(2) == 4
    assert calls == 2


async def test_methods_namespace_key_builder_and_codecs(cache: AsyncCacheManager) -> None:
    class Service:
        def __init__(self) -> None:
            self.calls = 0

        @cached(cache, namespace="svc", key=lambda self, q: q.lower())
        async def search(self, q: str) -> list[str]:
            self.calls += 1
            return [q]

    one, two = Service(), Service()
    assert await one.search("Hello") == ["Hello"]
    assert await two.search("HELLO") == ["Hello"]  # the key builder folded the case
    assert (one.calls, two.calls) == (1, 0)
    prefix = cache.config.key_prefix
    assert [k async for k in cache.scan_keys(f"{prefix}fn:svc:*")] == [f"{prefix}fn:svc:hello"]


async def test_unhashable_arguments_and_unstorable_results_run_uncached(
    cache: AsyncCacheManager, caplog: pytest.LogCaptureFixture
) -> None:
    calls = 0

    @cached(cache)
    async def echo(value: Any) -> Any:
        nonlocal calls
        calls += 1
        return value

    marker = object()
    with caplog.at_level(logging.WARNING, logger="gathering_cache"):
        for _ in range(3):
            assert await echo(marker) is marker
            assert await echo(1) == 1  # cached after the first
    assert calls == 4
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1  # once per cause
    assert "cannot be hashed" in warnings[0].getMessage()


async def test_a_sync_function_needs_the_sync_facade(cache: AsyncCacheManager) -> None:
    def plain(x: int) -> int:
        return x

    with pytest.raises(ArgumentTypeError, match="CacheManager"):
        cached(cache)(plain)
    with pytest.raises(ArgumentTypeError):
        cached("cache")  # type: ignore[arg-type]
    with pytest.raises(ArgumentTypeError):
        cached(cache, key="k")  # type: ignore[arg-type]


async def test_the_signature_is_kept(cache: AsyncCacheManager) -> None:
    """Checked by mypy --strict over tests/ (an unused ignore would be an error)."""

    @cached(cache)
    async def double(x: int) -> int:
        return x * 2

    task = asyncio.create_task(double(3))
    assert await task == 6
    with pytest.raises(TypeError):
        await double(y=3)  # type: ignore[call-arg]


def test_sync_function_in_threads_runs_once_in_the_callers_thread(
    sync_cache: CacheManager,
) -> None:
    threads: list[int] = []

    @cached(sync_cache, ttl=30)
    def slow_square(x: int) -> int:
        threads.append(threading.get_ident())
        time.sleep(0.05)
        return x * x

    results: list[int] = []
    callers: list[int] = []

    def call() -> None:
        callers.append(threading.get_ident())
        results.append(slow_square(7))

    workers = [threading.Thread(target=call) for _ in range(8)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(10)
    assert results == [49] * 8
    assert len(threads) == 1  # computed once
    assert threads[0] in callers  # by a caller, in its thread
    assert slow_square(7) == 49
    assert len(threads) == 1
    assert sync_cache.get_stats()["hits"] >= 1


def test_sync_errors_pass_through(sync_cache: CacheManager) -> None:
    calls = 0

    @cached(sync_cache)
    def fail_once(x: int) -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise KeyError("first")
        return x

    with pytest.raises(KeyError):
        fail_once(1)
    assert fail_once(1) == 1
    assert fail_once(1) == 1
    assert calls == 2


def test_a_failed_call_is_over_before_the_next_one_starts(sync_cache: CacheManager) -> None:
    """The error a call raises ends its shared run first: the same thread's next call
    computes afresh, never joining the failed run and getting its error again."""
    calls = 0

    @cached(sync_cache)
    def always_fails(x: int) -> int:
        nonlocal calls
        calls += 1
        raise KeyError(calls)

    for attempt in range(1, 41):
        with pytest.raises(KeyError) as raised:
            always_fails(1)
        assert raised.value.args == (attempt,)  # its own error, not an earlier call's
    assert calls == 40


async def test_a_failed_async_call_is_over_before_the_next_one_starts(
    sync_cache: CacheManager,
) -> None:
    """The same for a coroutine function cached on the sync facade (another loop's)."""
    calls = 0

    @cached(sync_cache)
    async def always_fails(x: int) -> int:
        nonlocal calls
        calls += 1
        raise KeyError(calls)

    for attempt in range(1, 41):
        with pytest.raises(KeyError) as raised:
            await always_fails(1)
        assert raised.value.args == (attempt,)
    assert calls == 40


async def test_async_function_on_the_sync_facade(sync_cache: CacheManager) -> None:
    calls = 0

    @cached(sync_cache)
    async def fetch(x: int) -> int:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.01)
        return x + 1

    assert await asyncio.gather(fetch(1), fetch(1), fetch(1)) == [2, 2, 2]
    assert await fetch(1) == 2
    assert calls == 1


def test_redis_down_the_function_still_works() -> None:
    with CacheManager(CacheConfig(host="127.0.0.1", port=free_port())) as down:
        calls = 0

        @cached(down)
        def compute(x: int) -> int:
            nonlocal calls
            calls += 1
            return x

        assert [compute(1), compute(1)] == [1, 1]
        assert calls == 2  # nothing cached, nothing raised

    async def main() -> None:
        cache = AsyncCacheManager(CacheConfig(host="127.0.0.1", port=free_port()))

        @cached(cache)
        async def answer() -> int:
            return 42

        assert await answer() == 42
        await cache.aclose()

    asyncio.run(main())


def test_a_closed_facade_runs_the_function_uncached() -> None:
    cache = CacheManager(CacheConfig(backend="memory"))

    @cached(cache)
    def one() -> int:
        return 1

    cache.close()
    assert one() == 1


# -- SyncCachedEmbedder: CachedEmbedder for sync code on the facade's loop ------------------------


def test_sync_embedder_shares_the_facade(sync_cache: CacheManager) -> None:
    calls: list[list[str]] = []

    def provider(texts: list[str]) -> list[list[float]]:
        calls.append(list(texts))
        return [[float(len(t)), 0.5] for t in texts]

    embedder = SyncCachedEmbedder(provider, sync_cache, model="len-2")
    assert embedder.embed_many(["a", "bb"]) == [[1.0, 0.5], [2.0, 0.5]]
    assert embedder.embed("bb") == [2.0, 0.5]
    workers = [threading.Thread(target=embedder.embed, args=("ccc",)) for _ in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(10)
    assert calls == [["a", "bb"], ["ccc"]]
    assert embedder.stats.provider_calls == 2
    assert embedder.model == "len-2"
    assert sync_cache.get_embedding("a", model="len-2") == [1.0, 0.5]  # one cache, one pool
    with pytest.raises(ArgumentTypeError):
        embedder.embed_many("not a list")
    with pytest.raises(ArgumentTypeError):
        SyncCachedEmbedder(provider, AsyncCacheManager(), model="m")  # type: ignore[arg-type]
    sync_cache.close()
    assert embedder.embed("dddd") == [4.0, 0.5]  # closed: the provider alone


async def test_two_managers_sharing_a_store_compute_once(make_cache: Factory, backend: str) -> None:
    """Two decorations (their own in-process flights) on two managers sharing one store stand
    for two processes: the store lock lets one compute. (The in-process store is not shared
    between managers: there, both decorations use one manager.)"""
    calls = 0

    async def slow(x: int) -> int:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.1)
        return x

    first = await make_cache()
    second = first if backend == "memory" else await make_cache()
    one = cached(first, namespace="shared")(slow)
    two = cached(second, namespace="shared")(slow)
    assert await asyncio.gather(one(7), two(7)) == [7, 7]
    assert calls == 1
