"""NLB-style tensors from a session: aligned spike counts, lagged behaviour, condition PSTHs.

Why: LFADS trains on ``[trial, time, neuron]`` count tensors, and the NLB metrics need the
same cuts nlb_tools makes (held-in / held-out units, the observed and forward windows, the
lagged hand velocity, smoothed condition PSTHs). Key names follow nlb_tools, so files made
here and there interoperate.

Binning: counts come straight from each unit's sorted spike times: ``np.searchsorted`` at
every bin edge of every trial, differenced (no per-spike loop, no 1 ms matrix). Spike times
in these files sit on a 1 ms grid, so bin edges are placed half a millisecond early: a spike
at exactly ``align + k`` ms falls in the bin that starts there (as nlb_tools' rounding to
1 ms has it), whatever rounding the float arithmetic did.

Trial splits (``phase``): ``"val"`` (the local evaluation NLB describes): train tensors from
``split == "train"``, eval tensors from ``split == "val"``, with held-out and forward
targets. ``"test"``: train tensors from train and val trials, eval tensors from
``split == "test"`` with held-in spikes only (held-out units, behaviour and the forward window
are not observable there). Other splits (``"none"``) are ignored. A file without a usable
split (no ``split`` column, or NLB's test files, every trial "test") needs ``val_fraction``;
one whose units table flags no held-out unit needs ``heldout_fraction`` or ``heldout_units``.

Units: spikes per bin (float32; NaN where a unit's ``obs_intervals`` do not cover the window).
Behaviour: the series' unit (hand_vel: mm/s), resampled as nlb_tools does (anti-alias
low-pass, then read at each bin's start; ``resample_behavior``), lagged by the dataset's lag.

Per-dataset conventions (behaviour lag, PSTH kernel) come from ``data.nlb``'s table, the
row picked by the ``dataset`` argument or else by the file's name (``conventions``).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy.signal import fftconvolve, firwin, oaconvolve

from lfads_jslds.data import nlb
from lfads_jslds.data.nwb import Behavior, DataError, Session, Units, open_hdf5
from lfads_jslds.io.h5 import read_group, save_h5_dict

#: Taps of nlb_tools' anti-alias filter (``scipy.signal.decimate(..., n=500, ftype="fir")``).
ANTIALIAS_TAPS = 501
#: Trial columns that define a condition, as nlb_tools uses for MC_Maze.
COND_FIELDS = ("trial_type", "trial_version")
#: Bin edges sit this far (s) before the nominal edge: half a 1 ms spike-time tick.
HALF_TICK_S = 0.0005


def bin_counts(spikes: np.ndarray, starts_s: np.ndarray, n_bins: int, bin_ms: int) -> np.ndarray:
    """Counts [trial, bin] of sorted ``spikes`` (s) in ``[start + k bin, start + (k+1) bin)``."""
    edges = starts_s[:, None] + (bin_ms * np.arange(n_bins + 1))[None, :] / 1000.0
    return np.diff(np.searchsorted(spikes, edges.ravel()).reshape(edges.shape), axis=1)


def observed(intervals: np.ndarray | None, start_s: np.ndarray, stop_s: np.ndarray) -> np.ndarray:
    """[trial] True where ``[start, stop]`` lies inside one observation interval (None: all).

    Up to half a 1 ms tick of slack at both ends: a window that ends where its trial's
    interval ends must not fail on float rounding (NLB's test files: ``onset + 0.45`` s
    exceeds ``stop_time`` by 4e-16 s).
    """
    if intervals is None:
        return np.ones(start_s.size, bool)
    if intervals.size == 0:
        return np.zeros(start_s.size, bool)
    iv = intervals[np.argsort(intervals[:, 0], kind="stable")]
    k = np.searchsorted(iv[:, 0], start_s + HALF_TICK_S, side="right") - 1
    return (k >= 0) & (stop_s - HALF_TICK_S <= iv[np.maximum(k, 0), 1])


def conventions(
    path: str | Path | None, dataset: str | None = None, lag_ms: int | None = None
) -> dict[str, Any]:
    """The per-dataset values ``prepare`` uses, as recorded with the tensors.

    ``dataset``: a row of ``data.nlb`` by name (None: matched from ``path``, ``GENERIC``
    when nothing matches); ``lag_ms`` overrides the row's lag. Returns ``dataset`` (the
    row's name), ``lag_ms`` and ``psth_kern_sd_ms`` (the generic values where NLB defines
    none for the row).
    """
    row = nlb.identify(path) if dataset is None else nlb.facts(dataset)
    if lag_ms is None:
        lag_ms = row.lag_ms if row.lag_ms is not None else nlb.GENERIC.lag_ms
    kern = row.psth_kern_sd_ms
    kern = nlb.GENERIC.psth_kern_sd_ms if kern is None else kern
    return {"dataset": row.name, "lag_ms": lag_ms, "psth_kern_sd_ms": float(kern)}


def decimation_factor(series: Behavior, bin_ms: int, path: Path | None = None) -> int:
    """Samples of ``series`` per bin; DataError unless the bin holds a whole number of them."""
    step_ms = 1000.0 * series.sample_interval()
    q = bin_ms / step_ms if step_ms > 0 else 0.0
    if round(q) < 1 or abs(q - round(q)) > 1e-6 * q:
        raise DataError(
            f"{path}: behaviour series {series.name!r} is sampled every {step_ms:g} ms; the "
            f"{bin_ms} ms bin must hold a whole number of samples"
        )
    return int(round(q))


def resample_behavior(
    series: Behavior, starts_s: np.ndarray, n_bins: int, bin_ms: int
) -> np.ndarray:
    """[trial, bin, channel] of ``series`` resampled as nlb_tools does, read at bin starts.

    nlb_tools decimates the continuous series by q = bin / sample interval with
    ``scipy.signal.decimate(x, q, n=500, ftype="fir")``: a 501-tap Hamming-window FIR
    low-pass at the new Nyquist frequency (``firwin(501, 1 / q)``), applied centred (zero
    phase; zeros past the series' ends), then every q-th sample kept. The same filter is
    applied here and the filtered series read at the sample of each bin's start (on NLB's
    bin grid, exactly decimate's samples). As there, NaN gaps are filled by linear
    interpolation before filtering, and a bin whose start sample is NaN is NaN; so is one
    that starts outside the series. No filter when a bin is one sample (q = 1).
    """
    q = decimation_factor(series, bin_ms)
    data = np.asarray(series.data, dtype=np.float64)
    finite = np.isfinite(data)
    filled = data.copy()
    at = np.arange(data.shape[0])
    for c in range(data.shape[1]):
        ok = finite[:, c]
        if ok.any() and not ok.all():
            filled[~ok, c] = np.interp(at[~ok], at[ok], data[ok, c])
    if q > 1:
        taps = firwin(ANTIALIAS_TAPS, 1.0 / q, window="hamming")
        filled = oaconvolve(filled, taps[:, None], mode="same", axes=0)
    times = series.times()
    half = series.sample_interval() / 2
    starts = starts_s[:, None] + (bin_ms * np.arange(n_bins))[None, :] / 1000.0
    k = np.minimum(np.searchsorted(times, starts - half), times.size - 1)
    inside = np.abs(times[k] - starts) <= half
    return np.where(inside[..., None] & finite[k], filled[k], np.nan)


def spike_tensor(
    units: Units, members: np.ndarray, align_s: np.ndarray, window_ms: tuple[int, int], bin_ms: int
) -> np.ndarray:
    """Counts [trial, bin, neuron] of units ``members`` in ``window_ms`` around ``align_s``.

    float32 spikes per bin; NaN for a trial whose window a unit's obs_intervals do not cover.
    """
    t0, t1 = window_ms
    out = np.empty((align_s.size, (t1 - t0) // bin_ms, members.size), np.float32)
    starts = align_s + t0 / 1000.0 - HALF_TICK_S
    for j, u in enumerate(members):
        out[:, :, j] = bin_counts(units.spikes(u), starts, out.shape[1], bin_ms)
        seen = observed(units.intervals(u), align_s + t0 / 1000.0, align_s + t1 / 1000.0)
        out[~seen, :, j] = np.nan
    return out


def condition_psth(
    units: Units,
    order: np.ndarray,
    align_s: np.ndarray,
    cond: np.ndarray,
    n_cond: int,
    window_ms: tuple[int, int],
    bin_ms: int,
    kern_sd_ms: float,
) -> np.ndarray:
    """Smoothed PSTHs [condition, bin, neuron] in spikes per bin, neurons in ``order``.

    As nlb_tools makes them: each trial's 1 ms spike train is smoothed with NLB's Gaussian
    (``nlb.gaussian_window``, s.d. ``kern_sd_ms``, 'same' alignment: spikes up to 3 s.d.
    outside the window count), summed into bins and averaged over the condition's trials in
    which the unit was observed. Smoothing is linear, so the 1 ms trains of a condition are
    summed first (per-spike ``bincount``) and smoothed once.
    """
    w0, w1 = window_ms
    kernel = nlb.gaussian_window(kern_sd_ms)
    margin = kernel.size // 2  # 'same' reaches this far back, (size - 1) // 2 ahead
    length = w1 - w0 + kernel.size - 1  # 1 ms samples per trial
    psth = np.full((n_cond, (w1 - w0) // bin_ms, order.size), np.nan)
    for j, u in enumerate(order):
        spikes = units.spikes(u)
        ok = observed(units.intervals(u), align_s + w0 / 1000.0, align_s + w1 / 1000.0)
        start = align_s[ok] + (w0 - margin) / 1000.0 - HALF_TICK_S
        lo = np.searchsorted(spikes, start)
        n = np.searchsorted(spikes, start + length / 1000.0) - lo
        trial = np.repeat(np.arange(start.size), n)
        first = np.cumsum(n) - n
        idx = np.arange(trial.size) - first[trial] + lo[trial]
        t = np.clip(np.floor((spikes[idx] - start[trial]) * 1000.0).astype(np.int64), 0, length - 1)
        c = cond[ok]
        hist = np.bincount(c[trial] * length + t, minlength=n_cond * length)
        trains = hist.reshape(n_cond, length).astype(np.float64)
        smooth = fftconvolve(trains, kernel[None], mode="valid")  # [condition, w1 - w0]
        binned = smooth.reshape(n_cond, -1, bin_ms).sum(2)
        trials = np.bincount(c, minlength=n_cond)
        with np.errstate(invalid="ignore", divide="ignore"):
            psth[:, :, j] = np.where(trials[:, None] > 0, binned / trials[:, None], np.nan)
    return psth


def _check_params(
    bin_ms: int, window_ms: tuple[int, int], forward_ms: int, lag_ms: int, phase: str
) -> None:
    if not isinstance(bin_ms, int | np.integer) or bin_ms <= 0:
        raise DataError(f"bin width must be a positive whole number of ms, got {bin_ms!r}")
    w0, w1 = window_ms
    if w1 <= w0:
        raise DataError(f"window {window_ms} ms is empty: its end must come after its start")
    if (w1 - w0) % bin_ms:
        raise DataError(
            f"bin width {bin_ms} ms does not divide the {w1 - w0} ms window {tuple(window_ms)}"
        )
    if forward_ms < 0 or forward_ms % bin_ms:
        raise DataError(f"bin width {bin_ms} ms does not divide the {forward_ms} ms forward window")
    if not isinstance(lag_ms, int | np.integer):
        raise DataError(f"behaviour lag must be a whole number of ms, got {lag_ms!r}")
    if phase not in ("val", "test"):
        raise DataError(f"phase must be 'val' or 'test', got {phase!r}")


def _check_behavior_seen(
    series: Behavior,
    binned: np.ndarray,
    part: str,
    lag_ms: int,
    window_ms: tuple[int, int],
    align_field: str,
    path: Path,
) -> None:
    """Refuse a behaviour lag that leaves ``binned [trial, bin, channel]`` all NaN: every
    lagged window falls outside the series (or on its NaN samples) and vel R2 would be
    computed from nothing."""
    if not np.isnan(binned).all():
        return
    times = series.times()
    raise DataError(
        f"{path}: with the behaviour lag of {lag_ms} ms, no {part} trial has a finite "
        f"processing/behavior/{series.name} sample in its window ({window_ms[0] + lag_ms} to "
        f"{window_ms[1] + lag_ms} ms from {align_field}; the series spans {times[0]:g} to "
        f"{times[-1]:g} s): the lag is out of range; give a --lag-ms (data.lag_ms) that keeps "
        "the windows inside the series (NLB: 100 for MC_Maze, 120 for the others), or none"
    )


def _check_split(
    path: Path,
    phase: str,
    val_fraction: float | None,
    heldout_fraction: float | None,
    heldout_units: Sequence[int] | None,
) -> None:
    """Refuse split options that cannot be honoured, before any binning."""
    for name, value in (("val_fraction", val_fraction), ("heldout_fraction", heldout_fraction)):
        if value is not None and not 0.0 < value < 1.0:
            raise DataError(f"{path}: {name} must lie strictly between 0 and 1, got {value}")
    if heldout_fraction is not None and heldout_units is not None:
        raise DataError(f"{path}: give heldout_fraction or heldout_units, not both")
    if val_fraction is not None and phase == "test":
        raise DataError(
            f"{path}: phase 'test' takes its eval trials from the file's test split; "
            "val_fraction applies to phase 'val'"
        )


def _draw(n: int, fraction: float, rng: np.random.Generator, path: Path, what: str) -> np.ndarray:
    """[n] bool, ``round(fraction n)`` of them True at random; both sides non-empty."""
    k = int(round(fraction * n))
    if not 0 < k < n:
        raise DataError(
            f"{path}: a fraction {fraction} of {n} {what} leaves {k} on one side and {n - k} on "
            "the other; both need at least one"
        )
    flags = np.zeros(n, bool)
    flags[rng.choice(n, k, replace=False)] = True
    return flags


def _heldout_flags(
    units: Units,
    path: Path,
    fraction: float | None,
    listed: Sequence[int] | None,
    seed: int,
) -> np.ndarray:
    """[unit] True for held-out units: ``listed`` ids, else a random ``fraction`` (``seed``),
    else the file's ``heldout`` column. An option replaces the column, with a warning."""
    column = units.heldout
    if listed is not None:
        absent = sorted(set(listed) - set(units.ids.tolist()))
        if absent:
            gone = sorted(set(absent) & set(units.dropped))
            note = f" ({gone[:10]} dropped for having no spikes)" if gone else ""
            raise DataError(f"{path}: heldout_units names ids not in /units: {absent[:10]}{note}")
        flags = np.isin(units.ids, listed)
        how = f"the {int(flags.sum())} listed units"
    elif fraction is not None:
        flags = _draw(units.n_units, fraction, np.random.default_rng((seed, 0)), path, "units")
        how = f"{int(flags.sum())} of {units.n_units} units drawn at random (fraction {fraction})"
    elif column is None or not column.any():
        state = "has no 'heldout' column" if column is None else "flags no unit (heldout all False)"
        raise DataError(
            f"{path}: the units table {state}, and co-bps needs held-out units: pass "
            "--heldout-fraction (e.g. 0.25) or --heldout-units (config data.heldout_fraction, "
            "data.heldout_units)"
        )
    else:
        return column
    if flags.all():
        raise DataError(f"{path}: every unit is held out; the encoder needs held-in units")
    if column is not None and column.any():
        warnings.warn(
            f"{path}: the units table's heldout column ({int(column.sum())} units) is replaced "
            f"by {how}",
            stacklevel=3,
        )
    return flags


def _select_trials(
    session: Session, align_field: str, phase: str, val_fraction: float | None, seed: int
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(align times [trial] s, rows of the train and eval trials); NaN onsets dropped, warned.

    Phase "val": the file's train / val split, or with ``val_fraction`` a random draw
    (``seed``) from its train and val trials (from all its trials where it has none, e.g.
    NLB's test files, whose every trial is "test"); a file split so replaced is warned about.
    """
    trials, path = session.trials, session.path
    needed = (align_field,) if val_fraction is not None else (align_field, "split")
    for name in needed:
        if name not in trials:
            cols = ", ".join(k for k in trials if k != "id")
            hint = "; pass --val-fraction to draw a split" if name == "split" else ""
            raise DataError(
                f"{path}: /intervals/trials has no column {name!r}{hint}; it has: {cols}"
            )
    align = np.asarray(trials[align_field], dtype=np.float64)
    n = align.size
    split = np.asarray(trials["split"]).astype(str) if "split" in trials else np.full(n, "")
    sources = {"train": ("train",) if phase == "val" else ("train", "val")}
    sources["eval"] = ("val",) if phase == "val" else ("test",)
    member = {part: np.isin(split, names) for part, names in sources.items()}
    if val_fraction is not None:
        pool = np.isin(split, ["train", "val"])
        if not pool.any():
            pool = split != "none"
    else:
        pool = member["train"] | member["eval"]
    bad = pool & ~np.isfinite(align)
    if bad.any():
        ids = ", ".join(str(i) for i in trials["id"][bad][:10]) + (" ..." if bad.sum() > 10 else "")
        warnings.warn(
            f"{path}: dropped {bad.sum()} of {pool.sum()} trials whose {align_field} is NaN "
            f"(trial ids {ids})",
            stacklevel=3,
        )
    if val_fraction is not None:
        usable = np.flatnonzero(pool & np.isfinite(align))
        val = _draw(usable.size, val_fraction, np.random.default_rng((seed, 1)), path, "trials")
        rows = {"train": usable[~val], "eval": usable[val]}
        if "split" in trials:
            names, counts = np.unique(split, return_counts=True)
            had = ", ".join(f"{c} {s}" for s, c in zip(names, counts, strict=True))
            warnings.warn(
                f"{path}: the file's trial split ({had}) is ignored: {val.sum()} val and "
                f"{(~val).sum()} train trials drawn at random (val_fraction {val_fraction})",
                stacklevel=3,
            )
        return align, rows
    rows = {}
    for part, names in sources.items():
        rows[part] = np.flatnonzero(member[part] & np.isfinite(align))
        if rows[part].size == 0:
            hint = "; pass --val-fraction to draw train and val trials" if phase == "val" else ""
            raise DataError(
                f"{path}: no {part} trials (phase {phase!r} takes them from split "
                f"{' and '.join(names)}; the file has {', '.join(sorted(set(split.tolist())))})"
                f"{hint}"
            )
    return align, rows


def _forward_room(
    session: Session,
    align_field: str,
    align: np.ndarray,
    rows: np.ndarray,
    end_ms: int,
    forward_ms: int,
) -> int:
    """``forward_ms``, or 0 (warned) where no trial's ``stop_time`` reaches past the window's
    end by that much (NLB's test files end every trial at the window's end)."""
    if not forward_ms or "stop_time" not in session.trials:
        return forward_ms
    after = np.asarray(session.trials["stop_time"], np.float64)[rows] - align[rows]
    if (after >= (end_ms + forward_ms) / 1000.0 - HALF_TICK_S).any():
        return forward_ms
    warnings.warn(
        f"{session.path}: the trials end at most {1000 * after.max():.0f} ms after "
        f"{align_field}, leaving no room for the {forward_ms} ms forward window past "
        f"{end_ms} ms: no forward window (forward_ms 0, so no fp-bps)",
        stacklevel=3,
    )
    return 0


def _condition_tensors(
    session: Session,
    order: np.ndarray,
    align: np.ndarray,
    rows: dict[str, np.ndarray],
    window_ms: tuple[int, int],
    bin_ms: int,
    kern_sd_ms: float,
) -> dict[str, np.ndarray]:
    """``conditions``, ``{train,eval}_cond_id``, ``{train,eval}_cond_idx`` and ``psth``."""
    trials = session.trials
    missing = [f for f in COND_FIELDS if f not in trials]
    if missing:
        warnings.warn(
            f"{session.path}: /intervals/trials has no {', '.join(missing)}: no conditions, "
            "so no psth or cond_idx tensors (psth R2 will be skipped)",
            stacklevel=3,
        )
        return {}
    both = np.concatenate([rows["train"], rows["eval"]])
    keys = np.stack([np.asarray(trials[f])[both] for f in COND_FIELDS], 1)
    conditions, cond = np.unique(keys, axis=0, return_inverse=True)
    cond = cond.ravel()
    out = {"conditions": conditions}
    n_train = rows["train"].size
    for part, ids in (("train", cond[:n_train]), ("eval", cond[n_train:])):
        out[f"{part}_cond_id"] = ids
        idx_lists = np.empty(len(conditions), dtype=object)
        idx_lists[:] = [np.flatnonzero(ids == c) for c in range(len(conditions))]
        out[f"{part}_cond_idx"] = idx_lists
    psth = condition_psth(
        session.units, order, align[both], cond, len(conditions), window_ms, bin_ms, kern_sd_ms
    )
    out["psth"] = psth.astype(np.float32)
    return out


def prepare(
    session: Session,
    bin_ms: int = 5,
    align_field: str = "move_onset_time",
    window_ms: tuple[int, int] = (-250, 450),
    forward_ms: int = 200,
    lag_ms: int | None = None,
    *,
    dataset: str | None = None,
    phase: str = "val",
    behavior_field: str = "hand_vel",
    val_fraction: float | None = None,
    heldout_fraction: float | None = None,
    heldout_units: Sequence[int] | None = None,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """NLB tensors of ``session`` (see the module doc for splits, units and binning).

    ``dataset``: the ``data.nlb`` row whose conventions apply (None: matched from the
    file's name; see ``conventions``, whose values the caller records with the tensors);
    ``lag_ms``: behaviour lag (None: the row's). Split options, each replacing
    what the file says (with a warning) and needed where the file says nothing usable:
    ``val_fraction`` of the trials drawn as eval trials (phase "val"); ``heldout_fraction``
    of the units drawn, or the ``heldout_units`` ids, held out. ``seed`` draws both
    (independent streams). The forward window is dropped (warned) when no trial's
    ``stop_time`` leaves room for it.

    Keys: ``{train,eval}_spikes_{heldin,heldout}[_forward]`` [trial, time, neuron];
    ``{train,eval}_behavior`` [trial, time, 2]; ``psth`` [condition, time, neuron] (held-in
    then held-out neurons, train and eval trials, the row's PSTH kernel);
    ``{train,eval}_cond_idx`` (nlb_tools' form: per condition, the trial indices into the
    train / eval tensors);
    ``{train,eval}_cond_id`` [trial] (row of ``conditions`` [condition, 2], the
    (trial_type, trial_version) pairs); ``{train,eval}_trial_ids`` (ids of the NWB trials
    table); ``heldin_unit_ids``, ``heldout_unit_ids`` (NWB unit ids, in tensor order: each
    group in units-table row order); ``unit_ids`` (all of them in units-table row order,
    the order ``inference.h5`` gives its rates).
    """
    used = conventions(session.path, dataset, lag_ms)
    lag = used["lag_ms"]
    _check_params(bin_ms, window_ms, forward_ms, lag, phase)
    behavior = session.behavior.get(behavior_field)
    if behavior is not None:
        decimation_factor(behavior, bin_ms, session.path)
    units, path = session.units, session.path
    _check_split(path, phase, val_fraction, heldout_fraction, heldout_units)
    align, rows = _select_trials(session, align_field, phase, val_fraction, seed)
    heldout = _heldout_flags(units, path, heldout_fraction, heldout_units, seed)
    groups = {"heldin": np.flatnonzero(~heldout), "heldout": np.flatnonzero(heldout)}
    w0, w1 = window_ms
    both = np.concatenate(list(rows.values()))
    forward_ms = _forward_room(session, align_field, align, both, w1, forward_ms)
    windows = {"": (w0, w1), "_forward": (w1, w1 + forward_ms)} if forward_ms else {"": (w0, w1)}
    out: dict[str, np.ndarray] = {}
    if behavior is None:
        warnings.warn(
            f"{path}: no behaviour series {behavior_field!r} (available: "
            f"{', '.join(session.behavior_available) or 'none'}); the tensors have no "
            "train_behavior/eval_behavior and behaviour metrics (vel R2) will be skipped",
            stacklevel=2,
        )
    else:  # before the spikes: a lag that leaves no behaviour fails fast
        for part, idx in rows.items():
            if part == "eval" and phase == "test":
                continue  # hidden in NLB, as the held-out spikes are
            starts = align[idx] + (w0 + lag) / 1000.0
            binned = resample_behavior(behavior, starts, (w1 - w0) // bin_ms, bin_ms)
            _check_behavior_seen(behavior, binned, part, lag, (w0, w1), align_field, path)
            out[f"{part}_behavior"] = binned.astype(np.float32)
    for part, idx in rows.items():
        for group, members in groups.items():
            for suffix, window in windows.items():
                if part == "eval" and phase == "test" and (group, suffix) != ("heldin", ""):
                    continue  # NLB does not show held-out or forward data of test trials
                out[f"{part}_spikes_{group}{suffix}"] = spike_tensor(
                    units, members, align[idx], window, bin_ms
                )
        out[f"{part}_trial_ids"] = np.asarray(session.trials["id"])[idx]
    out["heldin_unit_ids"] = units.ids[groups["heldin"]]
    out["heldout_unit_ids"] = units.ids[groups["heldout"]]
    out["unit_ids"] = units.ids
    n_unobserved = sum(int(np.isnan(v[:, 0]).sum()) for k, v in out.items() if "_spikes_" in k)
    if n_unobserved:
        warnings.warn(
            f"{path}: {n_unobserved} (trial, unit) windows are outside the units' "
            "obs_intervals; their counts are NaN",
            stacklevel=2,
        )

    order = np.concatenate([groups["heldin"], groups["heldout"]])
    kern = used["psth_kern_sd_ms"]
    out.update(_condition_tensors(session, order, align, rows, window_ms, bin_ms, kern))
    return out


def write_tensors(path: Path, tensors: Mapping[str, np.ndarray], attrs: Mapping[str, Any]) -> None:
    """Write ``tensors`` (and ``attrs`` as file attributes) to HDF5, atomically."""
    save_h5_dict(path, tensors, attrs)


def read_tensors(path: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(tensors, attrs) of a file written by ``write_tensors``; ragged lists as object arrays."""
    with open_hdf5(Path(path), "a tensor file") as f:
        return read_group(f), dict(f.attrs)


def export_lfads_torch(path: Path, tensors: Mapping[str, np.ndarray]) -> None:
    """Write the lfads-torch HDF5 layout from ``prepare(..., phase="val")`` tensors.

    ``*_encod_data`` = held-in spikes [trial, time, held-in neuron]; ``*_recon_data`` =
    held-in then held-out neurons, observed then forward bins [trial, time + forward,
    neuron]; ``*_inds`` = NWB trial ids; plus ``*_behavior``, ``psth`` and ``*_cond_idx``
    (valid = eval) when present: what lfads-torch's NLB evaluation reads.
    """
    needed = [
        f"{p}_spikes_{g}{s}"
        for p in ("train", "eval")
        for g in ("heldin", "heldout")
        for s in ("", "_forward")
    ]
    missing = [k for k in needed if k not in tensors]
    if missing:
        raise DataError(
            f"export_lfads_torch needs tensors made with phase 'val' and a forward window; "
            f"missing: {', '.join(missing)}"
        )
    out: dict[str, np.ndarray] = {}
    for part, name in (("train", "train"), ("eval", "valid")):
        obs = np.concatenate(
            [tensors[f"{part}_spikes_heldin"], tensors[f"{part}_spikes_heldout"]], 2
        )
        fwd = np.concatenate(
            [tensors[f"{part}_spikes_heldin_forward"], tensors[f"{part}_spikes_heldout_forward"]], 2
        )
        out[f"{name}_encod_data"] = tensors[f"{part}_spikes_heldin"]
        out[f"{name}_recon_data"] = np.concatenate([obs, fwd], 1)
        out[f"{name}_inds"] = tensors[f"{part}_trial_ids"]
        for key in ("behavior", "cond_idx"):
            if f"{part}_{key}" in tensors:
                out[f"{name}_{key}"] = tensors[f"{part}_{key}"]
    if "psth" in tensors:
        out["psth"] = tensors["psth"]
    save_h5_dict(path, out)
