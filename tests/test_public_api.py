"""The public surface: names exported, no pickle, py.typed shipped."""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import gathering_cache

PACKAGE_DIR = Path(gathering_cache.__file__).parent


def test_all_is_sorted_and_importable() -> None:
    names = gathering_cache.__all__
    assert names == sorted(names)
    for name in names:
        assert hasattr(gathering_cache, name), name
    for required in ("AsyncCacheManager", "CacheManager", "CacheConfig", "REDIS_AVAILABLE"):
        assert required in names


def test_every_exception_class_is_exported() -> None:
    from gathering_cache import errors

    for name in errors.__all__:
        assert name in gathering_cache.__all__, name
        assert issubclass(getattr(errors, name), errors.CacheError)


def test_errors_inherit_the_natural_builtins() -> None:
    assert issubclass(gathering_cache.ConfigurationError, ValueError)
    assert issubclass(gathering_cache.InvalidArgumentError, ValueError)
    assert issubclass(gathering_cache.PatternError, ValueError)
    assert issubclass(gathering_cache.ArgumentTypeError, TypeError)
    assert issubclass(gathering_cache.SerializationError, TypeError)
    assert issubclass(gathering_cache.BackendError, ConnectionError)


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def test_no_module_imports_pickle() -> None:
    for path in PACKAGE_DIR.rglob("*.py"):
        assert not _imports(path) & {"pickle", "cPickle", "dill", "marshal"}, path


def test_only_the_backend_layer_imports_redis() -> None:
    importers = set()
    for path in PACKAGE_DIR.rglob("*.py"):
        if "redis" in _imports(path):
            importers.add(path.relative_to(PACKAGE_DIR).as_posix())
    assert "backends/redis_store.py" in importers
    assert all(name.startswith("backends/") for name in importers), importers


def test_pure_modules_import_no_io() -> None:
    for name in (
        "core/keys",
        "core/encoding",
        "core/stats",
        "core/lru",
        "core/globmatch",
        "config",
        "errors",
    ):
        imports = _imports(PACKAGE_DIR / f"{name}.py")
        assert not imports & {"redis", "asyncio", "socket"}, name


def test_every_module_imports_and_py_typed_ships() -> None:
    for module in pkgutil.walk_packages([str(PACKAGE_DIR)], "gathering_cache."):
        importlib.import_module(module.name)
    assert (PACKAGE_DIR / "py.typed").exists()
