"""``lfads-jslds analyze RUN``: the per-trial dynamics report of a trained run.

Reads ``inference.h5`` (DESIGN §7) and the run's weights; writes ``analysis/``:

- ``summary.json``: ``rotation_hz_median``, ``rotation_hz_iqr``, ``tau_s_median`` (None
  when the median dominant mode does not decay), ``fixed_point_residual_median``
  (‖F(e*, 0) − e*‖), ``n_trials``, ``dt_s``, ``eig_sort``, ``expansion_points_source``,
  the distinct fixed points per trial, the numerical fixed-point comparison, jPCA's
  frequency and R² with its window (−50 to +150 ms around movement onset unless
  ``--jpca-window`` says otherwise; the bins used), and the full mode summary
  (``modes``: per condition, plane angles, per trial; conventions in
  ``modes.conventions``).
- ``modes.h5``: per trial and bin the dominant rotational mode (frequency, τ, |λ|,
  share; chosen by ``dominant_rule`` from the deviation ``a_{t-1} − e*_t`` that J_h acts
  on, see ``analysis.modes``), the eigenvalues of J_h, and per trial the dominant plane.
- ``figures/*.png``: eigenvalue spectra, mode histograms, rosettes in the top rotational
  plane and in jPCA's plane, expansion points in PCA space, one trial's raster vs rates.

Expansion points: a ``jslds`` / ``slds`` run names them itself (``e*_t = E(a_{t-1})``).
A ``gru`` run has no expansion network: the analysis falls back to the classical route,
numerical fixed points of the generator from sampled states, and linearises each bin
around the fixed point nearest the state it starts from, ``g_{t-1}``
(``expansion_points_source`` says which). Either way the deviation decomposed into modes
is the one ``J_h`` acts on, ``a_{t-1} − e*_t`` (``a_0 = g0``; see ``analysis.modes``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from lfads_jslds.analysis import figures, jpca, modes
from lfads_jslds.analysis.fixed_points import find_fixed_points
from lfads_jslds.io import atomic
from lfads_jslds.io.h5 import save_h5_dict
from lfads_jslds.models import lfads
from lfads_jslds.pipeline.run import RunFolder, RunFolderError

#: Distance (state units) within which two expansion points count as the same fixed point.
DISTINCT_TOL = 0.05
#: Initial states sampled for the numerical fixed-point finder.
N_FINDER_STARTS = 256


def _conditions(tensors: dict[str, Any], n_trials: int) -> np.ndarray:
    if "train_cond_id" in tensors and "eval_cond_id" in tensors:
        return np.r_[tensors["train_cond_id"], tensors["eval_cond_id"]].astype(int)
    return np.zeros(n_trials, int)


def numerical_fixed_points(cell, states: np.ndarray, u_dim: int, seed: int = 0, progress=True):
    """The classical baseline: minimise ½‖F(h) − h‖² from states sampled over all trials."""
    flat = states.reshape(-1, states.shape[-1])
    rng = np.random.default_rng(seed)
    starts = flat[rng.choice(len(flat), min(N_FINDER_STARTS, len(flat)), replace=False)]
    zero = np.zeros(u_dim, np.float32)
    return find_fixed_points(cell, starts.astype(np.float32), zero, progress=progress)


def condition_jpca(
    factors: np.ndarray,
    condition: np.ndarray,
    attrs: dict[str, Any],
    window_ms: tuple[float, float] | None = None,
) -> tuple[Any, dict[str, Any]]:
    """jPCA on condition-averaged factors ``[trial, time, factor]`` over a window of bins.

    ``attrs``: ``inference.h5``'s (``bin_ms``, ``window_ms`` of the data, ``align_field``).
    ``window_ms``: (start, stop) in ms from the alignment event; the bins wholly inside it
    are analysed (``jpca.window_bins``). None: ``jpca.CHURCHLAND_WINDOW_MS`` (−50 to
    +150 ms), and jPCA is skipped, saying why, where the data do not cover it; a window
    given explicitly that the data do not cover raises ``ValueError``. Returns the
    result (None when skipped) and its JSON-safe summary: the window asked for, its
    ``source``, ``align_field``, the analysed ``bins`` ([first, stop) in the data's
    window) and the ms they span, then the frequency and R² or ``skipped``.
    """
    bin_ms, data_window = float(attrs["bin_ms"]), [float(v) for v in attrs["window_ms"]]
    given = window_ms is not None
    window = tuple(float(v) for v in window_ms) if given else jpca.CHURCHLAND_WINDOW_MS
    info: dict[str, Any] = {
        "window_ms": list(window),
        "source": "--jpca-window" if given else "default (Churchland et al. 2012)",
        "align_field": str(attrs["align_field"]),
        "data_window_ms": data_window,
    }
    try:
        bins = jpca.window_bins(window, data_window, bin_ms)
    except ValueError as err:
        if given:
            raise
        return None, info | {"skipped": str(err)}
    info |= {
        "bins": [bins.start, bins.stop],
        "bins_ms": [data_window[0] + bins.start * bin_ms, data_window[0] + bins.stop * bin_ms],
    }
    labels = np.unique(condition)
    if labels.size < 2 or factors.shape[-1] < 2:
        why = "fewer than 2 conditions" if labels.size < 2 else "fewer than 2 factors"
        return None, info | {"skipped": why}
    cond_mean = np.stack([factors[condition == c].mean(0) for c in labels])
    n_pcs = min(6, factors.shape[-1] // 2 * 2)
    jp = jpca.jpca(cond_mean, bin_ms / 1000.0, n_pcs=n_pcs, times=bins)
    return jp, info | {
        "rotation_hz": jpca.rotation_frequency_hz(jp),
        "r2_skew": jp.r2_skew,
        "r2_best": jp.r2_best,
        "data": "condition-averaged factors",
    }


def analyze_run(
    run: Path,
    rule: str = "motion",
    jpca_window_ms: tuple[float, float] | None = None,
    exact: bool = False,
) -> dict[str, Any]:
    """Write ``analysis/`` for ``run``; returns the summary.

    ``rule``: how the dominant rotating pair of a bin is chosen (``modes.RULES``).
    ``jpca_window_ms``: jPCA's window in ms from the alignment event (None: −50 to +150
    ms, see :func:`condition_jpca`); one the data do not cover is refused before the
    long work. ``exact``: LAPACK at every point instead of the fast path
    (``modes.jacobian_modes``).
    """
    modes.check_rule(rule)  # before any long work
    run = RunFolder.open(run)
    out = run / run.ANALYSIS
    if (out / "summary.json").exists():
        raise RunFolderError(
            f"{out / 'summary.json'} already exists; remove {out} to analyze again"
        )
    inf, attrs = run.inference()  # the cheap checks first: no weights are read for a bad file
    cfg, data, params = run.config, run.data, run.params()
    dt = float(attrs["bin_ms"]) / 1000.0
    cell_fn = lfads.generator_cell(cfg.model)
    condition = _conditions(data.tensors, inf["rates"].shape[0])
    try:  # jPCA is quick: a window the data lack is refused before the modes' long work
        jp, jpca_summary = condition_jpca(  # the generating path's factors
            inf["factors"], condition, attrs, jpca_window_ms
        )
    except ValueError as err:
        raise RunFolderError(f"{run / run.INFERENCE}: {err} (--jpca-window)") from None
    lin = _linearisation(run, inf, cell_fn, params["gen"])
    m = modes.jacobian_modes(
        cell_fn,
        params["gen"],
        lin.points,
        cfg.model.co_dim,
        dt,
        states=lin.states,
        initial=inf["g0"],
        rule=rule,
        exact=exact,
        progress=True,
    )  # decomposes d_t = a_{t-1} - e*_t, the deviation J_h acts on
    residual = (
        inf["fixed_point_residual"]  # written by `infer` along the same expansion points
        if "fixed_point_residual" in inf
        else modes.fixed_point_residual(cell_fn, params["gen"], lin.points, u_dim=cfg.model.co_dim)
    )
    summary = _summary(cfg.model.generator, m, condition, lin, residual, dt, jpca_summary)
    out.mkdir(parents=True, exist_ok=True)
    _write_modes(out / "modes.h5", m, residual, inf, condition, lin.source, dt)
    jp_ms = jpca_summary.get("bins_ms")
    _figures(out / "figures", inf, data, m, jp, jp_ms, condition, lin.points, lin.states, dt, attrs)
    atomic.write_json(out / "summary.json", summary)  # strict JSON: NaN becomes null
    return summary


class Linearisation(NamedTuple):
    """Where each bin is linearised: ``points``/``states`` ``[trial, time, gen]``."""

    points: np.ndarray  # e*_t
    states: np.ndarray  # the states the deviations a_{t-1} - e*_t are taken from
    source: str  # expansion_points_source
    finder: Any  # the numerical fixed points (``find_fixed_points``' result)


def _linearisation(run: RunFolder, inf: dict[str, Any], cell_fn, gen) -> Linearisation:
    """The expansion network's points (JSLDS generators), else for each bin the numerical
    fixed point nearest the state it starts from; the finder runs either way (compared)."""
    cfg = run.config.model
    mode = lfads.GENERATORS[cfg.generator]
    cell = lambda h, u: cell_fn(gen, h, u)  # noqa: E731
    # the finder starts from the generating path's states (a for slds, g otherwise)
    fps = numerical_fixed_points(cell, inf[lfads.PATHS[mode.path].states], cfg.co_dim)
    if mode.has_jslds:
        source = "expansion network E (JSLDS)"
        return Linearisation(inf["expansion_points"], inf["jslds_states"], source, fps)
    if len(fps.points) == 0:
        raise RunFolderError(
            f"{run}: the generator has no expansion network ({cfg.generator}) and the "
            "numerical fixed-point finder found no fixed point to linearise around"
        )
    states = inf["gen_states"]
    # bin t is linearised around the fixed point nearest g_{t-1}, the state it maps
    prev = modes.previous_states(states, inf["g0"])
    _, nearest = modes.distance_to_nearest(prev, fps.points, return_index=True)
    source = "nearest numerical fixed point (gru generator: no expansion network)"
    return Linearisation(fps.points[nearest], states, source, fps)  # chunked: memory bounded


def _summary(generator, m, condition, lin, residual, dt, jpca_summary) -> dict[str, Any]:
    """``summary.json`` (module docstring)."""
    mode_summary = modes.summarize_modes(m, condition)
    overall = mode_summary["overall"]
    distinct = modes.count_distinct(lin.points, DISTINCT_TOL)
    fps = lin.finder
    return {
        "rotation_hz_median": overall["freq_hz"]["median"],
        "rotation_hz_iqr": overall["freq_hz"]["iqr"],
        "tau_s_median": overall["tau_s_median"],
        "fixed_point_residual_median": float(np.median(residual)),
        "n_trials": int(condition.size),
        "dt_s": dt,
        "eig_sort": m.sort,
        "dominant_rule": m.rule,
        "modes_exact": m.exact,
        "modes_decomposed_exactly": m.n_exact,
        "generator": generator,
        "expansion_points_source": lin.source,
        "distinct_fixed_points_per_trial": {
            "tolerance": DISTINCT_TOL,
            "median": float(np.median(distinct)),
            "max": int(np.max(distinct)),
        },
        "numerical_fixed_points": {
            "found": int(len(fps.points)),
            "starts": int(fps.n_candidates),
            "distance_expansion_to_nearest_median": float(
                np.median(modes.distance_to_nearest(lin.points, fps.points))
            )
            if len(fps.points)
            else None,
        },
        "jpca": jpca_summary,
        "modes": mode_summary,
    }


def _write_modes(path: Path, m, residual, inf, condition, source: str, dt: float) -> None:
    """``modes.h5``: per trial and bin the dominant mode, spectra and planes."""
    save_h5_dict(
        path,
        {
            "freq_hz": m.freq_hz,
            "tau_s": m.tau_s,
            "abs_lambda": m.abs_lambda,
            "share": m.share,
            "has_rotation": m.has_rotation,
            "eigenvalues": m.eigenvalues,
            "plane": m.plane,
            "fixed_point_residual": np.asarray(residual),
            "trial_ids": inf["trial_ids"],
            "condition": condition,
        },
        {
            "dt_s": dt,
            "eig_sort": m.sort,
            "dominant_rule": m.rule,
            "expansion_points_source": source,
        },
    )


def _figures(folder, inf, data, m, jp, jp_ms, condition, points, states, dt, attrs) -> None:
    n_t = points.shape[1]
    times = (float(attrs["window_ms"][0]) / 1000.0) + dt * (np.arange(n_t) + 0.5)
    figures.eigenvalue_spectra(m.eigenvalues, condition, times, folder / "eigenvalues.png")
    rot = m.has_rotation
    figures.mode_histograms(m.freq_hz[rot], m.tau_s[rot], folder / "mode_histograms.png")
    first = int(np.argmax(m.plane_valid)) if m.plane_valid.any() else None
    if first is not None:
        plane = m.plane[first]
        proj = np.einsum("ktn,nj->ktj", states - states.mean((0, 1)), plane)
        figures.rosette(
            proj,
            condition,
            folder / "rosette_jacobian_plane.png",
            f"Trajectories in trial {first}'s dominant rotational plane",
        )
    if jp is not None:
        figures.rosette(
            jp.projection,
            np.arange(jp.projection.shape[0]),
            folder / "rosette_jpca.png",
            f"jPCA plane 1 of condition-averaged factors, {jp_ms[0]:g} to {jp_ms[1]:g} ms "
            f"({jpca.rotation_frequency_hz(jp):.2f} Hz)",
        )
    figures.expansion_points_pca(states, points, condition, folder / "expansion_points_pca.png")
    trial = 0
    spikes = data.train_input[trial][:, np.argsort(data.tensors["heldin_unit_ids"])]  # id order
    heldin = ~np.asarray(inf["heldout"], bool)
    figures.raster_vs_rates(
        spikes, inf["rates"][trial][:, heldin] / dt, times, folder / "raster_vs_rates.png", trial
    )
