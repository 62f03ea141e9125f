"""synth → prepare → metrics: the ground truth scores above the smoothing baseline."""

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from lfads_jslds import config as config_lib
from lfads_jslds.cli import app
from lfads_jslds.data.nwb import read_session
from lfads_jslds.data.prepare import prepare, read_tensors, write_tensors
from lfads_jslds.data.synth import read_ground_truth, true_rates_per_bin
from lfads_jslds.metrics import bits_per_spike, evaluate, smoothing_baseline
from lfads_jslds.training import lfads_trainer
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
    made, source = lfads_trainer.prepare_run(Path("runs/a"), cfg, session, resume=False)
    moved = tmp_path / "elsewhere" / "a"
    moved.parent.mkdir()
    Path("runs/a").rename(moved)
    monkeypatch.chdir(moved.parent)  # neither the old cwd nor inside the run
    data, found = lfads_trainer.load_run_data(moved)
    assert found == source == session.resolve()
    np.testing.assert_array_equal(data.train_input, made.train_input)
    np.testing.assert_array_equal(data.train_target, made.train_target)
