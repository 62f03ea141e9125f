"""Every file a user has goes through every stage (train, infer, evaluate, analyze).

nlb_tools tensor files hold NLB keys only (no attributes, no trial or unit ids), flat at
the root, nested under one group named after the dataset (``mc_maze_small_20``), or both in
one file; NWB sessions may lack a usable split (NLB's test files: every trial "test",
heldout all False, trials ending where the 700 ms window ends). What a file lacks is
completed the same way at every stage, or the file is refused in seconds, before training.
"""

import json
import re
import time
from datetime import UTC, datetime

import h5py
import numpy as np
import pytest
from conftest import shared_file
from test_lfads_pipeline import TINY, planted_tensors
from typer.testing import CliRunner

from lfads_jslds.cli import app
from lfads_jslds.data import dataset
from lfads_jslds.data import prepare as prep
from lfads_jslds.data.nwb import DataError, read_session
from lfads_jslds.data.prepare import write_tensors
from lfads_jslds.training import lfads as lfads_training

runner = CliRunner()
SETS = [a for s in TINY for a in ("--set", s)]
#: NLB's layout at 20 ms: 35 bins of the 700 ms window, 10 of the 200 ms forward window.
#: Trial and unit counts match ``write_test_like_nwb`` cut by ``--val-fraction 0.2
#: --heldout-fraction 0.25``, so the runs of both share their compiled functions.
N_TRAIN, N_EVAL, T_OBS, T_FWD, N_IN, N_OUT = 32, 8, 35, 10, 9, 3
GROUP = "mc_maze_small_20"
#: What nlb_tools' make_eval_target_tensors puts in its dataset group.
TARGET_KEYS = (
    "eval_spikes_heldout",
    "eval_spikes_heldin_forward",
    "eval_spikes_heldout_forward",
    "train_cond_idx",
    "eval_cond_idx",
    "psth",
)


def nlb_tensors(t_obs=T_OBS, t_fwd=T_FWD):
    """Planted counts with NLB keys only: no ids, conditions as nlb_tools' cond_idx lists."""
    t = planted_tensors(N_TRAIN, N_EVAL, t_obs, t_fwd, N_IN, N_OUT)
    out = {k: v for k, v in t.items() if "_spikes_" in k and v.size}
    counts = np.concatenate(
        [
            np.concatenate([t[f"{p}_spikes_heldin"], t[f"{p}_spikes_heldout"]], 2)
            for p in ("train", "eval")
        ]
    )
    cond = np.r_[t["train_cond_id"], t["eval_cond_id"]]
    labels = np.unique(cond)
    for part in ("train", "eval"):
        ids = t[f"{part}_cond_id"]
        out[f"{part}_cond_idx"] = [np.flatnonzero(ids == c) for c in labels]
    out["psth"] = np.stack([counts[cond == c].mean(0) for c in labels]).astype(np.float32)
    return out, {p: t[f"{p}_cond_id"] for p in ("train", "eval")}


def _save(group: h5py.Group, tree: dict) -> None:
    """As nlb_tools' save_to_h5: float32 / int32 data, ragged lists as vlen int32, no attrs."""
    for key, value in tree.items():
        if isinstance(value, list):
            data = np.empty(len(value), object)
            data[:] = [np.asarray(v, np.int32) for v in value]
            group.create_dataset(key, data=data, dtype=h5py.vlen_dtype(np.int32))
        else:
            group.create_dataset(key, data=np.asarray(value, np.float32), compression="gzip")


def write_nlb_file(path, layout, tensors):
    """``layout``: "flat" (all at the root), "nested" (all under GROUP) or "both" (inputs at
    the root, eval targets under GROUP, as nlb_tools' three writers into one file leave it)."""
    with h5py.File(path, "w") as f:
        if layout == "flat":
            _save(f, tensors)
        elif layout == "nested":
            _save(f.create_group(GROUP), tensors)
        else:
            _save(f, {k: v for k, v in tensors.items() if k not in TARGET_KEYS[1:]})
            _save(f.create_group(GROUP), {k: tensors[k] for k in TARGET_KEYS})
    return path


