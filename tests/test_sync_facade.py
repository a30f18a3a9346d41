"""CacheManager, the sync facade: parity with the async core, threads, running loops."""

from __future__ import annotations

import asyncio
import gc
import inspect
import logging
import threading
import time
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from gathering_cache import (
    ArgumentTypeError,
    AsyncCacheManager,
    CacheConfig,
    CacheError,
    CacheManager,
    SerializationError,
)
from tests.servers import RedisServer

SYNC_BACKENDS = ["memory", pytest.param("redis", marks=pytest.mark.integration)]


def sync_config(request: pytest.FixtureRequest) -> CacheConfig:
    """The config of the backend ``request.param`` names (the real server is flushed)."""
    if request.param == "memory":
        return CacheConfig(backend="memory")
    server: RedisServer = request.getfixturevalue("redis_server")
    flush = redis.Redis.from_url(server.url)
    flush.flushdb()
    flush.close()
    return CacheConfig(url=server.url, key_prefix=f"sync{threading.get_ident()}:")


@pytest.fixture(params=SYNC_BACKENDS)
def sync_cache(request: pytest.FixtureRequest) -> Iterator[CacheManager]:
    cache = CacheManager(sync_config(request))
    cache.clear_all()
    yield cache
    cache.clear_all()
    cache.close()


def test_every_public_coroutine_has_a_sync_twin() -> None:
    coroutines = {
        name
        for name, member in inspect.getmembers(AsyncCacheManager)
        if not name.startswith("_") and inspect.iscoroutinefunction(member)
    }
    assert len(coroutines) >= 20
    for name in sorted(coroutines):
        twin = getattr(CacheManager, name, None)
        assert twin is not None, f"CacheManager lacks {name}"
        assert not inspect.iscoroutinefunction(twin), name
        async_params = list(inspect.signature(getattr(AsyncCacheManager, name)).parameters)
        assert list(inspect.signature(twin).parameters) == async_params, name
    plain = {
        name
        for name, member in inspect.getmembers(AsyncCacheManager)
        if not name.startswith("_") and inspect.isfunction(member)
    } - coroutines
    for name in plain:
        assert hasattr(CacheManager, name), name


def test_round_trips(sync_cache: CacheManager) -> None:
    assert sync_cache.is_enabled() is True
    prefix = sync_cache.config.key_prefix
    assert sync_cache.set(f"{prefix}k", {"a": [1, 2]}, ttl=30) is True
    assert sync_cache.get(f"{prefix}k") == {"a": [1, 2]}
    assert sync_cache.exists(f"{prefix}k") is True
    assert 28 <= (sync_cache.ttl(f"{prefix}k") or 0) <= 30
    assert sync_cache.set_many({f"{prefix}a": 1, f"{prefix}b": 2}) is True
    assert sync_cache.get_many([f"{prefix}a", f"{prefix}zz", f"{prefix}b"]) == [1, None, 2]
    assert sync_cache.set_embedding("hello", [0.1, 0.2, 0.3]) is True
    assert sync_cache.get_embedding("hello") == [0.1, 0.2, 0.3]
    assert sync_cache.set_rag_results(1, "q", [{"x": 1}]) is True
    assert sync_cache.get_rag_results(1, "q") == [{"x": 1}]
    assert sync_cache.invalidate_rag_results(1) == 1
    assert sync_cache.set_circle_context(5, {"name": "c"}) is True
    assert sync_cache.invalidate_circle_context(5) is True
    assert sync_cache.delete(f"{prefix}k") is True
    stats = sync_cache.get_stats()
    assert stats["hits"] == 5
    # a, b, the embedding, and the RAG generation counters of agent 1 and of all agents
    assert stats["total_keys"] == 5
    assert sync_cache.delete_pattern(f"{prefix}*") == 5  # counters too: nothing is left


def test_bad_input_raises_through_the_facade(sync_cache: CacheManager) -> None:
    with pytest.raises(SerializationError):
        sync_cache.set("k", object())
    with pytest.raises(ArgumentTypeError):
        sync_cache.get_rag_results("1", "q")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="outside the key prefix"):
        sync_cache.delete_pattern("elsewhere:*")


def test_many_threads_at_once(sync_cache: CacheManager) -> None:
    errors: list[BaseException] = []
    prefix = sync_cache.config.key_prefix

    def worker(n: int) -> None:
        try:
            for i in range(50):
                key = f"{prefix}t{n}:{i}"
                assert sync_cache.set(key, [n, i]) is True
                assert sync_cache.get(key) == [n, i]
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert sync_cache.get_stats()["total_keys"] == 16 * 50


