"""NLB metrics: hand-checked values, slow reference loops, planted signals and real spikes.

Arrays are ``[trial, time, neuron]`` in spikes per bin throughout.
"""

import math
from pathlib import Path

import numpy as np
import pytest
from conftest import shared_file
from sklearn.linear_model import PoissonRegressor
from threadpoolctl import threadpool_limits

from lfads_jslds import metrics
from lfads_jslds.data import nlb
from lfads_jslds.io.h5 import load_h5_dict, save_h5_dict
from lfads_jslds.metrics import (
    bits_per_spike,
    co_bps,
    evaluate,
    fp_bps,
    gaussian_smooth,
    poisson_glm,
    poisson_glm_predict,
    poisson_nll,
    psth_r2,
    smoothing_baseline,
    smoothing_cv,
    velocity_r2,
)
from lfads_jslds.pipeline.evaluate import smoothing_reference
from lfads_jslds.training.run_config import EvaluateConfig


def reference_bits_per_spike(rates: np.ndarray, spikes: np.ndarray) -> float:
    """Obviously-correct loops: Poisson log-likelihood of the model minus that of the
    per-neuron mean, in bits, divided by the spike count (NaN spikes skipped)."""
    n_trial, n_time, n_neuron = spikes.shape
    means = []
    for k in range(n_neuron):
        total, count = 0.0, 0
        for i in range(n_trial):
            for t in range(n_time):
                if not math.isnan(spikes[i, t, k]):
                    total += spikes[i, t, k]
                    count += 1
        means.append(total / count)
    ll_model = ll_null = n_spikes = 0.0
    for i in range(n_trial):
        for t in range(n_time):
            for k in range(n_neuron):
                n = spikes[i, t, k]
                if math.isnan(n):
                    continue
                for rate, is_model in ((rates[i, t, k], True), (means[k], False)):
                    rate = rate if rate > 0 else 1e-9
                    ll = n * math.log(rate) - rate - math.lgamma(n + 1)
                    if is_model:
                        ll_model += ll
                    else:
                        ll_null += ll
                n_spikes += n
    return (ll_model - ll_null) / n_spikes / math.log(2)


def test_poisson_nll_by_hand_and_nan_targets_ignored():
    rates = np.array([[[0.5, 2.0], [3.0, np.nan]]])  # NaN rate where the target is NaN: fine
    spikes = np.array([[[0.0, 1.0], [2.0, np.nan]]])
    # 0.5 - 0 + 0  +  2 - ln 2 + 0  +  3 - 2 ln 3 + ln 2!
    expected = 0.5 + (2 - math.log(2)) + (3 - 2 * math.log(3) + math.log(2))
    assert poisson_nll(rates, spikes) == pytest.approx(expected, rel=1e-14)
    assert expected == pytest.approx(5.5 - 2 * math.log(3))


def test_poisson_nll_zero_rate_floored_like_nlb():
    spikes = np.array([[[0.0, 1.0]]])
    with pytest.warns(RuntimeWarning, match="zero rate"):
        got = poisson_nll(np.array([[[0.0, 1.0]]]), spikes)
    assert got == pytest.approx(1e-9 + 1.0, rel=1e-12)


@pytest.mark.parametrize("bad", [-0.1, np.nan, np.inf])
def test_bad_rates_raise_naming_rates(bad):
    rates = np.array([[[0.5, bad]]])
    spikes = np.array([[[1.0, 0.0]]])
    with pytest.raises(ValueError, match="rates"):
        poisson_nll(rates, spikes)
    with pytest.raises(ValueError, match="rates"):
        bits_per_spike(rates, spikes)


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"\(2, 3, 4\).*\(2, 3, 5\)"):
        bits_per_spike(np.ones((2, 3, 4)), np.ones((2, 3, 5)))


