"""``tune``: population-based training on Ray. Bad input is refused in one line with nothing
written and no Ray started; a tiny search exploits (weights and optimiser state copied),
exports a run folder that ``infer`` and ``evaluate`` accept, and resumes after a kill."""

import contextlib
import csv
import json
import math
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import h5py
import jax
import numpy as np
import pytest
import yaml
from test_lfads_pipeline import TINY, tensors_file  # noqa: F401 (a fixture)
from typer.testing import CliRunner

from lfads_jslds import config as config_lib
from lfads_jslds.cli import app
from lfads_jslds.models import lfads
from lfads_jslds.pipeline import tune
from lfads_jslds.pipeline.run import RunFolder
from lfads_jslds.pipeline.tune_space import FACTORS, Dimension, load_space
from lfads_jslds.training import lfads as lfads_training
from lfads_jslds.training.checkpoints import Checkpoints
from lfads_jslds.training.run_config import RunConfig

runner = CliRunner()
SETS = [a for s in TINY for a in ("--set", s)]


def _space(tmp_path, entries):
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(entries))
    return path


def _tune(data, out, *extra):
    return runner.invoke(app, ["tune", str(data), "--out", str(out), *SETS, *extra])


def _one_line_error(result, *needles):
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for needle in needles:
        assert needle in lines[0], lines[0]


# --------------------------------------------------------------------------- bad input


@pytest.fixture
def no_ray_start(monkeypatch):
    """Any attempt to start Ray fails the test (the checks come first)."""
    ray = pytest.importorskip("ray")

    def refuse(*args, **kwargs):
        raise AssertionError("Ray was started")

    monkeypatch.setattr(ray, "init", refuse)


def test_one_member_is_refused(tmp_path, tensors_file, no_ray_start):  # noqa: F811
    out = tmp_path / "search"
    _one_line_error(_tune(tensors_file, out, "--members", "1"), "--members 1", "at least 2")
    assert not out.exists()


def test_unknown_space_key_names_close_matches(tmp_path, tensors_file, no_ray_start):  # noqa: F811
    space = _space(tmp_path, {"train.lrr": {"low": 1e-4, "high": 1e-2, "scale": "log"}})
    out = tmp_path / "search"
    result = _tune(tensors_file, out, "--space", str(space))
    _one_line_error(result, str(space), "'train.lrr'", "'train.lr'")
    assert not out.exists()


@pytest.mark.parametrize(
    ("entry", "needle"),
    [
        ({"low": 0.3, "high": 0.3}, "empty range"),
        ({"low": 0.5, "high": 0.1}, "empty range"),
        ({"low": 0.0, "high": 0.5, "scale": "log"}, "log scale needs low > 0"),
        ({"low": 0.1, "high": 1.5}, "out of range"),  # dropout must stay below 1
    ],
)
def test_bad_range_is_refused(tmp_path, tensors_file, no_ray_start, entry, needle):  # noqa: F811
    space = _space(tmp_path, {"model.dropout": entry})
    out = tmp_path / "search"
    _one_line_error(_tune(tensors_file, out, "--space", str(space)), "model.dropout", needle)
    assert not out.exists()


def test_unusable_data_leaves_nothing(tmp_path, monkeypatch):
    """An HDF5 file without trial tensors fails once Ray is up and the first member's
    folder exists (Ray stubbed here: the data is read only after the join)."""
    monkeypatch.setattr(tune, "ray_session", lambda *args: contextlib.nullcontext())
    bad = tmp_path / "bad.h5"
    with h5py.File(bad, "w") as f:
        f["x"] = np.zeros(3)
    out = tmp_path / "search"
    _one_line_error(_tune(bad, out), str(bad))
    assert not out.exists()


def test_existing_folder_without_resume(tmp_path, tensors_file, no_ray_start):  # noqa: F811
    out = tmp_path / "search"
    out.mkdir()
    (out / "something").write_text("kept")
    _one_line_error(_tune(tensors_file, out), "already exists", "--resume")
    assert sorted(p.name for p in out.iterdir()) == ["something"]


