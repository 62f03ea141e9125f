"""The ``lfads-jslds`` command line: help, ``task eval``/``task train``, and bad input.

Commands run in-process through ``typer.testing.CliRunner`` (one subprocess checks
``python -m lfads_jslds``). Every bad input must give one clear line on stderr, a
non-zero exit code, and leave the file system as it was.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import shared_file
from typer.testing import CliRunner

from lfads_jslds.cli import app
from lfads_jslds.training.checkpoints import Checkpoints

REF_FLIPFLOP = "reference/flipflop3_jslds_paper.npz"
METRIC_KEYS = {"mean_relative_error", "mse_rnn", "mse_jslds", "fp_loss", "approx_loss"}
#: A tiny flip-flop run: compiles in seconds.
TINY = [
    "--set",
    "model.n_hidden=8",
    "--set",
    "optim.batch_size=4",
    "--set",
    "optim.eval_trials=8",
    "--no-progress",
]


def invoke(*args: str | Path):
    return CliRunner().invoke(app, [str(a) for a in args])


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``root`` with its size and mtime, to prove nothing was written."""
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
    }


def assert_refused(result, *needles: str) -> str:
    """Exit code 1, no traceback, and a one-line ``error:`` message holding ``needles``."""
    assert result.exit_code == 1, (result.exit_code, result.stdout, result.stderr)
    assert isinstance(result.exception, SystemExit), result.exception
    err = result.stderr
    assert err.startswith("error: ") and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1, err
    for needle in needles:
        assert needle in err, (needle, err)
    assert result.stdout == ""
    return err


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Run in an empty temporary folder (relative paths land there)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


# --- help ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [["--help"], ["task", "--help"], ["task", "train", "--help"], ["task", "eval", "--help"]],
)
def test_help(args):
    result = invoke(*args)
    assert result.exit_code == 0, result.stderr
    assert "Usage" in result.stdout


