"""The house's rules, read from the source: floors, a pure domain, no cycles, small files.

docs/architecture.md draws the floors; this module keeps the code to them, so that a
change that runs an import back up a floor fails here, with the line that does it,
rather than being found in a review months later. Imports are read with :mod:`ast`
(nothing is imported), including those inside functions and ``TYPE_CHECKING`` blocks:
a deferred import still ties the two modules together.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
PACKAGE = SRC / "tidings"

# From the ground up. A module imports only modules of its own floor or below; the
# first prefix that matches a module's dotted name gives its floor.
FLOORS: list[tuple[str, ...]] = [
    ("tidings.domain",),
    (
        "tidings.config",
        "tidings.smtp_url",
        "tidings.clock",
        "tidings.ids",
        "tidings.logs",
        "tidings.exceptions",
        "tidings.crypto",
        "tidings.events",
    ),
    ("tidings.store",),
    ("tidings.channels", "tidings.email", "tidings.keys"),
    ("tidings.engine",),
    ("tidings.metrics",),
    ("tidings.service",),
    ("tidings.app",),
    ("tidings.api", "tidings.console"),
    ("tidings.cli", "tidings.__main__"),
]
# The package's face (its version) may be read from any floor.
ANYWHERE = {"tidings"}
MAX_LINES = 600


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {
        _module_name(path): path
        for path in sorted(PACKAGE.rglob("*.py"))
        if "migrations" not in path.relative_to(PACKAGE).parts
    }


MODULES = _modules()


def _imports(name: str, path: Path) -> Iterator[tuple[int, str]]:
    """Each module ``path`` imports, by line, resolved to an absolute dotted name."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base]) if base else ".".join(anchor)
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                yield node.lineno, candidate if candidate in MODULES else base


def _floor(module: str) -> int | None:
    for level, prefixes in enumerate(FLOORS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return level
    return None


def _own(module: str) -> str | None:
    """The project module ``module`` names (an attribute import names its module)."""
    while module:
        if module in MODULES:
            return module
        module = module.rpartition(".")[0]
    return None


def test_every_module_has_a_floor() -> None:
    homeless = [name for name in MODULES if name not in ANYWHERE and _floor(name) is None]

    assert homeless == [], "add each to a floor in FLOORS and docs/architecture.md"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_a_module_imports_nothing_above_its_floor(name: str) -> None:
    floor = _floor(name)
    if floor is None:
        return
    upward = [
        f"{MODULES[name].relative_to(SRC)}:{line} imports {target}"
        for line, imported in _imports(name, MODULES[name])
        if (target := _own(imported)) is not None
        and target not in ANYWHERE
        and (_floor(target) or 0) > floor
    ]

    assert upward == []


@pytest.mark.parametrize("name", sorted(n for n in MODULES if _floor(n) == 0))
def test_the_domain_imports_the_standard_library_only(name: str) -> None:
    foreign = [
        f"{MODULES[name].relative_to(SRC)}:{line} imports {imported}"
        for line, imported in _imports(name, MODULES[name])
        if imported.split(".")[0] not in sys.stdlib_module_names
        and not imported.startswith("tidings.domain")
    ]

    assert foreign == []


def test_no_import_cycle() -> None:
    graph = {
        name: {
            target
            for _, imported in _imports(name, path)
            if (target := _own(imported)) is not None
            and target != name
            # a package imports its own modules to present them: not a cycle of the house
            and not target.startswith(name + ".")
        }
        for name, path in MODULES.items()
    }
    cycles: list[list[str]] = []
    done: set[str] = set()

    def visit(node: str, trail: list[str]) -> None:
        if node in trail:
            cycles.append([*trail[trail.index(node) :], node])
            return
        if node in done:
            return
        for nxt in sorted(graph[node]):
            visit(nxt, [*trail, node])
        done.add(node)

    for name in sorted(graph):
        visit(name, [])

    assert cycles == []


def test_no_source_file_is_over_the_limit() -> None:
    long = {
        str(path.relative_to(SRC)): lines
        for path in PACKAGE.rglob("*.py")
        if (lines := len(path.read_text().splitlines())) > MAX_LINES
    }

    assert long == {}
