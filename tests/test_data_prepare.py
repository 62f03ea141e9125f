"""NLB tensors: synth -> read -> prepare, checked against slow, obviously correct loops.

Shapes follow NLB (140 + 40 bins at 5 ms, 35 + 10 at 20 ms); spike counts equal a per-trial
``np.histogram`` of the spike times; behaviour and PSTHs match direct computations; every bad
input is refused (or warned about) and nothing half-written is left behind.
"""

import dataclasses
import warnings

import h5py
import numpy as np
import pytest
from scipy import signal

from lfads_jslds.data import prepare as prep
from lfads_jslds.data import synth
from lfads_jslds.data.nwb import Behavior, DataError, read_session


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """(session read back from a small-preset NWB file, its ground truth)."""
    tmp = tmp_path_factory.mktemp("prepare")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(tmp / "cache"))
        synth.write_synthetic_nwb(tmp / "small.nwb", "small", seed=0)
    return read_session(tmp / "small.nwb"), synth.read_ground_truth(tmp / "small.nwb")


@pytest.fixture(scope="module")
def t5(small):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a clean synthetic session prepares without warnings
        return prep.prepare(small[0], bin_ms=5, lag_ms=120)


def test_shapes_follow_nlb_at_5_ms(t5):
    expect = {
        "train_spikes_heldin": (75, 140, 107),
        "train_spikes_heldout": (75, 140, 35),
        "train_spikes_heldin_forward": (75, 40, 107),
        "train_spikes_heldout_forward": (75, 40, 35),
        "eval_spikes_heldin": (25, 140, 107),
        "eval_spikes_heldout": (25, 140, 35),
        "eval_spikes_heldin_forward": (25, 40, 107),
        "eval_spikes_heldout_forward": (25, 40, 35),
        "train_behavior": (75, 140, 2),
        "eval_behavior": (25, 140, 2),
        "psth": (27, 140, 142),
        "conditions": (27, 2),
        "train_trial_ids": (75,),
        "eval_trial_ids": (25,),
    }
    for key, shape in expect.items():
        assert t5[key].shape == shape, key
    assert t5["train_spikes_heldin"].dtype == np.float32


def test_shapes_follow_nlb_at_20_ms(small):
    t = prep.prepare(small[0], bin_ms=20)
    assert t["train_spikes_heldin"].shape == (75, 35, 107)
    assert t["eval_spikes_heldout_forward"].shape == (25, 10, 35)
    assert t["psth"].shape == (27, 35, 142)


def _histogram_counts(session, trial_id, unit, t0_ms, t1_ms, bin_ms):
    """Per-trial np.histogram of one unit's spikes on the 1 ms clock (half-open bins)."""
    row = int(np.flatnonzero(session.trials["id"] == trial_id)[0])
    onset = int(round(session.trials["move_onset_time"][row] * 1000))
    ms = np.round(session.units.spikes(unit) * 1000)
    edges = onset + np.arange(t0_ms, t1_ms + 1, bin_ms) - 0.5
    return np.histogram(ms, edges)[0]


@pytest.mark.parametrize("bin_ms", [5, 20])
def test_counts_equal_a_histogram_of_the_spike_times(small, t5, bin_ms):
    session = small[0]
    t = t5 if bin_ms == 5 else prep.prepare(session, bin_ms=bin_ms)
    heldin = np.flatnonzero(~session.units.heldout)
    heldout = np.flatnonzero(session.units.heldout)
    for part in ("train", "eval"):
        for i in (0, 7, len(t[f"{part}_trial_ids"]) - 1):
            tid = t[f"{part}_trial_ids"][i]
            for group, units in (("heldin", heldin), ("heldout", heldout)):
                for j in (0, 5, len(units) - 1):
                    u = units[j]
                    want = _histogram_counts(session, tid, u, -250, 450, bin_ms)
                    np.testing.assert_array_equal(t[f"{part}_spikes_{group}"][i, :, j], want)
                    want = _histogram_counts(session, tid, u, 450, 650, bin_ms)
                    np.testing.assert_array_equal(
                        t[f"{part}_spikes_{group}_forward"][i, :, j], want
                    )


