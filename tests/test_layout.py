"""The package's shape: the library sits below training, training below the pipeline.

Layers, bottom to top (README, "Layout"): ``config``/``io`` (no project imports beyond
each other), the library (``data``, ``models``, ``tasks``, ``analysis``, ``metrics``),
``training``, ``pipeline``, ``cli``. A module may import its own layer and the layers
below; an import running back up (the library reaching into a training loop or a
pipeline stage) is the coupling this test exists to keep out. Every import counts,
function-level ones included. The pipeline, training and models code is also kept in
functions of at most ``MAX_LINES`` lines.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "lfads_jslds"
LAYERS = (
    ("config", "io"),
    ("data", "models", "tasks", "analysis", "metrics"),
    ("training",),
    ("pipeline",),
    ("cli", "__main__"),
)
LAYER = {name: i for i, names in enumerate(LAYERS) for name in names}
MAX_LINES = 80


def _modules() -> list[Path]:
    return sorted(
        p for p in PACKAGE.rglob("*.py") if p.name != "__init__.py" or p.parent != PACKAGE
    )


def _part(path: Path) -> str:
    """The top-level part of the package a file belongs to (``models``, ``cli``, ...)."""
    return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


def _imported_parts(tree: ast.AST) -> set[str]:
    parts = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            bits = name.split(".")
            if bits[0] == "lfads_jslds" and len(bits) > 1:
                parts.add(bits[1])
    return parts


def test_every_part_of_the_package_has_a_layer():
    assert {_part(p) for p in _modules()} <= set(LAYER), "a new part needs a layer here"


def test_no_import_runs_up_the_layers():
    upward = [
        f"{path.relative_to(PACKAGE)} imports lfads_jslds.{part}"
        for path in _modules()
        for part in sorted(_imported_parts(ast.parse(path.read_text())))
        if part in LAYER and LAYER[part] > LAYER[_part(path)]
    ]
    assert upward == []


def test_the_check_sees_an_upward_import():
    """The rule fails on the import the review found (``io`` reading ``data``)."""
    tree = ast.parse("def f():\n    from lfads_jslds.data.nwb import open_hdf5\n")
    assert "data" in _imported_parts(tree)
    assert LAYER["data"] > LAYER["io"]


@pytest.mark.parametrize("part", ["pipeline", "training", "models"])
def test_functions_are_short(part):
    long = [
        f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name} ({n} lines)"
        for path in sorted((PACKAGE / part).rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and (n := node.end_lineno - node.lineno + 1) > MAX_LINES
    ]
    assert long == []
