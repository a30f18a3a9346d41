"""The layering the file tree shows, checked: who may import whom, and no import cycles.

    core/       the engine, policy, keys, encoding, stats ... : no domain, agent or event code
    backends/   the stores: the only wing that imports redis; knows no domain
    caches/     the domain caches: built on the core; no agent helper, no events
    agents/     helpers for agent code, built on the caches and the manager
    events/     event bus, bridge, invalidation
    ops/        fleet stats, metrics, CLI, dashboard: may import anything; nothing in the
                wings above imports it (the manager records fleet stats through it)

Type-checking-only imports (under ``if TYPE_CHECKING:``) are not run and are ignored here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import gathering_cache

PACKAGE = Path(gathering_cache.__file__).parent
WINGS = ("core", "backends", "caches", "agents", "events", "ops")
TOP = ("manager", "sync", "config", "errors", "metrics", "__main__")

# wing (or top-level module) -> what it must never import at run time
FORBIDDEN: dict[str, frozenset[str]] = {
    "core": frozenset({"caches", "agents", "events", "manager", "sync", "ops"}),
    "backends": frozenset({"caches", "agents", "events", "manager", "sync", "ops"}),
    "caches": frozenset({"agents", "events", "sync", "ops"}),
    "events": frozenset({"agents", "sync", "ops"}),
    "agents": frozenset({"sync", "ops"}),
    "config": frozenset(
        {"core.engine", "backends", "caches", "agents", "events", "manager", "sync", "ops"}
    ),
    "errors": frozenset(
        {"core", "backends", "caches", "agents", "events", "manager", "sync", "config", "ops"}
    ),
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(["gathering_cache", *parts])


def _runtime_imports(path: Path) -> set[str]:
    """Modules of the package that ``path`` imports when it runs (``gathering_cache.x.y``)."""
    tree = ast.parse(path.read_text())
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(child) for body in node.body for child in ast.walk(body))
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "gathering_cache":
                found.update(f"gathering_cache.{alias.name}" for alias in node.names)
            elif node.module.startswith("gathering_cache."):
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("gathering_cache."))
    return found


MODULES = {
    _module_name(path): path
    for path in sorted(PACKAGE.rglob("*.py"))
    if path.relative_to(PACKAGE).parts[0] != "__init__.py"  # the package root re-exports all
}


def _layer(module: str) -> str:
    parts = module.split(".")[1:]
    return parts[0] if parts else ""


@pytest.mark.parametrize("module", sorted(MODULES), ids=str)
def test_each_wing_imports_only_what_it_may(module: str) -> None:
    layer = _layer(module)
    forbidden = FORBIDDEN.get(layer, frozenset())
    for imported in _runtime_imports(MODULES[module]):
        target = imported.removeprefix("gathering_cache.")
        assert not any(target == f or target.startswith(f"{f}.") for f in forbidden), (
            f"{module} imports {imported}"
        )


def test_the_tree_has_its_wings() -> None:
    for wing in WINGS:
        assert (PACKAGE / wing / "__init__.py").is_file(), wing
    for module in TOP:
        assert (PACKAGE / f"{module}.py").is_file(), module
    loose = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem not in (*TOP, "__init__"))
    assert loose == [], f"modules outside the wings: {loose}"


def test_no_import_cycles() -> None:
    graph = {
        module: {
            imported
            for imported in _runtime_imports(path)
            if imported in MODULES and imported != module
        }
        for module, path in MODULES.items()
    }
    done: set[str] = set()
    stack: list[str] = []

    def visit(module: str) -> None:
        if module in stack:
            cycle = [*stack[stack.index(module) :], module]
            pytest.fail("import cycle: " + " -> ".join(cycle))
        if module in done:
            return
        stack.append(module)
        for imported in sorted(graph[module]):
            visit(imported)
        stack.pop()
        done.add(module)

    for module in sorted(graph):
        visit(module)


def test_nothing_outside_the_core_and_the_manager_reaches_the_core() -> None:
    """The event bridge, CachedEmbedder and cached_completion work through public handles
    (``messaging``, ``locks``, the domain caches), never ``cache._core``."""
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).as_posix()
        if relative.startswith("core/") or relative == "manager.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute):
                assert node.attr != "_core", f"{relative}:{node.lineno} uses ._core"


def test_only_the_backends_know_which_backend_it_is() -> None:
    """Outside ``backends/`` nothing compares store kinds, backend names or breaker-state
    strings: the core and the domains read the store's capabilities."""
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).as_posix()
        if relative.startswith("backends/"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare):
                text = ast.unparse(node)
                for smell in ("store.kind", ".backend ==", "state.value", '"redis"', '"memory"'):
                    assert smell not in text, f"{relative}:{node.lineno}: {text}"