def test_counts_match_the_ground_truth_on_average(small, t5):
    session, gt = small
    order = np.concatenate(
        [np.flatnonzero(~session.units.heldout), np.flatnonzero(session.units.heldout)]
    )
    truth = synth.true_rates_per_bin(gt, 5)[t5["train_trial_ids"]][:, :, order]
    counts = np.concatenate([t5["train_spikes_heldin"], t5["train_spikes_heldout"]], 2)
    assert counts.mean() == pytest.approx(truth.mean(), rel=0.02)


def test_splits_and_trial_ids(small, t5):
    trials = small[0].trials
    np.testing.assert_array_equal(t5["train_trial_ids"], trials["id"][trials["split"] == "train"])
    np.testing.assert_array_equal(t5["eval_trial_ids"], trials["id"][trials["split"] == "val"])


def _with_behavior(session, values, path=None):
    """``session`` with ``values`` [sample, channel] as a 1 kHz hand_vel from t = 0 s."""
    series = Behavior("hand_vel", values, "mm/s", None, 1000.0, 0.0)
    return dataclasses.replace(session, behavior={"hand_vel": series}, path=path or session.path)


def test_behavior_is_resampled_as_nlb_tools_does(small):
    """A 0.5 Hz sinusoid plus a 40 Hz one (above the 25 Hz Nyquist frequency of 20 ms bins),
    sampled at 1 kHz: NLB's anti-alias filter (scipy's decimate, written out as its FIR
    filter) read at each bin's start, i.e. the slow wave alone."""
    session = small[0]
    t = np.arange(session.behavior["hand_vel"].data.shape[0]) / 1000.0
    slow = np.sin(2 * np.pi * 0.5 * t)
    x = np.stack([slow + 0.5 * np.sin(2 * np.pi * 40 * t), np.cos(2 * np.pi * 0.5 * t)], 1)
    taps = signal.firwin(501, 1 / 20, window="hamming")
    filtered = signal.convolve(x, taps[:, None], mode="same")
    # nlb_tools: signal.decimate(x, 20, n=500, ftype="fir"), i.e. every 20th filtered sample
    decimated = signal.decimate(x, 20, n=500, ftype="fir", axis=0)
    np.testing.assert_allclose(decimated, filtered[::20], atol=1e-12)
    t20 = prep.prepare(_with_behavior(session, x), bin_ms=20, lag_ms=120)
    for i in (0, 30, 74):
        onset = int(round(session.trials["move_onset_time"][t20["train_trial_ids"][i]] * 1000))
        starts = onset - 250 + 120 + 20 * np.arange(35)  # ms = sample index
        np.testing.assert_allclose(t20["train_behavior"][i], filtered[starts], atol=2e-6)
        np.testing.assert_allclose(t20["train_behavior"][i, :, 0], slow[starts], atol=0.01)


@pytest.mark.parametrize(
    ("name", "dataset", "lag_ms"),
    [
        ("small.nwb", None, 100),  # not an NLB file: the generic row
        ("sub-Jenkins_ses-full_desc-train_behavior+ecephys.nwb", None, 100),
        ("sub-Jenkins_ses-large_desc-train_behavior+ecephys.nwb", None, 120),
        ("sub-Jenkins_ses-medium_desc-train_behavior+ecephys.nwb", None, 120),
        ("sub-Jenkins_ses-small_desc-train_behavior+ecephys.nwb", None, 120),
        ("small.nwb", "mc_maze_medium", 120),  # named explicitly
    ],
)
def test_behaviour_lag_follows_the_dataset(small, tmp_path, name, dataset, lag_ms):
    """hand_vel(t) = t (s): a linear ramp passes the symmetric, unit-gain filter unchanged,
    so bin 0 reads the time of its start, onset - 250 ms + lag."""
    session = small[0]
    ramp = np.repeat(np.arange(session.behavior["hand_vel"].data.shape[0])[:, None] / 1e3, 2, 1)
    t = prep.prepare(_with_behavior(session, ramp, tmp_path / name), bin_ms=20, dataset=dataset)
    onset = session.trials["move_onset_time"][t["train_trial_ids"]]
    lag = 1000 * (t["train_behavior"][:, 0, 0] - onset + 0.25)
    np.testing.assert_allclose(lag, lag_ms, atol=0.6)  # half a sample + float32 rounding
    assert prep.conventions(tmp_path / name, dataset)["lag_ms"] == lag_ms


