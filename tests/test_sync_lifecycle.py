"""CacheManager's close: callers during and after it, in threads, on a hung server, in loops."""

from __future__ import annotations

import asyncio
import gc
import inspect
import logging
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis

from gathering_cache import ArgumentTypeError, AsyncCacheManager, CacheConfig, CacheManager
from tests.servers import RedisServer

SYNC_BACKENDS = ["memory", pytest.param("redis", marks=pytest.mark.integration)]


@pytest.fixture(params=SYNC_BACKENDS)
def config(request: pytest.FixtureRequest) -> CacheConfig:
    """A facade config on each backend, with an operation timeout well below the backstop."""
    if request.param == "memory":
        return CacheConfig(backend="memory", operation_timeout=0.4)
    server: RedisServer = request.getfixturevalue("redis_server")
    flush = redis.Redis.from_url(server.url)
    flush.flushdb()
    flush.close()
    return CacheConfig(url=server.url, operation_timeout=0.4)


@dataclass
class Trouble:
    """What asyncio, the facade's backstop and the interpreter reported during a test."""

    caplog: pytest.LogCaptureFixture
    unraisable: list[str] = field(default_factory=list)

    def reported(self) -> list[str]:
        gc.collect()  # a task destroyed while pending is reported when it is collected
        return [
            f"{r.name}: {r.getMessage()}"
            for r in self.caplog.records
            if (r.name == "asyncio" and r.levelno >= logging.WARNING)
            or "did not finish in time" in r.getMessage()
        ] + self.unraisable