def test_inside_a_running_event_loop(sync_cache: CacheManager) -> None:
    """Legacy sync code called from an async app (or a notebook cell)."""

    async def async_app() -> object:
        sync_cache.set_embedding("in-loop", [1.0, 2.0])
        return sync_cache.get_embedding("in-loop")

    assert asyncio.run(async_app()) == [1.0, 2.0]


def test_call_from_the_portal_thread_is_a_clear_error() -> None:
    cache = CacheManager(CacheConfig(backend="memory"))
    outcome: list[BaseException] = []

    done = threading.Event()

    def on_portal() -> None:
        try:
            cache.get("k")
        except RuntimeError as exc:
            outcome.append(exc)
        done.set()

    cache._portal.loop.call_soon_threadsafe(on_portal)
    assert done.wait(5)
    assert len(outcome) == 1
    assert "own event-loop thread" in str(outcome[0])
    cache.close()


def test_a_starved_portal_answers_degraded_after_the_backstop_and_cancels_the_call(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The facade's own bound (operation timeout + 1 s) when the portal loop cannot run the
    call (user code blocking it): the degraded answer, and the call cancelled, not run late."""
    cache = CacheManager(CacheConfig(backend="memory", operation_timeout=0.1))
    cache.set("k", 1)
    ran: list[str] = []
    original = cache.async_manager.set

    async def recording_set(*args: Any, **kwargs: Any) -> bool:
        ran.append("set")
        return await original(*args, **kwargs)

    cache.async_manager.set = recording_set  # type: ignore[method-assign]
    cache._portal.loop.call_soon_threadsafe(time.sleep, 1.6)
    began = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="gathering_cache.sync"):
        assert cache.set("k", 2) is False
    waited = time.monotonic() - began
    assert 1.0 <= waited < 1.6, waited
    assert any("did not finish in time" in r.getMessage() for r in caplog.records)
    time.sleep(0.7)  # the loop runs again: the late call was cancelled before it began
    assert cache.get("k") == 1
    assert ran == []
    cache.close()


def test_close_is_idempotent_and_later_calls_degrade() -> None:
    cache = CacheManager(CacheConfig(backend="memory"))
    cache.set("k", 1)
    thread = cache._portal._thread
    cache.close()
    cache.close()
    assert not thread.is_alive()
    assert cache.is_enabled() is False
    assert cache.get("k") is None
    assert cache.set("k", 2) is False
    stats = cache.get_stats()
    assert stats["enabled"] is False
    assert stats["reason"] == "closed"


def test_context_manager_closes() -> None:
    with CacheManager(CacheConfig(backend="memory")) as cache:
        assert cache.set("k", 1) is True
        thread = cache._portal._thread
    assert not thread.is_alive()


def test_unreachable_redis_degrades_in_the_constructor() -> None:
    from tests.servers import free_port

    cache = CacheManager(CacheConfig(host="127.0.0.1", port=free_port()))
    assert cache.is_enabled() is False
    assert cache.get("any_key") is None
    assert cache.set("any_key", "value") is False
    cache.close()


# -- bad arguments: the facade raises what the async manager raises, open or closed ----------


def public_coroutines() -> dict[str, inspect.Signature]:
    return {
        name: inspect.signature(member)
        for name, member in inspect.getmembers(AsyncCacheManager)
        if not name.startswith("_") and inspect.iscoroutinefunction(member)
    }


# (method, positional arguments, keyword arguments): each is a programming error.
BAD_CALLS: list[Any] = [
    ("get", (123,), {}),
    ("get", ("",), {}),
    ("set", (None, 1), {}),
    ("set", ("k", 1), {"ttl": 0}),
    ("set", ("k", object()), {}),
    ("delete", (1,), {}),
    ("delete_pattern", (b"gathering:*",), {}),
    ("delete_pattern", ("elsewhere:*",), {}),
    ("exists", (1.5,), {}),
    ("ttl", (None,), {}),
    ("get_many", (5,), {}),  # issue 9: was len()'s bare TypeError and a leaked coroutine
    ("get_many", (None,), {}),
    ("get_many", ("k",), {}),
    ("get_many", (["k", 1],), {}),
    ("set_many", ([("k", 1)],), {}),
    ("set_many", ({"k": 1}, "60"), {}),
    ("set_many", ({"k": {1, 2}},), {}),
    ("get_embedding", (42,), {}),
    ("get_embedding", ("t",), {"model": 5}),
    ("get_embedding", ("t",), {"dimensions": "3"}),
    ("set_embedding", ("t", []), {}),
    ("set_embedding", ("t", [1.0, float("nan")]), {}),
    ("set_embedding", ("t", "0.1"), {}),
    ("set_embedding", ("t", [1.0, 2.0]), {"dimensions": 3}),
    ("get_embeddings", (5,), {}),  # issue 10: was a bare TypeError
    ("get_embeddings", (None,), {}),
    ("get_embeddings", ("t",), {}),
    ("get_embeddings", ([1],), {}),
    ("set_embeddings", ("t", [[1.0]]), {}),
    ("set_embeddings", (["a", "b"], [[1.0]]), {}),
    ("set_embeddings", (["a"], [[]]), {}),
    ("set_embeddings", (5, [[1.0]]), {}),
    ("get_rag_results", (1.0, "q"), {}),
    ("get_rag_results", (1, 2), {}),
    ("set_rag_results", ("1", "q", []), {}),
    ("set_rag_results", (1, "q", {"a": 1}), {}),
    ("set_rag_results", (1, "q", []), {"generation": (1,)}),
    ("get_rag_generation", ("1",), {}),
    ("get_rag_generation", (True,), {}),
    ("invalidate_rag_results", ("1",), {}),
    ("get_circle_context", ("5",), {}),
    ("set_circle_context", (5, [1]), {}),
    ("set_circle_context", ("5", {}), {}),
    ("invalidate_circle_context", (None,), {}),
    ("get_llm_response", ("m",), {}),
    ("get_llm_response", ("m",), {"prompt": 5}),
    ("get_llm_response", (5,), {"prompt": "p"}),
    ("get_llm_response", ("m",), {"prompt": "p", "namespace": ""}),
    ("get_llm_response", ("m",), {"prompt": "p", "temperature": 0, "tool": object()}),
    ("set_llm_response", ("m", "r"), {}),
    ("set_llm_response", ("m", {1, 2}), {"prompt": "p"}),
    ("set_llm_response", ("m", "r"), {"prompt": "p", "usage": 5}),
    ("set_llm_response", ("m", "r"), {"prompt": "p", "ttl": -1}),
    ("invalidate_llm_responses", (5,), {}),
    ("invalidate_llm_responses", ("",), {}),
]


def _name(row: Any) -> str:
    return str(row.values[0] if hasattr(row, "values") else row[0])


def test_the_bad_argument_table_covers_every_method_with_arguments() -> None:
    takes_arguments = {
        name for name, signature in public_coroutines().items() if len(signature.parameters) > 1
    }
    assert len(takes_arguments) >= 20
    assert {_name(row) for row in BAD_CALLS} == takes_arguments


def outcome(call: Any) -> tuple[type[BaseException], str, list[str]]:
    """What ``call()`` raised, and the RuntimeWarnings (an unawaited coroutine) it caused."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            call()
        except Exception as exc:
            raised: tuple[type[BaseException], str] = (type(exc), str(exc))
        else:
            raised = (type(None), "did not raise")  # type: ignore[assignment]
        gc.collect(0)  # an unawaited coroutine warns when it is collected (refcounting, or here)
    leaks = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    return raised[0], raised[1], leaks


def async_outcome(
    config: CacheConfig, name: str, args: tuple[Any, ...], kwargs: dict[str, Any], *, closed: bool
) -> tuple[type[BaseException], str, list[str]]:
    async def call() -> None:
        manager = AsyncCacheManager(config)
        await manager.connect()
        if closed:
            await manager.aclose()
        try:
            await getattr(manager, name)(*args, **kwargs)
        finally:
            await manager.aclose()

    return outcome(lambda: asyncio.run(call()))


@pytest.fixture(scope="module", params=SYNC_BACKENDS)
def open_and_closed(request: pytest.FixtureRequest) -> Iterator[tuple[CacheManager, CacheManager]]:
    config = sync_config(request)
    opened, closed = CacheManager(config), CacheManager(config)
    closed.close()
    yield opened, closed
    opened.close()


@pytest.mark.parametrize(("name", "args", "kwargs"), BAD_CALLS)
def test_bad_arguments_raise_the_async_managers_error(
    open_and_closed: tuple[CacheManager, CacheManager],
    name: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> None:
    opened, closed = open_and_closed
    expected = async_outcome(opened.config, name, args, kwargs, closed=False)
    assert issubclass(expected[0], (TypeError, ValueError)), expected
    assert expected[2] == []
    assert async_outcome(opened.config, name, args, kwargs, closed=True) == expected
    # Open, and closed: a programming error raises whatever the facade's state.
    assert outcome(lambda: getattr(opened, name)(*args, **kwargs)) == expected
    assert outcome(lambda: getattr(closed, name)(*args, **kwargs)) == expected
    assert issubclass(expected[0], CacheError), expected
