"""The shape of the package, kept by tests: lower layers never import higher ones; functions stay short."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "cnnlab"

# 1 core, 2 parts, 3 training, 4 tasks, 5 app (see the README's architecture section)
LAYERS = {
    "cnnlab": 1,  # __init__: version and the conf dir
    "cnnlab.errors": 1,
    "cnnlab.config": 1,
    "cnnlab.config_errors": 1,
    "cnnlab.checkpoint": 1,
    "cnnlab.provenance": 1,  # imported on the start-up path: no torch at import time
    "cnnlab.models": 2,
    "cnnlab.data": 2,
    "cnnlab.vision": 2,  # class maps: methods, baselines, pytorch-grad-cam, boxes, the canvas evaluation
    "cnnlab.figures": 2,
    "cnnlab.results": 2,
    "cnnlab.progress": 2,
    "cnnlab.tracking": 2,
    "cnnlab.training": 3,
    "cnnlab.tasks": 4,
    "cnnlab.run": 5,
    "cnnlab.__main__": 5,
    "cnnlab.callbacks": 5,
    "cnnlab.preflight": 5,
    "cnnlab.resume": 5,
    "cnnlab.report": 5,
    "cnnlab.sweep": 5,
    "cnnlab.search": 5,
    "cnnlab.sweep_resume": 5,
}


def layer(module: str) -> int:
    """The layer of a module: its longest prefix in LAYERS."""
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        name = ".".join(parts[:n])
        if name in LAYERS:
            return LAYERS[name]
    raise KeyError(f"{module} has no layer: add it to LAYERS in {__file__}")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(tree: ast.AST, module: str) -> list[str]:
    """Every cnnlab module imported anywhere in the file, at the top or inside functions."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            base = node.module
            # `from cnnlab import checkpoint` imports the module cnnlab.checkpoint
            found += [f"{base}.{a.name}" if f"{base}.{a.name}" in LAYERS else base for a in node.names]
    return [m for m in found if m == "cnnlab" or m.startswith("cnnlab.")]


SOURCES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_layer_imports_a_higher_one(path: Path) -> None:
    module = module_name(path)
    tree = ast.parse(path.read_text())
    upward = [m for m in imports(tree, module) if layer(m) > layer(module)]
    assert not upward, f"{module} (layer {layer(module)}) imports higher layers: {upward}"


def test_the_layer_check_catches_an_upward_import() -> None:
    tree = ast.parse("def f():\n    from cnnlab.run import run\n")
    assert [m for m in imports(tree, "cnnlab.models.resnet") if layer(m) > 2] == ["cnnlab.run"]


def test_no_function_is_longer_than_80_lines() -> None:
    long = []
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > 80:
                    long.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, long


def test_fit_fits_on_a_screen() -> None:
    from cnnlab.training.trainer import Trainer

    source = ast.parse(Path(__import__("inspect").getsourcefile(Trainer)).read_text())
    (fit,) = [n for n in ast.walk(source) if isinstance(n, ast.FunctionDef) and n.name == "fit"]
    assert fit.end_lineno - fit.lineno + 1 <= 50
