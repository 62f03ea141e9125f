"""The arrays LFADS trains on, from an NWB session or a tensor file, checked up front.

Why a separate layer: every stage (train, infer, evaluate, analyze) needs the same cut of
the data, and bad input must fail in seconds with the file and field named, before any
compiling.

Tensor files: ours (``prepare``: flat keys, attributes, trial and unit ids) or nlb_tools'
(NLB keys only, no attributes, no ids; flat as ``make_train_input_tensors`` writes them,
under one group named after the dataset as ``make_eval_target_tensors`` does, e.g.
``mc_maze_small_20``, or both in one file). What such a file lacks is completed here, the
same way at every stage: absent ids become positions (trials 0..n−1 over train then eval,
units 0..n−1 over held-in then held-out; ``attrs["ids_positional"]`` names which); the
bin width comes from the file's ``bin_ms`` attribute, an NLB group name (no suffix: 5 ms),
NLB's 700 ms window (140 bins: 5 ms, 35 bins: 20 ms) or ``data.bin_ms``, and all of these
that are present must agree; the dataset is named from the group or file name
(``data.nlb.identify``).

Layout (``LFADSData``): ``*_input [trial, T_obs, held-in]`` what the encoders see;
``*_target [trial, T_obs + T_fwd, held-in + held-out]`` what the readout reconstructs
(NaN where a count is not observed, e.g. held-out units of test trials). Spikes per bin.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lfads_jslds.data import nlb
from lfads_jslds.data.nwb import DataError, open_hdf5, read_session
from lfads_jslds.data.prepare import conventions, prepare, write_tensors
from lfads_jslds.io.h5 import read_group

NEEDED = ("train_spikes_heldin", "train_spikes_heldout", "eval_spikes_heldin")
#: NLB's MC_Maze trial window (ms around movement onset) and forward window (ms after it).
NLB_WINDOW_MS = (-250, 450)
NLB_FORWARD_MS = 200
#: Bin width (ms) an NWB session is cut at when ``data.bin_ms`` is not given.
DEFAULT_NWB_BIN_MS = 20
#: The ids a tensor file may carry, by kind: (train, eval) trials, (held-in, held-out) units.
ID_KEYS = {
    "trials": ("train_trial_ids", "eval_trial_ids"),
    "units": ("heldin_unit_ids", "heldout_unit_ids"),
}


@dataclass(frozen=True)
class LFADSData:
    """Train and eval trials in the model's layout; ``tensors`` keeps the NLB tensors."""

    train_input: np.ndarray
    train_target: np.ndarray
    eval_input: np.ndarray
    eval_target: np.ndarray
    tensors: dict[str, Any]
    attrs: dict[str, Any]
    path: Path

    @property
    def n_heldin(self) -> int:
        return self.train_input.shape[2]

    @property
    def n_neurons(self) -> int:
        return self.train_target.shape[2]

    @property
    def n_obs(self) -> int:
        return self.train_input.shape[1]

    @property
    def n_fwd(self) -> int:
        return self.train_target.shape[1] - self.n_obs

    @property
    def bin_ms(self) -> int:
        return int(self.attrs["bin_ms"])


def is_nwb(path: Path) -> bool:
    """NWB files carry ``nwb_version`` at the root; tensor files do not. A file named
    ``.nwb`` without it is refused (DataError): it is not what its name says."""
    path = Path(path)
    with open_hdf5(path, "an NWB or tensor file") as f:
        nwb = "nwb_version" in f.attrs
    if not nwb and path.suffix.lower() == ".nwb":
        raise DataError(
            f"{path}: not an NWB file (an HDF5 file without NWB's nwb_version attribute at /); "
            "give an NWB session, or a tensor file from `prepare`"
        )
    return nwb


