"""The house's import contract: data flows one way, so every import points down the layers.

    nextbest (ground: schema, configs, settings, io, constants, project) < simulation < features
    < feature_repo < training < serving < monitoring < the CLI (nextbest.cli)

A part imports only itself and the parts below it (function-local imports included), nothing but
the CLI imports the CLI, and no module imports another module's private (`_`-prefixed) names.
Tests and benchmarks stand outside the house and may import any public name.
"""

from __future__ import annotations

import ast

from tests.conftest import REPO_ROOT

LAYERS = ("ground", "simulation", "features", "feature_repo", "training", "serving", "monitoring", "cli")
CLI = ("nextbest.cli",)
FOLDERS = {"nextbest": "nextbest", "configs": "nextbest.configs",
           **{p: f"nextbest.{p}" for p in LAYERS[1:-1]}}


def layer(module: str) -> str | None:
    """The layer of a `nextbest` module, None for anything else."""
    if module.split(".")[0] != "nextbest":
        return None
    if any(module == c or module.startswith(c + ".") for c in CLI):
        return "cli"
    part = module.split(".")[1] if "." in module else ""
    return part if part in LAYERS else "ground"


def _modules():
    for folder, package in FOLDERS.items():
        for path in (REPO_ROOT / folder).rglob("*.py"):
            parts = [p for p in path.relative_to(REPO_ROOT / folder).with_suffix("").parts if p != "__init__"]
            yield ".".join([package, *parts]), path


def _imports(path):
    """(imported module, names taken from it) for every absolute import in the file."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from ((a.name, []) for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module, [a.name for a in node.names]


def test_every_import_points_down_the_layers():
    upward = []
    for module, path in _modules():
        mine = LAYERS.index(layer(module))
        for imported, names in _imports(path):
            targets = [imported, *(f"{imported}.{n}" for n in names)]
            for target in targets:
                theirs = layer(target)
                if theirs is not None and LAYERS.index(theirs) > mine:
                    upward.append(f"{module} ({layer(module)}) imports {target} ({theirs})")
    assert not upward, "\n".join(sorted(set(upward)))


def test_no_module_takes_another_modules_private_names():
    taken = []
    for module, path in _modules():
        for imported, names in _imports(path):
            if layer(imported) is not None and imported != module:
                taken += [f"{module} takes {imported}.{n}" for n in names if n.startswith("_")]
    assert not taken, "\n".join(taken)


def test_the_layer_of_a_module():
    assert layer("nextbest.config") == layer("nextbest.schema") == layer("nextbest.configs") == "ground"
    assert layer("nextbest.cli") == layer("nextbest.cli.server") == "cli"
    assert layer("nextbest.serving.engine") == "serving" and layer("pandas") is None