@pytest.mark.parametrize("layout", ["flat", "nested", "both"])
def test_nlb_layouts_load_alike_with_positional_ids(tmp_path, layout):
    tensors, cond = nlb_tensors()
    data = dataset.load(write_nlb_file(tmp_path / f"{layout}.h5", layout, tensors))
    assert data.bin_ms == 20  # 35 bins of NLB's 700 ms window (and, nested, the group name)
    assert data.attrs["window_ms"] == [-250, 450] and data.attrs["forward_ms"] == 200
    assert data.attrs["ids_positional"] == ["trials", "units"]
    assert data.attrs["dataset"] == ("generic" if layout == "flat" else "mc_maze_small")
    assert data.attrs["phase"] == "val"  # the eval trials' held-out spikes are there
    t = data.tensors
    np.testing.assert_array_equal(t["train_trial_ids"], np.arange(N_TRAIN))
    np.testing.assert_array_equal(t["eval_trial_ids"], np.arange(N_TRAIN, N_TRAIN + N_EVAL))
    np.testing.assert_array_equal(t["heldin_unit_ids"], np.arange(N_IN))
    np.testing.assert_array_equal(t["heldout_unit_ids"], np.arange(N_IN, N_IN + N_OUT))
    for part in ("train", "eval"):  # cond_idx lists turned back into per-trial labels
        np.testing.assert_array_equal(
            t[f"{part}_cond_id"],
            np.searchsorted(np.unique(np.r_[cond["train"], cond["eval"]]), cond[part]),
        )
    expect = np.concatenate(
        [
            np.concatenate([tensors["eval_spikes_heldin"], tensors["eval_spikes_heldout"]], 2),
            np.concatenate(
                [tensors["eval_spikes_heldin_forward"], tensors["eval_spikes_heldout_forward"]], 2
            ),
        ],
        1,
    )
    np.testing.assert_array_equal(data.eval_target, expect)


def test_a_tensor_file_with_ids_keeps_them(tmp_path):
    t = planted_tensors()
    write_tensors(tmp_path / "ours.h5", t, {"bin_ms": 20})
    data = dataset.load(tmp_path / "ours.h5")
    np.testing.assert_array_equal(data.tensors["heldin_unit_ids"], t["heldin_unit_ids"])
    assert "ids_positional" not in data.attrs
    del t["eval_trial_ids"]
    write_tensors(tmp_path / "half.h5", t, {"bin_ms": 20})
    with pytest.raises(DataError, match="has train_trial_ids but not eval_trial_ids"):
        dataset.load(tmp_path / "half.h5")


@pytest.mark.parametrize(
    ("t_obs", "attrs", "group", "requested", "needle"),
    [
        (8, {}, None, None, "cannot tell the bin width.*pass --bin-ms"),
        (35, {}, None, 5, "20 ms from its 35 bins per trial .*; 5 ms from data.bin_ms"),
        (35, {}, "mc_maze_small", None, "5 ms from its group name 'mc_maze_small'; 20 ms"),
        (140, {"bin_ms": 5}, None, 20, "5 ms from its bin_ms attribute; 20 ms from data.bin_ms"),
    ],
)
def test_bin_width_sources_must_agree(tmp_path, t_obs, attrs, group, requested, needle):
    tensors, _ = nlb_tensors(t_obs, 0)
    with pytest.raises(DataError, match=needle):
        dataset.from_tensors(tmp_path / "x.h5", tensors, attrs, requested, group)


def test_a_stated_bin_width_serves_a_custom_length(tmp_path):
    tensors, _ = nlb_tensors(8, 2)
    data = dataset.from_tensors(tmp_path / "x.h5", tensors, {}, 20)
    assert data.bin_ms == 20 and data.attrs["window_ms"] == [0, 160]
    assert data.attrs["forward_ms"] == 40 and data.attrs["align_field"] == "unknown"
    nested = dataset.from_tensors(tmp_path / "x.h5", nlb_tensors()[0], {}, None, "mc_maze_20")
    assert nested.bin_ms == 20 and nested.attrs["dataset"] == "mc_maze"


def test_files_whose_parts_disagree_are_refused(tmp_path):
    tensors, _ = nlb_tensors()
    path = tmp_path / "two.h5"
    with h5py.File(path, "w") as f:
        _save(f, tensors)
        _save(f.create_group(GROUP), {"eval_spikes_heldout": tensors["eval_spikes_heldout"] + 1})
    with pytest.raises(DataError, match="eval_spikes_heldout differs between / and /" + GROUP):
        dataset.load(path)
    with h5py.File(path, "a") as f:
        f.create_group("mc_maze_small_5")
    with pytest.raises(DataError, match="2 groups"):
        dataset.load(path)


