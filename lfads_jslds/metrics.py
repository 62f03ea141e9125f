"""Neural Latents Benchmark metrics, as ``nlb_tools.evaluation`` defines them.

nlb_tools pins pandas <= 1.3.4 and does not install on Python 3.11, so its math is
re-implemented here (numpy/scipy/scikit-learn only, no JAX) from its source: the same
null model, the same zero-rate floor, the same ridge grid and folds, the same PSTH
pooling, the same smoothing kernel. Arrays are ``[trial, time, neuron]``; rates and
spikes are in spikes per bin. Key names follow nlb_tools (``eval_rates_heldout``,
``eval_spikes_heldout``, ``train_behavior``, ``psth``, ...), so its HDF5 files work here.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy.linalg.blas import ssyrk
from scipy.signal import convolve
from scipy.special import gammaln
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import Ridge
from sklearn.metrics import r2_score
from sklearn.model_selection import GridSearchCV

from lfads_jslds.data import nlb
from lfads_jslds.io.h5 import load_h5_dict

#: nlb_tools replaces exact-zero rates by this before taking logs (and clips GLM output to it).
ZERO_RATE = 1e-9
#: Ridge penalties nlb_tools' velocity decoder searches over (5-fold CV).
RIDGE_ALPHAS = np.logspace(-4, 0, 9)
#: GLM log-rates are capped here before ``exp`` (NLB clips predicted rates at 1e20 = e^46).
_MAX_LOG_RATE = float(np.log(1e20))
#: Above this many samples the GLM's Newton steps take the Hessian from every k-th sample
#: only (gradient and objective stay exact, so the optimum does not move).
HESSIAN_SAMPLES = 16384


def _same_shape(a: np.ndarray, b: np.ndarray, name_a: str, name_b: str) -> None:
    """Raise naming both arrays and shapes when they differ."""
    if a.shape != b.shape:
        raise ValueError(f"{name_a} has shape {a.shape} but {name_b} has shape {b.shape}")


def _nll(rates: np.ndarray, spikes: np.ndarray, zero_warning: bool) -> float:
    """Poisson NLL over non-NaN spikes; zeros floored to ``ZERO_RATE`` as nlb_tools does."""
    rates = np.asarray(rates, dtype=float)
    spikes = np.asarray(spikes, dtype=float)
    _same_shape(rates, spikes, "rates", "spikes")
    observed = ~np.isnan(spikes)
    r, n = rates[observed], spikes[observed]
    if not np.all(np.isfinite(r)):
        raise ValueError("rates: non-finite (NaN or inf) values where spikes are observed")
    if np.any(r < 0):
        raise ValueError("rates: negative values where spikes are observed (rates are spikes/bin)")
    zero = r == 0
    if np.any(zero):
        if zero_warning:
            warnings.warn(
                f"rates: {int(zero.sum())} zero rate(s) replaced by {ZERO_RATE} (as nlb_tools)",
                RuntimeWarning,
                stacklevel=3,
            )
        r = np.where(zero, ZERO_RATE, r)
    return float(np.sum(r - n * np.log(r) + gammaln(n + 1.0)))


def poisson_nll(rates: np.ndarray, spikes: np.ndarray) -> float:
    """Total Poisson negative log-likelihood ``Σ r − n log r + lgamma(n + 1)`` in nats.

    ``rates`` and ``spikes`` have the same shape (``[trial, time, neuron]``, spikes per bin).
    Entries where ``spikes`` is NaN are left out (NLB pads unobserved bins with NaN).
    Negative or non-finite rates at observed entries raise ``ValueError``; exact zeros are
    replaced by 1e-9 with a warning, as nlb_tools does, so scores match the leaderboard's.
    """
    return _nll(rates, spikes, zero_warning=True)


def bits_per_spike(rates: np.ndarray, spikes: np.ndarray) -> float:
    """Log-likelihood gain over the per-neuron mean-rate model, in bits per spike.

    ``(NLL_null − NLL_model) / Σ n / ln 2``; the null predicts, for each neuron (last axis),
    its mean count over all evaluated trials and bins (``nanmean``). 0 means no better than
    a constant rate per neuron; positive means the model predicts when spikes happen.
    """
    rates = np.asarray(rates, dtype=float)
    spikes = np.asarray(spikes, dtype=float)
    _same_shape(rates, spikes, "rates", "spikes")
    total = np.nansum(spikes)
    if total <= 0:
        raise ValueError("spikes: no spikes at observed entries, bits/spike is undefined")
    nll_model = _nll(rates, spikes, zero_warning=True)
    with warnings.catch_warnings():  # an all-NaN neuron's mean is NaN but never read
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(spikes, axis=tuple(range(spikes.ndim - 1)), keepdims=True)
    null_rates = np.broadcast_to(mean, spikes.shape)
    nll_null = _nll(null_rates, spikes, zero_warning=False)
    return float((nll_null - nll_model) / total / np.log(2))


def co_bps(eval_rates_heldout: np.ndarray, eval_spikes_heldout: np.ndarray) -> float:
    """Co-smoothing bits/spike: held-out neurons, eval trials, observed window."""
    return bits_per_spike(eval_rates_heldout, eval_spikes_heldout)


def fp_bps(
    eval_rates_heldin_forward: np.ndarray,
    eval_rates_heldout_forward: np.ndarray,
    eval_spikes_heldin_forward: np.ndarray,
    eval_spikes_heldout_forward: np.ndarray,
) -> float:
    """Forward-prediction bits/spike: all neurons (held-in then held-out), forward window."""
    rates = np.concatenate([eval_rates_heldin_forward, eval_rates_heldout_forward], axis=-1)
    spikes = np.concatenate([eval_spikes_heldin_forward, eval_spikes_heldout_forward], axis=-1)
    return bits_per_spike(rates, spikes)


def _fit_and_score_ridge(
    train_x: np.ndarray, train_y: np.ndarray, eval_x: np.ndarray, eval_y: np.ndarray
) -> float:
    """Ridge with alpha chosen by 5-fold CV on train rows, R² on eval rows (uniform over y)."""
    train_keep = ~np.isnan(train_y[:, 0])
    eval_keep = ~np.isnan(eval_y[:, 0])
    train_x, train_y = train_x[train_keep], train_y[train_keep]
    eval_x, eval_y = eval_x[eval_keep], eval_y[eval_keep]
    if not (np.all(np.isfinite(train_x)) and np.all(np.isfinite(eval_x))):
        raise ValueError("rates: non-finite values in bins where behaviour is defined")
    decoder = GridSearchCV(Ridge(), {"alpha": RIDGE_ALPHAS}, cv=5)
    decoder.fit(train_x, train_y)
    return float(decoder.score(eval_x, eval_y))


def velocity_r2(
    train_rates: np.ndarray,
    train_behavior: np.ndarray,
    eval_rates: np.ndarray,
    eval_behavior: np.ndarray,
    train_decode_mask: np.ndarray | None = None,
    eval_decode_mask: np.ndarray | None = None,
) -> float:
    """R² of a ridge decoder from rates to (already lagged) hand velocity, as NLB scores it.

    ``*_rates``: ``[trial, time, neuron]`` (all neurons, spikes per bin, not log-rates);
    ``*_behavior``: ``[trial, time, 2]`` (x, y velocity; NaN rows are dropped). Trials and
    bins are flattened to samples in trial-major order, the ridge penalty is picked from
    ``logspace(-4, 0, 9)`` by unshuffled 5-fold CV on train samples, and the score is
    ``r2_score`` on eval samples averaged uniformly over x and y. ``*_decode_mask``
    (``[trial, n_groups]`` bool) fits one decoder per group and averages their R²
    (area2_bump); by default all trials form one group.
    """
    train_rates = np.asarray(train_rates, dtype=float)
    eval_rates = np.asarray(eval_rates, dtype=float)
    train_behavior = np.asarray(train_behavior, dtype=float)
    eval_behavior = np.asarray(eval_behavior, dtype=float)
    pairs = {"train": (train_rates, train_behavior), "eval": (eval_rates, eval_behavior)}
    for split, (rates, beh) in pairs.items():
        if rates.shape[:-1] != beh.shape[:-1]:
            raise ValueError(
                f"{split}_rates has shape {rates.shape} but {split}_behavior has shape "
                f"{beh.shape}; they must agree on [trial, time]"
            )
    if train_rates.shape[-1] != eval_rates.shape[-1]:
        raise ValueError(
            f"train_rates has shape {train_rates.shape} but eval_rates has shape "
            f"{eval_rates.shape}; they must have the same neurons"
        )
    if train_decode_mask is None or eval_decode_mask is None:
        train_decode_mask = np.ones((train_rates.shape[0], 1), dtype=bool)
        eval_decode_mask = np.ones((eval_rates.shape[0], 1), dtype=bool)
    train_decode_mask = np.asarray(train_decode_mask, dtype=bool)
    eval_decode_mask = np.asarray(eval_decode_mask, dtype=bool)

    def flat(x: np.ndarray) -> np.ndarray:
        return x.reshape(-1, x.shape[-1])

    scores = [
        _fit_and_score_ridge(
            flat(train_rates[train_decode_mask[:, g]]),
            flat(train_behavior[train_decode_mask[:, g]]),
            flat(eval_rates[eval_decode_mask[:, g]]),
            flat(eval_behavior[eval_decode_mask[:, g]]),
        )
        for g in range(train_decode_mask.shape[1])
    ]
    return float(np.mean(scores))


def _shift_trial(trial: np.ndarray, shift: int) -> np.ndarray:
    """Delay ``[time, neuron]`` by ``shift`` bins (negative: advance), NaN-padding the gap."""
    if shift == 0:
        return trial
    pad = np.full((abs(shift), trial.shape[1]), np.nan)
    if shift > 0:
        return np.vstack([pad, trial[:-shift]])
    return np.vstack([trial[-shift:], pad])


def psth_r2(
    eval_rates: np.ndarray,
    eval_cond_idx: Sequence[np.ndarray],
    psth: np.ndarray,
    jitter: np.ndarray | None = None,
) -> float:
    """R² of condition-averaged predicted rates against the empirical PSTHs, as NLB scores it.

    ``eval_rates``: ``[trial, time, neuron]`` (all neurons, spikes per bin); ``psth``:
    ``[condition, time, neuron]`` (NLB smooths spikes at 1 ms, then bins; NaN rows mark bins
    past a condition's shortest trial); ``eval_cond_idx[c]``: eval-trial indices of
    condition c. Each condition's predicted PSTH is the trial mean (after shifting trials by
    ``jitter`` bins, DMFC only); the valid bins of all conditions are stacked to
    ``[condition·time, neuron]`` and scored with one ``r2_score`` per neuron, averaged
    uniformly over neurons. Conditions with no eval trials are left out.
    """
    eval_rates = np.asarray(eval_rates, dtype=float)
    psth = np.asarray(psth, dtype=float)
    if psth.ndim != 3 or eval_rates.ndim != 3 or psth.shape[1:] != eval_rates.shape[1:]:
        raise ValueError(
            f"psth has shape {psth.shape} but eval_rates has shape {eval_rates.shape}; "
            "need [condition, time, neuron] and [trial, time, neuron] with equal time, neuron"
        )
    if len(eval_cond_idx) != psth.shape[0]:
        raise ValueError(
            f"eval_cond_idx has {len(eval_cond_idx)} conditions but psth has shape {psth.shape}"
        )
    if jitter is None:
        jitter = np.zeros(eval_rates.shape[0], dtype=int)
    true_rows, pred_rows = [], []
    for c, idx in enumerate(eval_cond_idx):
        idx = np.asarray(idx, dtype=int)
        if idx.size == 0:
            continue
        pred = np.mean([_shift_trial(eval_rates[i], int(jitter[i])) for i in idx], axis=0)
        valid = ~np.isnan(psth[c, :, 0])
        if np.any(np.isnan(pred[valid])):
            raise ValueError(f"eval_rates: NaN in condition {c} within the PSTH's valid bins")
        true_rows.append(psth[c][valid])
        pred_rows.append(pred[valid])
    if not true_rows:
        raise ValueError("eval_cond_idx: no condition has any eval trial")
    return float(r2_score(np.vstack(true_rows), np.vstack(pred_rows)))


def _missing(
    submission: Mapping[str, Any],
    targets: Mapping[str, Any],
    sub_keys: Sequence[str],
    target_keys: Sequence[str],
) -> str | None:
    """Why a metric cannot run (the absent keys), or None when all inputs are present."""
    absent = [f"submission[{k!r}]" for k in sub_keys if k not in submission]
    absent += [f"targets[{k!r}]" for k in target_keys if k not in targets]
    return "missing " + ", ".join(absent) if absent else None


def evaluate(
    submission: Mapping[str, Any] | str | os.PathLike,
    targets: Mapping[str, Any] | str | os.PathLike,
    dataset: str | None = None,
) -> dict[str, Any]:
    """Score an NLB-style submission: ``co-bps``, ``vel R2``, ``psth R2``, ``fp-bps``.

    ``submission`` holds ``eval_rates_heldin``, ``eval_rates_heldout``,
    ``eval_rates_{heldin,heldout}_forward``, ``train_rates_{heldin,heldout}``; ``targets``
    holds ``eval_spikes_heldout``, ``eval_spikes_{heldin,heldout}_forward``,
    ``train_behavior``, ``eval_behavior``, ``psth``, ``eval_cond_idx`` and optionally
    ``train_decode_mask``/``eval_decode_mask``, ``eval_jitter`` (nlb_tools' names). Either
    may be a dict or an HDF5 path; ``dataset`` picks a group (``"mc_maze_20"``) from files
    nested the way nlb_tools writes them. A metric whose inputs are absent is left out and
    named in ``result["skipped"]`` (always present, ``{metric: reason}``); the others still run.
    """
    sub = load_h5_dict(submission) if isinstance(submission, str | os.PathLike) else submission
    tgt = load_h5_dict(targets) if isinstance(targets, str | os.PathLike) else targets
    if dataset is not None:
        sub, tgt = sub[dataset], tgt[dataset]
    result: dict[str, Any] = {}
    skipped: dict[str, str] = {}

    def arr(d: Mapping[str, Any], key: str) -> np.ndarray:
        return np.asarray(d[key], dtype=float)

    def all_rates(prefix: str) -> np.ndarray:
        return np.concatenate([arr(sub, f"{prefix}_heldin"), arr(sub, f"{prefix}_heldout")], -1)

    why = _missing(sub, tgt, ["eval_rates_heldout"], ["eval_spikes_heldout"])
    if why:
        skipped["co-bps"] = why
    else:
        result["co-bps"] = co_bps(arr(sub, "eval_rates_heldout"), arr(tgt, "eval_spikes_heldout"))

    why = _missing(
        sub,
        tgt,
        ["train_rates_heldin", "train_rates_heldout", "eval_rates_heldin", "eval_rates_heldout"],
        ["train_behavior", "eval_behavior"],
    )
    if why:
        skipped["vel R2"] = why
    else:
        has_masks = "train_decode_mask" in tgt and "eval_decode_mask" in tgt
        result["vel R2"] = velocity_r2(
            all_rates("train_rates"),
            arr(tgt, "train_behavior"),
            all_rates("eval_rates"),
            arr(tgt, "eval_behavior"),
            np.asarray(tgt["train_decode_mask"]) if has_masks else None,
            np.asarray(tgt["eval_decode_mask"]) if has_masks else None,
        )

    why = _missing(sub, tgt, ["eval_rates_heldin", "eval_rates_heldout"], ["psth", "eval_cond_idx"])
    if why:
        skipped["psth R2"] = why
    else:
        result["psth R2"] = psth_r2(
            all_rates("eval_rates"),
            list(tgt["eval_cond_idx"]),
            arr(tgt, "psth"),
            np.asarray(tgt["eval_jitter"], dtype=int) if "eval_jitter" in tgt else None,
        )

    why = _missing(
        sub,
        tgt,
        ["eval_rates_heldin_forward", "eval_rates_heldout_forward"],
        ["eval_spikes_heldin_forward", "eval_spikes_heldout_forward"],
    )
    if why:
        skipped["fp-bps"] = why
    else:
        result["fp-bps"] = fp_bps(
            arr(sub, "eval_rates_heldin_forward"),
            arr(sub, "eval_rates_heldout_forward"),
            arr(tgt, "eval_spikes_heldin_forward"),
            arr(tgt, "eval_spikes_heldout_forward"),
        )
    result["skipped"] = skipped
    return result


def poisson_glm(
    x: np.ndarray,
    y: np.ndarray,
    alpha: float,
    init: np.ndarray | None = None,
    tol: float = 1e-8,
    max_iter: int = 100,
) -> np.ndarray:
    """Coefficients [1 + feature, output] (intercept first) of one Poisson GLM per column of y.

    The objective of scikit-learn's ``PoissonRegressor(alpha)``, which NLB's baseline fits:
    per output, the mean over its observed samples of ``exp(η) − y η`` (half the Poisson
    deviance, up to a constant) plus ``alpha / 2 ‖w‖²``, the intercept unpenalised;
    ``η = b + x w``. The outputs' problems are independent; all are solved at once by
    Newton's method with backtracking, each until its Newton decrement ``g·H⁻¹g / 2`` (about
    the objective's distance to its minimum) falls below ``tol``; past ``HESSIAN_SAMPLES``
    samples the Hessian comes from a regular subsample (the gradient never does).
    ``x``: [sample, feature]; ``y``: [sample, output] counts, NaN where unobserved;
    ``init``: a starting point (e.g. the solution at a nearby ``alpha``).
    """
    xa = np.column_stack([np.ones(x.shape[0]), np.asarray(x, dtype=np.float64)])
    y = np.asarray(y, dtype=np.float64)
    seen = np.isfinite(y)
    y = np.where(seen, y, 0.0)
    n = np.maximum(seen.sum(0), 1).astype(np.float64)  # [output]
    penalty = np.full(xa.shape[1], float(alpha))
    penalty[0] = 0.0
    if init is None:
        coef = np.zeros((xa.shape[1], y.shape[1]))
        coef[0] = np.log(np.maximum(y.sum(0) / n, ZERO_RATE))
    else:
        coef = np.array(init, dtype=np.float64)

    def objective(c: np.ndarray, cols: np.ndarray) -> np.ndarray:
        eta = np.minimum(xa @ c, _MAX_LOG_RATE)
        nll = (seen[:, cols] * np.exp(eta) - y[:, cols] * eta).sum(0) / n[cols]
        return nll + 0.5 * (penalty[:, None] * c**2).sum(0)

    active = np.arange(y.shape[1])
    every = -(-xa.shape[0] // HESSIAN_SAMPLES)  # Hessian from every k-th sample
    for _ in range(max_iter):
        c = coef[:, active]
        mu = seen[:, active] * np.exp(np.minimum(xa @ c, _MAX_LOG_RATE))  # [sample, active]
        grad = xa.T @ (mu - y[:, active]) / n[active] + penalty[:, None] * c
        hess = np.stack(
            [
                _gram(xa[::every], mu[::every, k]) * every / n[j] + np.diag(penalty)
                for k, j in enumerate(active)
            ]
        )
        step = -np.linalg.solve(hess, grad.T[..., None])[..., 0].T  # [1 + feature, active]
        decrement = -0.5 * (grad * step).sum(0)
        done = decrement < tol
        coef[:, active[done]] = c[:, done]
        active, c, grad, step = active[~done], c[:, ~done], grad[:, ~done], step[:, ~done]
        if active.size == 0:
            break
        f0, slope = objective(c, active), (grad * step).sum(0)
        size = np.ones(active.size)
        for _ in range(50):  # backtracking (Armijo) line search, per output
            trial = c + size * step
            bad = objective(trial, active) > f0 + 1e-4 * size * slope
            if not bad.any():
                break
            size = np.where(bad, size / 2, size)
        coef[:, active] = c + size * step
    else:
        warnings.warn(
            f"Poisson GLM: {active.size} output(s) not converged in {max_iter} Newton steps",
            ConvergenceWarning,
            stacklevel=2,
        )
    return coef


def _gram(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``xᵀ diag(w) x`` for w ≥ 0, by BLAS's symmetric rank-k update (half a matmul), in
    float32: only Newton's direction depends on it, the gradient stays float64, so the
    optimum reached is the same and the cost per step half."""
    upper = ssyrk(1.0, (x * np.sqrt(w)[:, None]).astype(np.float32), trans=1)
    return (upper + np.triu(upper, 1).T).astype(np.float64)


def poisson_glm_predict(x: np.ndarray, coef: np.ndarray) -> np.ndarray:
    """Rates [sample, output] of ``poisson_glm``'s coefficients, clipped to [1e-9, 1e20] as
    NLB clips its GLM's predictions."""
    eta = coef[0] + np.asarray(x, dtype=np.float64) @ coef[1:]
    return np.clip(np.exp(np.minimum(eta, _MAX_LOG_RATE)), ZERO_RATE, 1e20)


def gaussian_smooth(spikes: np.ndarray, kern_sd_bins: float) -> np.ndarray:
    """Acausal Gaussian smoothing along time of ``[trial, time, neuron]`` counts.

    NLB's kernel (``nlb.gaussian_window``: ``gaussian(int(6 sd), sd)`` normalised to sum 1),
    convolved per trial with 'same' alignment (zero padding at the trial edges, so edge
    bins read low).
    """
    spikes = np.asarray(spikes, dtype=float)
    if spikes.ndim != 3 or int(6 * kern_sd_bins) < 1:
        raise ValueError(
            f"spikes has shape {spikes.shape} (need [trial, time, neuron]) and kern_sd_bins="
            f"{kern_sd_bins} (need 6·sd >= 1 bin)"
        )
    window = nlb.gaussian_window(kern_sd_bins)
    return convolve(spikes, window[None, :, None], mode="same", method="direct")


def _check_baseline_inputs(
    train_spikes_heldin: np.ndarray,
    train_spikes_heldout: np.ndarray,
    eval_spikes_heldin: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    tr_in = np.asarray(train_spikes_heldin, dtype=float)
    tr_out = np.asarray(train_spikes_heldout, dtype=float)
    if tr_in.ndim != 3 or tr_in.shape[:2] != tr_out.shape[:2] or tr_out.ndim != 3:
        raise ValueError(
            f"train_spikes_heldin has shape {tr_in.shape} but train_spikes_heldout has shape "
            f"{tr_out.shape}; need [trial, time, neuron] with equal trial and time"
        )
    ev_shape = np.shape(eval_spikes_heldin)
    if eval_spikes_heldin is not None and (len(ev_shape) != 3 or ev_shape[1:] != tr_in.shape[1:]):
        raise ValueError(
            f"eval_spikes_heldin has shape {ev_shape} but train_spikes_heldin has shape "
            f"{tr_in.shape}; need equal time and neuron"
        )
    return tr_in, tr_out


def _log_smooth(spikes: np.ndarray, kern_sd_bins: float, log_offset: float) -> np.ndarray:
    """The baseline's GLM inputs [trial · time, neuron]: log of smoothed counts + offset."""
    smooth = gaussian_smooth(spikes, kern_sd_bins)
    return np.log(smooth.reshape(-1, spikes.shape[2]) + log_offset)


def smoothing_baseline(
    train_spikes_heldin: np.ndarray,
    train_spikes_heldout: np.ndarray,
    eval_spikes_heldin: np.ndarray,
    kern_sd_bins: float,
    alpha: float,
    log_offset: float = 1e-4,
) -> dict[str, np.ndarray]:
    """NLB's spike-smoothing baseline; returns rates in the submission layout.

    Held-in rates are the Gaussian-smoothed held-in spikes (``gaussian_smooth``). Held-out
    rates come from one Poisson GLM (``poisson_glm``, scikit-learn's
    ``PoissonRegressor(alpha)`` objective) per held-out neuron fitted on train trials from
    ``log(smoothed held-in + log_offset)`` to held-out counts, with trials and bins
    flattened to samples; predictions are clipped to [1e-9, 1e20]. NLB's settings per
    dataset (tuned at 5 ms) are in ``data.nlb``; ``smoothing_cv`` chooses them from the
    train trials instead. Inputs: ``[trial, time, neuron]`` counts per bin; outputs spikes
    per bin.
    """
    tr_in, tr_out = _check_baseline_inputs(
        train_spikes_heldin, train_spikes_heldout, eval_spikes_heldin
    )
    ev_in = np.asarray(eval_spikes_heldin, dtype=float)
    n_time, n_out = tr_in.shape[1], tr_out.shape[2]
    train_x = _log_smooth(tr_in, kern_sd_bins, log_offset)
    eval_x = _log_smooth(ev_in, kern_sd_bins, log_offset)
    coef = poisson_glm(train_x, tr_out.reshape(-1, n_out), alpha)
    return {
        "train_rates_heldin": gaussian_smooth(tr_in, kern_sd_bins),
        "train_rates_heldout": poisson_glm_predict(train_x, coef).reshape(-1, n_time, n_out),
        "eval_rates_heldin": gaussian_smooth(ev_in, kern_sd_bins),
        "eval_rates_heldout": poisson_glm_predict(eval_x, coef).reshape(-1, n_time, n_out),
    }


def smoothing_cv(
    train_spikes_heldin: np.ndarray,
    train_spikes_heldout: np.ndarray,
    kern_sds_bins: Sequence[float],
    alphas: Sequence[float],
    n_folds: int = 3,
    log_offset: float = 1e-4,
) -> dict[str, Any]:
    """The smoothing baseline's kernel s.d. and GLM alpha, chosen by k-fold CV on train trials.

    As nlb_tools' ``smoothing_cv_sweep.py``: fold ``f`` holds out train trials
    ``f, f + n_folds, ...``; the baseline is fitted on the others at every (kernel, alpha)
    of the grid and scored by co-bps (``bits_per_spike`` of the held-out neurons) on the
    held-out fold; scores are averaged over folds and the best pair wins. Only train
    trials are read. Each GLM starts from the solution at the previous (larger) alpha.

    Returns ``kern_sd_bins``, ``alpha`` (the choice), ``co_bps`` [kernel, alpha] (mean over
    folds) and ``n_folds``.
    """
    tr_in, tr_out = _check_baseline_inputs(train_spikes_heldin, train_spikes_heldout)
    n_trials, n_out = tr_in.shape[0], tr_out.shape[2]
    if not 2 <= n_folds <= n_trials:
        raise ValueError(f"n_folds: need 2 <= n_folds <= {n_trials} train trials, got {n_folds}")
    folds = [np.arange(f, n_trials, n_folds) for f in range(n_folds)]
    order = np.argsort(alphas)[::-1]  # strongest penalty first: each fit warm-starts the next
    scores = np.zeros((len(kern_sds_bins), len(alphas), n_folds))
    for i, sd in enumerate(kern_sds_bins):
        x = _log_smooth(tr_in, sd, log_offset).reshape(n_trials, -1, tr_in.shape[2])
        for f, held in enumerate(folds):
            fit = np.setdiff1d(np.arange(n_trials), held)
            x_fit, x_held = x[fit].reshape(-1, x.shape[2]), x[held].reshape(-1, x.shape[2])
            y_fit = tr_out[fit].reshape(-1, n_out)
            coef = None
            for a in order:
                coef = poisson_glm(x_fit, y_fit, alphas[a], init=coef)
                rates = poisson_glm_predict(x_held, coef).reshape(held.size, -1, n_out)
                scores[i, a, f] = bits_per_spike(rates, tr_out[held])
    mean = scores.mean(2)
    i, a = np.unravel_index(np.argmax(mean), mean.shape)
    return {
        "kern_sd_bins": float(kern_sds_bins[i]),
        "alpha": float(alphas[a]),
        "co_bps": mean,
        "n_folds": n_folds,
    }