def test_resume_of_a_folder_that_is_no_search(tmp_path, tensors_file, no_ray_start):  # noqa: F811
    out = tmp_path / "search"
    out.mkdir()
    result = runner.invoke(app, ["tune", str(tensors_file), "--out", str(out), "--resume"])
    _one_line_error(result, "tune.json", "nothing to resume")
    assert list(out.iterdir()) == []


def test_without_ray_names_the_extra(tmp_path, tensors_file, monkeypatch):  # noqa: F811
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    out = tmp_path / "search"
    _one_line_error(_tune(tensors_file, out), "pip install 'lfads-jslds[tune]'")
    assert not out.exists()


def test_unreachable_address_fails_fast(tmp_path, tensors_file, no_ray_start):  # noqa: F811
    with socket.socket() as s:  # a port that was just free: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "search"
    start = time.perf_counter()
    result = _tune(tensors_file, out, "--address", f"127.0.0.1:{port}")
    assert time.perf_counter() - start < 10
    _one_line_error(result, f"--address 127.0.0.1:{port}", "no Ray cluster answers")
    assert not out.exists()


def test_a_refused_join_writes_nothing(tmp_path, tensors_file, monkeypatch):  # noqa: F811
    """Something answers at --address but Ray refuses the join (here: a stub raising what
    Ray 2.60 raises without the cluster's token): one line, no folder."""
    ray = pytest.importorskip("ray")

    def refuse(*args, **kwargs):
        try:
            raise RuntimeError("InvalidAuthToken: Authentication token is missing")
        except RuntimeError as err:
            raise ConnectionError("Failed to connect to Ray cluster") from err

    monkeypatch.setattr(ray, "init", refuse)
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        address = f"127.0.0.1:{listening.getsockname()[1]}"
        out = tmp_path / "search"
        result = _tune(tensors_file, out, "--address", address)
    _one_line_error(result, f"--address {address}: could not join", "InvalidAuthToken")
    assert not out.exists()


# --------------------------------------------------------------------------- explore, plan


def test_explore_scales_by_0_8_or_1_2_within_bounds():
    d = Dimension("train.lr", 1e-3, 1e-2, log=True)
    rng = np.random.default_rng(0)
    values = {d.explore(5e-3, rng, resample=0.0) for _ in range(50)}
    assert values == {5e-3 * 0.8, 5e-3 * 1.2} and FACTORS == (0.8, 1.2)
    assert {d.explore(9.5e-3, rng, 0.0) for _ in range(50)} == {9.5e-3 * 0.8, 1e-2}  # clipped
    assert {d.explore(1.1e-3, rng, 0.0) for _ in range(50)} == {1e-3, 1.1e-3 * 1.2}
    drawn = [d.explore(5e-3, rng, resample=1.0) for _ in range(200)]
    assert all(1e-3 <= v <= 1e-2 for v in drawn) and len(set(drawn)) == 200


def test_shipped_space_is_autolfads_rescaled():
    space = {
        d.key: d for d in load_space(Path(__file__).parents[1] / "pipelines/configs/pbt_space.yaml")
    }
    assert set(space) == {
        "train.lr", "model.dropout", "train.cd_rate", "loss.kl_ic", "loss.kl_co",
        "loss.l2_gen", "loss.l2_con", "loss.approx", "loss.fixed_point",
    }  # fmt: skip
    lr, dropout, cd = space["train.lr"], space["model.dropout"], space["train.cd_rate"]
    assert (lr.low, lr.high, lr.log, lr.init) == (1e-5, 5e-3, True, 4e-3)
    assert (dropout.low, dropout.high, dropout.log) == (0.0, 0.6, False)
    assert (cd.low, cd.high, cd.log) == (0.01, 0.7, False)
    # lfads-torch's kl_ic 1e-6..1e-3 times ~8200 entries per trial (MC_Maze, 20 ms)
    assert (space["loss.kl_ic"].low, space["loss.kl_ic"].high) == (8e-3, 8.0)


