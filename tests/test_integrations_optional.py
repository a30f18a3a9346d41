"""The frameworks are optional: with none of them importable, ``import gathering_cache`` and
everything it exports still work, and each integration module says which extra it needs."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).parent.parent

BLOCKED = ("openai", "langchain_core", "llama_index", "litellm")

PROGRAM = textwrap.dedent(
    f"""
    import importlib.abc
    import sys

    BLOCKED = {BLOCKED!r}

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {{name!r}} (blocked)", name=name)
            return None

    sys.meta_path.insert(0, Block())

    import asyncio
    import gathering_cache
    from gathering_cache import AsyncCacheManager, CacheConfig, CachedEmbedder, cached

    loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    assert loaded == [], loaded

    async def main():
        async with AsyncCacheManager(CacheConfig(backend="memory")) as cache:
            @cached(cache)
            async def double(x):
                return 2 * x
            assert await double(2) == await double(2) == 4

    asyncio.run(main())

    for module in ("openai", "langchain", "llama_index", "litellm"):
        try:
            __import__(f"gathering_cache.integrations.{{module}}")
        except ImportError as exc:
            print(module, "needs", exc.name)
        else:
            raise AssertionError(f"{{module}} imported without its framework")
    print("ok", len(gathering_cache.__all__))
    """
)


def test_the_package_imports_without_any_framework() -> None:
    result = subprocess.run(
        [sys.executable, "-c", PROGRAM],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[:4] == [
        "openai needs openai",
        "langchain needs langchain_core",
        "llama_index needs llama_index",
        "litellm needs litellm",
    ]
    assert lines[-1].startswith("ok ")