def test_bits_per_spike_matches_reference_loop():
    rng = np.random.default_rng(0)
    rates = rng.uniform(0.05, 2.0, size=(4, 6, 3))
    spikes = rng.poisson(rng.uniform(0.05, 2.0, size=(4, 6, 3))).astype(float)
    spikes[1, 2, 0] = spikes[3, 5, 2] = np.nan
    spikes[:, :, 1] = 0.0
    spikes[0, 0, 1] = 2.0  # a sparse neuron
    got = bits_per_spike(rates, spikes)
    assert got == pytest.approx(reference_bits_per_spike(rates, spikes), rel=1e-10, abs=1e-12)


def test_null_model_scores_exactly_zero():
    rng = np.random.default_rng(1)
    spikes = rng.poisson(0.3, size=(5, 7, 4)).astype(float)
    spikes[2, 3, 1] = np.nan
    null = np.broadcast_to(np.nanmean(spikes, axis=(0, 1)), spikes.shape)
    assert abs(bits_per_spike(null, spikes)) < 1e-12


def test_true_rates_beat_null_by_the_expected_amount():
    rng = np.random.default_rng(2)
    t = np.linspace(0, 2 * np.pi, 50)
    rates = 0.3 * np.exp(np.sin(t[None, :, None] + np.arange(5)) + rng.normal(0, 0.3, (200, 1, 5)))
    spikes = rng.poisson(rates).astype(float)
    got = bits_per_spike(rates, spikes)
    # Expected log-likelihood gain per spike of the true rates over each neuron's mean rate m.
    m = rates.mean(axis=(0, 1))
    expected = np.sum(rates * np.log(rates / m) - rates + m) / rates.sum() / np.log(2)
    assert got > 0
    assert got == pytest.approx(expected, rel=0.05)
    assert bits_per_spike(rates[::-1], spikes) < got  # the wrong trials' rates score lower


def test_co_and_fp_bps_are_bits_per_spike_on_the_right_arrays():
    rng = np.random.default_rng(3)
    r_in, r_out = rng.uniform(0.1, 1, (3, 4, 2)), rng.uniform(0.1, 1, (3, 4, 3))
    s_in, s_out = rng.poisson(r_in).astype(float), rng.poisson(r_out).astype(float)
    assert co_bps(r_out, s_out) == bits_per_spike(r_out, s_out)
    both = bits_per_spike(np.concatenate([r_in, r_out], -1), np.concatenate([s_in, s_out], -1))
    assert fp_bps(r_in, r_out, s_in, s_out) == pytest.approx(both, rel=1e-14)


def planted_velocity(rng, n_trial, weights):
    """Rates and a velocity that is a linear function of them plus 1% noise."""
    rates = rng.uniform(0.0, 1.0, size=(n_trial, 25, weights.shape[0]))
    vel = rates @ weights
    return rates, vel + 0.01 * vel.std() * rng.normal(size=vel.shape)


def test_velocity_r2_planted_linear_relation():
    rng = np.random.default_rng(4)
    w = rng.normal(size=(8, 2))
    train_rates, train_vel = planted_velocity(rng, 40, w)
    eval_rates, eval_vel = planted_velocity(rng, 20, w)
    train_vel[3, :5] = np.nan  # behaviour missing in some bins: those samples are dropped
    assert velocity_r2(train_rates, train_vel, eval_rates, eval_vel) > 0.99
    shuffled = eval_vel[rng.permutation(20)]
    assert velocity_r2(train_rates, train_vel, eval_rates, shuffled) < 0.02


def test_velocity_r2_decode_masks_fit_one_decoder_per_group():
    rng = np.random.default_rng(5)
    w_a, w_b = rng.normal(size=(6, 2)), rng.normal(size=(6, 2))
    tr_a, vtr_a = planted_velocity(rng, 20, w_a)
    tr_b, vtr_b = planted_velocity(rng, 20, w_b)
    ev_a, vev_a = planted_velocity(rng, 10, w_a)
    ev_b, vev_b = planted_velocity(rng, 10, w_b)
    train, vtrain = np.concatenate([tr_a, tr_b]), np.concatenate([vtr_a, vtr_b])
    ev, vev = np.concatenate([ev_a, ev_b]), np.concatenate([vev_a, vev_b])
    groups = np.repeat(np.eye(2, dtype=bool), [20, 20], axis=0)
    eval_groups = np.repeat(np.eye(2, dtype=bool), [10, 10], axis=0)
    assert velocity_r2(train, vtrain, ev, vev, groups, eval_groups) > 0.99
    assert velocity_r2(train, vtrain, ev, vev) < 0.9


