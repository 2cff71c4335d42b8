"""The shape of the package, kept by tests: lower layers never import higher ones; functions stay short."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "cnnlab"

# Packages by role, bottom-up (the README's architecture section): each imports only its own layer and below.
LAYERS = {
    "cnnlab.version": 0,
    "cnnlab.errors": 0,
    "cnnlab.config": 1,  # schemas, validation, the one-line messages
    "cnnlab.records": 2,  # what a run writes: checkpoints, status.json, metrics, figures, W&B, provenance
    "cnnlab.data": 3,
    "cnnlab.models": 3,
    "cnnlab.training": 4,
    "cnnlab.vision": 4,  # class maps: methods, baselines, pytorch-grad-cam, boxes, the canvas evaluation
    "cnnlab.tasks": 5,
    "cnnlab.app": 6,  # one run: the Hydra app, preflight, the resume decision
    "cnnlab.sweeps": 7,  # launch-wide: Hydra callbacks, whole-sweep resume, W&B sweep YAML, search
    "cnnlab.report": 8,
    "cnnlab.api": 9,  # the Python face: run, multirun, compose, load, explain
    "cnnlab.__main__": 9,  # the CLI
    "cnnlab": 10,  # the package: the version, and the API by name (cnnlab.run, ...)
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


def is_module(name: str) -> bool:
    path = PACKAGE.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imports(tree: ast.AST, module: str = "") -> list[str]:
    """Every cnnlab module imported anywhere in the file, at the top or inside functions."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            base = node.module
            # `from cnnlab.records import checkpoint` imports the module cnnlab.records.checkpoint
            found += [f"{base}.{a.name}" if is_module(f"{base}.{a.name}") else base for a in node.names]
    return [m for m in found if m == "cnnlab" or m.startswith("cnnlab.")]


SOURCES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_layer_imports_a_higher_one(path: Path) -> None:
    module = module_name(path)
    tree = ast.parse(path.read_text())
    upward = [m for m in imports(tree, module) if layer(m) > layer(module)]
    assert not upward, f"{module} (layer {layer(module)}) imports higher layers: {upward}"


def test_the_layer_check_catches_an_upward_import() -> None:
    tree = ast.parse("def f():\n    from cnnlab.app.run import run\n")
    assert [m for m in imports(tree, "cnnlab.models.resnet") if layer(m) > layer("cnnlab.models.resnet")] == [
        "cnnlab.app.run"
    ]


def graph() -> dict[str, set[str]]:
    """Module -> the cnnlab modules it imports (a package's __init__ aside: importing a submodule runs it)."""
    edges = {}
    for path in SOURCES:
        module = module_name(path)
        edges[module] = {m for m in imports(ast.parse(path.read_text())) if m != module and is_module(m)}
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The import circles of a module graph (depth-first search; one path per circle found)."""
    found, done, path = [], set(), []

    def visit(node: str) -> None:
        if node in path:
            found.append(path[path.index(node) :] + [node])
            return
        if node in done:
            return
        path.append(node)
        for child in sorted(edges.get(node, ())):
            visit(child)
        path.pop()
        done.add(node)

    for node in sorted(edges):
        visit(node)
    return found


def test_no_import_circle() -> None:
    assert cycles(graph()) == []


def test_the_circle_check_catches_a_circle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_package_root_holds_at_most_five_modules() -> None:
    root = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(root) <= 5, root


def test_nothing_assigns_sys_argv() -> None:
    offenders = []
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text())):
            targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
            for target in targets:
                target = target.value if isinstance(target, ast.Subscript) else target
                if isinstance(target, ast.Attribute) and ast.unparse(target) == "sys.argv":
                    offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert not offenders, offenders


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


# ---------------------------------------------------------------- the tests: no test module imports another

TESTS = Path(__file__).resolve().parent


def imported_test_modules(tree: ast.AST) -> list[str]:
    """The test modules (tests/test_*.py) and tests/conftest.py a file of tests/ imports, anywhere in it: absolute
    (`from tests.test_report import make_run`, `from tests import conftest`), relative (`from .test_report import
    grid`) or bare (`import test_report`, which pytest's rootdir on sys.path allows)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level <= 1:
            base = ".".join(filter(None, ["tests" if node.level else "", node.module]))
            names = [base, *(f"{base}.{a.name}" for a in node.names)]  # `from tests import test_x` imports test_x
        else:
            continue
        for name in names:
            parts = name.split(".")[1:] if name.startswith("tests.") else name.split(".")
            first = parts[0] if parts else ""
            if (first == "conftest" or first.startswith("test_")) and (TESTS / f"{first}.py").is_file():
                found.add(f"tests.{first}")
    return sorted(found)


@pytest.mark.parametrize("path", sorted(TESTS.glob("*.py")), ids=lambda p: p.name)
def test_no_test_module_imports_another_or_conftest(path: Path) -> None:
    found = imported_test_modules(ast.parse(path.read_text()))
    assert not found, (
        f"tests/{path.name} imports {', '.join(found)}: shared fixtures belong in tests/conftest.py (pytest finds "
        "them by name), shared plain helpers in tests/helpers.py"
    )


@pytest.mark.parametrize(
    "source",
    [
        "from tests.test_report import make_run",
        "from tests.conftest import run_app",
        "from tests import test_localize as localize",
        "import tests.test_config",
        "def f():\n    from .test_vision import small_resnet",
        "from . import conftest",
        "import test_resume",
    ],
)
def test_the_test_import_check_catches_an_import_of_a_test_module(source: str) -> None:
    assert len(imported_test_modules(ast.parse(source))) == 1, source
    allowed = "from tests.helpers import run_app, test_acc_of\nfrom tests import helpers\nimport test\nimport tests"
    assert imported_test_modules(ast.parse(allowed)) == []
