"""LFADS-JSLDS training, inference and evaluation end to end, on tiny planted data."""

import csv
import dataclasses
import json

import h5py
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from typer.testing import CliRunner

from lfads_jslds import config as config_lib
from lfads_jslds.analysis.modes import RULES
from lfads_jslds.cli import DominantRule, app
from lfads_jslds.data import dataset
from lfads_jslds.data.prepare import write_tensors
from lfads_jslds.training import lfads_trainer
from lfads_jslds.training.checkpoints import Checkpoints
from lfads_jslds.training.run_config import RunConfig

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("compile_cache")  # fresh jit closures per train() call

TINY = [
    "model.ic_enc_dim=6",
    "model.ci_enc_dim=4",
    "model.con_dim=4",
    "model.co_dim=1",
    "model.ic_dim=4",
    "model.gen_dim=6",
    "model.fac_dim=3",
    "train.batch_size=8",
    "train.max_epochs=4",
    "train.kl_ramp_epochs=0",
    "train.l2_ramp_epochs=0",
    "train.checkpoint_every=2",
    "infer.samples=3",
    "infer.batch_size=5",
]


def planted_tensors(n_train=16, n_eval=8, t=8, fwd=2, n_in=6, n_out=3, seed=0):
    """Counts from a 2-D rotation whose phase differs by trial: learnable structure."""
    rng = np.random.default_rng(seed)
    n = n_train + n_eval
    phase = rng.uniform(0, 2 * np.pi, n)
    time = np.arange(t + fwd)
    lat = np.stack(
        [np.cos(0.5 * time[None] + phase[:, None]), np.sin(0.5 * time[None] + phase[:, None])], -1
    )
    w = rng.normal(0, 1.0, (2, n_in + n_out))
    counts = rng.poisson(np.exp(lat @ w)).astype(np.float32)
    tr, ev = slice(0, n_train), slice(n_train, n)
    return {
        "train_spikes_heldin": counts[tr, :t, :n_in],
        "train_spikes_heldout": counts[tr, :t, n_in:],
        "train_spikes_heldin_forward": counts[tr, t:, :n_in],
        "train_spikes_heldout_forward": counts[tr, t:, n_in:],
        "eval_spikes_heldin": counts[ev, :t, :n_in],
        "eval_spikes_heldout": counts[ev, :t, n_in:],
        "eval_spikes_heldin_forward": counts[ev, t:, :n_in],
        "eval_spikes_heldout_forward": counts[ev, t:, n_in:],
        "train_trial_ids": np.arange(n_train),
        "eval_trial_ids": np.arange(n_train, n),
        "heldin_unit_ids": np.arange(n_in) * 2,  # interleaved ids: outputs must re-sort them
        "heldout_unit_ids": np.arange(n_out) * 2 + 1,
        "train_cond_id": (phase[tr] // (np.pi / 2)).astype(int),  # 4 phase quadrants
        "eval_cond_id": (phase[ev] // (np.pi / 2)).astype(int),
    }


ATTRS = {"bin_ms": 20, "align_field": "move_onset_time", "window_ms": [-80, 80], "forward_ms": 40}


@pytest.fixture(scope="module")
def tensors_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "tiny.h5"
    write_tensors(path, planted_tensors(), ATTRS)
    return path


def tiny_config(*extra):
    return config_lib.resolve(RunConfig(), None, TINY + list(extra))


def _log(run):
    with open(run / "log.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("generator", ["gru", "jslds", "slds"])
def test_a_short_fit_of_each_generator_lowers_the_loss(tmp_path, tensors_file, generator):
    cfg = tiny_config(
        f"model.generator={generator}", "train.max_epochs=12", "model.dropout=0", "train.lr=0.02"
    )
    data, _ = lfads_trainer.prepare_run(tmp_path / "run", cfg, tensors_file, resume=False)
    lfads_trainer.train(cfg, tmp_path / "run", data, progress=False)
    rows = _log(tmp_path / "run")
    assert len(rows) == 12
    first, last = float(rows[0]["total"]), float(rows[-1]["total"])
    assert last < first, (first, last)
    primary = "nll_jslds" if generator == "slds" else "nll"
    assert float(rows[-1][primary]) < float(rows[0][primary])
    assert float(rows[-1]["val_nll_heldin"]) < float(rows[0]["val_nll_heldin"])


def _params_of(run, cfg, data, folder="checkpoints"):
    tx = lfads_trainer.make_optimizer(cfg, 1)
    target = lfads_trainer.init_state(cfg, data, tx)
    return Checkpoints(run / folder).restore(target)[0]


def test_kill_and_resume_reproduces_the_uninterrupted_weights(tmp_path, tensors_file, monkeypatch):
    cfg = tiny_config("train.max_epochs=5")
    data, _ = lfads_trainer.prepare_run(tmp_path / "full", cfg, tensors_file, resume=False)
    lfads_trainer.train(cfg, tmp_path / "full", data, progress=False)

    killed = tmp_path / "killed"
    lfads_trainer.prepare_run(killed, cfg, tensors_file, resume=False)
    real = lfads_trainer.make_validation

    def dies_at_epoch_4(*args):
        fn, calls = real(*args), []

        def val(*a):
            calls.append(1)
            if len(calls) > 3 * 1:  # one eval batch of 8 trials per epoch: epoch 4's validation
                raise KeyboardInterrupt
            return fn(*a)

        return val

    monkeypatch.setattr(lfads_trainer, "make_validation", dies_at_epoch_4)
    with pytest.raises(KeyboardInterrupt):
        lfads_trainer.train(cfg, killed, data, progress=False)
    assert Checkpoints(killed / "checkpoints").latest_step() == 2
    monkeypatch.setattr(lfads_trainer, "make_validation", real)
    data2, _ = lfads_trainer.prepare_run(killed, cfg, tensors_file, resume=True)
    lfads_trainer.train(cfg, killed, data2, resume=True, progress=False)

    for folder in ("checkpoints", "best"):
        a = (
            jax.tree.leaves(_params_of(tmp_path / "full", cfg, data, folder))
            if folder == "checkpoints"
            else None
        )
        if a is None:
            a = jax.tree.leaves(lfads_trainer.load_params(tmp_path / "full", cfg, data))
            b = jax.tree.leaves(lfads_trainer.load_params(killed, cfg, data))
        else:
            b = jax.tree.leaves(_params_of(killed, cfg, data, folder))
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert [r["epoch"] for r in _log(killed)] == [str(e) for e in range(1, 6)]
    assert _log(killed) == _log(tmp_path / "full") or all(
        {k: v for k, v in r.items() if k != "seconds"}
        == {k: v for k, v in s.items() if k != "seconds"}
        for r, s in zip(_log(killed), _log(tmp_path / "full"), strict=True)
    )


def test_nan_steps_are_skipped_and_never_reach_the_weights(tmp_path, tensors_file):
    # no dropout of any kind: a dropped entry would hide the NaN from the loss
    cfg = tiny_config(
        "train.max_epochs=4", "train.max_bad_steps=3", "train.cd_rate=0", "model.dropout=0"
    )
    data, _ = lfads_trainer.prepare_run(tmp_path / "run", cfg, tensors_file, resume=False)
    poisoned = np.array(data.train_input)
    poisoned[3, 2, 1] = np.nan  # one trial: the batch holding it gives a NaN loss
    data = dataclasses.replace(data, train_input=poisoned)
    summary = lfads_trainer.train(cfg, tmp_path / "run", data, progress=False)
    assert summary["skipped_steps"] == 4  # once per epoch (2 batches per epoch)
    assert summary["rollbacks"] == 0
    params = lfads_trainer.load_params(tmp_path / "run", cfg, data)
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(params))
    rows = _log(tmp_path / "run")
    assert all(np.isfinite(float(r["total"])) for r in rows)


def test_persistent_nans_roll_back_then_stop_with_finite_weights(tmp_path, tensors_file):
    cfg = tiny_config("train.max_epochs=4", "train.max_bad_steps=2", "train.max_rollbacks=2")
    data, _ = lfads_trainer.prepare_run(tmp_path / "run", cfg, tensors_file, resume=False)
    data = dataclasses.replace(data, train_input=np.full_like(data.train_input, np.inf))
    with pytest.raises(FloatingPointError, match="rollbacks"):
        lfads_trainer.train(cfg, tmp_path / "run", data, progress=False)
    tx = lfads_trainer.make_optimizer(cfg, 1)
    (params, _), meta = Checkpoints(tmp_path / "run" / "checkpoints").restore(
        lfads_trainer.init_state(cfg, data, tx)
    )
    assert meta["rollbacks"] == 2 and meta["lr_scale"] == 0.25
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(params))


def test_run_writes_the_documented_outputs(tmp_path, tensors_file):
    run = tmp_path / "run"
    args = ["run", str(tensors_file), "--out", str(run), "--no-progress"]
    result = runner.invoke(app, args + [a for s in TINY for a in ("--set", s)])
    assert result.exit_code == 0, result.output
    assert "co-bps" in result.output and "run folder:" in result.output
    n_tr, n_ev, t, fwd = 16, 8, 8, 2
    with h5py.File(run / "inference.h5") as f:
        shapes = {k: f[k].shape for k in f}
        attrs = dict(f.attrs)
        unit_ids, heldout = f["unit_ids"][()], f["heldout"][()]
        split = f["split"][()].astype(str)
    n = n_tr + n_ev
    assert shapes["rates"] == (n, t, 9) and shapes["rates_forward"] == (n, fwd, 9)
    assert shapes["rates_jslds"] == (n, t, 9)
    for key, dim in [
        ("factors", 3),
        ("gen_states", 6),
        ("jslds_states", 6),
        ("expansion_points", 6),
        ("inferred_inputs", 1),
    ]:
        assert shapes[key] == (n, t, dim), key
    assert shapes["fixed_point_residual"] == (n, t)
    ids = planted_tensors()
    expected = np.sort(np.r_[ids["heldin_unit_ids"], ids["heldout_unit_ids"]])
    np.testing.assert_array_equal(unit_ids, expected)  # NWB unit-id order
    np.testing.assert_array_equal(heldout, np.isin(expected, ids["heldout_unit_ids"]))
    assert list(split) == ["train"] * n_tr + ["val"] * n_ev
    assert attrs["bin_ms"] == 20 and list(attrs["window_ms"]) == [-80, 80]
    metrics = json.loads((run / "metrics.json").read_text())
    for key in ("co-bps", "fp-bps", "split", "smoothing_baseline", "jslds_path", "jslds"):
        assert key in metrics
    assert set(metrics["skipped"]) == {"vel R2", "psth R2"}  # no behaviour, no conditions
    assert (run / "submission.h5").exists() and (run / "config.yaml").exists()
    assert not (run / "rates.nwb").exists()  # tensors input: no source NWB
    summary = json.loads((run / "analysis" / "summary.json").read_text())
    for key in (
        "rotation_hz_median",
        "rotation_hz_iqr",
        "tau_s_median",
        "fixed_point_residual_median",
        "n_trials",
        "dt_s",
        "eig_sort",
    ):
        assert key in summary, key
    assert (
        summary["n_trials"] == n and summary["dt_s"] == 0.02 and summary["eig_sort"] == "abs_desc"
    )
    assert summary["expansion_points_source"].startswith("expansion network")
    assert summary["dominant_rule"] == "motion"  # the default
    assert json.dumps(summary, allow_nan=False)  # no NaN or inf anywhere
    for name in (
        "eigenvalues",
        "mode_histograms",
        "rosette_jpca",
        "expansion_points_pca",
        "raster_vs_rates",
    ):
        assert (run / "analysis" / "figures" / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
    # a second infer or evaluate never overwrites
    again = runner.invoke(app, ["infer", str(run), "--no-progress"])
    assert again.exit_code == 1 and "already exists" in again.output


def test_analysis_of_a_gru_run_falls_back_to_numerical_fixed_points(tmp_path, tensors_file):
    run = tmp_path / "run"
    args = ["train", str(tensors_file), "--out", str(run), "--no-progress"]
    args += [a for s in TINY + ["model.generator=gru", "train.max_epochs=2"] for a in ("--set", s)]
    assert runner.invoke(app, args).exit_code == 0
    missing = runner.invoke(app, ["analyze", str(run)])
    assert missing.exit_code == 1 and "lfads-jslds infer" in missing.output
    assert runner.invoke(app, ["infer", str(run), "--no-progress"]).exit_code == 0
    result = runner.invoke(app, ["analyze", str(run), "--dominant-rule", "deviation"])
    assert result.exit_code == 0, result.output
    summary = json.loads((run / "analysis" / "summary.json").read_text())
    assert summary["dominant_rule"] == summary["modes"]["conventions"]["dominant_rule"]
    assert {r.value for r in DominantRule} == set(RULES) and summary["dominant_rule"] == "deviation"
    assert summary["expansion_points_source"].startswith("nearest numerical fixed point")
    assert summary["numerical_fixed_points"]["found"] >= 1
    json.dumps(summary, allow_nan=False)


def _write(tmp_path, **changes):
    tensors = planted_tensors()
    tensors.update(changes)
    path = tmp_path / "bad.h5"
    write_tensors(path, tensors, ATTRS)
    return path


@pytest.mark.parametrize(
    ("setup", "extra", "message"),
    [
        (None, ["--set", "model.gen_dimm=5"], "did you mean 'model.gen_dim'"),
        (None, ["--set", "train.batch_size=big"], "train.batch_size must be of type int"),
        (None, ["--set", "train.batch_size=100"], "fewer than one batch"),
        (None, ["--set", "model.generator=lstm"], "model.generator must be one of"),
        ("nan", [], "NaN/Inf counts"),
        ("no_heldout", [], "0 neurons"),
        ("not_h5", [], "not an HDF5"),
        ("missing", [], "does not exist"),
    ],
)
def test_bad_input_fails_fast_and_writes_nothing(tmp_path, tensors_file, setup, extra, message):
    data = tensors_file
    if setup == "nan":
        x = planted_tensors()["train_spikes_heldin"].copy()
        x[0, 0, 0] = np.nan
        data = _write(tmp_path, train_spikes_heldin=x)
    elif setup == "no_heldout":
        t = planted_tensors()
        data = _write(
            tmp_path,
            **{k: v[..., :0] for k, v in t.items() if "heldout" in k and "spikes" in k},
            heldout_unit_ids=np.zeros(0, int),
        )
    elif setup == "not_h5":
        data = tmp_path / "notes.h5"
        data.write_text("hello")
    elif setup == "missing":
        data = tmp_path / "absent.h5"
    run = tmp_path / "run"
    result = runner.invoke(app, ["train", str(data), "--out", str(run), "--no-progress"] + extra)
    assert result.exit_code == 1
    assert message in result.output, result.output
    assert not run.exists()


def test_existing_run_folder_is_refused_and_resume_needs_a_checkpoint(tmp_path, tensors_file):
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("mine")
    result = runner.invoke(app, ["train", str(tensors_file), "--out", str(run)])
    assert result.exit_code == 1 and "--resume" in result.output
    assert [p.name for p in run.iterdir()] == ["notes.txt"]
    result = runner.invoke(app, ["train", str(tensors_file), "--out", str(run), "--resume"])
    assert result.exit_code == 1 and "no checkpoint" in result.output
    result = runner.invoke(app, ["infer", str(run)])
    assert result.exit_code == 1 and "config.yaml" in result.output


def test_infer_without_a_checkpoint_names_the_missing_stage(tmp_path, tensors_file):
    run = tmp_path / "run"
    cfg = tiny_config()
    lfads_trainer.prepare_run(run, cfg, tensors_file, resume=False)  # config, no training
    result = runner.invoke(app, ["infer", str(run), "--no-progress"])
    assert result.exit_code == 1 and "no checkpoint" in result.output and "train" in result.output
    result = runner.invoke(app, ["evaluate", str(run)])
    assert result.exit_code == 1 and "lfads-jslds infer" in result.output


def test_mc_maze_config_builds_and_steps_at_mc_maze_shapes():
    """pipelines/configs/mc_maze.yaml: one train step on random data of MC_Maze's 5 ms shapes."""
    from pathlib import Path

    cfg = config_lib.resolve(
        RunConfig(), Path(__file__).parents[1] / "pipelines/configs/mc_maze.yaml"
    )
    assert (cfg.model.gen_dim, cfg.model.co_dim, cfg.train.batch_size) == (100, 4, 100)
    rng = np.random.default_rng(0)
    b, t, fwd, n_in, n_all = cfg.train.batch_size, 140, 40, 137, 182
    x = rng.poisson(0.1, (b, t, n_in)).astype(np.float32)
    y = rng.poisson(0.1, (b, t + fwd, n_all)).astype(np.float32)
    data = dataset.LFADSData(x, y, x[:4], y[:4], {}, {"bin_ms": 5}, Path("random"))
    tx = lfads_trainer.make_optimizer(cfg, 1)
    params, opt = lfads_trainer.init_state(cfg, data, tx)
    step = lfads_trainer.make_train_step(cfg, tx, fwd)
    new, _, terms, ok = step(
        params, opt, jnp.asarray(x), jnp.asarray(y), jnp.arange(b), 0, 1.0, 0.0, 0.0
    )
    assert bool(ok)
    assert all(np.isfinite(float(v)) for v in terms.values())
    moved = [
        float(jnp.max(jnp.abs(a - c)))
        for a, c in zip(jax.tree.leaves(new), jax.tree.leaves(params), strict=True)
    ]
    assert max(moved) > 0