def test_velocity_r2_shape_mismatch():
    with pytest.raises(ValueError, match=r"train_rates.*\(3, 5, 4\).*train_behavior.*\(3, 6, 2\)"):
        velocity_r2(np.ones((3, 5, 4)), np.ones((3, 6, 2)), np.ones((2, 5, 4)), np.ones((2, 5, 2)))


def test_psth_r2_perfect_when_condition_means_equal_psth():
    rng = np.random.default_rng(6)
    psth = rng.uniform(0.1, 1.0, size=(3, 10, 4))
    cond_idx = [np.array([0, 3]), np.array([1, 4, 5]), np.array([2])]
    rates = np.empty((6, 10, 4))
    for c, idx in enumerate(cond_idx):
        wiggle = rng.normal(0, 0.05, size=(len(idx), 10, 4))
        rates[idx] = psth[c] + wiggle - wiggle.mean(axis=0)  # trial mean is exactly the PSTH
    assert psth_r2(rates, cond_idx, psth) == pytest.approx(1.0, abs=1e-12)


def test_psth_r2_by_hand():
    # Neuron 0: true [1, 3 | 5, 7], predicted [1, 3 | 5, 5] -> 1 - 4/20 = 0.8.
    # Neuron 1: predicted exactly -> 1.0. Uniform over neurons -> 0.9.
    # Time bin 2 is NaN in the PSTH (past the shortest trial): never scored.
    psth = np.array(
        [[[1.0, 2.0], [3.0, 4.0], [np.nan, np.nan]], [[5.0, 6.0], [7.0, 9.0], [np.nan, np.nan]]]
    )
    rates = np.array(
        [
            [[2.0, 2.0], [2.0, 4.0], [100.0, 0.0]],
            [[0.0, 2.0], [4.0, 4.0], [-50.0, 1.0]],
            [[5.0, 6.0], [5.0, 9.0], [np.nan, 3.0]],
        ]
    )
    assert psth_r2(rates, [np.array([0, 1]), np.array([2])], psth) == pytest.approx(0.9)


def test_psth_r2_jitter_realigns_trials():
    psth = np.array([[[np.nan], [1.0], [2.0], [4.0]], [[3.0], [0.0], [5.0], [1.0]]])
    rates = np.array([[[1.0], [2.0], [4.0], [8.0]], [[3.0], [0.0], [5.0], [1.0]]])
    cond_idx = [np.array([0]), np.array([1])]
    assert psth_r2(rates, cond_idx, psth, jitter=np.array([1, 0])) == pytest.approx(1.0)
    assert psth_r2(rates, cond_idx, psth) < 0.9


