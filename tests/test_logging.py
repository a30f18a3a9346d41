"""Logging habits: one logger per module, messages that do not repeat the logger name, and a
warning that would fire on every call fires once per cause."""

from __future__ import annotations

import ast
import logging
from pathlib import Path
from typing import Any

import pytest

from gathering_cache import AsyncCacheManager, CacheConfig, cached_completion

PACKAGE = Path(__file__).resolve().parent.parent / "gathering_cache"


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_each_module_logs_under_its_own_name(path: Path) -> None:
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "getLogger":
            assert len(node.args) == 1, path
            arg = node.args[0]
            assert isinstance(arg, ast.Name), f"{path}: getLogger takes __name__"
            assert arg.id == "__name__", path
        # A message that starts with the package name repeats what the logger name says.
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            assert not node.value.startswith("gathering_cache: "), (path, node.value)


async def test_unhashable_llm_request_warns_once_per_cause(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class NotJson:
        pass

    calls = 0

    async def complete(model: str, messages: list[dict[str, Any]], **params: Any) -> str:
        nonlocal calls
        calls += 1
        return "answer"

    async with AsyncCacheManager(CacheConfig(backend="memory")) as cache:
        wrapped = cached_completion(cache)(complete)
        messages = [{"role": "user", "content": "hi"}]
        with caplog.at_level(logging.DEBUG, logger="gathering_cache"):
            for _ in range(5):
                assert await wrapped("m", messages=messages, temperature=0, x=NotJson()) == "answer"
            assert await wrapped("m", messages=messages, temperature=0, y={1, 2}) == "answer"
    assert calls == 6  # answered uncached every time
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2, [r.getMessage() for r in warnings]  # two causes, once each
    assert all(r.name == "gathering_cache.agents.completions" for r in warnings)
    assert all(not r.getMessage().startswith("gathering_cache") for r in caplog.records)