def test_plan_replaces_the_worst_quarter_by_the_best():
    state = {
        "options": {"members": 8, "quantile": 0.25, "resample": 0.0, "seed": 3},
        "space": {"train.lr": {"low": 1e-4, "high": 1.0, "scale": "log", "init": None}},
        "members": {f"m{i}": {"train.lr": 0.01 * (i + 1)} for i in range(8)},
        "rows": [
            {"member": f"m{i}", "generation": 2, "score": s}
            for i, s in enumerate([5.0, 1.0, 7.0, 2.0, math.inf, 3.0, 4.0, 6.0])
        ],
    }
    moves = tune.plan_exploit(state, 2)
    assert sorted(m["loser"] for m in moves) == ["m2", "m4"]  # 7.0 and inf (diverged)
    for m in moves:
        assert m["winner"] in ("m1", "m3")  # scores 1.0 and 2.0
        lr = state["members"][m["winner"]]["train.lr"]
        assert m["values"]["train.lr"] in (lr * 0.8, lr * 1.2)


def test_an_interrupted_exploit_is_replayed_from_its_plan(tmp_path):
    """Killed mid-copy (the loser's checkpoints gone, a half copy beside them): the resumed
    search applies the recorded plan, not a new one, and ends with the winner's files."""
    members = tmp_path / "members"
    for name in ("m00", "m01"):
        for sub in ("checkpoints", "best"):
            (members / name / sub / "2").mkdir(parents=True)
            (members / name / sub / "2" / "state").write_text(f"{name} {sub}")
    shutil.rmtree(members / "m01" / "checkpoints")
    (members / "m01" / "checkpoints.exploit" / "2").mkdir(parents=True)
    move = {"loser": "m01", "winner": "m00", "values": {"train.lr": 1.2e-3}}
    state = {
        "options": {"members": 2, "interval": 2},
        "config": config_lib.to_dict(RunConfig()),
        "members": {"m00": {"train.lr": 1e-3}, "m01": {"train.lr": 5e-3}},
        "plan": {"generation": 1, "moves": [move]},
        "exploited": 0,
        "rows": [],  # a new plan could not be made from these: the recorded one is used
    }
    tune.exploit(tmp_path, state, 1)
    for sub in ("checkpoints", "best"):
        assert (members / "m01" / sub / "2" / "state").read_text() == f"m00 {sub}"
    assert not (members / "m01" / "checkpoints.exploit").exists()
    saved = json.loads((tmp_path / "tune.json").read_text())
    assert saved["plan"] is None and saved["exploited"] == 1
    assert saved["members"]["m01"] == {"train.lr": 1.2e-3}
    cfg = RunFolder(members / "m01").config  # rewritten: new rate, the next interval's end
    assert (cfg.train.lr, cfg.train.max_epochs) == (1.2e-3, 4)


# --------------------------------------------------------------------------- a tiny search


def _state(member_dir):
    """``(params, opt_state)`` of a member's latest checkpoint, as NumPy arrays."""
    run = RunFolder.open(member_dir)
    cfg, data = run.config, run.data
    shapes = jax.eval_shape(
        lambda: lfads.init_params(jax.random.PRNGKey(0), cfg.model, data.n_heldin, data.n_neurons)
    )
    tx = lfads_training.make_optimizer(cfg, 1)
    state, _ = Checkpoints(run / run.CHECKPOINTS, keep=2).restore(
        (shapes, jax.eval_shape(tx.init, shapes))
    )
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(state)]


def _log_epochs(member_dir):
    with open(member_dir / RunFolder.LOG, newline="") as f:
        return [int(r["epoch"]) for r in csv.DictReader(f)]