def nlb_like(seed: int = 7) -> tuple[dict, dict]:
    """Submission (true rates) and targets for 3 conditions, as nlb_tools lays them out."""
    rng = np.random.default_rng(seed)
    n_train, n_eval, n_time, n_fp, n_in, n_out = 30, 18, 20, 5, 6, 4
    t = np.linspace(0, np.pi, n_time + n_fp)
    phase = rng.uniform(0, 2 * np.pi, size=(3, 1, n_in + n_out))
    cond_rates = 0.4 * np.exp(np.sin(t[None, :, None] + phase))  # [condition, time, neuron]
    train_cond, eval_cond = np.arange(n_train) % 3, np.arange(n_eval) % 3
    train_rates, eval_rates = cond_rates[train_cond], cond_rates[eval_cond]
    readout = rng.normal(size=(n_in + n_out, 2))
    spikes = rng.poisson(eval_rates).astype(float)
    sub = {
        "train_rates_heldin": train_rates[:, :n_time, :n_in],
        "train_rates_heldout": train_rates[:, :n_time, n_in:],
        "eval_rates_heldin": eval_rates[:, :n_time, :n_in],
        "eval_rates_heldout": eval_rates[:, :n_time, n_in:],
        "eval_rates_heldin_forward": eval_rates[:, n_time:, :n_in],
        "eval_rates_heldout_forward": eval_rates[:, n_time:, n_in:],
    }
    targets = {
        "eval_spikes_heldout": spikes[:, :n_time, n_in:],
        "eval_spikes_heldin_forward": spikes[:, n_time:, :n_in],
        "eval_spikes_heldout_forward": spikes[:, n_time:, n_in:],
        "train_behavior": train_rates[:, :n_time] @ readout,
        "eval_behavior": eval_rates[:, :n_time] @ readout,
        "psth": cond_rates[:, :n_time],
        "eval_cond_idx": [np.flatnonzero(eval_cond == c) for c in range(3)],
    }
    return sub, targets


def test_evaluate_dict():
    sub, targets = nlb_like()
    targets["eval_cond_idx"][2] = targets["eval_cond_idx"][2][:2]  # ragged, as in NLB files
    result = evaluate(sub, targets)
    assert set(result) == {"co-bps", "vel R2", "psth R2", "fp-bps", "skipped"}
    assert result["skipped"] == {}
    assert result["co-bps"] == bits_per_spike(
        sub["eval_rates_heldout"], targets["eval_spikes_heldout"]
    )
    assert result["co-bps"] > 0 and result["fp-bps"] > 0
    assert result["vel R2"] > 0.99
    assert result["psth R2"] == pytest.approx(1.0, abs=1e-12)


def test_evaluate_hdf5_round_trip(tmp_path: Path):
    sub, targets = nlb_like()
    targets["eval_cond_idx"][0] = targets["eval_cond_idx"][0][:3]
    save_h5_dict(tmp_path / "sub.h5", {"mc_maze_20": sub})
    save_h5_dict(tmp_path / "targets.h5", {"mc_maze_20": targets})
    loaded = load_h5_dict(tmp_path / "targets.h5")["mc_maze_20"]
    assert [list(i) for i in loaded["eval_cond_idx"]] == [list(i) for i in targets["eval_cond_idx"]]
    np.testing.assert_array_equal(loaded["psth"], targets["psth"])
    from_files = evaluate(tmp_path / "sub.h5", str(tmp_path / "targets.h5"), dataset="mc_maze_20")
    assert from_files == evaluate(sub, targets)


def test_evaluate_skips_metrics_without_inputs():
    sub, targets = nlb_like()
    del targets["train_behavior"], targets["eval_behavior"], sub["eval_rates_heldin_forward"]
    result = evaluate(sub, targets)
    assert "vel R2" not in result and "fp-bps" not in result
    assert "train_behavior" in result["skipped"]["vel R2"]
    assert "eval_rates_heldin_forward" in result["skipped"]["fp-bps"]
    assert set(result["skipped"]) == {"vel R2", "fp-bps"}
    assert np.isfinite(result["co-bps"]) and np.isfinite(result["psth R2"])


