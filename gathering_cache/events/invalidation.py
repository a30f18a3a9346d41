"""Event-driven invalidation: which cache entries an event makes stale.

=================  ==========================================================================
MEMORY_CREATED     the source agent's RAG results
MEMORY_SHARED      the RAG results of every agent that can now see the memory: the members
                   given in the event (``data["members"]``), else the members in the cached
                   circle context, else — membership unknown — every agent's (O(1))
MEMORY_DELETED     the owner's RAG results (``data["agent_id"]``, else the source agent)
CIRCLE_UPDATED     that circle's context
=================  ==========================================================================

Clearing only the author's cache on MEMORY_SHARED would leave the other members of a circle
recalling stale results; every member's cache is cleared.
"""

from __future__ import annotations

import logging
from typing import Any

from gathering_cache.errors import ArgumentTypeError
from gathering_cache.events.bus import Event, EventBus, EventType
from gathering_cache.manager import AsyncCacheManager

__all__ = ["CacheInvalidator"]

logger = logging.getLogger(__name__)


def _ints(values: Any) -> list[int] | None:
    if not isinstance(values, (list, tuple, set)):
        return None
    return sorted({v for v in values if isinstance(v, int) and not isinstance(v, bool)})


class CacheInvalidator:
    """Subscribes to a bus and invalidates what each event makes stale."""

    def __init__(self, cache: AsyncCacheManager, bus: EventBus) -> None:
        if not isinstance(cache, AsyncCacheManager):
            raise ArgumentTypeError(
                f"cache must be an AsyncCacheManager, not {type(cache).__name__}"
            )
        if not isinstance(bus, EventBus):
            raise ArgumentTypeError(f"bus must be an EventBus, not {type(bus).__name__}")
        self.cache = cache
        self.bus = bus
        self.invalidated_agents = 0
        self.invalidated_everyone = 0
        self.invalidated_circles = 0
        self._handlers = {
            EventType.MEMORY_CREATED: self.on_memory_created,
            EventType.MEMORY_SHARED: self.on_memory_shared,
            EventType.MEMORY_DELETED: self.on_memory_deleted,
            EventType.CIRCLE_UPDATED: self.on_circle_updated,
        }
        for event_type, handler in self._handlers.items():
            bus.subscribe(event_type, handler)

    def detach(self) -> None:
        for event_type, handler in self._handlers.items():
            self.bus.unsubscribe(event_type, handler)

    async def _agent(self, agent_id: Any) -> None:
        if isinstance(agent_id, int) and not isinstance(agent_id, bool):
            await self.cache.invalidate_rag_results(agent_id)
            self.invalidated_agents += 1
        elif agent_id is not None:  # an id we cannot read (from another process?): be safe
            logger.warning("event names agent %r; invalidating everyone", agent_id)
            await self.cache.invalidate_all_rag_results()
            self.invalidated_everyone += 1

    async def on_memory_created(self, event: Event) -> None:
        await self._agent(event.data.get("agent_id", event.source_agent_id))

    async def on_memory_deleted(self, event: Event) -> None:
        owner = event.data.get("agent_id", event.source_agent_id)
        members = _ints(event.data.get("members"))
        if members:  # a shared memory: everyone who could recall it
            for agent_id in sorted({*members, *([owner] if isinstance(owner, int) else [])}):
                await self._agent(agent_id)
        else:
            await self._agent(owner)

    async def on_memory_shared(self, event: Event) -> None:
        members = _ints(event.data.get("members"))
        if members is None and isinstance(event.circle_id, int):
            context = await self.cache.get_circle_context(event.circle_id)
            if context is not None:
                members = _ints(context.get("members"))
        if members is None:
            logger.debug("membership unknown; invalidating every agent's RAG")
            await self.cache.invalidate_all_rag_results()
            self.invalidated_everyone += 1
            return
        targets = set(members)
        if isinstance(event.source_agent_id, int):
            targets.add(event.source_agent_id)  # the author sees it too
        for agent_id in sorted(targets):
            await self._agent(agent_id)

    async def on_circle_updated(self, event: Event) -> None:
        circle_id = event.circle_id if event.circle_id is not None else event.data.get("circle_id")
        if isinstance(circle_id, int) and not isinstance(circle_id, bool):
            await self.cache.invalidate_circle_context(circle_id)
            self.invalidated_circles += 1
