"""Every example in examples/ runs, on the memory backend and on a real redis-server."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.servers import RedisServer, free_port

EXAMPLES = sorted(
    p
    for p in Path(__file__).parent.parent.joinpath("examples").glob("*.py")
    if not p.name.startswith("_")
)

# What each example must print, whatever the backend.
EXPECTED = {
    "demo": [
        "call 2: cache",
        "after invalidation: from database -> 3 memories",
        "hit_rate=50.0%",
    ],
    "embeddings_provider": [
        "provider calls: 2 (texts sent: 2)",
        "requested: 22, saved: 20 (91%), est. cost saved $0.002",
        "coalesced: 19",
    ],
    "batch_embeddings": [
        "asked for 35 texts, got 35 vectors",
        "provider calls: 2, sizes [8, 2]",
        "now cached: 30 of 30",
    ],
    "memory_recall": [
        "recall 1: 1 memories, recall 2: 1 memories, vector searches: 1, from cache: 1",
        "after remember(): 2 memories, vector searches: 2",
    ],
    "circle_sharing": [
        "cached recalls before sharing: agents [1, 2, 3]",
        "cached recalls after sharing: agents []",
        "agent 3 sees the shared memory: True",
    ],
    "circle_context": [
        "3 reads -> database loads: 1; ttl 600 s",
        "after CIRCLE_UPDATED -> database loads: 2, members [1, 2, 3, 4]",
    ],
    "cache_warming": [
        "warmed: 6 computed, 0 already cached, 0 failed",
        "after warming, 3 of 3 recalls came from the cache",
    ],
    "two_processes": ["cached before: True", "cached after: False"],
    "llm_cache": [
        "3 calls -> LLM calls: 1",
        "2 calls -> LLM calls: 3 (not cached)",
        "LLM calls: 4 (tenants do not share)",
        "tokens saved: 32",
    ],
}


def run_example(path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("REDIS_", "CACHE_", "GATHERING_CACHE_"))
    }
    return subprocess.run(
        [sys.executable, str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**clean, **env},
        cwd=path.parent,
    )


def test_every_example_is_checked() -> None:
    assert {p.stem for p in EXAMPLES} == set(EXPECTED)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_without_redis_uses_memory(path: Path) -> None:
    result = run_example(path, REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    assert result.returncode == 0, result.stderr
    assert "in-process memory backend" in result.stdout
    for line in EXPECTED[path.stem]:
        assert line in result.stdout, (line, result.stdout)


@pytest.mark.integration
@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_on_real_redis(path: Path, redis_server: RedisServer) -> None:
    result = run_example(path, REDIS_URL=redis_server.url)
    assert result.returncode == 0, result.stderr
    assert f"Redis at {redis_server.url}" in result.stdout
    for line in EXPECTED[path.stem]:
        assert line in result.stdout, (line, result.stdout)
    if path.stem == "two_processes":
        assert "MEMORY_CREATED relayed here in" in result.stdout
    if path.stem == "demo":
        # greeting, embedding, RAG entry, its index, the RAG generations of agent 1 and all
        assert "backend=redis total_keys=6" in result.stdout
        assert "cleaned up 6 demo keys" in result.stdout  # everything: nothing left behind