def test_python_dash_m_help():
    result = subprocess.run(
        [sys.executable, "-m", "lfads_jslds", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "lfads-jslds" in result.stdout and "task" in result.stdout


# --- task eval ------------------------------------------------------------------------


def test_eval_reference_json():
    weights = shared_file(REF_FLIPFLOP)
    result = invoke("task", "eval", "flipflop", "--weights", weights, "--trials", 64, "--json")
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1
    metrics = json.loads(lines[0])
    assert METRIC_KEYS <= set(metrics)
    assert metrics["n_trials"] == 64
    assert all(np.isfinite(metrics[k]) for k in METRIC_KEYS)
    assert metrics["mean_relative_error"] < 0.1  # paper: 0.0465 on 1024 trials


def test_eval_missing_weights(in_tmp):
    before = snapshot(in_tmp)
    result = invoke("task", "eval", "flipflop", "--weights", "nope.npz")
    assert_refused(result, "nope.npz", "do not exist")
    assert snapshot(in_tmp) == before


def test_eval_not_an_npz(in_tmp):
    (in_tmp / "weights.npz").write_text("not a zip archive\n")
    before = snapshot(in_tmp)
    result = invoke("task", "eval", "flipflop", "--weights", "weights.npz")
    assert_refused(result, "weights.npz", "not an .npz")
    assert snapshot(in_tmp) == before


class _Exploit:
    """Pickles to ``os.system(command)``: unpickling it unsafely runs the command."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def _crafted_npz(path: Path, marker: Path) -> None:
    np.savez(path, arr_0=np.array(_Exploit(f"touch {marker}"), dtype=object))


def test_crafted_pickle_is_not_run(in_tmp):
    # The file really is an exploit: numpy's own loader with pickles allowed runs it.
    probe, probe_marker = in_tmp / "probe.npz", in_tmp / "probe_ran"
    _crafted_npz(probe, probe_marker)
    with np.load(probe, allow_pickle=True) as data:
        data["arr_0"]
    assert probe_marker.exists()

    marker = in_tmp / "pwned"
    _crafted_npz(in_tmp / "evil.npz", marker)
    before = snapshot(in_tmp)
    result = invoke("task", "eval", "flipflop", "--weights", "evil.npz")
    assert_refused(result, "evil.npz")
    assert not marker.exists()
    assert snapshot(in_tmp) == before


def test_eval_weights_of_another_task():
    weights = shared_file(REF_FLIPFLOP)
    result = invoke("task", "eval", "context", "--weights", weights)
    # Expected: context's 4 inputs / 1 output; found: flip-flop's 6 inputs / 3 outputs.
    assert_refused(result, "context", "expected 4 inputs and 1 outputs", "6 inputs and 3 outputs")


def test_eval_unknown_task(in_tmp):
    result = invoke("task", "eval", "flipflap", "--weights", "w.npz")
    assert_refused(result, "'flipflap'", "'flipflop'")


@pytest.mark.parametrize("trials", ["0", "-3"])
def test_eval_trials_must_be_positive(trials):
    weights = shared_file(REF_FLIPFLOP)
    result = invoke("task", "eval", "flipflop", "--weights", weights, "--trials", trials)
    assert_refused(result, "--trials", trials)


# --- task train: bad input (each checked before anything is written) ---------------------


@pytest.mark.parametrize(
    ("extra", "needles"),
    [
        (["--set", "optim.lrr=0.1"], ["optim.lrr", "'optim.lr'"]),
        (["--set", "optim.steps=abc"], ["optim.steps", "int", "'abc'"]),
        (["--set", "optim.lr"], ["key=value"]),
        (["--set", "model.cell=lstm"], ["model.cell", "lstm", "gru"]),
        (["--set", "optim.log_every=0"], ["optim.log_every"]),
        (["--steps", "0"], ["optim.steps"]),
    ],
)
def test_train_bad_override(in_tmp, extra, needles):
    before = snapshot(in_tmp)
    result = invoke("task", "train", "flipflop", "--out", "run", *extra)
    assert_refused(result, *needles)
    assert not (in_tmp / "run").exists()
    assert snapshot(in_tmp) == before


def test_train_unknown_task(in_tmp):
    result = invoke("task", "train", "flipflap", "--out", "run", "--steps", 1)
    assert_refused(result, "'flipflap'", "'flipflop'")
    assert list(in_tmp.iterdir()) == []


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        ("optim: {lr: [1, 2\n", ["not valid YAML"]),
        ("optim:\n  lrr: 0.1\n", ["optim.lrr", "lr"]),
        ("modle:\n  n_hidden: 8\n", ["modle", "model"]),
        ("- 1\n- 2\n", ["mapping"]),
        ("task: context\n", ["context"]),
    ],
)
def test_train_bad_config_file(in_tmp, text, needles):
    (in_tmp / "cfg.yaml").write_text(text)
    before = snapshot(in_tmp)
    result = invoke("task", "train", "flipflop", "--out", "run", "--config", "cfg.yaml")
    assert_refused(result, *needles)
    if text != "task: context\n":
        assert "cfg.yaml" in result.stderr
    assert snapshot(in_tmp) == before


def test_train_missing_config_file(in_tmp):
    result = invoke("task", "train", "flipflop", "--out", "run", "--config", "none.yaml")
    assert_refused(result, "none.yaml")
    assert list(in_tmp.iterdir()) == []


def test_train_refuses_existing_folder(in_tmp):
    (in_tmp / "run").mkdir()
    (in_tmp / "run" / "notes.txt").write_text("keep me\n")
    before = snapshot(in_tmp)
    result = invoke("task", "train", "flipflop", "--out", "run", "--steps", 1, *TINY)
    assert_refused(result, "run", "--resume")
    assert snapshot(in_tmp) == before
    assert (in_tmp / "run" / "notes.txt").read_text() == "keep me\n"


def test_train_refuses_out_that_is_a_file(in_tmp):
    (in_tmp / "run").write_text("a file\n")
    before = snapshot(in_tmp)
    result = invoke("task", "train", "flipflop", "--out", "run", "--steps", 1, *TINY)
    assert_refused(result, "not a folder")
    assert snapshot(in_tmp) == before


@pytest.mark.parametrize("folder", ["missing", "empty", "no_checkpoint"])
def test_resume_without_checkpoint(in_tmp, folder):
    if folder == "empty":
        (in_tmp / "run").mkdir()
    elif folder == "no_checkpoint":
        (in_tmp / "run").mkdir()
        (in_tmp / "run" / "notes.txt").write_text("keep me\n")
    before = snapshot(in_tmp)
    result = invoke("task", "train", "flipflop", "--out", "run", "--resume", "--steps", 1, *TINY)
    assert_refused(result, "no checkpoint", "resume")
    assert snapshot(in_tmp) == before


# --- task train: a tiny run, evaluated and resumed --------------------------------------------


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, compile_cache):
    """Three steps of a tiny flip-flop run: ``(run folder, CLI result)``."""
    run = tmp_path_factory.mktemp("cli") / "tmp" / "run"
    result = invoke("task", "train", "flipflop", "--out", run, "--steps", 3, *TINY)
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    return run, result


def test_train_writes_run_folder(tiny_run):
    run, result = tiny_run
    names = {p.name for p in run.iterdir()}
    assert {"config.yaml", "checkpoints", "params.npz", "log.csv", "metrics.json"} <= names
    assert str(run.resolve()) in result.stdout
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["task"] == "flipflop"
    assert cfg["model"]["n_hidden"] == 8 and cfg["model"]["cell"] == "gru"
    assert cfg["optim"] == {**cfg["optim"], "steps": 3, "batch_size": 4, "eval_trials": 8}
    assert cfg["loss"]["rnn"] == 3.0  # the task's default, resolved into the file
    assert Checkpoints(run / "checkpoints").latest_step() == 3
    metrics = json.loads((run / "metrics.json").read_text())
    assert METRIC_KEYS <= set(metrics) and metrics["steps"] == 3
    assert (run / "log.csv").read_text().splitlines()[0].startswith("step,total")


def test_eval_run_folder(tiny_run):
    run, _ = tiny_run
    result = invoke("task", "eval", "flipflop", "--weights", run, "--trials", 8, "--json")
    assert result.exit_code == 0, result.stderr
    metrics = json.loads(result.stdout)
    assert METRIC_KEYS <= set(metrics) and metrics["n_trials"] == 8


def test_eval_run_folder_of_another_task(tiny_run):
    run, _ = tiny_run
    before = snapshot(run)
    result = invoke("task", "eval", "context", "--weights", run, "--trials", 8)
    assert_refused(result, "flipflop", "context")
    assert snapshot(run) == before


def test_resume_continues(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run[0], run)
    result = invoke("task", "train", "flipflop", "--out", run, "--resume", "--steps", 5, *TINY)
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    assert Checkpoints(run / "checkpoints").latest_step() == 5
    assert yaml.safe_load((run / "config.yaml").read_text())["optim"]["steps"] == 5
    assert json.loads((run / "metrics.json").read_text())["steps"] == 5


def test_resume_with_changed_model_is_refused(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run[0], run)
    before = snapshot(run)
    result = invoke(
        "task", "train", "flipflop", "--out", run, "--resume", *TINY, "--set", "model.n_hidden=16"
    )
    assert_refused(result, "config.yaml", "differs")
    assert snapshot(run) == before


def test_analysis_line_holds_when_no_bin_rotates():
    """analyze printed its summary with ``:.3g`` and died on None after writing analysis/."""
    from lfads_jslds.cli import analysis_line

    base = {
        "dominant_rule": "motion",
        "jpca": {"skipped": "no conditions"},
        "fixed_point_residual_median": None,  # written as null where it was NaN
        "expansion_points_source": "expansion network E (JSLDS)",
    }
    none = {**base, "rotation_hz_median": None, "rotation_hz_iqr": None, "tau_s_median": None}
    assert analysis_line(none) == (
        "dominant rotational mode (motion rule): none (no bin has a rotating pair); "
        "jPCA skipped (no conditions); median ‖F(e*)−e*‖ n/a (expansion network E (JSLDS))"
    )
    some = {**none, "rotation_hz_median": 2.0931, "rotation_hz_iqr": 1e-4, "tau_s_median": None}
    some["fixed_point_residual_median"] = 0.00139
    assert analysis_line(some).startswith(
        "dominant rotational mode (motion rule): 2.09 Hz median (IQR 0.0001), tau inf; "
    )
    assert analysis_line(some).endswith("median ‖F(e*)−e*‖ 0.00139 (expansion network E (JSLDS))")
