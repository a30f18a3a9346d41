"""Every fenced ``python`` block of README.md and docs/*.md runs as pasted.

Each block is run in a fresh interpreter (so a fresh event loop and a fresh environment), once
on the in-process memory backend and once against a real redis-server, with the environment a
reader would have: ``from_env()`` finds the backend through the environment variables.

Conventions the docs follow, checked here:

- A result shown in a comment is printed by the block: ``print(x)  # -> 3``. The test checks
  that those lines appear in the block's output, in order. A ``# ->`` comment anywhere but on
  a ``print(`` line is refused, so a doc cannot claim a result it does not show.
- No top-level ``await`` (an ``asyncio.run(main())`` wrapper instead), no unused imports and no
  undefined names (pyflakes' rules through ruff).
- A block that deliberately cannot run is preceded by ``<!-- not-run: reason -->``; those are
  listed in ``NOT_RUN`` below, so the list stays short and each entry is justified.
- ``# redis -> text`` (or ``# memory -> text``) claims a line printed on that backend only:
  the test checks it is printed on that run and not printed on the other.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from tests.servers import RedisServer

ROOT = Path(__file__).parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>[\w+-]*)[ \t]*$")
NOT_RUN = re.compile(r"<!--\s*not-run:\s*(?P<reason>.+?)\s*-->")
RESULT = re.compile(r"#\s*(?:(?P<backend>redis|memory)\s+)?->\s*(?P<text>.*?)\s*$")

# Blocks that are shown but not run: (file, reason given in the marker). Keep this short.
NOT_RUN_BLOCKS = {
    ("embeddings.md", "calls the OpenAI API (needs OPENAI_API_KEY and the network)"),
}


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    source: str
    not_run: str | None

    @property
    def name(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"

    def claims(self) -> list[tuple[str | None, str]]:
        """(backend or None for both, text) of each ``# ->`` comment, in order."""
        return [
            (m["backend"], m["text"])
            for line in self.source.splitlines()
            if (m := RESULT.search(line))
        ]


def python_blocks() -> list[Block]:
    blocks: list[Block] = []
    for path in DOCS:
        lines = path.read_text(encoding="utf-8").splitlines()
        i = 0
        while i < len(lines):
            opening = FENCE.match(lines[i])
            if not opening:
                i += 1
                continue
            indent = opening["indent"]
            end = i + 1
            while end < len(lines) and not (
                FENCE.match(lines[end]) and FENCE.match(lines[end])["lang"] == ""  # type: ignore[index]
            ):
                end += 1
            if opening["lang"] in ("python", "py"):
                body = [
                    line[len(indent) :] if line.startswith(indent) else line
                    for line in lines[i + 1 : end]
                ]
                previous = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
                marker = NOT_RUN.search(previous)
                blocks.append(
                    Block(path, i + 1, "\n".join(body) + "\n", marker["reason"] if marker else None)
                )
            i = end + 1
    return blocks


BLOCKS = python_blocks()
RUN = [b for b in BLOCKS if b.not_run is None]


def test_blocks_are_found() -> None:
    assert len(BLOCKS) >= 20
    assert {b.path.name for b in BLOCKS} >= {"README.md", "api.md", "configuration.md"}


def test_not_run_blocks_are_the_listed_ones() -> None:
    skipped = {(b.path.name, b.not_run) for b in BLOCKS if b.not_run is not None}
    assert skipped == NOT_RUN_BLOCKS


@pytest.mark.parametrize("block", BLOCKS, ids=lambda b: b.name)
def test_block_compiles_without_top_level_await(block: Block) -> None:
    compile(block.source, block.name, "exec")  # a top-level await is a SyntaxError here


@pytest.mark.parametrize("block", BLOCKS, ids=lambda b: b.name)
def test_result_comments_are_on_print_lines(block: Block) -> None:
    for line in block.source.splitlines():
        if RESULT.search(line):
            assert line.lstrip().startswith("print("), (block.name, line)


def test_no_unused_imports_or_undefined_names(tmp_path: Path) -> None:
    for n, block in enumerate(RUN):
        (tmp_path / f"block_{n:03}.py").write_text(block.source, encoding="utf-8")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "ruff",
            "check",
            "--isolated",
            "--no-cache",
            "--select",
            "F",
            "--output-format",
            "concise",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    names = {f"block_{n:03}.py": block.name for n, block in enumerate(RUN)}
    report = re.sub(r"\S*(block_\d{3}\.py)", lambda m: names[m[1]], result.stdout)
    assert result.returncode == 0, report


# -- running them --------------------------------------------------------------------------------

WARNING_SIGNS = ("Traceback", "Unclosed", "ResourceWarning", "never awaited", "Task was destroyed")


def clean_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("REDIS_", "CACHE_", "GATHERING_CACHE_", "OPENAI_"))
    }
    return {**env, "PYTHONPATH": str(ROOT), **extra}


def run_block(block: Block, backend: str, env: dict[str, str], cwd: Path) -> str:
    result = subprocess.run(
        [sys.executable, "-W", "default", "-c", block.source],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=cwd,
        check=False,
    )
    assert result.returncode == 0, f"{block.name}\n{result.stdout}\n{result.stderr}"
    for sign in WARNING_SIGNS:
        assert sign not in result.stderr, f"{block.name}\n{result.stderr}"
    lines = result.stdout.splitlines()
    position = 0
    for only_on, expected in block.claims():
        if only_on not in (None, backend):
            assert expected not in lines, f"{block.name}: {expected!r} printed on {backend}"
            continue
        while position < len(lines) and lines[position].rstrip() != expected:
            position += 1
        assert position < len(lines), f"{block.name}: {expected!r} not printed:\n{result.stdout}"
        position += 1
    return result.stdout


@pytest.mark.parametrize("block", RUN, ids=lambda b: b.name)
def test_block_runs_on_memory_backend(block: Block, tmp_path: Path) -> None:
    # Both spellings of the backend variable, until the GATHERING_CACHE_ names land.
    env = clean_env(CACHE_BACKEND="memory", GATHERING_CACHE_BACKEND="memory")
    run_block(block, "memory", env, tmp_path)


@pytest.mark.integration
@pytest.mark.parametrize("block", RUN, ids=lambda b: b.name)
def test_block_runs_on_real_redis(block: Block, redis_server: RedisServer, tmp_path: Path) -> None:
    client = redis.Redis.from_url(redis_server.url)
    try:
        client.flushall()
        run_block(block, "redis", clean_env(REDIS_URL=redis_server.url), tmp_path)
    finally:
        client.flushall()
        client.close()
