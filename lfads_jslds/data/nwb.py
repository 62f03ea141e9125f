"""Read the parts of an NWB session that LFADS needs: units, trials, behaviour.

Why h5py and not pynwb: the NWB HDF5 layout of these tables is stable (``/units/spike_times``
+ ``spike_times_index``, ``/intervals/trials/<column>``, ``/processing/behavior/<series>``),
h5py reads it without building every container or writing pynwb's namespace cache, and
arrays come straight out as numpy: a session is never expanded to a 1 ms table. Only the
behaviour series asked for are read.

Every problem with the file raises ``DataError`` naming the file and the field, except
units without any spike: they carry nothing to fit, so they are dropped with a warning
naming their ids (``Units.dropped``) rather than refusing the session.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

#: Trial columns ``read_session`` insists on by default.
REQUIRED_TRIAL_COLUMNS = ("start_time", "stop_time", "move_onset_time")


class DataError(ValueError):
    """A data file that cannot be used as asked: the message names the file and the field."""


@dataclass(frozen=True)
class Units:
    """Sorted units, NWB-style: spikes of all units in one flat array.

    Unit ``u`` owns ``spike_times[offsets[u]:offsets[u + 1]]`` (s, sorted) and
    ``obs_intervals[obs_offsets[u]:obs_offsets[u + 1]]`` ([interval, 2], s). ``dropped``:
    ids of the file's units left out for having no spikes.
    """

    ids: np.ndarray  # [unit]
    spike_times: np.ndarray  # [spike] s
    offsets: np.ndarray  # [unit + 1]
    heldout: np.ndarray | None  # [unit] bool; None when the file has no heldout column
    obs_intervals: np.ndarray | None  # [interval, 2] s
    obs_offsets: np.ndarray | None  # [unit + 1]
    dropped: tuple[int, ...] = ()

    @property
    def n_units(self) -> int:
        return self.ids.size

    def spikes(self, u: int) -> np.ndarray:
        return self.spike_times[self.offsets[u] : self.offsets[u + 1]]

    def intervals(self, u: int) -> np.ndarray | None:
        if self.obs_intervals is None or self.obs_offsets is None:
            return None
        return self.obs_intervals[self.obs_offsets[u] : self.obs_offsets[u + 1]]


@dataclass(frozen=True)
class Behavior:
    """One behaviour series: ``data`` [sample, channel] in ``unit`` at ``times()``."""

    name: str
    data: np.ndarray
    unit: str
    timestamps: np.ndarray | None  # [sample] s, or None for a regular series
    rate: float | None  # Hz, for a regular series
    starting_time: float  # s

    def times(self) -> np.ndarray:
        if self.timestamps is not None:
            return self.timestamps
        assert self.rate is not None
        return self.starting_time + np.arange(self.data.shape[0]) / self.rate

    def sample_interval(self) -> float:
        """Seconds between samples (the median step for timestamped series)."""
        if self.timestamps is None:
            assert self.rate is not None
            return 1.0 / self.rate
        return float(np.median(np.diff(self.timestamps))) if self.timestamps.size > 1 else 0.0


@dataclass(frozen=True)
class Session:
    """What ``read_session`` returns. ``trials`` maps every column (and ``id``) to a
    numpy array [trial]; a ragged column is an object array of per-trial arrays."""

    path: Path
    units: Units
    trials: dict[str, np.ndarray]
    behavior: dict[str, Behavior]
    behavior_available: tuple[str, ...]  # series in processing/behavior, loaded or not

    @property
    def n_trials(self) -> int:
        return self.trials["id"].size


@contextmanager
def open_hdf5(path: Path, what: str) -> Iterator[h5py.File]:
    """``with open_hdf5(path, what) as f``: ``path`` open read-only. A file that is absent, not
    HDF5, or damaged (HDF5's errors on opening it or on reading a block inside the ``with``)
    is a ``DataError`` naming the file and what it should be."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file does not exist")
    if not h5py.is_hdf5(path):
        raise DataError(f"{path}: not an HDF5 file, so not {what}")
    damaged = f"{path}: a damaged HDF5 file (truncated or overwritten?), so not usable as {what}"
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise DataError(f"{damaged}: {err}; restore or re-create it") from err
    with f:
        try:
            yield f
        except (OSError, RuntimeError) as err:  # h5py's errors on a bad block or link table
            raise DataError(f"{damaged}: {err}; restore or re-create it") from err


