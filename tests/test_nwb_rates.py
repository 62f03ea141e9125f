"""Rates written back into NWB (opened by pynwb, source untouched) and as NLB submissions.

Rates are ``[trial, time, neuron]`` in spikes per bin; the NWB session is a synthetic one.
"""

import re
from pathlib import Path

import h5py
import numpy as np
import pytest

from lfads_jslds.data import synth
from lfads_jslds.data.nwb import DataError, read_session
from lfads_jslds.data.nwb_rates import (
    nlb_dataset_name,
    read_rates_nwb,
    write_nlb_submission,
    write_rates_nwb,
)
from lfads_jslds.metrics import evaluate
from lfads_jslds.pipeline.infer import nlb_name

BIN_MS, WINDOW_MS = 20, (-250, 450)
N_TIME = (WINDOW_MS[1] - WINDOW_MS[0]) // BIN_MS


@pytest.fixture(scope="module", autouse=True)
def _pynwb_cache(tmp_path_factory):
    """pynwb pickles its type map into the user's cache on import: keep that in a temp dir."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))
        yield


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("nwb") / "small.nwb"
    synth.write_synthetic_nwb(path, "small", seed=0)
    return path


@pytest.fixture(scope="module")
def inputs(source) -> dict:
    """Arguments of write_rates_nwb for every other trial and the units in reverse order."""
    session = read_session(source)
    rng = np.random.default_rng(0)
    trials = slice(0, None, 2)
    trial_ids, unit_ids = session.trials["id"][trials], session.units.ids[::-1]
    return dict(
        rates=rng.gamma(2.0, 0.1, (trial_ids.size, N_TIME, unit_ids.size)),
        trial_ids=trial_ids,
        unit_ids=unit_ids,
        bin_ms=BIN_MS,
        align_times_s=session.trials["move_onset_time"][trials],
        window_ms=WINDOW_MS,
        description="random rates for a test",
        extra={"factors": rng.normal(size=(trial_ids.size, N_TIME, 4)).astype(np.float32)},
    )


def snapshot(path: Path) -> tuple[bytes, int]:
    return path.read_bytes(), path.stat().st_mtime_ns


def test_rates_open_in_pynwb_and_match(source, inputs, tmp_path):
    from pynwb import NWBHDF5IO

    before = snapshot(source)
    dst = tmp_path / "rates.nwb"
    write_rates_nwb(source, dst, **inputs)
    assert snapshot(source) == before
    assert [p.name for p in tmp_path.iterdir()] == ["rates.nwb"]

    with NWBHDF5IO(str(dst), "r") as io:
        nwb = io.read()
        module = nwb.processing["lfads"]
        assert module.description == inputs["description"]
        table = module["inferred_rates"]
        np.testing.assert_allclose(table["rates"].data[:], inputs["rates"], rtol=1e-6)
        assert table["rates"].data.dtype == np.float32
        np.testing.assert_array_equal(table["trial_id"].data[:], inputs["trial_ids"])
        np.testing.assert_array_equal(table["factors"].data[:], inputs["extra"]["factors"])
        start = inputs["align_times_s"] + WINDOW_MS[0] / 1000
        np.testing.assert_allclose(table["start_time"].data[:], start)
        # The regions point at the right rows of the session's own tables.
        trials = table["trial"]
        assert trials.table is nwb.trials
        np.testing.assert_array_equal(nwb.trials.id.data[:][trials.data[:]], inputs["trial_ids"])
        units = module["rate_units"]
        np.testing.assert_array_equal(units["unit_id"].data[:], inputs["unit_ids"])
        assert units["unit"].table is nwb.units
        np.testing.assert_array_equal(
            nwb.units.id.data[:][units["unit"].data[:]], inputs["unit_ids"]
        )
        assert module["rate_parameters"]["bin_ms"].data[0] == BIN_MS
        assert "ground_truth" in nwb.processing and "behavior" in nwb.processing

    back = read_rates_nwb(dst)
    np.testing.assert_allclose(back["rates"], inputs["rates"], rtol=1e-6)
    np.testing.assert_array_equal(back["trial_ids"], inputs["trial_ids"])
    np.testing.assert_array_equal(back["unit_ids"], inputs["unit_ids"])
    np.testing.assert_array_equal(back["align_times_s"], inputs["align_times_s"])
    assert (back["bin_ms"], back["window_ms"]) == (BIN_MS, WINDOW_MS)
    assert set(back["extra"]) == {"factors"}


def test_existing_destination_is_refused(source, inputs, tmp_path):
    dst = tmp_path / "taken.nwb"
    dst.write_text("not mine to replace")
    with pytest.raises(FileExistsError, match=str(dst)):
        write_rates_nwb(source, dst, **inputs)
    assert dst.read_text() == "not mine to replace"
    with pytest.raises(FileExistsError):
        write_rates_nwb(source, source, **inputs)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda a: a.update(trial_ids=a["trial_ids"][1:]), "trial_ids"),
        (lambda a: a.update(unit_ids=a["unit_ids"][1:]), "unit_ids"),
        (lambda a: a["rates"].__setitem__((3, 4, 5), np.nan), "rates"),
        (lambda a: a["rates"].__setitem__((0, 0, 0), -1.0), "rates"),
        (lambda a: a.update(rates=a["rates"][0]), "rates"),
        (lambda a: a.update(align_times_s=a["align_times_s"][:-1]), "align_times_s"),
        (lambda a: a.update(window_ms=(-250, 500)), "window_ms"),
        (lambda a: a.update(extra={"factors": a["extra"]["factors"][1:]}), "extra['factors']"),
        (lambda a: a.update(extra={"rates": a["extra"]["factors"]}), "extra['rates']"),
    ],
)
def test_bad_inputs_raise_before_any_file(source, inputs, tmp_path, change, field):
    args = {**inputs, "rates": inputs["rates"].copy()}
    change(args)
    with pytest.raises(ValueError, match="^" + re.escape(field)):
        write_rates_nwb(source, tmp_path / "x.nwb", **args)
    assert [p.name for p in tmp_path.iterdir()] == []


def test_ids_absent_from_the_session_are_named(source, inputs, tmp_path):
    args = {**inputs, "unit_ids": inputs["unit_ids"] + 1000}
    with pytest.raises(DataError, match=f"{source}: /units has no row with id 1141"):
        write_rates_nwb(source, tmp_path / "x.nwb", **args)
    assert [p.name for p in tmp_path.iterdir()] == []


def test_read_rates_of_a_file_without_them(source):
    with pytest.raises(DataError, match="no /processing/lfads"):
        read_rates_nwb(source)


def submission(seed: int = 0) -> tuple[dict, dict]:
    rng = np.random.default_rng(seed)
    n_eval, n_time, n_fp, n_in, n_out = 12, 10, 4, 6, 3
    rates = {
        "train_rates_heldin": rng.gamma(2.0, 0.2, (20, n_time, n_in)),
        "train_rates_heldout": rng.gamma(2.0, 0.2, (20, n_time, n_out)),
        "eval_rates_heldin": rng.gamma(2.0, 0.2, (n_eval, n_time, n_in)),
        "eval_rates_heldout": rng.gamma(2.0, 0.2, (n_eval, n_time, n_out)),
        "eval_rates_heldin_forward": rng.gamma(2.0, 0.2, (n_eval, n_fp, n_in)),
        "eval_rates_heldout_forward": rng.gamma(2.0, 0.2, (n_eval, n_fp, n_out)),
    }
    targets = {
        "eval_spikes_heldout": rng.poisson(0.4, (n_eval, n_time, n_out)).astype(float),
        "eval_spikes_heldin_forward": rng.poisson(0.4, (n_eval, n_fp, n_in)).astype(float),
        "eval_spikes_heldout_forward": rng.poisson(0.4, (n_eval, n_fp, n_out)).astype(float),
    }
    return rates, targets


def test_submission_scores_as_in_memory(tmp_path):
    rates, targets = submission()
    name = nlb_dataset_name("mc_maze_small", 20)
    assert name == "mc_maze_small_20"
    path = tmp_path / "submission.h5"
    write_nlb_submission(path, name, rates)
    with h5py.File(path, "r") as f:
        assert list(f) == [name]
        assert set(f[name]) == set(rates)
        assert all(f[name][k].dtype == np.float32 for k in rates)
    stored = {k: v.astype(np.float32) for k, v in rates.items()}
    from_file = evaluate(path, {name: targets}, dataset=name)
    assert from_file == evaluate(stored, targets)
    assert set(from_file) == {"co-bps", "fp-bps", "skipped"}


def test_submission_needs_eval_heldout_and_consistent_shapes(tmp_path):
    rates, _ = submission()
    path = tmp_path / "s.h5"
    without = {k: v for k, v in rates.items() if k != "eval_rates_heldout"}
    with pytest.raises(ValueError, match="eval_rates_heldout is required"):
        write_nlb_submission(path, "mc_maze", without)
    with pytest.raises(ValueError, match="unknown keys"):
        write_nlb_submission(path, "mc_maze", {**rates, "eval_rates": rates["eval_rates_heldout"]})
    with pytest.raises(ValueError, match="heldout neuron counts"):
        write_nlb_submission(
            path, "mc_maze", {**rates, "train_rates_heldout": rates["train_rates_heldout"][..., 1:]}
        )
    bad = rates["eval_rates_heldin"].copy()
    bad[0, 0, 0] = np.inf
    with pytest.raises(ValueError, match=r"rates\['eval_rates_heldin'\]"):
        write_nlb_submission(path, "mc_maze", {**rates, "eval_rates_heldin": bad})
    assert not path.exists()
    write_nlb_submission(path, "mc_maze", {"eval_rates_heldout": rates["eval_rates_heldout"]})


def test_nlb_dataset_names():
    assert nlb_dataset_name("mc_maze", 5) == "mc_maze"
    assert nlb_dataset_name("mc_maze_large", 20) == "mc_maze_large_20"
    with pytest.raises(ValueError, match="bin_ms"):
        nlb_dataset_name("mc_maze", 10)
    with pytest.raises(ValueError, match="not an NLB dataset"):
        nlb_dataset_name("mc_maze_tiny", 5)


@pytest.mark.parametrize(
    ("source", "bin_ms", "name"),
    [
        (
            "d/000140/sub-Jenkins/sub-Jenkins_ses-small_desc-train_behavior+ecephys.nwb",
            20,
            "mc_maze_small_20",
        ),
        ("sub-Jenkins_ses-full_desc-train_behavior+ecephys.nwb", 5, "mc_maze"),
        ("runs/mc_maze_large_20.h5", 20, "mc_maze_large_20"),
        ("runs/synthetic_small.nwb", 20, "custom_20ms"),
        ("sub-Jenkins_ses-small_desc-train_behavior+ecephys.nwb", 10, "custom_10ms"),
        (None, 5, "custom_5ms"),
    ],
)
def test_submission_group_is_named_from_the_source_file(source, bin_ms, name):
    assert nlb_name(source, bin_ms) == name
