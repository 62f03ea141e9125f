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
from lfads_jslds.io.h5 import read_group
from lfads_jslds.models import lfads
from lfads_jslds.pipeline.run import RunFolder, RunFolderError
from lfads_jslds.pipeline.train import prepare_run
from lfads_jslds.training import lfads as lfads_training
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
    _, data = prepare_run(tmp_path / "run", cfg, tensors_file, resume=False)
    lfads_training.train(cfg, RunFolder(tmp_path / "run").train_files, data, progress=False)
    rows = _log(tmp_path / "run")
    assert len(rows) == 12
    first, last = float(rows[0]["total"]), float(rows[-1]["total"])
    assert last < first, (first, last)
    primary = "nll_jslds" if generator == "slds" else "nll"
    assert float(rows[-1][primary]) < float(rows[0][primary])
    assert float(rows[-1]["val_nll_sv"]) < float(rows[0]["val_nll_sv"])


def _copier(params, cfg, x, n_fwd, key, train, sample=True):
    """A "model" that returns its encoder input as rates (plus a floor): it has learned
    nothing but to copy."""
    z = jnp.zeros((*x.shape[:2], 0))
    return lfads.TrialOutput(*([z] * 13))._replace(log_rates=jnp.log(x + 0.05))


def test_validation_does_not_reward_copying_the_input(monkeypatch):
    """Sample validation scores only entries withheld from the encoder: a copier loses
    to the true rates there, though it wins on the entries the encoder saw (what
    validation scored before)."""
    rng = np.random.default_rng(0)
    rates = rng.uniform(0.5, 3.0, (6, 10, 4))  # spikes per bin
    x = rng.poisson(rates).astype(np.float32)
    sv = lfads_training.sample_validation(x, 0.2, seed=3)
    assert 0.1 < sv.mask.mean() < 0.3
    np.testing.assert_array_equal(sv.input[sv.mask], 0.0)
    np.testing.assert_allclose(sv.input[~sv.mask], x[~sv.mask] / 0.8, rtol=1e-6)
    np.testing.assert_array_equal(sv.target[sv.mask], x[sv.mask])
    assert np.isnan(sv.target[~sv.mask]).all()
    again = lfads_training.sample_validation(x, 0.2, seed=3)  # fixed: the same every epoch
    np.testing.assert_array_equal(again.mask, sv.mask)

    cfg = tiny_config("model.generator=gru")

    def score(forward):
        monkeypatch.setattr(lfads, "forward", forward)
        nll, _ = lfads_training.make_validation(cfg)({}, jnp.asarray(sv.input), sv.target)
        return float(np.mean(nll))

    truth = score(lambda p, c, x, *a, **k: _copier(p, c, x, *a)._replace(log_rates=np.log(rates)))
    copy = score(_copier)
    assert truth < copy, (truth, copy)
    # the old criterion, written out: NLL on the entries the encoder saw, full input
    seen = ~sv.mask
    nll = lambda lr: np.sum(np.where(seen, np.exp(lr) - x * lr, 0.0))  # noqa: E731
    assert nll(np.log(x + 0.05)) < nll(np.log(rates))  # there the copier would have won


def test_slds_validation_scores_the_a_path_at_the_withheld_entries(tmp_path, tensors_file):
    cfg = tiny_config("model.generator=slds", "model.dropout=0")
    _, data = prepare_run(tmp_path / "run", cfg, tensors_file, resume=False)
    params = lfads_training.init_state(cfg, data, lfads_training.make_optimizer(cfg, 1))[0]
    params["expansion"] = [  # a non-trivial E: the a path differs from the g path
        {"W": 0.5 * jnp.ones_like(layer["W"]), "b": 0.2 * jnp.ones_like(layer["b"])}
        for layer in params["expansion"]
    ]
    sv = lfads_training.sample_validation(data.eval_input, cfg.train.sv_rate, cfg.train.seed)
    nll, _ = lfads_training.make_validation(cfg)(params, jnp.asarray(sv.input), sv.target)
    out = lfads.forward(params, cfg.model, sv.input, 0, jax.random.PRNGKey(0), False, False)
    n_in = data.n_heldin  # the model's neurons: held-in first
    la, lg = (np.asarray(r, float)[:, :, :n_in] for r in (out.log_rates_a, out.log_rates))
    assert np.abs(la - lg).max() > 1e-3
    n = np.asarray(data.eval_input, float)
    ref = np.sum(np.where(sv.mask, np.exp(la) - n * la, 0.0), axis=(1, 2))
    np.testing.assert_allclose(nll, ref, rtol=1e-5)