@pytest.mark.usefixtures("compile_cache")
@pytest.mark.parametrize("layout", ["flat", "nested"])
def test_an_nlb_tools_file_goes_through_every_stage(tmp_path, layout):
    path = write_nlb_file(tmp_path / f"{layout}.h5", layout, nlb_tensors(T_OBS, 0)[0])
    run = tmp_path / "run"
    args = ["run", str(path), "--out", str(run), "--no-progress", *SETS]
    result = runner.invoke(app, args + ["--set", "train.max_epochs=2"])
    assert result.exit_code == 0, result.output
    with h5py.File(run / "inference.h5") as f:
        np.testing.assert_array_equal(f["trial_ids"][()], np.arange(N_TRAIN + N_EVAL))
        np.testing.assert_array_equal(f["unit_ids"][()], np.arange(N_IN + N_OUT))
        assert f.attrs["bin_ms"] == 20 and list(f.attrs["window_ms"]) == [-250, 450]
    metrics = json.loads((run / "metrics.json").read_text())
    assert np.isfinite(metrics["co-bps"]) and np.isfinite(metrics["psth R2"])
    assert set(metrics["skipped"]) == {"vel R2", "fp-bps"}  # what the file lacks
    assert (run / "analysis" / "summary.json").exists()
    with h5py.File(run / "submission.h5") as f:  # nlb_tools scores it under this name
        assert list(f) == [GROUP if layout == "nested" else "custom_20ms"]
    assert json.loads((run / "data.json").read_text())["ids_positional"] == ["trials", "units"]
    assert "bin_ms: 20" in (run / "config.yaml").read_text()  # as resolved, for later stages


# ----------------------------------------------------------------------------- NWB


def write_test_like_nwb(path, n_trials=40, n_units=12, seed=0, heldout=False):
    """An NWB session shaped as NLB's test files: every trial "test", heldout all False,
    trials of 700 ms ending 450 ms after movement onset, spikes only inside the trials
    (obs_intervals say so), unit ids not in ascending order. Rates follow a rotation."""
    from pynwb import NWBHDF5IO, NWBFile

    rng = np.random.default_rng(seed)
    nwb = NWBFile("NLB-test-like session", "test-like", datetime(2020, 1, 1, tzinfo=UTC))
    nwb.add_trial_column("move_onset_time", "movement onset (s)")
    nwb.add_trial_column("split", "NLB split")
    starts = 0.8 * np.arange(n_trials) + 0.1
    for s in starts:
        nwb.add_trial(start_time=s, stop_time=s + 0.7, move_onset_time=s + 0.25, split="test")
    nwb.add_unit_column("heldout", "held out in NLB")
    phase = rng.uniform(0, 2 * np.pi, n_trials)
    ids = rng.permutation(np.arange(100, 100 + 7 * n_units, 7))
    for u in range(n_units):
        times = []
        for s, p in zip(starts, phase, strict=True):
            t = np.sort(rng.uniform(0, 0.7, 200))
            rate = 20 * np.exp(np.cos(8 * t + p + u))  # Hz, thinned from 200 candidates
            keep = rng.uniform(size=t.size) < rate / (200 / 0.7) / np.e
            times.append(s + t[keep])
        nwb.add_unit(
            spike_times=np.concatenate(times),
            obs_intervals=np.stack([starts, starts + 0.7], 1),
            heldout=heldout,
            id=int(ids[u]),
        )
    with NWBHDF5IO(str(path), "w") as io:
        io.write(nwb)
    return path


@pytest.fixture(scope="module")
def test_like(tmp_path_factory):
    return write_test_like_nwb(tmp_path_factory.mktemp("nwb") / "test_like.nwb")


@pytest.mark.usefixtures("compile_cache")
def test_an_nwb_session_of_test_trials_goes_through_every_stage(tmp_path, test_like):
    run = tmp_path / "run"
    args = ["run", str(test_like), "--out", str(run), "--no-progress", *SETS]
    args += ["--heldout-fraction", "0.25", "--val-fraction", "0.2", "--split-seed", "3"]
    with pytest.warns(UserWarning) as seen:
        result = runner.invoke(app, args + ["--set", "train.max_epochs=2"])
    assert result.exit_code == 0, result.output
    said = " ".join(str(w.message) for w in seen)
    assert "trial split (40 test) is ignored: 8 val and 32 train" in said
    assert "no forward window (forward_ms 0" in said
    with h5py.File(run / "inference.h5") as f:
        split = f["split"][()].astype(str)
        assert (split == "val").sum() == 8 and (split == "train").sum() == 32
        assert f["heldout"][()].sum() == 3  # round(0.25 * 12)
        assert "rates_forward" not in f
    with h5py.File(run / "data.h5") as f:
        attrs = dict(f.attrs)
    assert attrs["val_fraction"] == 0.2 and attrs["heldout_fraction"] == 0.25
    assert attrs["split_seed"] == 3 and attrs["forward_ms"] == 0
    config = (run / "config.yaml").read_text()
    for line in ("val_fraction: 0.2", "heldout_fraction: 0.25", "split_seed: 3", "bin_ms: 20"):
        assert line in config
    assert np.isfinite(json.loads((run / "metrics.json").read_text())["co-bps"])
    assert (run / "analysis" / "summary.json").exists() and (run / "rates.nwb").exists()


