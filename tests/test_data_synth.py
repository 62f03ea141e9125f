"""Synthetic MC_Maze-like sessions: NWB layout, determinism, and a recoverable planted truth.

One ``small``-preset file (MC_Maze_Small's sizes) is written per module; a tiny custom
config covers the cheaper checks.
"""

import h5py
import numpy as np
import pytest
import scipy.linalg

from lfads_jslds import metrics
from lfads_jslds.data import synth
from lfads_jslds.data.nwb import Units
from lfads_jslds.data.prepare import spike_tensor
from lfads_jslds.data.synth import PRESETS, SynthConfig

TINY = SynthConfig("tiny", 12, 4, 20, 8, 8, n_trial_types=4, n_versions=2, latent_dim=8)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """(path, in-memory session) of the small preset; pynwb's cache goes to a temp dir."""
    tmp = tmp_path_factory.mktemp("synth")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(tmp / "cache"))
        session = synth.make_synthetic("small", seed=0)
        path = tmp / "small.nwb"
        synth.write_nwb(path, session)
        yield path, session


def test_presets_have_the_nlb_sizes():
    small, full = PRESETS["small"], PRESETS["mc_maze"]
    assert (small.n_heldin, small.n_heldout) == (107, 35)
    assert (small.n_train, small.n_val, small.n_test) == (75, 25, 100)
    assert (full.n_heldin, full.n_heldout) == (137, 45)
    assert (full.n_train, full.n_val, full.n_test) == (1721, 574, 574)
    assert small.lag_ms == 120 and full.lag_ms == 100
    with pytest.raises(ValueError, match="unknown preset"):
        synth.make_synthetic("mc_maze_huge")


def test_file_has_the_mc_maze_layout(small):
    path, session = small
    with h5py.File(path, "r") as f:
        for name in ("spike_times", "spike_times_index", "heldout", "obs_intervals"):
            assert f"units/{name}" in f, name
        assert f["units/spike_times"].attrs["resolution"] == 0.001
        trials = f["intervals/trials"]
        for col in (
            "start_time",
            "stop_time",
            "move_onset_time",
            "go_cue_time",
            "target_on_time",
            "split",
            "trial_type",
            "trial_version",
            "maze_id",
        ):
            assert col in trials, col
        assert set(trials["split"].asstr()[()]) == {"train", "val", "test"}
        for name in ("hand_vel", "hand_pos", "cursor_pos", "eye_pos"):
            series = f[f"processing/behavior/{name}"]
            assert series["data"].shape[1] == 2
            assert series["starting_time"].attrs["rate"] == 1000.0
        assert "general/subject" in f
        spikes = f["units/spike_times"][()]
    ms = spikes * 1000
    np.testing.assert_allclose(ms, np.round(ms), atol=1e-6)  # a 1 ms clock, as in MC_Maze
    counts = np.diff(session.spike_offsets)
    assert counts.size == 142 and session.heldout.sum() == 35


def test_file_is_valid_nwb_and_pynwb_reads_it(small):
    from pynwb import NWBHDF5IO, validate

    path, session = small
    assert validate(path=str(path)) == []
    with NWBHDF5IO(str(path), "r") as io:
        nwb = io.read()
        assert nwb.units.resolution == 0.001
        assert len(nwb.units) == 142 and len(nwb.trials) == 200
        np.testing.assert_array_equal(nwb.units["heldout"].data[()], session.heldout)
        assert nwb.subject.species == "Macaca mulatta"


def test_deterministic_for_a_seed():
    a, b, c = (synth.make_synthetic(TINY, s) for s in (3, 3, 4))
    np.testing.assert_array_equal(a.spike_times, b.spike_times)
    np.testing.assert_array_equal(a.behavior["hand_vel"], b.behavior["hand_vel"])
    np.testing.assert_array_equal(a.truth.rates_hz, b.truth.rates_hz)
    for key in a.trials:
        if key != "target_pos":
            np.testing.assert_array_equal(a.trials[key], b.trials[key])
    assert a.spike_times.size != c.spike_times.size or not np.array_equal(
        a.spike_times, c.spike_times
    )


