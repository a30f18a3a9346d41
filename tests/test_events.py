"""EventBus, the invalidation wiring, and the Redis bridge between processes."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import textwrap
import time
from typing import Any

import pytest

from gathering_cache import (
    ArgumentTypeError,
    AsyncCacheManager,
    CacheConfig,
    CacheInvalidator,
    Event,
    EventBus,
    EventType,
    RedisEventBridge,
)
from tests.servers import RedisServer

R = [{"id": "m", "content": "c", "score": 1.0}]


async def test_sync_and_async_handlers_and_unsubscribe() -> None:
    bus = EventBus()
    seen: list[str] = []

    def sync_handler(event: Event) -> None:
        seen.append(f"sync {event.data['n']}")

    async def async_handler(event: Event) -> None:
        await asyncio.sleep(0)
        seen.append(f"async {event.data['n']}")

    bus.subscribe(EventType.MEMORY_CREATED, sync_handler)
    bus.subscribe("memory.created", async_handler)
    await bus.publish(Event(EventType.MEMORY_CREATED, {"n": 1}))
    await bus.publish(Event(EventType.CIRCLE_UPDATED, {"n": 2}))
    assert bus.unsubscribe(EventType.MEMORY_CREATED, sync_handler) is True
    assert bus.unsubscribe(EventType.MEMORY_CREATED, sync_handler) is False
    await bus.publish(Event(EventType.MEMORY_CREATED, {"n": 3}))
    assert seen == ["sync 1", "async 1", "async 3"]


async def test_a_failing_handler_is_logged_and_the_others_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bus = EventBus()
    seen = []

    def broken(event: Event) -> None:
        raise RuntimeError("handler bug")

    bus.subscribe(EventType.MEMORY_SHARED, broken)
    bus.subscribe(EventType.MEMORY_SHARED, lambda e: seen.append(e.type))
    await bus.publish(Event(EventType.MEMORY_SHARED))
    assert seen == [EventType.MEMORY_SHARED]
    assert bus.handler_errors == 1
    assert "MEMORY_SHARED" in caplog.text
    assert "handler bug" in caplog.text


async def test_bad_events() -> None:
    bus = EventBus()
    with pytest.raises(ValueError, match=r"unknown event type 'memory\.exploded'"):
        await bus.publish(Event("memory.exploded"))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown event type"):
        bus.subscribe("nope", print)
    with pytest.raises(ArgumentTypeError):
        await bus.publish({"type": "memory.created"})  # type: ignore[arg-type]
    with pytest.raises(ArgumentTypeError):
        bus.subscribe(EventType.MEMORY_CREATED, "not callable")  # type: ignore[arg-type]


# -- invalidation wiring ------------------------------------------------------------------------


async def fill(cache: AsyncCacheManager, agents: list[int]) -> None:
    for agent in agents:
        await cache.set_rag_results(agent, "q", R)


async def cached(cache: AsyncCacheManager, agents: list[int]) -> list[int]:
    return [a for a in agents if await cache.get_rag_results(a, "q") is not None]


async def test_wiring(cache: AsyncCacheManager) -> None:
    bus = EventBus()
    CacheInvalidator(cache, bus)
    agents = [1, 2, 3, 4, 5]

    await fill(cache, agents)
    await bus.publish(Event(EventType.MEMORY_CREATED, source_agent_id=2))
    assert await cached(cache, agents) == [1, 3, 4, 5]

    await fill(cache, agents)
    await bus.publish(Event(EventType.MEMORY_SHARED, {"members": [3, 4]}, source_agent_id=1))
    assert await cached(cache, agents) == [2, 5]  # members and the author

    await fill(cache, agents)
    await cache.set_circle_context(9, {"name": "c", "members": [4, 5]})
    await bus.publish(Event(EventType.MEMORY_SHARED, source_agent_id=1, circle_id=9))
    assert await cached(cache, agents) == [2, 3]

    await fill(cache, agents)
    await bus.publish(Event(EventType.MEMORY_SHARED, source_agent_id=1, project_id=3))
    assert await cached(cache, agents) == []  # membership unknown: everyone

    await fill(cache, agents)
    await bus.publish(Event(EventType.MEMORY_DELETED, {"agent_id": 5}, source_agent_id=1))
    assert await cached(cache, agents) == [1, 2, 3, 4]

    await bus.publish(Event(EventType.CIRCLE_UPDATED, circle_id=9))
    assert await cache.get_circle_context(9) is None


# -- the Redis bridge ---------------------------------------------------------------------------


async def wait_for(condition: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


@pytest.mark.integration
async def test_bridge_relays_once_without_loops(redis_url: str) -> None:
    a_cache = AsyncCacheManager(CacheConfig(url=redis_url))
    b_cache = AsyncCacheManager(CacheConfig(url=redis_url))
    a_bus, b_bus = EventBus(), EventBus()
    a_seen: list[Event] = []
    b_seen: list[Event] = []
    a_bus.subscribe(EventType.MEMORY_CREATED, a_seen.append)
    b_bus.subscribe(EventType.MEMORY_CREATED, b_seen.append)
    async with RedisEventBridge(a_bus, a_cache) as a, RedisEventBridge(b_bus, b_cache) as b:
        assert a.stats()["connected"]
        assert b.stats()["connected"]
        await a_bus.publish(Event(EventType.MEMORY_CREATED, {"x": 1}, source_agent_id=7))
        await wait_for(lambda: len(b_seen) == 1)
        await asyncio.sleep(0.2)  # room for a loop to show itself
        assert len(a_seen) == 1
        assert len(b_seen) == 1
        assert b_seen[0].relayed
        assert b_seen[0].source_agent_id == 7
        assert b_seen[0].data == {"x": 1}
        assert (a.sent, a.received, b.sent, b.received) == (1, 0, 0, 1)
    await a_cache.aclose()
    await b_cache.aclose()


@pytest.mark.integration
async def test_bridge_survives_a_redis_restart(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    server = RedisServer()
    server.start()
    try:
        config = CacheConfig(url=server.url, recovery_interval=0.1)
        a_cache, b_cache = AsyncCacheManager(config), AsyncCacheManager(config)
        a_bus, b_bus = EventBus(), EventBus()
        seen: list[Event] = []
        b_bus.subscribe(EventType.CIRCLE_UPDATED, seen.append)
        async with RedisEventBridge(a_bus, a_cache), RedisEventBridge(b_bus, b_cache) as b:
            server.kill()
            await wait_for(lambda: not b.stats()["connected"])
            assert b.stats()["last_error"]
            server.start()
            await wait_for(lambda: b.stats()["connected"])
            assert b.stats()["reconnects"] >= 1

            async def delivered() -> None:
                while not seen:
                    await a_bus.publish(Event(EventType.CIRCLE_UPDATED, circle_id=1))
                    await asyncio.sleep(0.1)

            await asyncio.wait_for(delivered(), 5)
            assert seen[0].circle_id == 1
        await a_cache.aclose()
        await b_cache.aclose()
    finally:
        server.cleanup()
    assert "re-subscribed" in caplog.text


WRITER = textwrap.dedent(
    """
    import asyncio, sys, time
    from gathering_cache import AsyncCacheManager, CacheConfig, EventBus, Event, EventType
    from gathering_cache import RedisEventBridge

    async def main():
        async with AsyncCacheManager(CacheConfig(url=sys.argv[1])) as cache:
            bus = EventBus()
            async with RedisEventBridge(bus, cache):
                await asyncio.sleep(0.2)
                print(time.time(), flush=True)
                await bus.publish(Event(EventType.MEMORY_CREATED, source_agent_id=42))
                await asyncio.sleep(0.2)

    asyncio.run(main())
    """
)


@pytest.mark.integration
async def test_an_event_from_another_process_invalidates_here(redis_url: str) -> None:
    async with AsyncCacheManager(CacheConfig(url=redis_url)) as cache:
        bus = EventBus()
        invalidator = CacheInvalidator(cache, bus)
        await cache.set_rag_results(42, "q", R)
        async with RedisEventBridge(bus, cache) as bridge:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-c", WRITER, redis_url,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                env={**os.environ, "PYTHONPATH": os.getcwd()},
            )  # fmt: skip
            out, err = await asyncio.wait_for(process.communicate(), 30)
            assert process.returncode == 0, err.decode()
            await wait_for(lambda: bridge.received == 1)
        assert invalidator.invalidated_agents == 1
        assert await cache.get_rag_results(42, "q") is None
        assert float(out.decode().split()[0]) < time.time()


@pytest.mark.integration
async def test_bridge_restarts_and_ends_with_the_cache(redis_url: str) -> None:
    a_cache = AsyncCacheManager(CacheConfig(url=redis_url))
    b_cache = AsyncCacheManager(CacheConfig(url=redis_url))
    a_bus, b_bus = EventBus(), EventBus()
    seen: list[int | None] = []
    b_bus.subscribe(EventType.CIRCLE_UPDATED, lambda e: seen.append(e.circle_id))
    a = RedisEventBridge(a_bus, a_cache)
    b = RedisEventBridge(b_bus, b_cache)
    await a.start()
    await b.start()
    await a_bus.publish(Event(EventType.CIRCLE_UPDATED, circle_id=1))
    await wait_for(lambda: seen == [1])
    await b.stop()
    await b.start()  # subscribed again before start() returns: nothing lost
    await a_bus.publish(Event(EventType.CIRCLE_UPDATED, circle_id=2))
    await wait_for(lambda: seen == [1, 2])
    await b_cache.aclose()  # the bridge ends with its cache
    await wait_for(lambda: b._task is not None and b._task.done(), timeout=3)
    await a_bus.publish(Event(EventType.CIRCLE_UPDATED, circle_id=3))
    await asyncio.sleep(0.2)
    assert seen == [1, 2]
    await b.stop()
    await a.stop()
    await a_cache.aclose()