def read_session(
    path: Path,
    behavior: Sequence[str] | None = None,
    required_trial_columns: Sequence[str] = REQUIRED_TRIAL_COLUMNS,
) -> Session:
    """Read units, the trials table and behaviour series from an NWB file.

    ``behavior``: names of the ``processing/behavior`` series to load (None: all; a name
    that is absent is skipped: see ``Session.behavior_available``).
    """
    path = Path(path)
    with open_hdf5(path, "an NWB file") as f:
        if _attr(f, "neurodata_type") != "NWBFile":
            raise DataError(f"{path}: an HDF5 file but not an NWB file (no NWBFile at /)")
        units = _read_units(path, f)
        trials = _read_trials(path, f, required_trial_columns)
        available, series = _read_behavior(path, f, behavior)
    return Session(path, units, trials, series, available)


def _attr(obj: h5py.HLObject, name: str) -> Any:
    value = obj.attrs.get(name)
    return value.decode() if isinstance(value, bytes) else value


def _units_error(path: Path, ids: np.ndarray, bad: np.ndarray, what: str) -> DataError:
    return DataError(f"{path}: /units: {bad.sum()} unit(s) {what}: ids {_first(ids[bad], 20)}")


def _read_units(path: Path, f: h5py.File) -> Units:
    if "units" not in f or "spike_times" not in f["units"]:
        raise DataError(f"{path}: no units (/units/spike_times is missing)")
    g = f["units"]
    times = np.asarray(g["spike_times"][()], dtype=np.float64)
    if "spike_times_index" not in g:
        raise DataError(f"{path}: /units/spike_times_index is missing")
    ends = np.asarray(g["spike_times_index"][()], dtype=np.int64)
    if ends.size == 0:
        raise DataError(f"{path}: no units (/units is empty)")
    ids = g["id"][()] if "id" in g else np.arange(ends.size)
    offsets = np.concatenate([[0], ends])
    if np.any(np.diff(offsets) < 0) or offsets[-1] != times.size:
        raise DataError(
            f"{path}: /units/spike_times_index is inconsistent with spike_times "
            f"({times.size} spikes, index ends at {offsets[-1]})"
        )
    counts = np.diff(offsets)
    if np.all(counts == 0):
        raise _units_error(path, ids, counts == 0, "have no spikes, which is every unit")
    owner = np.repeat(np.arange(ends.size), counts)  # [spike] unit index
    bad = np.zeros(ends.size, bool)
    bad[owner[~np.isfinite(times) | (times < 0)]] = True
    if bad.any():
        raise _units_error(path, ids, bad, "have negative or non-finite spike times")
    step = np.diff(times) < 0
    within = owner[1:] == owner[:-1]
    bad[owner[1:][step & within]] = True
    if bad.any():
        raise _units_error(path, ids, bad, "have unsorted spike times")

    heldout = np.asarray(g["heldout"][()], dtype=bool) if "heldout" in g else None
    obs, obs_offsets = None, None
    if "obs_intervals" in g and "obs_intervals_index" in g:
        obs = np.asarray(g["obs_intervals"][()], dtype=np.float64).reshape(-1, 2)
        obs_offsets = np.concatenate([[0], g["obs_intervals_index"][()].astype(np.int64)])
    units = Units(ids, times, offsets, heldout, obs, obs_offsets)
    if np.any(counts == 0):
        warnings.warn(
            f"{path}: /units: dropped {int((counts == 0).sum())} unit(s) without spikes "
            f"(nothing to fit): ids {_first(ids[counts == 0], 20)}",
            stacklevel=3,
        )
        units = _keep_units(units, counts > 0)
    return units


def _keep_units(units: Units, keep: np.ndarray) -> Units:
    """``units`` less those where ``keep [unit]`` is False (each without spikes), their ids
    recorded in ``dropped``."""
    obs, obs_offsets = units.obs_intervals, units.obs_offsets
    if obs is not None and obs_offsets is not None:
        per_unit = np.diff(obs_offsets)
        obs = obs[np.repeat(keep, per_unit)]
        obs_offsets = np.concatenate([[0], np.cumsum(per_unit[keep])])
    return Units(
        ids=units.ids[keep],
        spike_times=units.spike_times,  # the dropped units own none of them
        offsets=np.concatenate([[0], units.offsets[1:][keep]]),
        heldout=None if units.heldout is None else units.heldout[keep],
        obs_intervals=obs,
        obs_offsets=obs_offsets,
        dropped=(*units.dropped, *units.ids[~keep].tolist()),
    )