def _principal_cosines(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    return np.linalg.svd(np.linalg.qr(p)[0].T @ np.linalg.qr(q)[0], compute_uv=False)


@pytest.mark.parametrize("f0", [2.0, 3.0])
def test_planted_rotation_is_recoverable(tmp_path, monkeypatch, f0):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    cfg = SynthConfig("tiny", 12, 4, 20, 8, 8, n_trial_types=4, n_versions=2, f0_hz=f0)
    synth.write_synthetic_nwb(tmp_path / "s.nwb", cfg, seed=1)
    gt = synth.read_ground_truth(tmp_path / "s.nwb")
    # The 1 ms propagator's slowest complex pair: r e^{±iθ} -> θ / (2π dt), -dt / ln r.
    ev, vecs = np.linalg.eig(gt.dynamics_1ms)
    freq = np.abs(np.angle(ev)) / (2 * np.pi * 1e-3)
    tau = -1e-3 / np.log(np.abs(ev))
    k = np.argmax(np.where(freq > 0, tau, -np.inf))
    assert freq[k] == pytest.approx(f0, abs=1e-9) and tau[k] == pytest.approx(0.4, rel=1e-9)
    assert gt.mode_frequency_hz[0] == f0 and gt.mode_decay_tau_s[0] == 0.4
    plane = np.stack([vecs[:, k].real, vecs[:, k].imag], 1)
    np.testing.assert_allclose(_principal_cosines(plane, gt.mode_plane[0]), 1.0, atol=1e-9)
    # The stored latents obey the stored flow after release (free-flow bins of the window).
    step = scipy.linalg.expm(gt.dynamics * gt.bin_ms / 1000)
    lag_bins = gt.velocity_lag_ms // gt.bin_ms
    start = (-gt.window_ms[0]) // gt.bin_ms - lag_bins + 1  # first bin centre after release
    x = gt.latents[:, start:].astype(np.float64)
    pred = np.einsum("ij,ntj->nti", step, x[:, :-1])
    np.testing.assert_allclose(pred, x[:, 1:], atol=1e-5)


def _window_counts(session, units: np.ndarray, split: str, bin_ms: int) -> np.ndarray:
    """Spike counts [trial, bin, unit] of ``split``'s trials, NLB window, ``bin_ms`` bins."""
    all_units = Units(
        np.arange(session.heldout.size),
        session.spike_times,
        session.spike_offsets,
        session.heldout,
        None,
        None,
    )
    onset = session.trials["move_onset_time"][session.trials["split"] == split]
    return spike_tensor(all_units, units, onset, synth.NLB_WINDOW_MS, bin_ms)


def test_rates_match_the_real_sessions(small):
    path, session = small
    gt = synth.read_ground_truth(path)
    lo, hi = synth.RATE_RANGE_HZ
    assert gt.rates_hz.min() >= lo and gt.rates_hz.max() <= hi
    assert gt.clipped_fraction < 1e-3
    # Each unit's mean rate over the NLB windows of the train and val trials: the empirical
    # CDF at the real sessions' quantiles lies within the Kolmogorov-Smirnov bound for 142
    # draws at alpha = 0.001 (1.95 / sqrt(142) = 0.164).
    every = np.arange(session.heldout.size)
    counts = np.concatenate([_window_counts(session, every, s, 20) for s in ("train", "val")])
    mean_hz = counts.mean((0, 1)) / 0.020
    prob, quantile_hz = synth.MEAN_RATE_QUANTILES_HZ
    ecdf = (mean_hz[:, None] <= np.asarray(quantile_hz)[None, :]).mean(0)
    np.testing.assert_array_less(np.abs(ecdf - prob), 1.95 / np.sqrt(mean_hz.size))
    # Conditions modulate the rates (each unit's condition means span a factor > 1.5).
    cond = gt.condition
    means = np.stack([gt.rates_hz[cond == c].mean(0) for c in np.unique(cond)])
    assert np.median(means.max((0, 1)) / means.min((0, 1))) > 1.5


def test_true_rates_score_at_least_a_quarter_bit_per_spike(small):
    """The demo's ceiling: co-bps of the true rates on the val trials' held-out units at 20 ms.

    Over Poisson draws its expectation is ``E = Σ r log(r / r̄) / Σ r / ln 2`` (``r̄`` each
    unit's mean; the null's ``r̄ − r`` terms sum to zero) and its s.d. about
    ``sqrt(Σ r log²(r / r̄)) / Σ r / ln 2`` (each count's variance is its rate).
    """
    path, session = small
    gt = synth.read_ground_truth(path)
    heldout = np.flatnonzero(session.heldout)
    val = session.trials["split"] == "val"
    rates = synth.true_rates_per_bin(gt, 20)[val][:, :, heldout]
    spikes = _window_counts(session, heldout, "val", 20)
    log_ratio = np.log(rates / rates.mean((0, 1), keepdims=True))
    expected = (rates * log_ratio).sum() / rates.sum() / np.log(2)
    sd = np.sqrt((rates * log_ratio**2).sum()) / rates.sum() / np.log(2)
    scored = metrics.co_bps(rates, spikes)
    assert expected >= 0.25 and scored >= 0.25
    assert abs(scored - expected) <= 4 * sd


def test_spike_counts_follow_the_true_rates(small):
    path, session = small
    gt = synth.read_ground_truth(path)
    onset_ms = np.round(session.trials["move_onset_time"] * 1000).astype(int)
    heldin = np.flatnonzero(~session.heldout)
    observed = expected = 0.0
    for i in range(0, 200, 4):
        for u in heldin[::4]:
            ms = np.round(
                session.spike_times[session.spike_offsets[u] : session.spike_offsets[u + 1]] * 1000
            )
            edges = onset_ms[i] + np.arange(-250, 651, 5) - 0.5
            observed += np.histogram(ms, edges)[0].sum()
            expected += gt.rates_hz[i, :, u].sum() * 0.005
    assert observed == pytest.approx(expected, rel=0.05)


def test_hand_velocity_is_a_lagged_linear_readout(small):
    path, session = small
    gt = synth.read_ground_truth(path)
    vel = session.behavior["hand_vel"]
    onset_ms = np.round(session.trials["move_onset_time"] * 1000).astype(int)
    train = np.flatnonzero(session.trials["split"] == "train")[:20]
    for i in train:
        # hand_vel(t) = D x(t - lag): the mean over a 5 ms bin ≈ D x at the bin centre.
        # (NLB window only: after stop_time the hand returns to the centre, unmodelled.)
        first = onset_ms[i] - 250 + gt.velocity_lag_ms
        binned = vel[first : first + 700].reshape(140, 5, 2).mean(1)
        pred = gt.latents[i, :140] @ gt.velocity_readout.T
        np.testing.assert_allclose(pred, binned, atol=0.02 * np.abs(binned).max() + 0.5)
    assert np.abs(vel[onset_ms[train[0]] - 50]).max() < 1.0  # still before movement onset


def test_test_trials_hide_heldout_units_and_behaviour(small):
    _, session = small
    trials = session.trials
    test = np.flatnonzero(trials["split"] == "test")
    spans = np.stack([trials["start_time"][test], trials["stop_time"][test]], 1)

    def in_test(t):
        return np.searchsorted(spans.ravel(), t, side="right") % 2 == 1

    for u in range(session.heldout.size):
        t = session.spike_times[session.spike_offsets[u] : session.spike_offsets[u + 1]]
        obs = session.obs_intervals[session.obs_offsets[u] : session.obs_offsets[u + 1]]
        if session.heldout[u]:
            assert not in_test(t).any()
            assert len(obs) == test.size + 1
            assert not in_test((obs[:, 0] + obs[:, 1]) / 2).any()
        else:
            assert in_test(t).any()
            np.testing.assert_allclose(obs, [[0.0, session.session_end_s]])
    ms = np.round(spans * 1000).astype(int)
    for name, series in session.behavior.items():
        assert np.isnan(series[ms[0, 0] : ms[0, 1]]).all(), name
        assert np.isfinite(series[: ms[0, 0]]).all(), name


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    from pynwb import NWBHDF5IO

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    out = tmp_path / "out"
    out.mkdir()

    def boom(self, *args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(NWBHDF5IO, "write", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        synth.write_synthetic_nwb(out / "s.nwb", TINY, seed=0)
    assert list(out.iterdir()) == []


def test_true_rates_per_bin_sums_the_grid(small):
    path, _ = small
    gt = synth.read_ground_truth(path)
    r20 = synth.true_rates_per_bin(gt, 20)
    assert r20.shape == (200, 35, 142)
    np.testing.assert_allclose(
        r20[:, 0], gt.rates_hz[:, :4].astype(np.float64).sum(1) * 0.005, rtol=1e-6
    )
    with pytest.raises(ValueError, match="grid"):
        synth.true_rates_per_bin(gt, 7)