@pytest.mark.parametrize(
    ("path", "name", "kern"),
    [
        ("data/000128/sub-Jenkins/sub-Jenkins_ses-full_desc-test_ecephys.nwb", "mc_maze", 70),
        ("sub-Jenkins_ses-large_desc-train_behavior+ecephys.nwb", "mc_maze_large", 50),
        ("000139/sub-Jenkins/x.nwb", "mc_maze_medium", 50),  # DANDI's download layout
        ("runs/MC-Maze-Small_20.h5", "mc_maze_small", 50),
        ("mc_maze_20.h5", "mc_maze", 70),
        ("runs/synthetic_small.nwb", "generic", 50),
        (None, "generic", 50),
    ],
)
def test_conventions_are_recognised_from_the_file_name(path, name, kern):
    used = prep.conventions(path)
    assert (used["dataset"], used["psth_kern_sd_ms"]) == (name, kern)


def test_unknown_dataset_name_lists_the_known_ones():
    with pytest.raises(ValueError, match="'mc_maze_tiny' is not an NLB dataset; those are mc_maze"):
        prep.conventions("x.nwb", "mc_maze_tiny")


def test_behaviour_sampled_off_the_bin_grid_is_refused_before_binning(small, monkeypatch):
    monkeypatch.setattr(prep, "bin_counts", lambda *a, **k: pytest.fail("binning started"))
    series = Behavior("hand_vel", np.zeros((1000, 2)), "mm/s", None, 333.0, 0.0)
    session = dataclasses.replace(small[0], behavior={"hand_vel": series})
    with pytest.raises(DataError, match="small.nwb: behaviour series 'hand_vel' is sampled every"):
        prep.prepare(session, bin_ms=20)


def test_conditions_and_cond_idx(small, t5):
    trials = small[0].trials
    for part in ("train", "eval"):
        ids, idx = t5[f"{part}_cond_id"], t5[f"{part}_cond_idx"]
        assert len(idx) == len(t5["conditions"])
        for c in range(len(idx)):
            np.testing.assert_array_equal(idx[c], np.flatnonzero(ids == c))
        tids = t5[f"{part}_trial_ids"]
        pairs = np.stack([trials["trial_type"][tids], trials["trial_version"][tids]], 1)
        np.testing.assert_array_equal(t5["conditions"][ids], pairs)


@pytest.mark.parametrize(
    ("name", "sd_ms"),
    [("small.nwb", 50), ("sub-Jenkins_ses-full_desc-train_behavior+ecephys.nwb", 70)],
)
def test_psth_is_the_smoothed_condition_mean(small, tmp_path, name, sd_ms):
    """Per trial: a 1 ms train smoothed with NLB's kernel (``gaussian(int(6 sd), sd)``,
    scipy's 'same' convolution; s.d. 70 ms for MC_Maze, 50 ms otherwise), summed per bin."""
    session = dataclasses.replace(small[0], path=tmp_path / name)
    t = prep.prepare(session, bin_ms=20, lag_ms=120)
    width = int(6 * sd_ms)
    kernel = np.exp(-0.5 * ((np.arange(width) - (width - 1) / 2) / sd_ms) ** 2)
    kernel /= kernel.sum()
    heldin = np.flatnonzero(~session.units.heldout)
    tids = np.concatenate([t["train_trial_ids"], t["eval_trial_ids"]])
    cond = np.concatenate([t["train_cond_id"], t["eval_cond_id"]])
    for c in (0, 13):
        for j in (0, 60):
            u = heldin[j]
            traces = []
            for tid in tids[cond == c]:
                train = _histogram_counts(session, tid, u, -750, 950, 1).astype(float)
                smooth = signal.convolve(train, kernel, mode="same")[500:1200]
                traces.append(smooth.reshape(35, 20).sum(1))
            np.testing.assert_allclose(t["psth"][c, :, j], np.mean(traces, 0), atol=1e-5)


def test_test_phase_hides_what_nlb_hides(small):
    t = prep.prepare(small[0], phase="test")
    assert t["train_spikes_heldin"].shape[0] == 100  # train + val
    assert t["eval_spikes_heldin"].shape[0] == 100  # test
    for hidden in ("eval_spikes_heldout", "eval_spikes_heldin_forward", "eval_behavior"):
        assert hidden not in t
    assert not np.isnan(t["train_spikes_heldout"]).any()
    assert not np.isnan(t["train_behavior"]).any()


