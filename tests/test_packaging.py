"""What a wheel carries: every package, and the built-in dialect files.

Building a wheel needs setuptools from an index, so these tests check the two halves instead:
pyproject.toml lists every package directory and maps specs/ into the package, and the dialect
loader finds the files where an installed package has them (gateway/_specs).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_pyproject_lists_every_package_and_ships_the_dialect_files() -> None:
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    on_disk = {
        ".".join(init.parent.relative_to(REPO).parts)
        for init in REPO.glob("gateway/**/__init__.py")
    }
    assert set(setuptools["packages"]) == on_disk | {"gateway._specs"}
    assert setuptools["package-dir"] == {"gateway._specs": "specs"}
    assert set(setuptools["package-data"]["gateway._specs"]) >= {"*.toml", "*.json"}


def test_an_installed_package_finds_its_dialects_without_specs_beside_it(tmp_path: Path) -> None:
    # The layout pip gives a wheel: site-packages/gateway/..., site-packages/gateway/_specs/.
    site = tmp_path / "site-packages"
    shutil.copytree(REPO / "gateway", site / "gateway", ignore=shutil.ignore_patterns("*.pyc"))
    shutil.copytree(REPO / "specs", site / "gateway" / "_specs")
    env = {k: v for k, v in os.environ.items() if k != "GATEWAY_SPECS_DIR"}
    env["PYTHONPATH"] = str(site)
    found = subprocess.run(
        [
            sys.executable,
            "-c",
            "from gateway.wire.dialect import BUILTIN_SPECS, find_dialects\n"
            "print(BUILTIN_SPECS)\nprint(' '.join(sorted(find_dialects())))",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert found[0] == str(site / "gateway" / "_specs")
    assert found[1].split() == sorted(p.stem for p in (REPO / "specs").glob("*.toml"))
