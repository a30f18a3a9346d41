"""The event bridge on every backend, and stop() bounded whatever its subscription does."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import pytest

from gathering_cache import (
    AsyncCacheManager,
    CacheConfig,
    Event,
    EventBus,
    EventType,
    RedisEventBridge,
)
from gathering_cache.backends import MemoryStore
from gathering_cache.backends.base import Subscriber

Factory = Callable[..., Awaitable[AsyncCacheManager]]

WATCHDOG = 20.0
"""Seconds after which a hung test body fails instead of hanging the suite."""


async def finishes(body: Coroutine[Any, Any, None]) -> None:
    """Run ``body``; fail (instead of hanging) if it has not returned after WATCHDOG s."""
    task = asyncio.ensure_future(body)
    done, _ = await asyncio.wait((task,), timeout=WATCHDOG)
    if task not in done:
        task.cancel()
        pytest.fail(f"did not return within {WATCHDOG} s")
    task.result()


async def test_leaving_the_bridge_right_after_publishing_returns(make_cache: Factory) -> None:
    # docs/memory.md's snippet plus one publish: on Python 3.10/3.11 with the memory backend
    # the message and stop()'s cancellation arrived together, wait_for swallowed the
    # cancellation, and `async with` never returned.
    cache = await make_cache()
    bus = EventBus()

    async def body() -> None:
        for n in range(20):
            async with RedisEventBridge(bus, cache) as bridge:
                assert bridge.connected
                await bus.publish(Event(EventType.MEMORY_CREATED, source_agent_id=n))
            assert not bridge.connected
            assert bridge.sent == 1

    await finishes(body())


async def test_bridges_relay_once_on_every_backend(make_cache: Factory) -> None:
    cache = await make_cache()
    a_bus, b_bus = EventBus(), EventBus()
    a_seen: list[Event] = []
    b_seen: list[Event] = []
    a_bus.subscribe(EventType.CIRCLE_UPDATED, a_seen.append)
    b_bus.subscribe(EventType.CIRCLE_UPDATED, b_seen.append)

    async def body() -> None:
        async with RedisEventBridge(a_bus, cache) as a, RedisEventBridge(b_bus, cache) as b:
            assert a.connected
            assert b.connected
            await a_bus.publish(Event(EventType.CIRCLE_UPDATED, circle_id=7))
            while not b_seen:
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.05)  # room for a (wrong) echo back to a
        assert [e.circle_id for e in a_seen] == [7]  # local delivery only, not relayed back
        assert [(e.circle_id, e.relayed) for e in b_seen] == [(7, True)]
        assert b.received == 1
        assert a.received == 0

    await finishes(body())


async def test_a_memory_subscriber_cancelled_as_a_message_arrives_raises_and_keeps_it() -> None:
    store = MemoryStore()
    subscriber = store.subscriber("ch")
    await subscriber.start()
    getter = asyncio.ensure_future(subscriber.get(timeout=5.0))
    await asyncio.sleep(0)  # the getter now waits on the queue
    await store.publish("ch", b"m")
    getter.cancel()  # in the same loop turn as the message
    with pytest.raises(asyncio.CancelledError):
        await getter
    assert await subscriber.get(timeout=0.01) == b"m"  # not lost
    assert await subscriber.get(timeout=0.01) is None
    await subscriber.close()


class _Stubborn(Subscriber):
    """A subscription that ignores cancellation in get() (as wait_for did) or forever."""

    def __init__(self, inner: Subscriber, *, forever: bool) -> None:
        self.inner = inner
        self.forever = forever

    async def start(self) -> None:
        await self.inner.start()

    async def get(self, timeout: float) -> bytes | None:
        while True:
            try:
                return await self.inner.get(timeout)
            except asyncio.CancelledError:
                if not self.forever:
                    return None  # swallowed once; the next get() is cancellable again

    async def close(self) -> None:
        await self.inner.close()


@pytest.mark.parametrize("forever", [False, True], ids=["swallows-once", "ignores-forever"])
async def test_stop_returns_whatever_the_subscription_does(
    forever: bool, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    cache = AsyncCacheManager(CacheConfig(backend="memory"))
    store = cache._core.store
    plain = store.subscriber
    monkeypatch.setattr(store, "subscriber", lambda ch: _Stubborn(plain(ch), forever=forever))
    bus = EventBus()

    async def body() -> None:
        async with RedisEventBridge(bus, cache) as bridge:
            assert bridge.connected
        assert not bridge.connected

    with caplog.at_level(logging.WARNING, logger="gathering_cache.events.bus"):
        await finishes(body())
    assert ("did not stop" in caplog.text) is forever
    await cache.aclose()


async def test_the_bridge_and_the_cache_close_against_a_server_that_never_answers() -> None:
    from tests.test_backend_errors import SilentServer

    async with SilentServer() as server:
        config = CacheConfig(host="127.0.0.1", port=server.port, failure_threshold=1_000_000)
        cache = AsyncCacheManager(config)
        bus = EventBus()

        async def body() -> None:
            async with RedisEventBridge(bus, cache) as bridge:
                await bus.publish(Event(EventType.MEMORY_CREATED, source_agent_id=1))
                assert not bridge.connected
            await cache.aclose()

        await finishes(body())


async def test_a_handler_of_a_relayed_event_may_stop_its_bridge() -> None:
    cache = AsyncCacheManager(CacheConfig(backend="memory"))
    sender_bus, bus = EventBus(), EventBus()
    bridge = RedisEventBridge(bus, cache)
    stopped: list[bool] = []

    async def stop_on_event(event: Event) -> None:
        await bridge.stop()  # runs inside the bridge's own listener
        stopped.append(True)

    bus.subscribe(EventType.MEMORY_DELETED, stop_on_event)

    async def body() -> None:
        async with RedisEventBridge(sender_bus, cache):
            await bridge.start()
            await sender_bus.publish(Event(EventType.MEMORY_DELETED))
            while not stopped:
                await asyncio.sleep(0.01)
        assert not bridge.connected
        await bridge.stop()  # and again from outside: nothing left to stop

    await finishes(body())
    await cache.aclose()