@pytest.fixture
def trouble(caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> Trouble:
    caplog.set_level(logging.DEBUG, logger="asyncio")
    caplog.set_level(logging.WARNING, logger="gathering_cache")
    found = Trouble(caplog)

    def hook(unraisable: Any) -> None:
        found.unraisable.append(f"{unraisable.exc_type.__name__}: {unraisable.exc_value}")

    monkeypatch.setattr(sys, "unraisablehook", hook)
    return found


def facade_methods() -> set[str]:
    """Every public method of the facade that forwards to a coroutine of the async manager."""
    return {
        name
        for name, member in inspect.getmembers(AsyncCacheManager)
        if not name.startswith("_") and inspect.iscoroutinefunction(member)
    }


def is_closed_stats(stats: Any) -> bool:
    return bool(stats["enabled"] is False and stats["reason"] == "closed")


# method -> (arguments, keyword arguments, the closed facade's answer or a check of it)
CLOSED_ANSWERS: dict[str, tuple[tuple[Any, ...], dict[str, Any], Any]] = {
    "connect": ((), {}, False),
    "close": ((), {}, None),
    "aclose": ((), {}, None),
    "get": (("gathering:k",), {}, None),
    "set": (("gathering:k", 1), {"ttl": 60}, False),
    "delete": (("gathering:k",), {}, False),
    "delete_pattern": (("gathering:*",), {}, 0),
    "get_many": ((["gathering:a", "gathering:b"],), {}, [None, None]),
    "set_many": (({"gathering:a": 1},), {"ttl": 60}, False),
    "exists": (("gathering:k",), {}, False),
    "ttl": (("gathering:k",), {}, None),
    "get_embedding": (("t",), {}, None),
    "set_embedding": (("t", [1.0]), {}, False),
    "get_embeddings": ((["t", "u", "v"],), {}, [None, None, None]),
    "set_embeddings": ((["t"], [[1.0]]), {}, False),
    "get_rag_results": ((1, "q"), {}, None),
    "set_rag_results": ((1, "q", [{"x": 1}]), {}, False),
    "get_rag_generation": ((1,), {}, None),
    "invalidate_rag_results": ((1,), {}, 0),
    "invalidate_all_rag_results": ((), {}, False),
    "get_circle_context": ((5,), {}, None),
    "set_circle_context": ((5, {"n": 1}), {}, False),
    "invalidate_circle_context": ((5,), {}, False),
    "get_llm_response": (("m",), {"prompt": "p", "temperature": 0}, None),
    "set_llm_response": (("m", "r"), {"prompt": "p", "temperature": 0}, False),
    "invalidate_llm_responses": ((), {}, 0),
    "get_stats": ((), {}, is_closed_stats),
    "clear_all": ((), {}, 0),
    "flush_stats": ((), {}, False),
}


def test_the_closed_answers_cover_every_method() -> None:
    assert set(CLOSED_ANSWERS) == facade_methods()


def test_a_closed_facade_answers_degraded_in_the_calling_thread(
    config: CacheConfig,
    trouble: Trouble,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Issue 9: a closed facade ran asyncio.run on a fresh thread pool for every call."""
    cache = CacheManager(config)
    cache.set("gathering:k", 1, ttl=60)
    cache.close()
    caplog.set_level(logging.DEBUG, logger="gathering_cache.sync")
    started: list[threading.Thread] = []
    start = threading.Thread.start

    def counting_start(thread: threading.Thread) -> None:
        started.append(thread)
        start(thread)

    monkeypatch.setattr(threading.Thread, "start", counting_start)
    for name, (args, kwargs, expected) in CLOSED_ANSWERS.items():
        answer = getattr(cache, name)(*args, **kwargs)
        if callable(expected):
            assert expected(answer), (name, answer)
        else:
            assert answer == expected, name
    assert cache.is_enabled() is False
    cache.reset_stats()
    with pytest.raises(ArgumentTypeError, match="keys must be a sequence of str, not int"):
        cache.get_many(5)  # type: ignore[arg-type]
    monkeypatch.undo()
    assert started == []  # no thread, no pool: the answer came from the calling thread
    # Every closed coroutine finished without suspending (none was cut short).
    assert not [r for r in caplog.records if "tried to wait" in r.getMessage()]
    with pytest.raises(RuntimeError):
        asyncio.get_running_loop()  # the stand-in loop was withdrawn
    assert trouble.reported() == []


def test_closing_and_calling_a_facade_inside_a_running_event_loop(
    config: CacheConfig, trouble: Trouble
) -> None:
    """Legacy sync code called from an async app: it may close the facade and go on calling."""
    cache = CacheManager(config)

    async def legacy_code_in_an_async_app() -> None:
        loop = asyncio.get_running_loop()
        assert cache.set("gathering:k", 1, ttl=60) is True
        cache.close()
        assert cache.get("gathering:k") is None
        assert cache.set_embedding("t", [1.0]) is False
        assert cache.get_stats()["reason"] == "closed"
        with pytest.raises(ArgumentTypeError, match="cache key must be a str"):
            cache.get(1)  # type: ignore[arg-type]
        assert asyncio.get_running_loop() is loop
        await asyncio.sleep(0)  # the caller's loop still runs

    asyncio.run(legacy_code_in_an_async_app())
    assert trouble.reported() == []


@dataclass
class Call:
    method: str
    started: float
    took: float
    answer: Any = None
    error: BaseException | None = None


def hammer(
    cache: CacheManager, threads: int, until: threading.Event
) -> tuple[list[threading.Thread], list[Call]]:
    """Start ``threads`` threads calling get / set until ``until`` is set."""
    calls: list[Call] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        i = 0
        while not until.is_set():
            key = f"{cache.config.key_prefix}t{n}:{i % 20}"
            for method, call in (
                ("set", lambda k=key, v=[n, i]: cache.set(k, v, ttl=60)),
                ("get", lambda k=key: cache.get(k)),
            ):
                started = time.monotonic()
                record = Call(method, started, 0.0)
                try:
                    record.answer = call()
                except BaseException as exc:
                    record.error = exc
                record.took = time.monotonic() - started
                with lock:
                    calls.append(record)
            i += 1
            time.sleep(0.001)  # callers do other work between calls

    workers = [threading.Thread(target=worker, args=(n,), daemon=True) for n in range(threads)]
    for thread in workers:
        thread.start()
    return workers, calls


def test_close_while_32_threads_call(config: CacheConfig, trouble: Trouble) -> None:
    """Issue 10: callers racing close() got RuntimeErrors, waited the backstop, and asyncio
    logged destroyed pending tasks and a closed loop."""
    cache = CacheManager(config)
    loop = cache._portal.loop
    stop = threading.Event()
    workers, calls = hammer(cache, 32, stop)
    time.sleep(0.3)
    close_started = time.monotonic()
    cache.close()
    closed_at = time.monotonic()
    time.sleep(0.3)
    stop.set()
    for thread in workers:
        thread.join(timeout=30)
    assert not any(thread.is_alive() for thread in workers)

    assert [c.error for c in calls if c.error is not None] == []
    before = [c for c in calls if c.started < close_started]
    after = [c for c in calls if c.started > closed_at]
    assert len(before) > 100
    assert len(after) > 100
    assert all(c.answer == (False if c.method == "set" else None) for c in after)
    assert all(c.answer in (True, False) for c in calls if c.method == "set")
    # Promptly: within a few operation timeouts, never the facade's backstop (timeout + 1 s).
    bound = 3 * config.operation_timeout
    assert max(c.took for c in calls) < bound, sorted(c.took for c in calls)[-5:]
    assert asyncio.all_tasks(loop) == set()  # no task left pending
    assert loop.is_closed()
    assert trouble.reported() == []


@pytest.mark.integration
def test_close_cancels_a_call_stuck_on_a_hung_server(trouble: Trouble) -> None:
    """A call in flight when close() runs gets its degraded answer then, not after its own
    (long) timeout; close() does not wait for it either."""
    timeout = 3.0
    with RedisServer() as server:
        cache = CacheManager(CacheConfig(url=server.url, operation_timeout=timeout))
        assert cache.is_enabled() is True
        server.pause()
        answers: list[Any] = []
        took: list[float] = []

        def stuck() -> None:
            started = time.monotonic()
            answers.append(cache.get("gathering:k"))
            took.append(time.monotonic() - started)

        thread = threading.Thread(target=stuck)
        thread.start()
        time.sleep(0.3)  # the GET is on the wire, waiting for the hung server
        started = time.monotonic()
        cache.close()
        close_took = time.monotonic() - started
        thread.join(timeout=10)
        server.resume()
    assert answers == [None]
    assert took[0] < timeout  # it did not wait out its own timeout
    assert close_took < timeout
    assert trouble.reported() == []


def test_close_from_many_threads_at_once(trouble: Trouble) -> None:
    cache = CacheManager(CacheConfig(backend="memory"))
    cache.set("gathering:k", 1)
    barrier = threading.Barrier(8)
    errors: list[BaseException] = []

    def closer() -> None:
        barrier.wait()
        try:
            cache.close()
        except BaseException as exc:
            errors.append(exc)

    closers = [threading.Thread(target=closer) for _ in range(8)]
    for thread in closers:
        thread.start()
    for thread in closers:
        thread.join(timeout=30)
    assert errors == []
    assert cache.get("gathering:k") is None
    assert trouble.reported() == []


def test_closed_calls_from_new_threads_are_not_taken_for_the_portal_thread() -> None:
    """A new thread often gets the ended portal thread's ident: it must not be refused as the
    portal thread (the deadlock guard)."""
    cache = CacheManager(CacheConfig(backend="memory"))
    cache.close()
    answers: list[Any] = []

    def call() -> None:
        try:
            answers.append(cache.get("gathering:k"))
        except RuntimeError as exc:
            answers.append(exc)

    for _ in range(10):
        thread = threading.Thread(target=call)
        thread.start()
        thread.join(timeout=10)
    assert answers == [None] * 10