def _read_column(g: h5py.Group, name: str) -> np.ndarray:
    """A table column as numpy: strings as str, ragged (``<name>_index``) as object array."""
    ds = g[name]
    if h5py.check_string_dtype(ds.dtype) is not None:
        flat = np.asarray(ds.asstr()[()], dtype=str)
    elif ds.dtype.kind == "O" or ds.dtype.kind == "V":
        flat = np.array([str(v) for v in ds[()]], dtype=str)  # references and compounds
    else:
        flat = ds[()]
    if f"{name}_index" not in g:
        return flat
    ends = g[f"{name}_index"][()].astype(np.int64)
    out = np.empty(ends.size, dtype=object)
    out[:] = np.split(flat, ends[:-1])
    return out


def _read_trials(path: Path, f: h5py.File, required: Sequence[str]) -> dict[str, np.ndarray]:
    if "intervals/trials" not in f:
        raise DataError(f"{path}: no trials table (/intervals/trials is missing)")
    g = f["intervals/trials"]
    names = [c.decode() if isinstance(c, bytes) else str(c) for c in g.attrs.get("colnames", [])]
    names = [n for n in names if n in g] or [n for n in g if not n.endswith("_index") and n != "id"]
    trials = {name: _read_column(g, name) for name in names}
    n = len(next(iter(trials.values()))) if trials else 0
    trials["id"] = g["id"][()] if "id" in g else np.arange(n)
    if trials["id"].size == 0:
        raise DataError(f"{path}: the trials table (/intervals/trials) has no trials")
    for name in required:
        if name not in trials:
            raise DataError(
                f"{path}: /intervals/trials has no column {name!r}; it has: {', '.join(names)}"
            )
    for name in ("start_time", "stop_time"):  # NWB requires both, finite, for every trial
        times = np.asarray(trials.get(name, []), dtype=np.float64)
        rows = np.flatnonzero(~np.isfinite(times))
        if rows.size:
            raise DataError(
                f"{path}: /intervals/trials/{name} is NaN or infinite in {rows.size} trial(s): "
                f"rows {_first(rows)} (ids {_first(trials['id'][rows])}); every trial needs a "
                "finite start_time and stop_time: fix or remove those trials"
            )
    return trials


def _first(values: np.ndarray, n: int = 10) -> str:
    """The first ``n`` values, comma-separated, "..." when there are more."""
    return ", ".join(str(v) for v in values[:n]) + (" ..." if len(values) > n else "")


def _read_behavior(
    path: Path, f: h5py.File, wanted: Sequence[str] | None
) -> tuple[tuple[str, ...], dict[str, Behavior]]:
    """Series of ``processing/behavior`` (one level of containers, named ``<container>_<series>``
    as nlb_tools does); returns (all available names, the loaded ones)."""
    if "processing/behavior" not in f:
        return (), {}
    found: dict[str, h5py.Group] = {}
    for name, obj in f["processing/behavior"].items():
        if isinstance(obj, h5py.Group) and "data" in obj:
            found[name] = obj
        elif isinstance(obj, h5py.Group):
            for sub, child in obj.items():
                if isinstance(child, h5py.Group) and "data" in child:
                    found[f"{name}_{sub}"] = child
    out = {}
    for name, g in found.items():
        if wanted is not None and name not in wanted:
            continue
        ds = g["data"]
        data = ds[()]
        conversion = float(ds.attrs.get("conversion", 1.0))
        offset = float(ds.attrs.get("offset", 0.0))
        if conversion != 1.0 or offset != 0.0:
            data = data * conversion + offset
        if data.ndim == 1:
            data = data[:, None]
        unit = _attr(ds, "unit") or ""
        if "timestamps" in g:
            stamps = np.asarray(g["timestamps"][()], dtype=np.float64)
            if stamps.size != data.shape[0]:
                raise DataError(
                    f"{path}: processing/behavior/{name}: {stamps.size} timestamps for "
                    f"{data.shape[0]} samples"
                )
            out[name] = Behavior(name, data, unit, stamps, None, 0.0)
        elif "starting_time" in g:
            st = g["starting_time"]
            out[name] = Behavior(name, data, unit, None, float(st.attrs["rate"]), float(st[()]))
        else:
            raise DataError(f"{path}: processing/behavior/{name} has neither timestamps nor rate")
    return tuple(found), out
