"""The NWB reader: a synthetic session round trip, and a clear DataError for each bad file.

Bad files are small NWB files built with pynwb's ordinary API (``add_unit``, ``add_trial``)
and then broken with h5py where pynwb would refuse to write the fault.
"""

from datetime import UTC, datetime
from pathlib import Path

import h5py
import numpy as np
import pytest

from lfads_jslds.data import synth
from lfads_jslds.data.nwb import DataError, read_session

TINY = synth.SynthConfig("tiny", 12, 4, 20, 8, 8, n_trial_types=4, n_versions=2)


@pytest.fixture(autouse=True)
def _pynwb_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def write_nwb(
    path: Path,
    spikes: list[list[float]] | None = ([0.1, 0.2, 0.35], [0.05, 0.4]),
    trial_columns: dict[str, list] | None = None,
    behavior: bool = True,
) -> Path:
    """A minimal NWB file: units (with heldout), trials (start/stop + columns), hand_vel."""
    from pynwb import NWBHDF5IO, NWBFile, TimeSeries

    nwb = NWBFile(
        session_description="test",
        identifier="test",
        session_start_time=datetime(2020, 1, 1, tzinfo=UTC),
    )
    if spikes is not None:
        nwb.add_unit_column("heldout", "held out")
        for i, times in enumerate(spikes):
            nwb.add_unit(spike_times=times, heldout=bool(i % 2))
    if trial_columns is not None:
        extra = {k: v for k, v in trial_columns.items() if k not in ("start_time", "stop_time")}
        for name in extra:
            nwb.add_trial_column(name, name)
        for i in range(len(trial_columns["start_time"])):
            nwb.add_trial(
                start_time=trial_columns["start_time"][i],
                stop_time=trial_columns["stop_time"][i],
                **{k: v[i] for k, v in extra.items()},
            )
    if behavior:
        beh = nwb.create_processing_module("behavior", "behaviour")
        beh.add(
            TimeSeries(
                name="hand_vel",
                data=np.arange(20.0).reshape(10, 2),
                unit="mm/s",
                timestamps=np.arange(10) / 1000.0,
            )
        )
    with NWBHDF5IO(str(path), "w") as io:
        io.write(nwb)
    return path


TRIALS = {
    "start_time": [0.0, 0.5],
    "stop_time": [0.4, 0.9],
    "move_onset_time": [0.2, 0.7],
    "split": ["train", "val"],
}


def test_round_trip_of_a_synthetic_session(tmp_path):
    session = synth.make_synthetic(TINY, seed=2)
    synth.write_nwb(tmp_path / "s.nwb", session)
    read = read_session(tmp_path / "s.nwb", behavior=["hand_vel"])
    u = read.units
    np.testing.assert_array_equal(u.spike_times, session.spike_times)
    np.testing.assert_array_equal(u.offsets, session.spike_offsets)
    np.testing.assert_array_equal(u.heldout, session.heldout)
    np.testing.assert_array_equal(u.obs_intervals, session.obs_intervals)
    np.testing.assert_array_equal(u.obs_offsets, session.obs_offsets)
    np.testing.assert_array_equal(u.ids, np.arange(16))
    np.testing.assert_array_equal(
        u.spikes(3), session.spike_times[session.spike_offsets[3] : session.spike_offsets[4]]
    )
    for key, value in session.trials.items():
        if key == "target_pos":
            assert read.trials[key].dtype == object
            for got, want in zip(read.trials[key], value, strict=True):
                np.testing.assert_array_equal(got, want)
        else:
            np.testing.assert_array_equal(read.trials[key], value)
    np.testing.assert_array_equal(read.trials["id"], np.arange(TINY.n_trials))
    assert read.n_trials == TINY.n_trials
    assert set(read.behavior) == {"hand_vel"}
    assert set(read.behavior_available) == {"hand_vel", "hand_pos", "cursor_pos", "eye_pos"}
    vel = read.behavior["hand_vel"]
    assert vel.unit == "mm/s" and vel.rate == 1000.0 and vel.timestamps is None
    np.testing.assert_array_equal(vel.data, session.behavior["hand_vel"])
    np.testing.assert_allclose(vel.times()[:3], [0.0, 0.001, 0.002])
    assert set(read_session(tmp_path / "s.nwb").behavior) == set(read.behavior_available)


