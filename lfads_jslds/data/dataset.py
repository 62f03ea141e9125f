"""The arrays LFADS trains on, from an NWB session or an NLB tensor file, checked up front.

Why a separate layer: every stage (train, infer, evaluate) needs the same cut of the data,
and bad input must fail in seconds with the file and field named, before any compiling.

Layout (``LFADSData``): ``*_input [trial, T_obs, held-in]`` what the encoders see;
``*_target [trial, T_obs + T_fwd, held-in + held-out]`` what the readout reconstructs
(NaN where a count is not observed, e.g. held-out units of test trials). Spikes per bin.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lfads_jslds.data.nwb import DataError, open_hdf5, read_session
from lfads_jslds.data.prepare import conventions, prepare, read_tensors, write_tensors

NEEDED = ("train_spikes_heldin", "train_spikes_heldout", "eval_spikes_heldin")


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
    """NWB files carry ``nwb_version`` at the root; our tensor files do not."""
    with open_hdf5(Path(path), "an NWB or tensor file") as f:
        return "nwb_version" in f.attrs


def tensors_from_nwb(
    nwb: Path, out: Path, bin_ms: int, lag_ms: int | None, phase: str = "val"
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Prepare NLB tensors from ``nwb`` and write them, with their attributes, to ``out``."""
    session = read_session(nwb, behavior=["hand_vel"])
    tensors = prepare(session, bin_ms=bin_ms, lag_ms=lag_ms, phase=phase)
    attrs = {
        "bin_ms": bin_ms,
        "align_field": "move_onset_time",
        "window_ms": [-250, 450],
        "forward_ms": 200,
        **conventions(nwb, lag_ms=lag_ms),  # dataset, lag_ms, psth_kern_sd_ms
        "phase": phase,
        "source": str(Path(nwb).resolve()),
    }
    write_tensors(out, tensors, attrs)
    return tensors, attrs


def _join(
    parts: list[np.ndarray | None], n_trials: int, n_time: int, widths: list[int]
) -> np.ndarray:
    """Concatenate neuron groups, filling a missing group with NaN (unobserved)."""
    blocks = [
        np.full((n_trials, n_time, w), np.nan, np.float32) if p is None else p.astype(np.float32)
        for p, w in zip(parts, widths, strict=True)
    ]
    return np.concatenate(blocks, 2)


def _check_counts(path: Path, key: str, x: np.ndarray) -> None:
    bad = ~np.isfinite(x)
    if bad.any():
        trials = np.flatnonzero(bad.any(axis=(1, 2)))
        raise DataError(
            f"{path}: {key} has {int(bad.sum())} NaN/Inf counts in {trials.size} trials "
            f"(first: {trials[:5].tolist()}); the encoder needs every held-in count. "
            "Drop those trials or units before training."
        )
    if (x < 0).any():
        raise DataError(f"{path}: {key} has negative counts")


def from_tensors(path: Path, tensors: dict[str, Any], attrs: dict[str, Any]) -> LFADSData:
    """Build and check the model's arrays from NLB tensors (see ``prepare``)."""
    missing = [k for k in NEEDED if k not in tensors]
    if missing:
        raise DataError(f"{path}: missing tensors {', '.join(missing)} (made by `prepare`?)")
    if "bin_ms" not in attrs:
        raise DataError(f"{path}: no 'bin_ms' attribute; write tensors with `lfads-jslds prepare`")
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
            "(the units table's 'heldout' column, or prepare's heldout_fraction)"
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
    _check_counts(path, "train_spikes_heldin", tr_in)
    _check_counts(path, "eval_spikes_heldin", ev_in)
    _check_counts(path, "train_spikes_heldout", tr_out)
    n_in, n_out = tr_in.shape[2], tr_out.shape[2]
    n_tr, n_ev, t_obs = tr_in.shape[0], ev_in.shape[0], tr_in.shape[1]
    fwd = tensors.get("train_spikes_heldin_forward")
    t_fwd = 0 if fwd is None else fwd.shape[1]

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


def load(path: Path) -> LFADSData:
    """Load a tensor file written by ``prepare`` / ``tensors_from_nwb``."""
    tensors, attrs = read_tensors(Path(path))
    return from_tensors(Path(path), tensors, attrs)


__all__ = ["LFADSData", "from_tensors", "is_nwb", "load", "tensors_from_nwb"]