def test_eval_heldin_training_never_sees_validation_or_heldout_entries(tmp_path, tensors_file):
    """train.use_eval_heldin: eval trials join training, but a step's gradients (hence
    weights) do not change when only their sample-validation entries, held-out neurons or
    forward bins change; they do when an entry the model may train on changes."""
    cfg = tiny_config("train.use_eval_heldin=true")
    _, data = prepare_run(tmp_path / "run", cfg, tensors_file, resume=False)
    t = cfg.train
    n_train, n_eval = data.train_input.shape[0], data.eval_input.shape[0]
    tx = lfads_training.make_optimizer(cfg, (n_train + n_eval) // t.batch_size)  # as train's
    params, opt = lfads_training.init_state(cfg, data, tx)
    step = lfads_training.make_train_step(cfg, tx, data.n_fwd)
    idx = jnp.arange(n_train, n_train + n_eval)  # a batch of eval trials only

    def after_one_step(d):
        sv = lfads_training.sample_validation(d.eval_input, t.sv_rate, t.seed)
        inputs, targets = lfads_training.training_arrays(d, sv, t)
        assert inputs.shape[0] == n_train + n_eval
        new, _, terms, ok = step(params, opt, inputs, targets, idx, 0, 1.0, 1.0, 1.0)
        assert bool(ok)
        return [np.asarray(leaf) for leaf in jax.tree.leaves(new)]

    base = after_one_step(data)
    mask = lfads_training.sample_validation(data.eval_input, t.sv_rate, t.seed).mask
    assert mask.any() and (~mask).any()
    hidden = dataclasses.replace(
        data,
        eval_input=np.where(mask, data.eval_input + 7.0, data.eval_input),
        eval_target=data.eval_target + 5.0,  # held-out neurons and forward bins too
    )
    for a, b in zip(base, after_one_step(hidden), strict=True):
        np.testing.assert_array_equal(a, b)
    seen = dataclasses.replace(data, eval_input=np.where(mask, data.eval_input, 7.0))
    assert any(not np.array_equal(a, b) for a, b in zip(base, after_one_step(seen), strict=True))
    summary = lfads_training.train(
        dataclasses.replace(cfg, train=dataclasses.replace(t, max_epochs=1)),
        RunFolder(tmp_path / "run").train_files,
        data,
        progress=False,
    )
    assert summary["steps"] == (n_train + n_eval) // t.batch_size  # eval trials in the epoch


def _params_of(run, cfg, data, folder="checkpoints"):
    tx = lfads_training.make_optimizer(cfg, 1)
    target = lfads_training.init_state(cfg, data, tx)
    return Checkpoints(run / folder).restore(target)[0]


@pytest.mark.parametrize("checkpoint_every", [2, 6])  # 6: killed before the first checkpoint
def test_kill_and_resume_reproduces_the_uninterrupted_weights(
    tmp_path, tensors_file, monkeypatch, checkpoint_every
):
    cfg = tiny_config("train.max_epochs=5", f"train.checkpoint_every={checkpoint_every}")
    _, data = prepare_run(tmp_path / "full", cfg, tensors_file, resume=False)
    lfads_training.train(cfg, RunFolder(tmp_path / "full").train_files, data, progress=False)

    killed = tmp_path / "killed"
    prepare_run(killed, cfg, tensors_file, resume=False)
    real = lfads_training.make_validation

    def dies_at_epoch_4(*args):
        fn, calls = real(*args), []

        def val(*a):
            calls.append(1)
            if len(calls) > 3 * 1:  # one eval batch of 8 trials per epoch: epoch 4's validation
                raise KeyboardInterrupt
            return fn(*a)

        return val

    monkeypatch.setattr(lfads_training, "make_validation", dies_at_epoch_4)
    with pytest.raises(KeyboardInterrupt):
        lfads_training.train(cfg, RunFolder(killed).train_files, data, progress=False)
    first = None if checkpoint_every > 3 else checkpoint_every
    assert Checkpoints(killed / "checkpoints").latest_step() == first
    assert len(_log(killed)) == 3  # epochs 1-3 logged, later redone
    monkeypatch.setattr(lfads_training, "make_validation", real)
    _, data2 = prepare_run(killed, cfg, tensors_file, resume=True)
    lfads_training.train(cfg, RunFolder(killed).train_files, data2, resume=True, progress=False)

    for folder in ("checkpoints", "best"):
        a = (
            jax.tree.leaves(_params_of(tmp_path / "full", cfg, data, folder))
            if folder == "checkpoints"
            else None
        )
        if a is None:
            a = jax.tree.leaves(RunFolder(tmp_path / "full").params())
            b = jax.tree.leaves(RunFolder(killed).params())
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


def test_resume_falls_back_from_a_damaged_latest_checkpoint(tmp_path, tensors_file):
    """Step 5's arrays cut to half: resume warns, restarts from step 4, and ends with the
    weights the undamaged step 5 held (training is deterministic per epoch)."""
    cfg = tiny_config("train.max_epochs=5")
    run = tmp_path / "run"
    _, data = prepare_run(run, cfg, tensors_file, resume=False)
    lfads_training.train(cfg, RunFolder(run).train_files, data, progress=False)
    assert Checkpoints(run / "checkpoints").all_steps() == [4, 5]
    whole = jax.tree.leaves(_params_of(run, cfg, data))
    step5 = run / "checkpoints" / "5"
    for path in (p for p in (step5 / "state").rglob("*") if p.is_file() and p.parent.name == "d"):
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    _, data2 = prepare_run(run, cfg, tensors_file, resume=True)
    with pytest.warns(UserWarning, match=r"cannot read the arrays of .*checkpoints/5"):
        lfads_training.train(cfg, RunFolder(run).train_files, data2, resume=True, progress=False)
    assert Checkpoints(run / "checkpoints").all_steps() == [4, 5]
    redone = jax.tree.leaves(_params_of(run, cfg, data))
    for x, y in zip(whole, redone, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert [r["epoch"] for r in _log(run)] == [str(e) for e in range(1, 6)]


def test_nan_steps_are_skipped_and_never_reach_the_weights(tmp_path, tensors_file):
    # no dropout of any kind: a dropped entry would hide the NaN from the loss
    cfg = tiny_config(
        "train.max_epochs=4", "train.max_bad_steps=3", "train.cd_rate=0", "model.dropout=0"
    )
    _, data = prepare_run(tmp_path / "run", cfg, tensors_file, resume=False)
    poisoned = np.array(data.train_input)
    poisoned[3, 2, 1] = np.nan  # one trial: the batch holding it gives a NaN loss
    data = dataclasses.replace(data, train_input=poisoned)
    summary = lfads_training.train(
        cfg, RunFolder(tmp_path / "run").train_files, data, progress=False
    )
    assert summary["skipped_steps"] == 4  # once per epoch (2 batches per epoch)
    assert summary["rollbacks"] == 0
    params = RunFolder(tmp_path / "run").params()
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(params))
    rows = _log(tmp_path / "run")
    assert all(np.isfinite(float(r["total"])) for r in rows)


def test_persistent_nans_roll_back_then_stop_with_finite_weights(tmp_path, tensors_file):
    cfg = tiny_config("train.max_epochs=4", "train.max_bad_steps=2", "train.max_rollbacks=2")
    _, data = prepare_run(tmp_path / "run", cfg, tensors_file, resume=False)
    data = dataclasses.replace(data, train_input=np.full_like(data.train_input, np.inf))
    with pytest.raises(FloatingPointError, match="rollbacks"):
        lfads_training.train(cfg, RunFolder(tmp_path / "run").train_files, data, progress=False)
    tx = lfads_training.make_optimizer(cfg, 1)
    (params, _), meta = Checkpoints(tmp_path / "run" / "checkpoints").restore(
        lfads_training.init_state(cfg, data, tx)
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
    assert attrs["generating_path"] == "rnn" and "rates_rnn" not in shapes  # jslds: g generates
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
    # the tiny data's -80..80 ms lack jPCA's default -50..150 ms: skipped, saying why
    assert "not inside the data's window_ms [-80, 80]" in summary["jpca"]["skipped"]
    for name in (
        "eigenvalues",
        "mode_histograms",
        "expansion_points_pca",
        "raster_vs_rates",
    ):
        assert (run / "analysis" / "figures" / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
    # a second infer or evaluate never overwrites
    inference_bytes = (run / "inference.h5").read_bytes()
    again = runner.invoke(app, ["infer", str(run), "--no-progress"])
    assert again.exit_code == 1 and "already exists" in again.output
    # an infer killed after inference.h5: a re-run writes the missing submission from it
    with h5py.File(run / "submission.h5") as f:
        submission = read_group(f)
    (run / "submission.h5").unlink()
    orphan = run / ".submission.h5.x1y2z3_4.tmp"  # as a SIGKILL mid-write leaves it
    orphan.write_bytes(b"half")
    mine = run / ".notes.tmp"  # a user's file: not an atomic_write temp name
    mine.write_text("keep")
    with pytest.warns(UserWarning, match=r"removed temporary files .*\.submission\.h5\.x1y2z3_4"):
        again = runner.invoke(app, ["infer", str(run), "--no-progress"])
    assert again.exit_code == 0, again.output
    assert not orphan.exists() and mine.read_text() == "keep"
    assert (run / "inference.h5").read_bytes() == inference_bytes  # untouched
    with h5py.File(run / "submission.h5") as f:
        rewritten = read_group(f)
    assert jax.tree.structure(rewritten) == jax.tree.structure(submission)
    for a, b in zip(jax.tree.leaves(rewritten), jax.tree.leaves(submission), strict=True):
        np.testing.assert_array_equal(a, b)


def test_an_slds_run_reports_the_jslds_path_and_keeps_the_rnn_path_beside(tmp_path, tensors_file):
    """slds: the a path generates, so it is ``rates`` and the headline metrics; the g path's
    rates are ``rates_rnn`` and its metrics ``rnn_path``."""
    run = tmp_path / "run"
    sets = TINY + ["model.generator=slds", "train.max_epochs=2", "infer.posterior_mean=true"]
    args = ["train", str(tensors_file), "--out", str(run), "--no-progress"]
    assert runner.invoke(app, args + [a for s in sets for a in ("--set", s)]).exit_code == 0
    assert runner.invoke(app, ["infer", str(run), "--no-progress"]).exit_code == 0
    result = runner.invoke(app, ["evaluate", str(run)])
    assert result.exit_code == 0, result.output
    assert "rnn path" in result.output
    with h5py.File(run / "inference.h5") as f:
        keys, attrs = set(f), dict(f.attrs)
        rates, rates_rnn = f["rates"][()], f["rates_rnn"][()]
    assert attrs["generating_path"] == "jslds" and attrs["generator"] == "slds"
    assert {"rates_rnn_forward", "gen_states", "jslds_states"} <= keys and "rates_jslds" not in keys
    assert not np.allclose(rates, rates_rnn)
    metrics = json.loads((run / "metrics.json").read_text())
    assert "rnn_path" in metrics and "jslds_path" not in metrics
    assert metrics["co-bps"] != metrics["rnn_path"]["co-bps"]


def test_analysis_of_a_gru_run_falls_back_to_numerical_fixed_points(tmp_path, tensors_file):
    run = tmp_path / "run"
    args = ["train", str(tensors_file), "--out", str(run), "--no-progress"]
    args += [a for s in TINY + ["model.generator=gru", "train.max_epochs=2"] for a in ("--set", s)]
    assert runner.invoke(app, args).exit_code == 0
    missing = runner.invoke(app, ["analyze", str(run)])
    assert missing.exit_code == 1 and "lfads-jslds infer" in missing.output
    assert runner.invoke(app, ["infer", str(run), "--no-progress"]).exit_code == 0
    outside = runner.invoke(app, ["analyze", str(run), "--jpca-window", "-50", "150"])
    assert outside.exit_code == 1 and "inference.h5: jPCA window [-50, 150] ms" in outside.output
    assert not (run / "analysis" / "summary.json").exists()
    args = ["analyze", str(run), "--dominant-rule", "deviation", "--jpca-window", "-60", "60"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads((run / "analysis" / "summary.json").read_text())
    assert summary["dominant_rule"] == summary["modes"]["conventions"]["dominant_rule"]
    assert {r.value for r in DominantRule} == set(RULES) and summary["dominant_rule"] == "deviation"
    assert summary["expansion_points_source"].startswith("nearest numerical fixed point")
    assert summary["numerical_fixed_points"]["found"] >= 1
    assert summary["jpca"]["bins"] == [1, 7] and summary["jpca"]["window_ms"] == [-60, 60]
    assert (run / "analysis" / "figures" / "rosette_jpca.png").exists()
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
    assert [p.name for p in run.iterdir()] == ["notes.txt"]
    result = runner.invoke(app, ["infer", str(run)])
    assert result.exit_code == 1 and "config.yaml" in result.output


def test_a_data_file_changed_after_training_is_refused_by_every_later_stage(tmp_path):
    """A tensors file rewritten at 10 ms after a 20 ms run was trained on it: refused."""
    import hashlib

    data_path = tmp_path / "tiny.h5"
    write_tensors(data_path, planted_tensors(), ATTRS)
    run = tmp_path / "run"
    cfg = tiny_config("train.max_epochs=2")
    _, data = prepare_run(run, cfg, data_path, resume=False)
    lfads_training.train(cfg, RunFolder(run).train_files, data, progress=False)
    assert runner.invoke(app, ["infer", str(run), "--no-progress"]).exit_code == 0
    before = sorted(p.name for p in run.iterdir())
    info = json.loads((run / "data.json").read_text())["provenance"]
    assert info["tensors_sha256"] == hashlib.sha256(data_path.read_bytes()).hexdigest()
    assert info["input"]["path"] == str(data_path.resolve()) and info["bin_ms"] == 20
    assert info["shapes"]["train_spikes_heldin"] == [16, 8, 6]
    assert RunFolder(run).data.bin_ms == 20  # unchanged: accepted

    write_tensors(data_path, planted_tensors(), {**ATTRS, "bin_ms": 10})
    for stage in (["evaluate", str(run)], ["analyze", str(run)], ["infer", str(run)]):
        if stage[0] == "infer":  # infer refuses to overwrite its outputs first: move them
            for name in ("inference.h5", "submission.h5"):
                (run / name).rename(tmp_path / name)
        result = runner.invoke(app, [*stage, "--no-progress"] if stage[0] == "infer" else stage)
        assert result.exit_code == 1, stage
        assert "tiny.h5 changed since this run was trained" in result.output, result.output
    moved = {"inference.h5", "submission.h5"}
    assert sorted(p.name for p in run.iterdir()) == sorted(set(before) - moved)  # none written
    data_path.unlink()
    with pytest.raises(RunFolderError, match="is gone"):
        RunFolder(run).data  # noqa: B018 (reading it is the check)


def test_infer_without_a_checkpoint_names_the_missing_stage(tmp_path, tensors_file):
    run = tmp_path / "run"
    cfg = tiny_config()
    prepare_run(run, cfg, tensors_file, resume=False)  # config, no training
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
    tx = lfads_training.make_optimizer(cfg, 1)
    params, opt = lfads_training.init_state(cfg, data, tx)
    step = lfads_training.make_train_step(cfg, tx, fwd)
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
