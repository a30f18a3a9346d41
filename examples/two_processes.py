"""Two processes sharing one Redis: a memory written in one invalidates the other's cached
recall, through the Redis event bridge. On the memory backend (no Redis) both halves run in
this process, on the in-process bus."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

from _backend import open_cache, toy_embeddings

from gathering_cache import EventType, MemoryManager, RedisEventBridge

PREFIX = "gathering-example-2proc:"
QUERY = "What does the user prefer?"


async def writer() -> None:
    """The other process: an agent process that writes a memory."""
    cache, _ = await open_cache(PREFIX)
    async with cache:
        memory = MemoryManager(cache, toy_embeddings)
        async with RedisEventBridge(memory.bus, cache):
            await memory.remember(agent_id=1, content="The user prefers green tea")
            print(f"{time.time():.6f}", flush=True)


async def main() -> None:
    cache, where = await open_cache(PREFIX)
    print(f"running on {where}")
    async with cache:
        await cache.clear_all()
        memory = MemoryManager(cache, toy_embeddings)
        await memory.remember(1, "The user prefers coffee")
        await memory.recall(1, QUERY)
        print(f"cached before: {await cache.get_rag_results(1, QUERY) is not None}")
        if cache.config.backend == "redis":
            arrived = asyncio.get_running_loop().create_future()
            memory.bus.subscribe(
                EventType.MEMORY_CREATED,
                lambda event: arrived.done() or arrived.set_result(time.time()),
            )
            async with RedisEventBridge(memory.bus, cache):
                child = await asyncio.create_subprocess_exec(
                    sys.executable, __file__, "--writer",
                    stdout=subprocess.PIPE, env=os.environ.copy(),
                )  # fmt: skip
                await asyncio.wait_for(arrived, 30)
                out, _ = await child.communicate()
                written_at = float(out.decode().split()[-1])
            print(
                "the other process remembered; MEMORY_CREATED relayed here in "
                f"{max(0.0, arrived.result() - written_at) * 1000:.1f} ms"
            )
        else:
            await memory.remember(1, "The user prefers green tea")
            print("(memory backend: the second 'process' ran in this one)")
        print(f"cached after: {await cache.get_rag_results(1, QUERY) is not None}")
        await cache.clear_all()


if __name__ == "__main__":
    asyncio.run(writer() if "--writer" in sys.argv else main())
