"""``RedisEventBridge``: events between processes that share a cache store (Redis pub/sub on
``<prefix>events``). Events published locally are sent on; events from other processes are
delivered locally once, marked ``relayed`` so they are never sent back (no loops). The bridge
re-subscribes by itself after a Redis restart and says in :meth:`RedisEventBridge.stats`
whether it is connected.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

import orjson

from gathering_cache.backends.base import Subscriber
from gathering_cache.errors import ArgumentTypeError
from gathering_cache.events.bus import Event, EventBus
from gathering_cache.manager import AsyncCacheManager

__all__ = ["RedisEventBridge"]

logger = logging.getLogger(__name__)

_RECANCEL = 0.1
"""Seconds between the cancellations :meth:`RedisEventBridge.stop` sends its listener."""


class RedisEventBridge:
    """Relay events between processes through the cache store's pub/sub.

    Args:
        bus: the local bus.
        cache: the cache manager whose store carries the events (Redis; with the memory
            backend the bridge only reaches the same process).
        channel: the pub/sub channel; ``<prefix>events`` by default.
    """

    def __init__(
        self, bus: EventBus, cache: AsyncCacheManager, *, channel: str | None = None
    ) -> None:
        if not isinstance(cache, AsyncCacheManager):
            raise ArgumentTypeError(
                f"cache must be an AsyncCacheManager, not {type(cache).__name__}"
            )
        self.bus = bus
        self._messaging = cache.messaging
        self.channel = channel or f"{cache.config.key_prefix}events"
        self.origin = uuid.uuid4().hex
        self.connected = False
        self.sent = 0
        self.received = 0
        self.reconnects = 0
        self.last_error: str | None = None
        self._task: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()
        self._stopping = False
        self._closing = False  # the listener is closing its subscription: let it finish

    async def start(self) -> None:
        """Subscribe and start relaying (waits up to ``operation_timeout`` for the first
        subscription; keeps retrying in the background after that)."""
        if self._task is not None:
            return
        disabled = self._messaging.disabled
        if disabled is not None:
            self.last_error = disabled
            return
        self._stopping = self._closing = False
        self.bus.add_forwarder(self._send)
        self._task = task = asyncio.create_task(self._listen(), name="gathering-cache-event-bridge")
        # asyncio.wait, not wait_for: it never swallows a cancellation of the caller.
        subscribed = asyncio.ensure_future(self._subscribed.wait())
        try:
            await asyncio.wait(
                (subscribed, task),
                timeout=self._messaging.config.operation_timeout,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            subscribed.cancel()

    async def stop(self) -> None:
        """Stop relaying and unsubscribe. Returns within a bounded time whatever the store
        does (a listener that does not end by then is left to end by itself, with a
        warning); a cancellation of the caller propagates."""
        self._stopping = True  # the listener also ends if a cancellation gets lost
        self.bus.remove_forwarder(self._send)
        self._subscribed.clear()
        task, self._task = self._task, None
        if task is asyncio.current_task():
            task = None  # called by a handler of a relayed event: the listener ends after it
        if task is not None:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self._stop_timeout()
            while not task.done():
                remaining = deadline - loop.time()
                if remaining <= 0:
                    logger.warning(
                        "event bridge listener on %s did not stop within %.1f s; left to "
                        "end by itself",
                        self.channel,
                        self._stop_timeout(),
                    )
                    break
                if not self._closing:  # again each round: a cancellation may have been lost
                    task.cancel()
                await asyncio.wait((task,), timeout=min(remaining, _RECANCEL))
            if task.done() and not task.cancelled() and task.exception() is not None:
                logger.debug("event bridge listener ended with %r", task.exception())
        self.connected = False

    def _stop_timeout(self) -> float:
        # Closing the subscription may take a round trip to the server.
        config = self._messaging.config
        bound: float = 2 * config.operation_timeout + config.connect_timeout
        return max(1.0, bound)

    async def __aenter__(self) -> RedisEventBridge:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def stats(self) -> dict[str, Any]:
        return {
            "channel": self.channel,
            "connected": self.connected,
            "sent": self.sent,
            "received": self.received,
            "reconnects": self.reconnects,
            "last_error": self.last_error,
        }

    async def _send(self, event: Event) -> None:
        message = orjson.dumps({"origin": self.origin, "event": event.to_wire()})
        if await self._messaging.publish(self.channel, message) is not None:
            self.sent += 1

    def _running(self) -> bool:
        return not self._stopping and self._messaging.open

    async def _listen(self) -> None:
        delay = 0.05
        faults = self._messaging.faults
        close_timeout = self._messaging.config.operation_timeout
        while self._running():  # ends when stopped or when the cache is closed
            subscriber: Subscriber | None = None
            try:
                subscriber = await self._messaging.subscribe(self.channel)
                if self.last_error is not None:
                    self.reconnects += 1
                    logger.info("event bridge re-subscribed to %s", self.channel)
                self.connected = True
                self._subscribed.set()
                delay = 0.05
                while self._running():
                    data = await subscriber.get(timeout=1.0)
                    if data is not None and self._running():
                        await self._deliver(data)
            except faults as exc:
                self._subscribed.clear()
                if self.connected:
                    logger.warning(
                        "event bridge disconnected (%s: %s); retrying",
                        type(exc).__name__,
                        exc,
                    )
                self.connected = False
                self.last_error = f"{type(exc).__name__}: {exc}"
            finally:
                # Bounded: closing the subscription on a hung server must not hold stop().
                if subscriber is not None:
                    self._closing = True
                    try:
                        closing = asyncio.ensure_future(subscriber.close())
                        await asyncio.wait((closing,), timeout=close_timeout)
                    finally:
                        self._closing = False
            if not self._running():
                break
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
        self.connected = False

    async def _deliver(self, data: bytes) -> None:
        try:
            message = orjson.loads(data)
            if message.get("origin") == self.origin:
                return  # our own event, back from Redis
            event = Event.from_wire(message["event"])
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            logger.warning("ignoring a malformed bridge message: %s", exc)
            return
        self.received += 1
        await self.bus.publish(event)
