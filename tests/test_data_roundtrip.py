"""synth → prepare → metrics: the ground truth scores above the smoothing baseline, and
scores do not depend on how units are numbered."""

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from lfads_jslds import config as config_lib
from lfads_jslds.cli import app
from lfads_jslds.data.nwb import DataError, read_session
from lfads_jslds.data.prepare import prepare, read_tensors, write_tensors
from lfads_jslds.data.synth import read_ground_truth, true_rates_per_bin
from lfads_jslds.metrics import bits_per_spike, evaluate, smoothing_baseline
from lfads_jslds.pipeline.infer import submission_from_inference, unit_order
from lfads_jslds.pipeline.run import RunFolder
from lfads_jslds.pipeline.train import prepare_run
from lfads_jslds.training.run_config import RunConfig


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    path = tmp_path_factory.mktemp("synth") / "small.nwb"
    result = CliRunner().invoke(app, ["synth", str(path), "--preset", "small", "--seed", "3"])
    assert result.exit_code == 0, result.output
    return path


def test_prepare_command_writes_nlb_tensors_and_never_overwrites(session, tmp_path):
    out = tmp_path / "tensors.h5"
    args = ["prepare", str(session), "--out", str(out), "--bin-ms", "5", "--lag-ms", "120"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    tensors, attrs = read_tensors(out)
    assert tensors["train_spikes_heldin"].shape[1:] == (140, 107)
    assert tensors["eval_spikes_heldout_forward"].shape[1:] == (40, 35)
    assert attrs["bin_ms"] == 5 and attrs["align_field"] == "move_onset_time"
    # not an NLB file name: the generic row's PSTH kernel, the lag given
    assert (attrs["dataset"], attrs["lag_ms"], attrs["psth_kern_sd_ms"]) == ("generic", 120, 50)
    before = out.read_bytes()
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 1 and "already exists" in again.output
    assert out.read_bytes() == before


def test_ground_truth_beats_smoothing_baseline_and_null_scores_zero(session, tmp_path):
    data = read_session(session, behavior=["hand_vel"])
    tensors = prepare(data, bin_ms=20, lag_ms=120)
    write_tensors(tmp_path / "t.h5", tensors, {"bin_ms": 20})
    tensors, attrs = read_tensors(tmp_path / "t.h5")
    assert attrs["bin_ms"] == 20

    truth = read_ground_truth(session)
    rates = true_rates_per_bin(truth, 20)  # [trial, bin, unit], trials/units in table order
    trial_row = {int(t): i for i, t in enumerate(truth.trial_ids)}
    unit_col = {int(u): i for i, u in enumerate(data.units.ids)}
    eval_rates = rates[[trial_row[int(t)] for t in tensors["eval_trial_ids"]]]
    true_heldin = eval_rates[..., [unit_col[int(u)] for u in tensors["heldin_unit_ids"]]]
    true_heldout = eval_rates[..., [unit_col[int(u)] for u in tensors["heldout_unit_ids"]]]
    spikes = tensors["eval_spikes_heldout"]

    null = np.broadcast_to(np.nanmean(spikes, axis=(0, 1)), spikes.shape)
    assert bits_per_spike(null, spikes) == pytest.approx(0.0, abs=1e-12)
    truth_bps = bits_per_spike(true_heldout, spikes)

    base = smoothing_baseline(
        tensors["train_spikes_heldin"],
        tensors["train_spikes_heldout"],
        tensors["eval_spikes_heldin"],
        kern_sd_bins=2.0,
        alpha=1.0,
    )
    base_bps = bits_per_spike(base["eval_rates_heldout"], spikes)
    assert truth_bps > 0
    assert truth_bps > base_bps

    scores = evaluate(
        {"eval_rates_heldout": true_heldout, "eval_rates_heldin": true_heldin},
        tensors,
    )
    assert scores["co-bps"] == pytest.approx(truth_bps)


def test_a_run_made_from_nwb_finds_its_data_after_a_move_and_from_any_directory(
    session, tmp_path, monkeypatch
):
    demo = Path(__file__).parents[1] / "pipelines" / "configs" / "synthetic_demo.yaml"
    cfg = config_lib.resolve(RunConfig(), demo, [])
    monkeypatch.chdir(tmp_path)
    run, made = prepare_run(Path("runs/a"), cfg, session, resume=False)
    source = run.source
    moved = tmp_path / "elsewhere" / "a"
    moved.parent.mkdir()
    Path("runs/a").rename(moved)
    monkeypatch.chdir(moved.parent)  # neither the old cwd nor inside the run
    data, found = RunFolder(moved).data, RunFolder(moved).source
    assert found == source == session.resolve()
    np.testing.assert_array_equal(data.train_input, made.train_input)
    np.testing.assert_array_equal(data.train_target, made.train_target)


def test_scores_and_rates_follow_units_whose_ids_do_not_ascend(session):
    """The true rates, given as the model would (tensor order), scored once with the file's
    ascending unit ids and once with the ids shuffled: identical scores, and inference
    order is the units table's, each column its own unit's rates."""
    data = read_session(session, behavior=["hand_vel"])
    truth = read_ground_truth(session)
    trial_row = {int(t): i for i, t in enumerate(truth.trial_ids)}
    obs = true_rates_per_bin(truth, 20)  # [trial, bin, unit]: units in table order
    fwd = true_rates_per_bin(truth, 20, (450, 650))
    shuffled = np.random.default_rng(0).permutation(data.units.n_units) * 3 + 7
    scores = {}
    for name, ids in (("ascending", data.units.ids), ("shuffled", shuffled)):
        renamed = dataclasses.replace(data, units=dataclasses.replace(data.units, ids=ids))
        tensors = prepare(renamed, bin_ms=20, lag_ms=120)
        trials = [
            trial_row[int(t)] for t in np.r_[tensors["train_trial_ids"], tensors["eval_trial_ids"]]
        ]
        col = {int(u): i for i, u in enumerate(ids)}  # unit id -> table row
        model_units = [
            col[int(u)] for u in np.r_[tensors["heldin_unit_ids"], tensors["heldout_unit_ids"]]
        ]
        perm, unit_ids, heldout = unit_order(tensors)
        np.testing.assert_array_equal(unit_ids, ids)  # the units table's order
        np.testing.assert_array_equal(heldout, data.units.heldout)
        inf = {
            "rates": obs[trials][:, :, model_units][:, :, perm],
            "rates_forward": fwd[trials][:, :, model_units][:, :, perm],
            "heldout": heldout,
            "split": np.repeat(
                ["train", "val"], [len(tensors["train_trial_ids"]), len(tensors["eval_trial_ids"])]
            ),
        }
        units_of = [col[int(u)] for u in unit_ids]
        np.testing.assert_array_equal(inf["rates"], obs[trials][:, :, units_of])
        scores[name] = evaluate(submission_from_inference(inf), tensors)
    for key in ("co-bps", "fp-bps", "vel R2", "psth R2"):
        assert scores["shuffled"][key] == scores["ascending"][key], key
    assert scores["ascending"]["co-bps"] > 0  # the true rates beat the null


def test_unit_order_keeps_each_group_in_tensor_order():
    held = {"heldin_unit_ids": np.array([5, 2]), "heldout_unit_ids": np.array([9])}
    perm, ids, heldout = unit_order({**held, "unit_ids": np.array([5, 9, 2])})
    assert (perm.tolist(), ids.tolist(), heldout.tolist()) == ([0, 2, 1], [5, 9, 2], [0, 1, 0])
    perm, ids, _ = unit_order(held)  # no table order recorded, held-in ids do not ascend
    assert (perm.tolist(), ids.tolist()) == ([0, 1, 2], [5, 2, 9])
    with pytest.raises(DataError, match="orders the units of a group differently"):
        unit_order({**held, "unit_ids": np.array([2, 9, 5])})
    with pytest.raises(DataError, match="must list each of"):
        unit_order({**held, "unit_ids": np.array([2, 9])})