def _with_trials(session, **columns):
    trials = dict(session.trials)
    trials.update(columns)
    return dataclasses.replace(session, trials=trials)


def test_nan_onsets_are_dropped_and_counted(small):
    session = small[0]
    onset = session.trials["move_onset_time"].copy()
    train_rows = np.flatnonzero(session.trials["split"] == "train")
    onset[train_rows[[1, 4, 9]]] = np.nan
    with pytest.warns(UserWarning, match="dropped 3 of 100 trials whose move_onset_time is NaN"):
        t = prep.prepare(_with_trials(session, move_onset_time=onset))
    assert t["train_spikes_heldin"].shape[0] == 72
    assert not np.isin(session.trials["id"][train_rows[[1, 4, 9]]], t["train_trial_ids"]).any()


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"bin_ms": 8}, "does not divide the 700 ms window"),
        ({"bin_ms": 20, "forward_ms": 210}, "does not divide the 210 ms forward window"),
        ({"bin_ms": 0}, "positive"),
        ({"window_ms": (450, -250)}, "empty"),
        ({"phase": "train"}, "phase"),
    ],
)
def test_bad_parameters_fail_before_any_work(small, monkeypatch, kwargs, needle):
    def untouchable(*args, **kw):
        raise AssertionError("binning started before the parameters were checked")

    monkeypatch.setattr(prep, "bin_counts", untouchable)
    with pytest.raises(DataError, match=needle):
        prep.prepare(small[0], **kwargs)


def test_missing_align_column_lists_the_columns(small):
    session = small[0]
    trials = {k: v for k, v in session.trials.items() if k != "move_onset_time"}
    with pytest.raises(DataError, match="no column 'move_onset_time'; it has: start_time"):
        prep.prepare(dataclasses.replace(session, trials=trials))


def test_no_eval_trials_is_an_error(small):
    session = small[0]
    split = np.where(session.trials["split"] == "val", "none", session.trials["split"])
    with pytest.raises(DataError, match="no eval trials"):
        prep.prepare(_with_trials(session, split=split))


def test_val_fraction_draws_train_and_val_from_the_files_train_and_val_trials(small):
    session = small[0]
    split = session.trials["split"]
    with pytest.warns(UserWarning, match="trial split .100 test, 75 train, 25 val. is ignored"):
        a = prep.prepare(session, val_fraction=0.2, seed=1)
    with pytest.warns(UserWarning):
        b = prep.prepare(session, val_fraction=0.2, seed=1)
        c = prep.prepare(session, val_fraction=0.2, seed=2)
    assert a["eval_trial_ids"].size == 20 and a["train_trial_ids"].size == 80
    pool = session.trials["id"][np.isin(split, ["train", "val"])]
    np.testing.assert_array_equal(np.sort(np.r_[a["train_trial_ids"], a["eval_trial_ids"]]), pool)
    np.testing.assert_array_equal(a["eval_trial_ids"], b["eval_trial_ids"])
    assert not np.array_equal(a["eval_trial_ids"], c["eval_trial_ids"])
    assert a["eval_spikes_heldout"].shape == (20, 140, 35)  # val targets, as NLB's val


def _train_and_val_only(session):
    """The session's train and val trials (its test trials lack held-out spikes)."""
    keep = np.isin(session.trials["split"], ["train", "val"])
    return dataclasses.replace(session, trials={k: v[keep] for k, v in session.trials.items()})


def test_a_file_of_test_trials_needs_val_fraction_then_draws_from_all(small):
    session = _train_and_val_only(small[0])
    session = _with_trials(session, split=np.full(session.n_trials, "test"))  # as NLB's tests
    with pytest.raises(DataError, match=r"the file has test\); pass --val-fraction"):
        prep.prepare(session)
    with pytest.warns(UserWarning, match="trial split .100 test. is ignored: 25 val and 75"):
        t = prep.prepare(session, val_fraction=0.25)
    ids = np.sort(np.r_[t["train_trial_ids"], t["eval_trial_ids"]])
    np.testing.assert_array_equal(ids, np.sort(session.trials["id"]))


