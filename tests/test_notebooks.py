"""The notebooks (jupytext pairs in notebooks/) run without error on a small trained run."""

import os
import subprocess
import sys
from pathlib import Path

import jupytext
import pytest
from conftest import SHARED, shared_file
from test_lfads_pipeline import ATTRS, TINY, planted_tensors
from typer.testing import CliRunner

from lfads_jslds.cli import app
from lfads_jslds.data.prepare import write_tensors

NOTEBOOKS = Path(__file__).parents[1] / "notebooks"
PAIRS = sorted(p.stem for p in NOTEBOOKS.glob("*.py"))


@pytest.fixture(scope="module")
def small_run(tmp_path_factory, compile_cache):
    """A tiny run through every stage (train, infer, evaluate, analyze)."""
    folder = tmp_path_factory.mktemp("nb")
    write_tensors(folder / "tiny.h5", planted_tensors(), ATTRS)
    run = folder / "run"
    args = ["run", str(folder / "tiny.h5"), "--out", str(run), "--no-progress"]
    result = CliRunner().invoke(app, args + [a for s in TINY for a in ("--set", s)])
    assert result.exit_code == 0, result.output
    return run


def test_every_notebook_has_its_pair_in_sync():
    assert PAIRS == ["quickstart", "single_trial_dynamics", "synthetic_tasks"]
    for name in PAIRS:
        script = jupytext.read(NOTEBOOKS / f"{name}.py")
        notebook = jupytext.read(NOTEBOOKS / f"{name}.ipynb")
        code = lambda nb: [c.source for c in nb.cells if c.cell_type == "code"]  # noqa: E731
        assert code(script) == code(notebook), f"{name}.ipynb is out of sync with {name}.py"


@pytest.mark.parametrize("name", PAIRS)
def test_notebook_runs(name, small_run):
    if name == "synthetic_tasks":
        shared_file("reference/flipflop3_jslds_paper.npz")  # skips, saying where they come from
    env = dict(os.environ, LFADS_JSLDS_RUN=str(small_run), LFADS_JSLDS_SHARED=str(SHARED))
    env["MPLBACKEND"] = "Agg"
    done = subprocess.run(
        [sys.executable, f"{name}.py"], cwd=NOTEBOOKS, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
