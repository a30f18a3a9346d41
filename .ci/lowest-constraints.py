"""Print a pip constraints file pinning each dependency of pyproject.toml to its floor.

Covers [project] dependencies and optional dependencies: ``name[extra]>=X; marker`` becomes
``name==X; marker``. Run by `make test-lowest`, so a floor that no longer works fails CI
instead of reaching a user who installs it.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: parse the few lines we need by hand
    tomllib = None  # type: ignore[assignment]

REQUIREMENT = re.compile(
    r"^\s*(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*>=\s*(?P<floor>[^,;\s]+)"
    r"\s*(?P<marker>;.*)?$"
)


def requirements(pyproject: Path) -> list[str]:
    text = pyproject.read_text(encoding="utf-8")
    if tomllib is not None:
        project = tomllib.loads(text)["project"]
        found = list(project.get("dependencies", []))
        for extra in project.get("optional-dependencies", {}).values():
            found.extend(extra)
        return found
    # Every quoted string of the [project] tables; main() keeps those shaped like `name>=X`.
    start = text.index("[project]")
    end = text.index("[dependency-groups]", start)
    return re.findall(r'"([^"]+)"', text[start:end])


def main() -> int:
    pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
    for requirement in requirements(pyproject):
        match = REQUIREMENT.match(requirement)
        if match is None:
            continue  # no floor to pin (not a dependency line, or an unbounded requirement)
        print(f"{match['name']}=={match['floor']}{match['marker'] or ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
