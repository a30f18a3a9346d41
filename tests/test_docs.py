"""Every fenced ``python`` block of README.md and docs/*.md runs as pasted.

Each block runs as ``__main__`` in a fresh process (a child forked from one interpreter that
has only imported the library: no event loop, thread or manager yet), with stdout captured,
once on the in-process memory backend and once against a real redis-server (flushed before and
after). The environment is the one a reader would have: ``from_env()`` finds the backend
through the environment variables, and nothing else points the block at a server.

Conventions the docs follow, checked here:

- A result shown in a comment is printed by the block: ``print(x)  # -> 3``. The test checks
  that those lines appear in the block's output, in order. A ``# ->`` comment anywhere but on
  a ``print(`` line is refused, and so is a literal-looking comment (``# 42``, ``# [0.1]``,
  ``# None``) on a line whose value is thrown away: a doc cannot claim a result it does not
  show.
- No top-level ``await`` (an ``asyncio.run(main())`` wrapper instead), no unused imports and no
  undefined names (pyflakes' rules through ruff).
- A block that deliberately cannot run is preceded by ``<!-- not-run: reason -->``; those are
  listed in ``NOT_RUN_BLOCKS`` below, so the list stays short and each entry is justified.
- ``# redis -> text`` (or ``# memory -> text``) claims a line printed on that backend only:
  the test checks it is printed on that run and not printed on the other.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from tests.servers import RedisServer

ROOT = Path(__file__).parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>[\w+-]*)[ \t]*$")
CLOSING = re.compile(r"^[ \t]*```[ \t]*$")
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
            while end < len(lines) and not CLOSING.match(lines[end]):
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

# The integration frameworks are optional extras: a block that imports one runs where it is
# installed (`make test`'s environment) and is left out where it is not (test-lowest).
OPTIONAL = ("openai", "langchain_core", "llama_index", "litellm")


def _runnable_here(block: Block) -> bool:
    imported = {
        (alias.name if isinstance(node, ast.Import) else node.module or "").split(".")[0]
        for node in ast.walk(ast.parse(block.source))
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for alias in node.names
    }
    return all(importlib.util.find_spec(name) for name in imported & set(OPTIONAL))


RUN = [b for b in BLOCKS if b.not_run is None and _runnable_here(b)]


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


SHOWN_RESULT = re.compile(r"#\s*(?:[-\d\[{('\"]|True\b|False\b|None\b)")


@pytest.mark.parametrize("block", BLOCKS, ids=lambda b: b.name)
def test_no_result_shown_on_a_line_that_prints_nothing(block: Block) -> None:
    """``cache.get(k)  # 42`` on a line whose value is thrown away claims a result nobody
    sees, and drifts: a result is shown with ``print(...)  # -> 42``."""
    lines = block.source.splitlines()
    for node in ast.walk(ast.parse(block.source)):
        if not isinstance(node, ast.Expr) or node.lineno != node.end_lineno:
            continue
        call = node.value.value if isinstance(node.value, ast.Await) else node.value
        if isinstance(call, ast.Call) and getattr(call.func, "id", None) == "print":
            continue
        line = lines[node.lineno - 1]
        comment = line[node.end_col_offset :]
        assert not SHOWN_RESULT.search(comment), (block.name, line)


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


# Starting a fresh interpreter per block costs ~0.5 s of imports, 60 times. Instead one
# process imports the library once and forks a child per block: each child starts with nothing
# but imported modules (no event loop, no thread, no manager, untouched module state), sets the
# block's environment, runs it as ``__main__``, then runs the exit handlers and a collection
# as interpreter shutdown would, so unclosed resources still warn.
ZYGOTE = r"""
import atexit, gc, json, os, sys, time, traceback, warnings

warnings.simplefilter("default")
import gathering_cache  # noqa: F401  (preloaded; a child's module state is still untouched)
try:
    import numpy  # noqa: F401
except ImportError:  # the numpy extra is optional
    pass

for line in sys.stdin:
    job = json.loads(line)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            os.chdir(job["cwd"])
            os.environ.clear()
            os.environ.update(job["env"])
            for fd, path in ((1, job["stdout"]), (2, job["stderr"])):
                os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
            namespace = {"__name__": "__main__", "__builtins__": __builtins__}
            try:
                exec(compile(job["source"], job["name"], "exec"), namespace)
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            except BaseException:
                traceback.print_exc()
                code = 1
            namespace.clear()
            atexit._run_exitfuncs()
            gc.collect()
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)
    deadline = time.monotonic() + job["timeout"]
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            code = os.waitstatus_to_exitcode(status)
            break
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            code = "timeout"
            break
        time.sleep(0.005)
    print(json.dumps({"code": code}), flush=True)
"""


class Runner:
    """Runs blocks in forked children of one preloaded interpreter (see ZYGOTE)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.process = subprocess.Popen(
            [sys.executable, "-c", ZYGOTE],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env=clean_env(),
        )

    def run(self, block: Block, env: dict[str, str], cwd: Path) -> tuple[object, str, str]:
        out, err = self.workdir / "stdout", self.workdir / "stderr"
        job = {
            "source": block.source,
            "name": block.name,
            "env": env,
            "cwd": str(cwd),
            "stdout": str(out),
            "stderr": str(err),
            "timeout": 60,
        }
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        self.process.stdin.write(json.dumps(job) + "\n")
        self.process.stdin.flush()
        reply = json.loads(self.process.stdout.readline())
        return reply["code"], out.read_text(), err.read_text()

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(timeout=10)


@pytest.fixture(scope="module")
def runner(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runner]:
    started = Runner(tmp_path_factory.mktemp("docs-runner"))
    yield started
    started.close()


def run_block(runner: Runner, block: Block, backend: str, env: dict[str, str], cwd: Path) -> str:
    code, stdout, stderr = runner.run(block, env, cwd)
    assert code == 0, f"{block.name} exited with {code}\n{stdout}\n{stderr}"
    for sign in WARNING_SIGNS:
        assert sign not in stderr, f"{block.name}\n{stderr}"
    lines = stdout.splitlines()
    position = 0
    for only_on, expected in block.claims():
        if only_on not in (None, backend):
            assert expected not in lines, f"{block.name}: {expected!r} printed on {backend}"
            continue
        while position < len(lines) and lines[position].rstrip() != expected:
            position += 1
        assert position < len(lines), f"{block.name}: {expected!r} not printed:\n{stdout}"
        position += 1
    return stdout


@pytest.mark.parametrize("block", RUN, ids=lambda b: b.name)
def test_block_runs_on_memory_backend(block: Block, runner: Runner, tmp_path: Path) -> None:
    # Both spellings of the backend variable, until the GATHERING_CACHE_ names land.
    env = clean_env(GATHERING_CACHE_BACKEND="memory")
    run_block(runner, block, "memory", env, tmp_path)


@pytest.mark.integration
@pytest.mark.parametrize("block", RUN, ids=lambda b: b.name)
def test_block_runs_on_real_redis(
    block: Block, runner: Runner, redis_server: RedisServer, tmp_path: Path
) -> None:
    client = redis.Redis.from_url(redis_server.url)
    try:
        client.flushall()
        run_block(runner, block, "redis", clean_env(REDIS_URL=redis_server.url), tmp_path)
    finally:
        client.flushall()
        client.close()