def test_listed_heldout_units_are_the_held_out_ones(tmp_path, test_like):
    ids = read_session(test_like).units.ids
    out = tmp_path / "t.h5"
    args = ["prepare", str(test_like), "--out", str(out), "--bin-ms", "20"]
    args += ["--val-fraction", "0.25", "--heldout-units", f"{ids[4]},{ids[1]}"]
    with pytest.warns(UserWarning):
        result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    with h5py.File(out) as f:
        np.testing.assert_array_equal(f["heldout_unit_ids"][()], ids[[1, 4]])  # table order
        np.testing.assert_array_equal(f.attrs["heldout_units"], [ids[4], ids[1]])
        assert f["eval_spikes_heldin"].shape == (10, 35, 10)


def _unusable(tmp_path, test_like, which):
    """(data path, extra CLI args, what the error must say) of a file no run can use."""
    if which == "custom_length":
        path = write_nlb_file(tmp_path / "custom.h5", "flat", nlb_tensors(8, 0)[0])
        return path, [], "cannot tell the bin width"
    if which == "no_options":
        return test_like, [], "pass --val-fraction"
    if which == "no_heldout_option":
        return test_like, ["--val-fraction", "0.2"], "--heldout-fraction .* or --heldout-units"
    if which == "bad_fraction":
        return test_like, ["--val-fraction", "1.5"], "data.val_fraction = 1.5"
    return test_like, ["--heldout-units", "3,x"], "--heldout-units '3,x': expected unit ids"


@pytest.mark.parametrize(
    "which",
    ["custom_length", "no_options", "no_heldout_option", "bad_fraction", "bad_units"],
)
def test_a_file_that_cannot_be_trained_on_is_refused_in_seconds(
    tmp_path, test_like, monkeypatch, which
):
    def never(*args, **kwargs):
        raise AssertionError("training started on a file that cannot be used")

    monkeypatch.setattr(lfads_training, "train", never)
    path, extra, needle = _unusable(tmp_path, test_like, which)
    run = tmp_path / "run"
    start = time.perf_counter()
    result = runner.invoke(app, ["train", str(path), "--out", str(run), "--no-progress", *extra])
    assert time.perf_counter() - start < 20  # reading and checking only: no compiling
    assert result.exit_code == 1
    assert re.search(needle, result.output), result.output
    assert not run.exists()


def test_a_window_that_ends_with_its_interval_is_observed():
    """Float rounding must not lose it: a trial [1.6, 2.3] s with onset 1.85 s, as NLB's
    test files lay them out, has 1.85 + 0.45 > 2.3."""
    align = np.array([1.6 + 0.25])
    assert align[0] + 0.45 > 2.3  # the rounding the slack absorbs
    assert prep.observed(np.array([[1.6, 2.3]]), align - 0.25, align + 0.45).all()
    assert not prep.observed(np.array([[1.6, 2.299]]), align - 0.25, align + 0.45).any()


def test_the_dandi_small_test_file_prepares_with_the_split_options(tmp_path):
    nwb = shared_file("data/dandi/sub-Jenkins_ses-small_desc-test_ecephys.nwb")
    with pytest.raises(DataError, match="pass --val-fraction"):
        dataset.tensors_from_nwb(nwb, tmp_path / "a.h5", 20, None)
    with pytest.warns(UserWarning, match="no room for the 200 ms forward window"):
        t, attrs = dataset.tensors_from_nwb(
            nwb, tmp_path / "b.h5", 20, None, val_fraction=0.2, heldout_fraction=0.25
        )
    assert t["train_spikes_heldin"].shape == (80, 35, 80)  # 107 units, 27 held out
    assert t["eval_spikes_heldout"].shape == (20, 35, 27)
    assert not any(np.isnan(v).any() for k, v in t.items() if "_spikes_" in k)
    assert attrs["dataset"] == "mc_maze_small" and attrs["forward_ms"] == 0
    data = dataset.load(tmp_path / "b.h5")
    assert data.n_fwd == 0 and data.bin_ms == 20
