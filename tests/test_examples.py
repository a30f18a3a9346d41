"""Every example in examples/ runs, on the memory backend and on a real redis-server."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.servers import RedisServer, free_port

EXAMPLES = sorted(Path(__file__).parent.parent.joinpath("examples").glob("*.py"))


def run_example(path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "CACHE_"))}
    return subprocess.run(
        [sys.executable, str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**clean, **env},
        cwd=path.parent,
    )


def test_examples_exist() -> None:
    assert "demo.py" in {p.name for p in EXAMPLES}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_without_redis_uses_memory(path: Path) -> None:
    result = run_example(path, REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    assert result.returncode == 0, result.stderr
    if path.stem == "demo":
        assert "in-process memory backend (no Redis answered)" in result.stdout
        assert "call 2: cache" in result.stdout
        assert "after invalidation: from database -> 3 memories" in result.stdout
        assert "hit_rate=50.0%" in result.stdout


@pytest.mark.integration
@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_on_real_redis(path: Path, redis_server: RedisServer) -> None:
    result = run_example(path, REDIS_URL=redis_server.url)
    assert result.returncode == 0, result.stderr
    if path.stem == "demo":
        assert f"Redis at {redis_server.url}" in result.stdout
        assert "backend=redis total_keys=3" in result.stdout
        assert "cleaned up 3 demo keys" in result.stdout
