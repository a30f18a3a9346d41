"""Event bus: event-driven invalidation in one process.

:class:`EventBus` delivers :class:`Event` objects to the handlers subscribed to their
:class:`EventType`, sync or async; a handler that raises is logged with the event type and
the others still run. :class:`~gathering_cache.events.bridge.RedisEventBridge` carries them
between processes.
"""

from __future__ import annotations

import contextlib
import enum
import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from gathering_cache.errors import ArgumentTypeError, InvalidArgumentError

__all__ = ["Event", "EventBus", "EventHandler", "EventType", "Forwarder"]

logger = logging.getLogger(__name__)


class EventType(str, enum.Enum):
    """What happened. The values are the wire names used by the Redis bridge."""

    MEMORY_CREATED = "memory.created"
    MEMORY_SHARED = "memory.shared"
    MEMORY_DELETED = "memory.deleted"
    CIRCLE_UPDATED = "circle.updated"


@dataclass
class Event:
    """One event. ``data`` must be JSON-like (it may cross processes)."""

    type: EventType
    data: dict[str, Any] = field(default_factory=dict)
    source_agent_id: int | None = None
    circle_id: int | None = None
    project_id: int | None = None
    timestamp: float = field(default_factory=time.time)
    relayed: bool = False
    """True for an event that arrived from another process through the bridge."""

    def to_wire(self) -> dict[str, Any]:
        return {
            "type": self.type.value,
            "data": self.data,
            "source_agent_id": self.source_agent_id,
            "circle_id": self.circle_id,
            "project_id": self.project_id,
            "timestamp": self.timestamp,
        }

    @classmethod
    def from_wire(cls, payload: dict[str, Any]) -> Event:
        return cls(
            type=EventType(payload["type"]),
            data=dict(payload.get("data") or {}),
            source_agent_id=payload.get("source_agent_id"),
            circle_id=payload.get("circle_id"),
            project_id=payload.get("project_id"),
            timestamp=float(payload.get("timestamp") or time.time()),
            relayed=True,
        )


EventHandler = Callable[[Event], Awaitable[None] | None]
Forwarder = Callable[[Event], Awaitable[None]]


def _check_type(event_type: object) -> EventType:
    if isinstance(event_type, EventType):
        return event_type
    try:
        return EventType(event_type)
    except ValueError:
        known = ", ".join(t.name for t in EventType)
        raise InvalidArgumentError(f"unknown event type {event_type!r}; known: {known}") from None


class EventBus:
    """In-process publish / subscribe of :class:`Event`."""

    def __init__(self) -> None:
        self._handlers: dict[EventType, list[EventHandler]] = {t: [] for t in EventType}
        self._forwarders: list[Forwarder] = []
        self.published = 0
        self.handler_errors = 0

    def subscribe(self, event_type: EventType | str, handler: EventHandler) -> None:
        """Call ``handler(event)`` (sync or async) for every event of ``event_type``."""
        if not callable(handler):
            raise ArgumentTypeError("handler must be callable")
        self._handlers[_check_type(event_type)].append(handler)

    def unsubscribe(self, event_type: EventType | str, handler: EventHandler) -> bool:
        """Remove a handler; ``True`` if it was subscribed."""
        handlers = self._handlers[_check_type(event_type)]
        if handler in handlers:
            handlers.remove(handler)
            return True
        return False

    def add_forwarder(self, forwarder: Forwarder) -> None:
        """Also hand every locally published (not relayed) event to ``forwarder``."""
        self._forwarders.append(forwarder)

    def remove_forwarder(self, forwarder: Forwarder) -> None:
        with contextlib.suppress(ValueError):
            self._forwarders.remove(forwarder)

    async def publish(self, event: Event) -> None:
        """Deliver ``event`` to its handlers (in subscription order), then to forwarders.

        Raises:
            InvalidArgumentError: the event type is unknown (also a ValueError).
            ArgumentTypeError: ``event`` is not an :class:`Event`.
        """
        if not isinstance(event, Event):
            raise ArgumentTypeError(f"publish takes an Event, not {type(event).__name__}")
        event.type = _check_type(event.type)
        self.published += 1
        for handler in list(self._handlers[event.type]):
            try:
                result = handler(event)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                self.handler_errors += 1
                logger.exception("handler %r failed on %s", handler, event.type.name)
        if not event.relayed:
            for forwarder in list(self._forwarders):
                await forwarder(event)
