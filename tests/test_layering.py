"""The core decides, the shell does: the core must never import I/O, clocks or ops libraries.

import-linter (run by `make test` as `lint-imports`) checks the layer order between our own
packages; this test checks what the pure layers may import from outside.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "gateway"

# Modules that do I/O, read clocks or randomness, or belong to the shell's ops tooling.
FORBIDDEN_IN_PURE_LAYERS = {
    "asyncio",
    "socket",
    "selectors",
    "threading",
    "sqlite3",
    "logging",
    "time",
    "random",
    "subprocess",
    "structlog",
    "prometheus_client",
    "aiomqtt",
    "uvloop",
    "asyncpg",
}


def _imported_roots(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    roots: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("layer", ["core", "wire"])
def test_pure_layers_import_no_io(layer: str) -> None:
    offenders = {
        str(path.relative_to(PACKAGE.parent)): sorted(
            _imported_roots(path) & FORBIDDEN_IN_PURE_LAYERS
        )
        for path in sorted((PACKAGE / layer).rglob("*.py"))
    }
    offenders = {name: mods for name, mods in offenders.items() if mods}
    assert not offenders, f"pure layer imports I/O or clock modules: {offenders}"


def test_check_sees_a_violation(tmp_path: Path) -> None:
    """The check itself must be able to fail."""
    bad = tmp_path / "bad.py"
    bad.write_text("import asyncio\nfrom time import monotonic\n")
    assert _imported_roots(bad) & FORBIDDEN_IN_PURE_LAYERS == {"asyncio", "time"}