def test_save_h5_dict_is_atomic(tmp_path: Path):
    path = tmp_path / "out.h5"
    save_h5_dict(path, {"a": np.arange(3)})
    with pytest.raises(TypeError):  # h5py cannot store numpy unicode: the write fails midway
        save_h5_dict(path, {"b": np.arange(2), "c": np.array(["text"])})
    np.testing.assert_array_equal(load_h5_dict(path)["a"], np.arange(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.h5"]


def test_gaussian_smooth_is_nlb_kernel():
    rng = np.random.default_rng(8)
    spikes = rng.poisson(0.5, size=(2, 30, 3)).astype(float)
    sd = 3.0
    width = int(6 * sd)  # NLB: window of 6 sd (18 taps, even), centred with 'same'
    k = np.arange(width) - (width - 1) / 2
    window = np.exp(-0.5 * (k / sd) ** 2)
    window /= window.sum()
    expected = np.apply_along_axis(lambda x: np.convolve(x, window, "same"), 1, spikes)
    np.testing.assert_allclose(gaussian_smooth(spikes, sd), expected, rtol=1e-12, atol=1e-15)


def test_smoothing_baseline_on_real_spikes():
    """Fit on the even trials, score held-out neurons on the odd trials, averaged over
    8 random held-in/held-out splits (no split is picked): finite and > 0 bits/spike,
    and better than predicting each neuron's training mean."""
    data = np.load(shared_file("data/nlb_mc_maze_small_20.npz"))
    source, target = data["source_neural"], data["target_neural"]  # even / odd trials
    scores, floors = [], []
    for seed in range(8):
        order = np.random.default_rng(seed).permutation(source.shape[-1])
        held_in, held_out = order[:25], order[25:]
        # NLB's mc_maze_small kernel (60 ms = 3 bins at 20 ms). alpha 1.0, not NLB's 0.1:
        # 4-fold CV on the source trials picks it (40 trials, 25 sparse inputs overfit at 0.1).
        with threadpool_limits(1):  # BLAS threads only add overhead to these small GLM fits
            out = smoothing_baseline(
                source[..., held_in], source[..., held_out], target[..., held_in], 3.0, 1.0
            )
        assert out["train_rates_heldout"].shape == source[..., held_out].shape
        np.testing.assert_array_equal(
            out["eval_rates_heldin"], gaussian_smooth(target[..., held_in], 3)
        )
        scores.append(bits_per_spike(out["eval_rates_heldout"], target[..., held_out]))
        train_mean = np.broadcast_to(
            source[..., held_out].mean(axis=(0, 1)), out["eval_rates_heldout"].shape
        )
        floors.append(bits_per_spike(train_mean, target[..., held_out]))
    assert np.all(np.isfinite(scores))
    assert np.mean(scores) > 0
    assert np.mean(scores) > np.mean(floors)  # held-in spikes carry signal


@pytest.mark.parametrize("alpha", [1e-3, 0.1, 1.0])
def test_poisson_glm_is_scikit_learns_poisson_regressor(alpha):
    """Same objective (written out below), minimised to within the Newton-decrement
    tolerance (1e-8) of scikit-learn's own minimum at a tight tolerance; NaN targets are
    left out as if their rows were absent."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2000, 6))
    y = rng.poisson(np.exp(-1.0 + x @ rng.normal(scale=0.4, size=(6, 3)))).astype(float)

    def objective(b, w, j):
        eta = b + x @ w
        return np.mean(np.exp(eta) - y[:, j] * eta) + alpha / 2 * w @ w

    coef = poisson_glm(x, y, alpha)
    for j in range(3):
        ref = PoissonRegressor(alpha=alpha, tol=1e-12, max_iter=10_000).fit(x, y[:, j])
        gap = objective(coef[0, j], coef[1:, j], j) - objective(ref.intercept_, ref.coef_, j)
        assert gap < 1e-8
        np.testing.assert_allclose(coef[1:, j], ref.coef_, atol=1e-3)
    gaps = y.copy()
    gaps[:500, 1] = np.nan
    np.testing.assert_allclose(
        poisson_glm(x, gaps, alpha)[:, 1],
        poisson_glm(x[500:], y[500:, 1:2], alpha)[:, 0],
        atol=1e-9,
    )
    rates = poisson_glm_predict(x, coef)
    np.testing.assert_allclose(rates, np.exp(coef[0] + x @ coef[1:]), rtol=1e-12)


def test_poisson_glm_hessian_from_a_subsample_reaches_the_same_optimum(monkeypatch):
    rng = np.random.default_rng(4)
    x = rng.normal(size=(3000, 5))
    y = rng.poisson(np.exp(-0.5 + x @ rng.normal(scale=0.3, size=(5, 2)))).astype(float)
    full = poisson_glm(x, y, 0.01)
    monkeypatch.setattr(metrics, "HESSIAN_SAMPLES", 700)  # every 5th sample
    np.testing.assert_allclose(poisson_glm(x, y, 0.01), full, atol=1e-3)


def _planted(rng, kern_sd_bins, weight, n_trials=90, n_time=40):
    """Held-in spikes from slow random rates; held-out spikes Poisson with
    log-rate -1 + weight · mean_k log(gaussian_smooth(held-in, kern_sd_bins) + 1e-4)."""
    drive = np.cumsum(rng.normal(scale=0.35, size=(n_trials, n_time, 1)), 1)
    heldin = rng.poisson(np.exp(-0.5 + drive + rng.normal(scale=0.3, size=(1, 1, 8))))
    x = np.log(gaussian_smooth(heldin.astype(float), kern_sd_bins) + 1e-4)
    log_rate = -1.0 + weight * x.mean(2, keepdims=True) + np.zeros((1, 1, 3))
    return heldin.astype(float), rng.poisson(np.exp(log_rate)).astype(float)


def test_smoothing_cv_picks_the_planted_kernel_and_alpha():
    """Held-out counts generated by the baseline's own model at kernel s.d. 3 bins: CV picks
    3 bins, and the weak penalty (the relation is strong); with no relation (weight 0) it
    picks the strong penalty."""
    rng = np.random.default_rng(0)
    heldin, heldout = _planted(rng, 3.0, weight=1.5)
    cv = smoothing_cv(heldin, heldout, [1.0, 3.0, 8.0], [1e-3, 10.0], n_folds=3)
    assert (cv["kern_sd_bins"], cv["alpha"]) == (3.0, 1e-3)
    assert cv["co_bps"].shape == (3, 2) and cv["n_folds"] == 3
    heldin, heldout = _planted(rng, 3.0, weight=0.0)
    assert smoothing_cv(heldin, heldout, [1.0, 3.0, 8.0], [1e-3, 10.0])["alpha"] == 10.0


def test_smoothing_reference_chooses_on_train_trials_only():
    """Changing every eval spike (held-in and held-out) leaves the choice and the CV scores
    as they were; the score on eval trials moves. Without CV: the dataset's NLB values."""
    rng = np.random.default_rng(1)
    heldin, heldout = _planted(rng, 3.0, weight=1.5, n_trials=80)
    tensors = {
        "train_spikes_heldin": heldin[:60],
        "train_spikes_heldout": heldout[:60],
        "eval_spikes_heldin": heldin[60:],
        "eval_spikes_heldout": heldout[60:],
    }
    other = dict(tensors)
    other["eval_spikes_heldin"] = rng.permutation(heldin[60:].ravel()).reshape(20, 40, 8)
    other["eval_spikes_heldout"] = rng.poisson(0.3, size=(20, 40, 3)).astype(float)
    settings = EvaluateConfig(smooth_cv_sd_ms=(20.0, 60.0), smooth_cv_alphas=(0.01, 1.0))
    a = smoothing_reference(tensors, settings, 20, nlb.GENERIC)
    b = smoothing_reference(other, settings, 20, nlb.GENERIC)
    assert (a["kern_sd_ms"], a["alpha"], a["cv"]) == (b["kern_sd_ms"], b["alpha"], b["cv"])
    assert a["kern_sd_ms"] == 60.0 and a["cv"]["kern_sd_ms"] == [20.0, 60.0]
    assert a["co-bps"] != b["co-bps"]
    fixed = EvaluateConfig(smooth_cv=False)
    c = smoothing_reference(tensors, fixed, 20, nlb.facts("mc_maze_small"))
    assert (c["kern_sd_ms"], c["alpha"], c["cv"]) == (60.0, 0.1, None)
