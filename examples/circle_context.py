"""Circle context cached for 10 minutes and invalidated by CIRCLE_UPDATED."""

from __future__ import annotations

import asyncio

from _backend import open_cache

from gathering_cache import CacheInvalidator, Event, EventBus, EventType

loads = 0


async def load_circle_from_database(circle_id: int, members: list[int]) -> dict:  # type: ignore[type-arg]
    global loads
    loads += 1
    await asyncio.sleep(0.05)
    return {"name": "Research Team", "members": members, "active_tasks": 5}


async def main() -> None:
    cache, where = await open_cache("gathering-example-context:")
    print(f"running on {where}")
    async with cache:
        await cache.clear_all()
        bus = EventBus()
        CacheInvalidator(cache, bus)
        members = [1, 2, 3]

        async def get_context(circle_id: int) -> dict:  # type: ignore[type-arg]
            context = await cache.get_circle_context(circle_id)
            if context is None:
                context = await load_circle_from_database(circle_id, members)
                await cache.set_circle_context(circle_id, context)
            return context

        for _ in range(3):
            await get_context(5)
        ttl = await cache.ttl("gathering-example-context:circle:5")
        print(f"3 reads -> database loads: {loads}; ttl {ttl} s")

        members.append(4)  # someone joins the circle
        await bus.publish(Event(EventType.CIRCLE_UPDATED, circle_id=5))
        context = await get_context(5)
        print(f"after CIRCLE_UPDATED -> database loads: {loads}, members {context['members']}")
        await cache.clear_all()


if __name__ == "__main__":
    asyncio.run(main())
