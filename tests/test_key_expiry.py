"""Every key the library writes expires, and clear_all leaves nothing behind.

A full workload through every public write (generic set with and without ttl, set_many,
embeddings, RAG results and their invalidations, circle context, LLM responses, the locks of
CachedEmbedder and cached_completion, the event bridge, MemoryManager), then every key in
the store is listed (SCAN on Redis) and each must carry a TTL.
"""

from __future__ import annotations

from typing import Any

from gathering_cache import (
    AsyncCacheManager,
    CachedEmbedder,
    Event,
    EventBus,
    EventType,
    InMemoryVectorStore,
    MemoryManager,
    RedisEventBridge,
    cached_completion,
)
from gathering_cache.backends import MemoryStore
from gathering_cache.backends.redis_store import RedisStore

MESSAGES = [{"role": "user", "content": "hello"}]


async def ttls(cache: AsyncCacheManager) -> dict[str, float | None]:
    """Every key in the store with its remaining lifetime (``None``: no expiry)."""
    store = cache._core.store
    if isinstance(store, MemoryStore):
        return {key: expires for key, (_, expires) in store._data.items()}
    assert isinstance(store, RedisStore)
    out: dict[str, float | None] = {}
    async for raw in store.client.scan_iter(match="*", count=1000):
        remaining = await store.client.pttl(raw)
        key = raw.decode()
        if remaining == -2:
            continue  # expired between SCAN and PTTL
        out[key] = None if remaining == -1 else remaining / 1000
    return out


def without_expiry(found: dict[str, float | None]) -> list[str]:
    return sorted(key for key, left in found.items() if left is None or left <= 0)


async def test_every_key_written_by_a_full_workload_expires(
    cache: AsyncCacheManager, backend: str
) -> None:
    seen_in_flight: list[dict[str, float | None]] = []

    async def provider(texts: list[str]) -> list[list[float]]:
        seen_in_flight.append(await ttls(cache))  # the embedder's locks are held now
        return [[float(len(text)), 1.0] for text in texts]

    async def complete(model: str, messages: list[dict[str, str]], **params: Any) -> Any:
        seen_in_flight.append(await ttls(cache))  # the completion's lock is held now
        return {"answer": 42, "usage": {"total_tokens": 3}}

    # Generic operations, with and without a ttl.
    assert await cache.set("gathering:a", 1, ttl=60) is True
    assert await cache.set("gathering:b", 1) is True
    assert await cache.set("outside-the-prefix", 1) is True
    assert await cache.set_many({"gathering:c": 1, "gathering:d": 2}) is True
    assert await cache.set_many({"gathering:e": 1}, ttl=60) is True
    # Embeddings.
    assert await cache.set_embedding("t", [1.0, 2.0]) is True
    assert await cache.set_embeddings(["u", "v"], [[1.0], [2.0]], model="m") is True
    # RAG results: misses, writes, invalidations.
    assert await cache.get_rag_results(1, "q") is None
    assert await cache.set_rag_results(1, "q", [{"r": 1}]) is True
    assert await cache.set_rag_results(2, "q", [{"r": 1}], ttl=3600) is True
    assert await cache.get_rag_generation(3) is not None
    assert await cache.invalidate_rag_results(1) == 1
    assert await cache.invalidate_rag_results(9) == 0  # an agent never written
    assert await cache.invalidate_all_rag_results() is True
    # Circle context and LLM responses.
    assert await cache.set_circle_context(1, {"x": 1}) is True
    assert await cache.set_llm_response("m", {"a": 1}, prompt="p", temperature=0) is True
    # The agent helpers: CachedEmbedder and cached_completion take locks.
    embedder = CachedEmbedder(provider, cache, model="e")
    assert await embedder.embed_many(["one", "two"]) == [[3.0, 1.0], [3.0, 1.0]]
    answer = await cached_completion(cache)(complete)("m", MESSAGES, temperature=0)
    assert answer["answer"] == 42
    # The event bridge (it publishes only), then MemoryManager.
    bus = EventBus()
    async with RedisEventBridge(bus, cache):  # stop() right after a publish: issue 9 item 1
        await bus.publish(Event(EventType.CIRCLE_UPDATED, circle_id=1))
    memory = MemoryManager(cache, embedder, InMemoryVectorStore(), bus)
    await memory.remember(agent_id=4, content="likes tea")
    assert await memory.recall(agent_id=4, query="tea")
    assert await memory.recall(agent_id=4, query="tea")
    await memory.aclose()

    found = await ttls(cache)
    assert len(found) >= 20, sorted(found)
    assert without_expiry(found) == []
    assert len(seen_in_flight) >= 2
    assert any(
        any(":lock:" in k or k.startswith("gathering:lock:") for k in s) for s in seen_in_flight
    )
    for snapshot in seen_in_flight:
        assert without_expiry(snapshot) == []

    # clear_all leaves nothing under the prefix: counters and index sets included.
    assert await cache.clear_all() > 0
    assert sorted(await ttls(cache)) == ["outside-the-prefix"]