def test_without_a_split_column_val_fraction_is_needed(small):
    session = _train_and_val_only(small[0])
    del session.trials["split"]
    with pytest.raises(DataError, match="no column 'split'; pass --val-fraction"):
        prep.prepare(session)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing of the file's is overridden: no warning
        t = prep.prepare(session, val_fraction=0.5)
    assert t["train_trial_ids"].size == t["eval_trial_ids"].size == 50


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"val_fraction": 1.0}, "val_fraction must lie strictly between 0 and 1"),
        ({"heldout_fraction": 0.0}, "heldout_fraction must lie strictly between 0 and 1"),
        ({"val_fraction": 0.001}, "leaves 0 on one side and 100 on the other"),
        ({"val_fraction": 0.2, "phase": "test"}, "val_fraction applies to phase 'val'"),
    ],
)
def test_bad_split_options_fail_before_any_work(small, monkeypatch, kwargs, needle):
    monkeypatch.setattr(prep, "bin_counts", None)  # binning would fail differently
    with pytest.raises(DataError, match=needle):
        prep.prepare(small[0], **kwargs)


def test_forward_window_is_dropped_when_no_trial_has_room_for_it(small):
    session = small[0]
    end = session.trials["move_onset_time"] + 0.45  # NLB's test files end trials here
    with pytest.warns(UserWarning, match="at most 450 ms after move_onset_time.*forward_ms 0"):
        t = prep.prepare(_with_trials(session, stop_time=end))
    assert not [k for k in t if k.endswith("_forward")]
    assert t["eval_spikes_heldout"].shape == (25, 140, 35)
    room = end.copy()
    room[np.flatnonzero(session.trials["split"] == "val")[0]] += 0.2  # one trial has room
    t = prep.prepare(_with_trials(session, stop_time=room))
    assert t["eval_spikes_heldout_forward"].shape == (25, 40, 35)


def test_missing_behaviour_still_makes_tensors(small):
    session = dataclasses.replace(small[0], behavior={})
    with pytest.warns(UserWarning, match="behaviour metrics .* will be skipped"):
        t = prep.prepare(session)
    assert "train_behavior" not in t and "eval_behavior" not in t
    assert t["train_spikes_heldin"].shape == (75, 140, 107)


def _without_heldout(session, flags=None):
    return dataclasses.replace(session, units=dataclasses.replace(session.units, heldout=flags))


@pytest.mark.parametrize("flags", [None, "all_false"])
def test_without_heldout_units_an_option_is_needed(small, flags):
    session = small[0]
    column = None if flags is None else np.zeros(session.units.n_units, bool)
    with pytest.raises(DataError, match="--heldout-fraction .* or --heldout-units"):
        prep.prepare(_without_heldout(session, column))


def test_heldout_fraction_draws_a_seeded_split(small):
    no_flags = _without_heldout(small[0])
    a = prep.prepare(no_flags, heldout_fraction=0.25, seed=3)
    b = prep.prepare(no_flags, heldout_fraction=0.25, seed=3)
    c = prep.prepare(no_flags, heldout_fraction=0.25, seed=4)
    np.testing.assert_array_equal(a["heldout_unit_ids"], b["heldout_unit_ids"])
    assert a["train_spikes_heldout"].shape[2] == 36  # round(0.25 * 142)
    assert not np.array_equal(a["heldout_unit_ids"], c["heldout_unit_ids"])
    ids = np.r_[a["heldin_unit_ids"], a["heldout_unit_ids"]]
    np.testing.assert_array_equal(np.sort(ids), np.sort(small[0].units.ids))


def test_heldout_options_replace_the_files_column_with_a_warning(small):
    session = small[0]
    listed = session.units.ids[[3, 7, 11]]
    with pytest.warns(UserWarning, match="heldout column .35 units. is replaced by the 3 listed"):
        t = prep.prepare(session, heldout_units=listed.tolist())
    np.testing.assert_array_equal(t["heldout_unit_ids"], listed)
    assert t["train_spikes_heldin"].shape[2] == 139
    with pytest.raises(DataError, match="not in /units: \\[100000\\]"):
        prep.prepare(session, heldout_units=[100000])
    with pytest.raises(DataError, match="not both"):
        prep.prepare(session, heldout_units=[int(listed[0])], heldout_fraction=0.2)


