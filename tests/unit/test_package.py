"""The package is one namespace: every part imports as `nextbest.<part>`, the wheel lists every
subpackage, and nothing reaches into the source checkout by path."""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

from tests.conftest import REPO_ROOT

SYS_PATH_EDIT = re.compile(r"sys\.path\.(insert|append)\(")
PARTS = ("simulation", "features", "feature_repo", "training", "serving", "monitoring", "configs")


def _python_files():
    for folder in ("nextbest", *PARTS, "tests", "benchmarks"):
        yield from (REPO_ROOT / folder).rglob("*.py")


def test_no_module_imports_a_part_outside_the_nextbest_namespace():
    offenders = []
    for path in _python_files():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else [])
            offenders += [f"{path.relative_to(REPO_ROOT)}: {n}" for n in names if n.split(".")[0] in PARTS]
    assert not offenders


def test_the_wheel_lists_every_subpackage_and_maps_every_part():
    setuptools = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert setuptools["package-dir"] == {"nextbest": "nextbest", **{f"nextbest.{p}": p for p in PARTS}}
    found = {".".join(("nextbest", *init.parent.relative_to(REPO_ROOT / "nextbest").parts))
             for init in (REPO_ROOT / "nextbest").rglob("__init__.py")}
    for part in PARTS:
        for init in (REPO_ROOT / part).rglob("__init__.py"):
            found.add(".".join(("nextbest", *init.parent.relative_to(REPO_ROOT).parts)))
    assert set(setuptools["packages"]) == found


def test_no_code_reaches_into_the_checkout_or_edits_sys_path():
    for path in _python_files():
        if path == Path(__file__).resolve():
            continue
        text = path.read_text()
        assert not SYS_PATH_EDIT.search(text), path
        if path.parts[len(REPO_ROOT.parts)] not in ("tests", "benchmarks"):
            assert "REPO_ROOT" not in text and '"shared"' not in text, path
