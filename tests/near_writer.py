"""Another process writing to the cache: what the near-cache tests (and bench W9) run with
``python -m tests.near_writer '<CacheConfig kwargs as JSON>'``.

It connects, prints ``{"ready": true}``, then executes one JSON command per stdin line and
answers each with one JSON line once the operation returned, i.e. once Redis applied it:
``{"ok": <its result>, "done": <time.monotonic() then>}`` (the system-wide clock on Linux,
so the reader can tell how long after the write it saw it), or ``{"error": ...}``.
Commands: ``set_circle`` (``circle``, ``value``), ``invalidate_circle`` (``circle``),
``set_embedding`` (``text``, ``vector``),
``delete_embeddings`` (every embedding: ``delete_pattern``). It exits at the end of stdin.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

from gathering_cache import AsyncCacheManager, CacheConfig

ROOT = Path(__file__).resolve().parent.parent


async def _apply(cache: AsyncCacheManager, command: dict[str, Any]) -> Any:
    op = command["op"]
    if op == "set_circle":
        return await cache.set_circle_context(command["circle"], command["value"])
    if op == "invalidate_circle":
        return await cache.invalidate_circle_context(command["circle"])
    if op == "set_embedding":
        return await cache.set_embedding(command["text"], command["vector"])
    if op == "delete_embeddings":
        return await cache.delete_pattern(f"{cache.config.key_prefix}embedding:*")
    raise ValueError(f"unknown command {op!r}")


def _say(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


async def main(settings: dict[str, Any]) -> None:
    loop = asyncio.get_running_loop()
    async with AsyncCacheManager(CacheConfig(**settings)) as cache:
        _say({"ready": await cache.connect()})
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line:
                return
            try:
                result = await _apply(cache, json.loads(line))
                _say({"ok": result, "done": time.monotonic()})
            except Exception as exc:  # reported, so the test fails with the reason
                _say({"error": repr(exc)})


class Writer:
    """The test's (or benchmark's) end: a writer process started with ``settings``, each
    command bounded by ``timeout`` seconds, always terminated by :meth:`close`."""

    def __init__(self, process: asyncio.subprocess.Process, timeout: float) -> None:
        self.process = process
        self.timeout = timeout

    @classmethod
    async def start(cls, settings: dict[str, Any], timeout: float = 20.0) -> Writer:
        """Start the process and wait (at most ``timeout`` s) until it is connected."""
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.near_writer",
            json.dumps(settings),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            cwd=ROOT,
        )
        writer = cls(process, timeout)
        try:
            ready = await writer._answer()
        except BaseException:
            await writer.close()
            raise
        if ready != {"ready": True}:
            await writer.close()
            raise RuntimeError(f"writer process not connected: {ready}")
        return writer

    async def do(self, op: str, **args: Any) -> Any:
        """Run one command in the other process; its result once the store applied it."""
        await self.send(op, **args)
        return (await self.answer())["ok"]

    async def send(self, op: str, **args: Any) -> None:
        """Start one command in the other process (then :meth:`answer`)."""
        assert self.process.stdin is not None
        self.process.stdin.write((json.dumps({"op": op, **args}) + "\n").encode())
        await self.process.stdin.drain()

    async def answer(self) -> dict[str, Any]:
        """The answer to the command sent: ``ok`` (its result) and ``done`` (when)."""
        answer = await self._answer()
        if "error" in answer:
            raise RuntimeError(f"writer process failed: {answer['error']}")
        return answer

    async def _answer(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), self.timeout)
        if not line:
            raise RuntimeError(f"writer process ended (exit code {self.process.returncode})")
        answer: dict[str, Any] = json.loads(line)
        return answer

    async def close(self) -> None:
        """End the process: end of input, then terminate, then kill (each bounded)."""
        process = self.process
        if process.returncode is None and process.stdin is not None:
            process.stdin.close()
        for stop in (None, process.terminate, process.kill):
            if process.returncode is not None:
                return
            if stop is not None:
                stop()
            try:
                await asyncio.wait_for(process.wait(), 5.0)
            except asyncio.TimeoutError:
                continue


if __name__ == "__main__":
    asyncio.run(main(json.loads(sys.argv[1])))