def test_unobserved_windows_are_nan(small):
    """Held-out units whose obs_intervals skip a val trial: NaN there, with a warning."""
    session = small[0]
    units = session.units
    row = np.flatnonzero(session.trials["split"] == "val")[2]
    cut = (session.trials["start_time"][row], session.trials["stop_time"][row])
    intervals, offsets = [], [0]
    for u in range(units.n_units):
        iv = units.intervals(u)
        if units.heldout[u]:
            iv = np.concatenate([iv, [[cut[0], cut[1]]]])
            iv = np.sort(iv.ravel()).reshape(-1, 2)  # split the interval around the trial
            keep = ~((iv[:, 0] == cut[0]) & (iv[:, 1] == cut[1]))
            iv = iv[keep]
        intervals.append(iv)
        offsets.append(offsets[-1] + len(iv))
    units = dataclasses.replace(
        units, obs_intervals=np.concatenate(intervals), obs_offsets=np.array(offsets)
    )
    with pytest.warns(UserWarning, match="70 .trial, unit. windows"):  # observed + forward
        t = prep.prepare(dataclasses.replace(session, units=units))
    for key in ("eval_spikes_heldout", "eval_spikes_heldout_forward"):
        nan = np.isnan(t[key])
        assert nan[2].all() and nan.sum() == nan[2].size, key
    assert not np.isnan(t["eval_spikes_heldin"]).any()


def test_write_and_read_tensors(tmp_path, t5):
    attrs = {"bin_ms": 5, "align_field": "move_onset_time", "window_ms": [-250, 450]}
    prep.write_tensors(tmp_path / "t.h5", t5, attrs)
    got, got_attrs = prep.read_tensors(tmp_path / "t.h5")
    assert set(got) == set(t5)
    for key, value in t5.items():
        if value.dtype == object:
            for a, b in zip(got[key], value, strict=True):
                np.testing.assert_array_equal(a, b)
        else:
            np.testing.assert_array_equal(got[key], value)
    assert got_attrs["bin_ms"] == 5 and got_attrs["align_field"] == "move_onset_time"
    np.testing.assert_array_equal(got_attrs["window_ms"], [-250, 450])
    assert [p.name for p in tmp_path.iterdir()] == ["t.h5"]


def test_failed_write_leaves_the_old_file_and_no_debris(tmp_path, t5):
    path = tmp_path / "t.h5"
    path.write_bytes(b"previous")
    bad = dict(t5, broken=np.array([{"not": "an array"}], dtype=object))
    with pytest.raises((TypeError, ValueError)):
        prep.write_tensors(path, bad, {"bin_ms": 5})
    assert path.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["t.h5"]


def test_export_lfads_torch(tmp_path, t5, small):
    prep.export_lfads_torch(tmp_path / "lfads.h5", t5)
    with h5py.File(tmp_path / "lfads.h5", "r") as f:
        assert f["train_encod_data"].shape == (75, 140, 107)
        assert f["train_recon_data"].shape == (75, 180, 142)
        assert f["valid_encod_data"].shape == (25, 140, 107)
        assert f["valid_recon_data"].shape == (25, 180, 142)
        np.testing.assert_array_equal(f["train_inds"][()], t5["train_trial_ids"])
        np.testing.assert_array_equal(f["valid_inds"][()], t5["eval_trial_ids"])
        recon = f["valid_recon_data"][()]
        np.testing.assert_array_equal(recon[:, :140, :107], t5["eval_spikes_heldin"])
        np.testing.assert_array_equal(recon[:, :140, 107:], t5["eval_spikes_heldout"])
        np.testing.assert_array_equal(recon[:, 140:, 107:], t5["eval_spikes_heldout_forward"])
        assert f["valid_behavior"].shape == (25, 140, 2) and f["psth"].shape == (27, 140, 142)
        assert len(f["valid_cond_idx"]) == 27
    with pytest.raises(DataError, match="phase 'val'"):
        prep.export_lfads_torch(tmp_path / "test.h5", prep.prepare(small[0], phase="test"))
    assert not (tmp_path / "test.h5").exists()