def tensors_from_nwb(
    nwb: Path,
    out: Path,
    bin_ms: int | None,
    lag_ms: int | None,
    phase: str = "val",
    *,
    val_fraction: float | None = None,
    heldout_fraction: float | None = None,
    heldout_units: Sequence[int] | None = None,
    split_seed: int = 0,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Prepare NLB tensors from ``nwb`` and write them, with their attributes, to ``out``.

    ``bin_ms`` None: ``DEFAULT_NWB_BIN_MS``. The split options (see ``prepare``) are
    recorded as attributes when given, ``split_seed`` always, and the ids of units dropped
    for having no spikes as ``dropped_unit_ids``.
    """
    bin_ms = DEFAULT_NWB_BIN_MS if bin_ms is None else bin_ms
    session = read_session(nwb, behavior=["hand_vel"])
    split = {
        "val_fraction": val_fraction,
        "heldout_fraction": heldout_fraction,
        "heldout_units": heldout_units,
    }
    tensors = prepare(session, bin_ms=bin_ms, lag_ms=lag_ms, phase=phase, seed=split_seed, **split)
    fwd = tensors.get("train_spikes_heldin_forward")
    attrs = {
        "bin_ms": bin_ms,
        "align_field": "move_onset_time",
        "window_ms": list(NLB_WINDOW_MS),
        "forward_ms": 0 if fwd is None else fwd.shape[1] * bin_ms,  # 0: dropped by prepare
        **conventions(nwb, lag_ms=lag_ms),  # dataset, lag_ms, psth_kern_sd_ms
        "phase": phase,
        "source": str(Path(nwb).resolve()),
        "split_seed": split_seed,
        **{k: np.asarray(v) for k, v in split.items() if v is not None},
    }
    if session.units.dropped:  # units without spikes, left out with a warning
        attrs["dropped_unit_ids"] = np.asarray(session.units.dropped)
    write_tensors(out, tensors, attrs)
    return tensors, attrs


def _same(a: Any, b: Any) -> bool:
    """Equal arrays up to float32 rounding (NaN equal to NaN), ragged ones element-wise."""
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype == object or b.dtype == object:
        return a.shape == b.shape and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a.shape == b.shape and bool(np.allclose(a, b, rtol=1e-6, atol=0, equal_nan=True))


def read_tensor_file(path: Path) -> tuple[dict[str, Any], dict[str, Any], str | None]:
    """(tensors, attributes, group name or None) of a tensor file, its one group merged in.

    A key both at the root and in the group must hold the same values there.
    """
    path = Path(path)
    with open_hdf5(path, "a tensor file") as f:
        tree, attrs = read_group(f), dict(f.attrs)
    groups = [k for k, v in tree.items() if isinstance(v, dict)]
    if len(groups) > 1:
        raise DataError(
            f"{path}: {len(groups)} groups ({', '.join(groups)}); a tensor file holds its "
            "tensors at the root and in at most one group named after its dataset"
        )
    tensors = {k: v for k, v in tree.items() if not isinstance(v, dict)}
    if not groups:
        return tensors, attrs, None
    group = groups[0]
    for key, value in tree[group].items():
        if isinstance(value, dict):
            raise DataError(f"{path}: /{group}/{key} is a group; tensors nest one level at most")
        if key in tensors and not _same(tensors[key], value):
            raise DataError(f"{path}: {key} differs between / and /{group}")
        tensors[key] = value
    return tensors, attrs, group


def _join(
    parts: list[np.ndarray | None], n_trials: int, n_time: int, widths: list[int]
) -> np.ndarray:
    """Concatenate neuron groups, filling a missing group with NaN (unobserved)."""
    blocks = [
        np.full((n_trials, n_time, w), np.nan, np.float32) if p is None else p.astype(np.float32)
        for p, w in zip(parts, widths, strict=True)
    ]
    return np.concatenate(blocks, 2)


#: Why these count tensors must be fully observed (no NaN); the others are targets only,
#: where NaN means "not observed" and the Poisson NLL skips the entry.
NO_NAN = {
    "train_spikes_heldin": "the encoder needs every held-in count",
    "eval_spikes_heldin": "the encoder needs every held-in count",
    "train_spikes_heldout": "the held-out neurons are learned from the train trials' counts",
}


def _count_problems(x: np.ndarray, bin_ms: int, why_nan: str | None) -> list[tuple[Any, str, str]]:
    """``(mask, what the bad counts are, the fix)`` per rule ``x [trial, ...]`` breaks.

    Counts are spikes per bin: finite, whole, non-negative, and at most ``bin_ms``: one
    spike per ms, faster than the refractory period (about 1 ms or more) of a sorted unit
    allows, so a larger count is a unit or file error, not data to fit. NaN (not observed)
    is refused only where ``why_nan`` says why.
    """
    finite = np.isfinite(x)
    if why_nan is None:
        rules = [(np.isinf(x), "infinite", "spike counts are finite: recount them")]
    else:
        rules = [(~finite, "NaN/Inf", f"{why_nan}: drop those trials or units")]
    rules += [
        (finite & (x < 0), "negative", "spike counts are never negative: recount them"),
        (
            finite & (x != np.round(x)),
            "non-integer",
            "spike counts, not rates or smoothed data, are needed (`lfads-jslds prepare` "
            "bins spike times)",
        ),
        (
            finite & (x > bin_ms),
            "impossible",
            f"above {bin_ms} in a {bin_ms} ms bin is over 1 spike per ms, faster than any "
            "sorted unit fires: check the units and the bin width",
        ),
    ]
    return [rule for rule in rules if rule[0].any()]


def _check_counts(
    path: Path, tensors: dict[str, Any], bin_ms: int, source: str | None = None
) -> None:
    """Refuse any ``*_spikes_*`` tensor (every window, forward ones too) whose counts are
    not spike counts, naming the file, the tensor, the first bad entry and the fix."""
    cut_from = f" (cut from {source})" if source else ""
    for key in sorted(k for k in tensors if "_spikes_" in k):
        x = np.asarray(tensors[key])
        problems = _count_problems(x, bin_ms, NO_NAN.get(key))
        if problems:
            mask, what, fix = problems[0]
            first = tuple(int(i) for i in np.unravel_index(np.argmax(mask), mask.shape))
            n_trials = int(mask.reshape(mask.shape[0], -1).any(1).sum())
            raise DataError(
                f"{path}{cut_from}: {key} has {int(mask.sum())} {what} counts in "
                f"{n_trials} trials (first at [trial, bin, neuron] {list(first)}: "
                f"{x[first]:g}); {fix}"
            )


def _group_bin_ms(group: str | None) -> int | None:
    """The bin an NLB group name states: ``mc_maze_small_20`` → 20, ``mc_maze_small`` → 5."""
    if group is None:
        return None
    row = nlb.identify(group)
    match = re.fullmatch(rf"{row.name}(?:_(\d+))?", group.lower().replace("-", "_"))
    if row is nlb.GENERIC or match is None:
        return None
    return int(match.group(1)) if match.group(1) else 5


def resolve_bin_ms(
    path: Path,
    attrs: dict[str, Any],
    group: str | None,
    n_obs: int,
    n_fwd: int,
    requested: int | None,
) -> int:
    """The bin width (ms) of a tensor file's ``n_obs`` + ``n_fwd`` bins; every source present
    must agree (see the module doc), else a DataError naming each source and its value."""
    told: dict[str, int] = {}
    if "bin_ms" in attrs:
        told["its bin_ms attribute"] = int(attrs["bin_ms"])
    else:
        named = _group_bin_ms(group)
        if named is not None:
            told[f"its group name {group!r}"] = named
        window = NLB_WINDOW_MS[1] - NLB_WINDOW_MS[0]
        for b in nlb.BINS_MS:
            if n_obs * b == window and n_fwd * b in (0, NLB_FORWARD_MS):
                told[f"its {n_obs} bins per trial (NLB's {window} ms window)"] = b
    if requested is not None:
        told["data.bin_ms (the config or --bin-ms)"] = int(requested)
    if len(set(told.values())) > 1:
        said = "; ".join(f"{v} ms from {k}" for k, v in told.items())
        raise DataError(f"{path}: the bin width is ambiguous: {said}. Make them agree")
    if not told:
        raise DataError(
            f"{path}: cannot tell the bin width: no bin_ms attribute, no NLB group name, and "
            f"{n_obs} bins per trial are not NLB's 700 ms window at "
            f"{' or '.join(str(b) for b in nlb.BINS_MS)} ms; pass --bin-ms (data.bin_ms)"
        )
    return next(iter(told.values()))


def _complete_ids(
    path: Path, tensors: dict[str, Any], sizes: dict[str, tuple[int, int]]
) -> tuple[dict[str, Any], tuple[str, ...]]:
    """``tensors`` with positional ids where a kind has none; the kinds so completed."""
    out, positional = dict(tensors), []
    for kind, keys in ID_KEYS.items():
        have = [k for k in keys if k in tensors]
        if not have:
            edges = np.cumsum((0, *sizes[kind]))
            for key, lo, hi in zip(keys, edges[:-1], edges[1:], strict=True):
                out[key] = np.arange(lo, hi)
            positional.append(kind)
            continue
        if len(have) == 1:
            lacking = next(k for k in keys if k not in tensors)
            raise DataError(
                f"{path}: has {have[0]} but not {lacking}; give both, or neither (then "
                f"{kind} are numbered by position)"
            )
        for key, n in zip(keys, sizes[kind], strict=True):
            if np.shape(tensors[key]) != (n,):
                shape = np.shape(tensors[key])
                raise DataError(f"{path}: {key} has shape {shape}, expected ({n},)")
        ids = np.concatenate([tensors[k] for k in keys])
        if np.unique(ids).size != ids.size:
            raise DataError(f"{path}: {' and '.join(keys)} repeat an id")
    return out, tuple(positional)


def _cond_ids(tensors: dict[str, Any], n_trials: dict[str, int]) -> dict[str, np.ndarray]:
    """``{part}_cond_id [trial]`` from nlb_tools' ``{part}_cond_idx`` where only that is
    given (-1: a trial in no condition)."""
    out = {}
    for part, n in n_trials.items():
        if f"{part}_cond_idx" in tensors and f"{part}_cond_id" not in tensors:
            ids = np.full(n, -1)
            for c, rows in enumerate(tensors[f"{part}_cond_idx"]):
                ids[np.asarray(rows, int)] = c
            out[f"{part}_cond_id"] = ids
    return out


def _complete_attrs(
    path: Path,
    tensors: dict[str, Any],
    attrs: dict[str, Any],
    group: str | None,
    bin_ms: int,
    n_obs: int,
    n_fwd: int,
) -> dict[str, Any]:
    """``attrs`` with what every stage reads filled in: bin_ms, dataset, window_ms,
    align_field, forward_ms, phase ("test" where eval held-out spikes are absent)."""
    nlb_window = n_obs * bin_ms == NLB_WINDOW_MS[1] - NLB_WINDOW_MS[0]
    filled = {
        "dataset": nlb.identify(group if group is not None else path).name,
        "window_ms": list(NLB_WINDOW_MS) if nlb_window else [0, n_obs * bin_ms],
        "align_field": "move_onset_time" if nlb_window else "unknown",
        "forward_ms": n_fwd * bin_ms,
        "phase": "val" if "eval_spikes_heldout" in tensors else "test",
    }
    return {**filled, **attrs, "bin_ms": bin_ms}


def from_tensors(
    path: Path,
    tensors: dict[str, Any],
    attrs: dict[str, Any],
    bin_ms: int | None = None,
    group: str | None = None,
) -> LFADSData:
    """Build and check the model's arrays from NLB tensors (ours or nlb_tools').

    ``bin_ms``: the width the caller states (``data.bin_ms``), checked against the file;
    ``group``: the file's group name, if its tensors were nested (``read_tensor_file``).
    """
    missing = [k for k in NEEDED if k not in tensors]
    if missing:
        raise DataError(
            f"{path}: missing tensors {', '.join(missing)} (a tensor file from `prepare` or "
            f"nlb_tools holds {', '.join(NEEDED)})"
        )
    tr_in, tr_out = tensors["train_spikes_heldin"], tensors["train_spikes_heldout"]
    ev_in = tensors["eval_spikes_heldin"]
    for key in NEEDED:
        if np.ndim(tensors[key]) != 3:
            raise DataError(
                f"{path}: {key} must be [trial, time, neuron], got {np.shape(tensors[key])}"
            )
    if tr_out.shape[2] == 0:
        raise DataError(
            f"{path}: train_spikes_heldout has 0 neurons; LFADS' co-bps needs a held-out set "
            "(the units table's 'heldout' column, or --heldout-fraction / --heldout-units)"
        )
    if tr_in.shape[2] == 0:
        raise DataError(f"{path}: train_spikes_heldin has 0 neurons")
    if tr_in.shape[0] == 0 or ev_in.shape[0] == 0:
        raise DataError(f"{path}: no train or no eval trials ({tr_in.shape[0]}, {ev_in.shape[0]})")
    if ev_in.shape[1:] != tr_in.shape[1:] or tr_out.shape[:2] != tr_in.shape[:2]:
        raise DataError(
            f"{path}: shapes disagree: train_spikes_heldin {tr_in.shape}, train_spikes_heldout "
            f"{tr_out.shape}, eval_spikes_heldin {ev_in.shape}"
        )
    n_in, n_out = tr_in.shape[2], tr_out.shape[2]
    n_tr, n_ev, t_obs = tr_in.shape[0], ev_in.shape[0], tr_in.shape[1]
    fwd = tensors.get("train_spikes_heldin_forward")
    t_fwd = 0 if fwd is None else fwd.shape[1]
    bin_ms = resolve_bin_ms(path, attrs, group, t_obs, t_fwd, bin_ms)
    _check_counts(path, tensors, bin_ms, attrs.get("source"))
    tensors, positional = _complete_ids(
        path, tensors, {"trials": (n_tr, n_ev), "units": (n_in, n_out)}
    )
    tensors.update(_cond_ids(tensors, {"train": n_tr, "eval": n_ev}))
    attrs = _complete_attrs(path, tensors, attrs, group, bin_ms, t_obs, t_fwd)
    if positional:
        attrs["ids_positional"] = list(positional)

    def target(part: str, n: int) -> np.ndarray:
        get = tensors.get
        obs = _join(
            [get(f"{part}_spikes_heldin"), get(f"{part}_spikes_heldout")], n, t_obs, [n_in, n_out]
        )
        if not t_fwd:
            return obs
        ahead = _join(
            [get(f"{part}_spikes_heldin_forward"), get(f"{part}_spikes_heldout_forward")],
            n,
            t_fwd,
            [n_in, n_out],
        )
        return np.concatenate([obs, ahead], 1)

    return LFADSData(
        train_input=tr_in.astype(np.float32),
        train_target=target("train", n_tr),
        eval_input=ev_in.astype(np.float32),
        eval_target=target("eval", n_ev),
        tensors=tensors,
        attrs=attrs,
        path=Path(path),
    )


def load(path: Path, bin_ms: int | None = None) -> LFADSData:
    """Load a tensor file (``prepare``'s or nlb_tools'); ``bin_ms`` as in ``from_tensors``."""
    tensors, attrs, group = read_tensor_file(Path(path))
    return from_tensors(Path(path), tensors, attrs, bin_ms, group)


__all__ = [
    "LFADSData",
    "from_tensors",
    "is_nwb",
    "load",
    "read_tensor_file",
    "resolve_bin_ms",
    "tensors_from_nwb",
]