@pytest.mark.usefixtures("compile_cache")
def test_tiny_pbt_exploits_exports_and_resumes(tmp_path, tensors_file, monkeypatch):  # noqa: F811
    """4 members × 3 intervals of 2 epochs on a local Ray with 2 CPUs.

    Only the learning rate is searched, and every member starts at the same one: each
    distinct value compiles its own train step (the values are constants of the step), so
    this needs the fewest compiles. The members are then identical until the first exploit
    explores the loser's rate; the second exploit pairs that member with one of the others.
    """
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)  # the search's own cache
    lr = {"low": 2e-3, "high": 2e-2, "scale": "log", "init": 5e-3}
    space = _space(tmp_path, {"train.lr": lr})
    out = tmp_path / "search"
    members = [out / "members" / f"m0{i}" for i in range(4)]
    shape = ["--members", "4", "--interval", "2", "--set", "evaluate.smooth_cv=false"]

    # generation 1 only: the search stops as a killed one would between generations
    first = _tune(tensors_file, out, "--space", str(space), "--generations", "1", *shape)
    assert first.exit_code == 0, first.output
    assert "generation 1/1 (epoch 2)" in first.output and "4/4 members alive" in first.output
    assert all(_log_epochs(m) == [1, 2] for m in members)
    assert json.loads((out / "tune.json").read_text())["done"] == 1
    assert any((out / "jax_cache").iterdir())  # the members' compiled steps, shared

    copies = []  # (loser, winner, loser's state before, winner's state, loser's after)
    copy_state = tune.copy_state

    def recording(winner, loser):
        before, won = _state(loser), _state(winner)
        copy_state(winner, loser)
        copies.append((loser.name, winner.name, before, won, _state(loser)))

    monkeypatch.setattr(tune, "copy_state", recording)
    resumed = runner.invoke(
        app, ["tune", str(tensors_file), "--out", str(out), "--resume", "--generations", "3"]
    )
    assert resumed.exit_code == 0, resumed.output
    assert "generation 1/" not in resumed.output  # continued, not restarted
    assert "generation 2/3 (epoch 4)" in resumed.output
    assert "generation 3/3 (epoch 6)" in resumed.output

    # (a) each exploit: the loser holds the winner's weights and Adam state, bit for bit
    state = json.loads((out / "tune.json").read_text())
    assert state["done"] == 3 and [p["generation"] for p in state["exploits"]] == [1, 2]
    moves = [m for p in state["exploits"] for m in p["moves"]]
    assert [(c[0], c[1]) for c in copies] == [(m["loser"], m["winner"]) for m in moves]
    n_params = len(jax.tree_util.tree_leaves(RunFolder(members[0]).params()))
    for loser, winner, _, won, after in copies:
        assert loser != winner and len(after) >= 3 * n_params  # params, Adam's mu and nu
        assert all(np.array_equal(a, w) for a, w in zip(after, won, strict=True))
    differed = [not all(map(np.array_equal, before, won)) for _, _, before, won, _ in copies]
    assert differed[1]  # the second exploit replaced a state unlike the winner's
    with open(out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["generation"], r["epoch"]) for r in rows[::4]] == [
        ("1", "2"),
        ("2", "4"),
        ("3", "6"),
    ]
    for generation, move in ((2, moves[0]), (3, moves[1])):
        row = next(
            r for r in rows if r["member"] == move["loser"] and r["generation"] == str(generation)
        )
        assert row["copied_from"] == move["winner"]
        assert float(row["train.lr"]) == pytest.approx(move["values"]["train.lr"], rel=1e-5)
        assert 2e-3 <= float(row["train.lr"]) <= 2e-2
    # (c) every member's log runs through epochs 1..6 once: training continued
    assert all(_log_epochs(m) == [1, 2, 3, 4, 5, 6] for m in members)
    for name in ("scores.png", "hyperparameters.png"):
        assert (out / "figures" / name).stat().st_size > 0

    # (b) the winner, an ordinary run folder, passes infer and evaluate
    best = out / "best"
    assert (best / "config.yaml").exists() and _log_epochs(best) == [1, 2, 3, 4, 5, 6]
    assert runner.invoke(app, ["infer", str(best), "--no-progress"]).exit_code == 0
    evaluated = runner.invoke(app, ["evaluate", str(best)])
    assert evaluated.exit_code == 0, evaluated.output
    assert "co-bps" in evaluated.output and (best / "metrics.json").exists()


def test_help_imports_neither_jax_nor_ray():
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from lfads_jslds.cli import app\n"
        "r = CliRunner().invoke(app, ['tune', '--help'])\n"
        "assert r.exit_code == 0 and '--members' in r.output, r.output\n"
        "print(sorted({'jax', 'ray'} & set(sys.modules)))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