def test_a_pynwb_written_file_reads(tmp_path):
    path = write_nwb(tmp_path / "ok.nwb", trial_columns=TRIALS)
    s = read_session(path)
    np.testing.assert_array_equal(s.units.spikes(0), [0.1, 0.2, 0.35])
    np.testing.assert_array_equal(s.units.heldout, [False, True])
    assert s.units.obs_intervals is None and s.units.intervals(0) is None
    np.testing.assert_array_equal(s.trials["split"], ["train", "val"])
    vel = s.behavior["hand_vel"]
    np.testing.assert_array_equal(vel.times(), np.arange(10) / 1000.0)
    assert vel.sample_interval() == pytest.approx(0.001)


def assert_data_error(path: Path, *needles: str, **kwargs) -> None:
    with pytest.raises(DataError) as info:
        read_session(path, **kwargs)
    message = str(info.value)
    assert str(path) in message, message
    for needle in needles:
        assert needle in message, (needle, message)


def test_missing_file(tmp_path):
    assert_data_error(tmp_path / "nope.nwb", "does not exist")


def test_text_file_renamed_nwb(tmp_path):
    path = tmp_path / "notes.nwb"
    path.write_text("these are not spikes\n")
    assert_data_error(path, "not an HDF5 file")


def test_hdf5_that_is_not_nwb(tmp_path):
    path = tmp_path / "plain.nwb"
    with h5py.File(path, "w") as f:
        f["units/spike_times"] = [0.1, 0.2]
    assert_data_error(path, "not an NWB file")


def test_no_units(tmp_path):
    path = write_nwb(tmp_path / "x.nwb", spikes=None, trial_columns=TRIALS)
    assert_data_error(path, "no units", "/units")


def test_no_trials(tmp_path):
    path = write_nwb(tmp_path / "x.nwb", trial_columns=None)
    assert_data_error(path, "no trials table", "/intervals/trials")


def test_missing_move_onset_names_the_column_and_lists_the_others(tmp_path):
    cols = {k: v for k, v in TRIALS.items() if k != "move_onset_time"}
    path = write_nwb(tmp_path / "x.nwb", trial_columns=cols)
    assert_data_error(path, "'move_onset_time'", "start_time, stop_time, split")


def test_units_without_spikes_are_dropped_and_named(tmp_path):
    path = write_nwb(tmp_path / "x.nwb", spikes=[[0.1], [], [0.2], []], trial_columns=TRIALS)
    with pytest.warns(UserWarning, match=r"dropped 2 unit\(s\) without spikes .*: ids 1, 3$"):
        units = read_session(path).units
    np.testing.assert_array_equal(units.ids, [0, 2])
    np.testing.assert_array_equal(units.spikes(1), [0.2])
    np.testing.assert_array_equal(units.heldout, [False, False])
    assert units.dropped == (1, 3)


def test_a_session_whose_every_unit_is_silent_is_refused(tmp_path):
    path = write_nwb(tmp_path / "x.nwb", spikes=[[], []], trial_columns=TRIALS)
    assert_data_error(path, "2 unit(s) have no spikes, which is every unit", "ids 0, 1")


def test_unsorted_spike_times_are_named(tmp_path):
    path = write_nwb(tmp_path / "x.nwb", spikes=[[0.1, 0.2], [0.3, 0.1, 0.5]], trial_columns=TRIALS)
    assert_data_error(path, "unsorted", "ids 1")


def test_negative_spike_times_are_named(tmp_path):
    path = write_nwb(tmp_path / "x.nwb", trial_columns=TRIALS)
    with h5py.File(path, "a") as f:
        f["units/spike_times"][3] = -0.05  # unit 1's first spike
    assert_data_error(path, "negative", "ids 1")


def test_reading_does_not_write(tmp_path):
    path = write_nwb(tmp_path / "x.nwb", trial_columns=TRIALS)
    before = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    read_session(path)
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == before


def test_ground_truth_only_in_synthetic_files(tmp_path):
    path = write_nwb(tmp_path / "x.nwb", trial_columns=TRIALS)
    with pytest.raises(DataError, match="no ground truth"):
        synth.read_ground_truth(path)
    text = tmp_path / "t.nwb"
    text.write_text("x")
    with pytest.raises(DataError, match="not an HDF5 file"):
        synth.read_ground_truth(text)
