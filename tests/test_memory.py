"""MemoryManager: cached recall, invalidation on remember / share / forget, the seed's snippets,
warming."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import pytest

from gathering_cache import (
    ArgumentTypeError,
    AsyncCacheManager,
    InMemoryVectorStore,
    MemoryManager,
    WarmProgress,
    warm_rag_cache,
)
from tests.stub_openai import StubEmbeddingServer


def embed_texts(texts: list[str]) -> list[list[float]]:
    """A deterministic toy embedding: word hashes in 16 buckets."""
    out = []
    for text in texts:
        vector = [0.0] * 16
        for word in text.lower().split():
            vector[hashlib.sha256(word.strip("?.,").encode()).digest()[0] % 16] += 1.0
        out.append(vector)
    return out


async def provider(texts: list[str]) -> list[list[float]]:
    return embed_texts(texts)


@pytest.fixture
def memory(cache: AsyncCacheManager) -> MemoryManager:
    return MemoryManager(cache, provider, InMemoryVectorStore())


QUERY = "What are the user's preferences?"


async def test_recall_twice_second_from_cache(memory: MemoryManager) -> None:
    store = memory.store
    assert isinstance(store, InMemoryVectorStore)
    await memory.remember(agent_id=1, content="User prefers dark mode")
    first = await memory.recall(agent_id=1, query=QUERY)
    second = await memory.recall(agent_id=1, query=QUERY)
    assert first == second
    assert first[0]["content"] == "User prefers dark mode"
    assert store.searches == 1
    assert memory.recalls_from_cache == 1


async def test_remember_clears_that_agents_cache(memory: MemoryManager) -> None:
    await memory.remember(agent_id=1, content="User prefers dark mode")
    await memory.remember(agent_id=2, content="Agent two likes tea")
    assert len(await memory.recall(agent_id=1, query=QUERY)) == 1
    await memory.recall(agent_id=2, query=QUERY)
    await memory.remember(agent_id=1, content="User prefers metric units")
    results = await memory.recall(agent_id=1, query=QUERY)
    assert {r["content"] for r in results} == {
        "User prefers dark mode",
        "User prefers metric units",
    }
    await memory.recall(agent_id=2, query=QUERY)
    assert memory.recalls_from_cache == 1  # agent 2's second recall only


async def test_filtered_recalls_skip_the_cache(memory: MemoryManager) -> None:
    store = memory.store
    assert isinstance(store, InMemoryVectorStore)
    await memory.remember(1, "User prefers dark mode", metadata={"kind": "preference"})
    await memory.remember(1, "User ships on Fridays", metadata={"kind": "fact"})
    for _ in range(2):
        found = await memory.recall(1, QUERY, filters={"kind": "fact"})
        assert [r["content"] for r in found] == ["User ships on Fridays"]
    assert store.searches == 2
    assert memory.recalls_from_cache == 0


async def test_invalidate_cache_as_written_in_the_seed(memory: MemoryManager) -> None:
    await memory.remember(agent_id=1, content="User prefers dark mode")
    await memory.recall(agent_id=1, query=QUERY)
    memory.invalidate_cache(agent_id=1)  # the seed calls it without await
    await memory.recall(agent_id=1, query=QUERY)  # not from the cache, even at once
    assert memory.recalls_from_cache == 0
    await asyncio.sleep(0.05)  # the background invalidation has finished
    await memory.recall(agent_id=1, query=QUERY)  # computed again, and cached
    removed = await memory.invalidate_cache(agent_id=1)
    assert removed == 1
    await memory.recall(agent_id=1, query=QUERY)
    await memory.recall(agent_id=1, query=QUERY)
    assert memory.recalls_from_cache == 1


async def test_circle_of_three_sharing_a_memory(memory: MemoryManager) -> None:
    cache = memory.cache
    await cache.set_circle_context(5, {"name": "Research Team", "members": [1, 2, 3]})
    for agent in (1, 2, 3):
        await memory.remember(agent, f"agent {agent} notes on user preferences")
        await memory.recall(agent, QUERY)
    memory_id = await memory.remember(1, "User prefers dark mode")  # clears agent 1 only
    for agent in (2, 3):
        assert await cache.get_rag_results(agent, QUERY) is not None
    await memory.share(memory_id, circle_id=5)  # members from the cached circle context
    for agent in (1, 2, 3):
        assert await cache.get_rag_results(agent, QUERY) is None
        found = await memory.recall(agent, QUERY)
        assert "User prefers dark mode" in [r["content"] for r in found]


async def test_forget(memory: MemoryManager) -> None:
    memory_id = await memory.remember(1, "User prefers dark mode")
    assert len(await memory.recall(1, QUERY)) == 1
    assert await memory.forget(1, memory_id) is True
    assert await memory.recall(1, QUERY) == []
    assert await memory.forget(1, memory_id) is False


async def test_bad_input(memory: MemoryManager) -> None:
    with pytest.raises(ArgumentTypeError):
        await memory.remember("1", "x")  # type: ignore[arg-type]
    with pytest.raises(ArgumentTypeError):
        await memory.recall(1, 42)  # type: ignore[arg-type]
    with pytest.raises(ArgumentTypeError):
        memory.invalidate_cache(True)
    with pytest.raises(ValueError, match="unknown memory"):
        await memory.share("mem-999", members=[2])


async def test_warming_reports_progress(memory: MemoryManager) -> None:
    await memory.remember(1, "User prefers dark mode")
    await memory.recall(1, "What is the project context?")
    seen: list[WarmProgress] = []
    report = await warm_rag_cache(
        memory,
        {
            1: [QUERY, "What is the project context?", "What are the recent decisions?"],
            2: [QUERY],
        },
        progress=seen.append,
    )
    assert (report.total, report.computed, report.already_cached, report.failed) == (4, 3, 1, 0)
    assert [p.done for p in seen] == [1, 2, 3, 4]
    assert all(p.total == 4 for p in seen)
    before = memory.recalls_from_cache
    await memory.recall(1, QUERY)
    await memory.recall(2, QUERY)
    assert memory.recalls_from_cache == before + 2


def test_seed_memory_snippets_via_from_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with StubEmbeddingServer() as stub:
        monkeypatch.chdir(tmp_path)
        monkeypatch.setenv("OPENAI_BASE_URL", stub.base_url)
        monkeypatch.setenv("CACHE_BACKEND", "memory")

        async def seed() -> MemoryManager:
            memory = MemoryManager.from_env()
            # First call → database + vector search
            await memory.remember(agent_id=1, content="User prefers dark mode")
            results = await memory.recall(agent_id=1, query="What are the user's preferences?")
            # Second call within 5min → CACHE ✅
            results = await memory.recall(agent_id=1, query="What are the user's preferences?")
            assert results[0]["content"] == "User prefers dark mode"
            # Add new memory → RAG cache for agent_id=1 is cleared ✅
            await memory.remember(agent_id=1, content="User prefers metric units")
            memory.invalidate_cache(agent_id=1)
            await asyncio.sleep(0)
            await memory.aclose()
            return memory

        memory = asyncio.run(seed())
        assert memory.recalls_from_cache == 1
        assert stub.texts_embedded() == 3


async def test_forget_clears_everyone_who_could_recall_it(memory: MemoryManager) -> None:
    memory_id = await memory.remember(1, "User prefers dark mode")
    await memory.share(memory_id, members=[2, 3])
    for agent in (1, 2, 3):
        assert len(await memory.recall(agent, QUERY)) == 1
    with pytest.raises(ValueError, match="belongs to agent 1"):
        await memory.forget(2, memory_id)
    assert await memory.forget(1, memory_id) is True
    for agent in (1, 2, 3):
        assert await memory.recall(agent, QUERY) == []


async def test_share_without_known_members_is_refused(memory: MemoryManager) -> None:
    memory_id = await memory.remember(1, "x")
    with pytest.raises(ValueError, match="members"):
        await memory.share(memory_id, circle_id=99)  # no cached context for circle 99


async def test_warming_refuses_a_single_string(memory: MemoryManager) -> None:
    with pytest.raises(ArgumentTypeError):
        await warm_rag_cache(memory, {1: "What are the user's preferences?"})
