"""Write inferred rates where others can read them: back into the NWB session, or as an NLB
submission file.

Why a copy of the session: rates mean little without the trials and units they were inferred
for, so ``write_rates_nwb`` puts them beside those tables in a copy of the source file (the
source is never opened for writing), in a processing module ``lfads`` that pynwb opens:

- ``inferred_rates`` (DynamicTable, one row per trial): ``trial_id`` (id in
  ``/intervals/trials``), ``trial`` (a DynamicTableRegion into that table), ``align_time``,
  ``start_time``, ``stop_time`` (s), ``rates`` [trial, time, neuron] in spikes per bin
  (float32), and each ``extra`` array (e.g. ``factors`` [trial, time, factor]).
- ``rate_units`` (DynamicTable, one row per neuron of ``rates``): ``unit_id`` (id in
  ``/units``) and ``unit`` (a DynamicTableRegion into ``/units``).
- ``rate_parameters`` (DynamicTable, one row): ``bin_ms``, ``window_ms`` (ms around
  ``align_time``).

Bin ``k`` of a trial covers ``[start_time + k * bin_ms / 1000, + bin_ms / 1000)`` s, where
``start_time = align_time + window_ms[0] / 1000``.

``write_nlb_submission`` writes the HDF5 layout nlb_tools scores: one group per dataset
(``nlb_dataset_name``), holding ``{train,eval}_rates_{heldin,heldout}`` and
``eval_rates_{heldin,heldout}_forward``.
"""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from lfads_jslds.data import nlb
from lfads_jslds.data.nwb import DataError, open_hdf5
from lfads_jslds.io.atomic import atomic_write
from lfads_jslds.io.h5 import save_h5_dict

MODULE = "lfads"
RATES_TABLE = "inferred_rates"
UNITS_TABLE = "rate_units"
PARAMS_TABLE = "rate_parameters"
#: Columns of ``inferred_rates`` that ``extra`` may not reuse (hdmf also reserves ``id``).
_RESERVED = ("id", "trial_id", "trial", "align_time", "start_time", "stop_time", "rates")

#: NLB dataset names (nlb_tools', from ``data.nlb``'s table); a bin other than 5 ms adds
#: ``_<bin_ms>``.
NLB_DATASETS = tuple(nlb.DATASETS)
#: Arrays of an NLB submission, each [trial, time, neuron] in spikes per bin.
SUBMISSION_KEYS = (
    "train_rates_heldin",
    "train_rates_heldout",
    "eval_rates_heldin",
    "eval_rates_heldout",
    "eval_rates_heldin_forward",
    "eval_rates_heldout_forward",
)


# ----------------------------------------------------------------------------- NWB


def _ids(values: Any, field: str) -> np.ndarray:
    ids = np.asarray(values)
    if ids.ndim != 1 or ids.dtype.kind not in "iu":
        raise ValueError(
            f"{field}: must be a 1-D integer array of ids, got {ids.dtype} {ids.shape}"
        )
    if np.unique(ids).size != ids.size:
        raise ValueError(f"{field}: ids must be unique")
    return ids.astype(np.int64)


def _check_inputs(
    rates: Any,
    trial_ids: Any,
    unit_ids: Any,
    bin_ms: int,
    align_times_s: Any,
    window_ms: tuple[int, int],
    extra: Mapping[str, Any] | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Every array checked against ``rates`` [trial, time, neuron]; ValueError names the field."""
    rates = np.asarray(rates)
    if rates.ndim != 3 or rates.dtype.kind not in "fiu":
        raise ValueError(
            f"rates: must be a numeric [trial, time, neuron] array, got {rates.dtype} {rates.shape}"
        )
    if rates.size == 0:
        raise ValueError(f"rates: empty, shape {rates.shape}")
    if not np.all(np.isfinite(rates)):
        raise ValueError(f"rates: {np.count_nonzero(~np.isfinite(rates))} values are not finite")
    if np.any(rates < 0):
        raise ValueError("rates: are spikes per bin, so must not be negative")
    n_trials, n_time, n_units = rates.shape
    trial_ids = _ids(trial_ids, "trial_ids")
    if trial_ids.size != n_trials:
        raise ValueError(f"trial_ids: {trial_ids.size} ids for {n_trials} trials of rates")
    unit_ids = _ids(unit_ids, "unit_ids")
    if unit_ids.size != n_units:
        raise ValueError(f"unit_ids: {unit_ids.size} ids for {n_units} neurons of rates")
    align = np.asarray(align_times_s, dtype=np.float64)
    if align.shape != (n_trials,) or not np.all(np.isfinite(align)):
        raise ValueError(
            f"align_times_s: must be {n_trials} finite times (s), one per trial, got {align.shape}"
        )
    if int(bin_ms) != bin_ms or bin_ms <= 0:
        raise ValueError(f"bin_ms: must be a positive whole number of ms, got {bin_ms}")
    w0, w1 = window_ms
    if w1 - w0 != n_time * bin_ms:
        raise ValueError(
            f"window_ms: {tuple(window_ms)} spans {w1 - w0} ms but rates have {n_time} bins of "
            f"{bin_ms} ms ({n_time * bin_ms} ms)"
        )
    columns = {}
    for name, value in (extra or {}).items():
        array = np.asarray(value)
        if name in _RESERVED or not name.isidentifier():
            raise ValueError(f"extra[{name!r}]: not a usable column name (reserved: {_RESERVED})")
        if array.ndim < 1 or array.shape[0] != n_trials or array.dtype.kind not in "biuf":
            raise ValueError(
                f"extra[{name!r}]: must be a numeric array with one row per trial ({n_trials}), "
                f"got {array.dtype} {array.shape}"
            )
        columns[name] = array
    return rates.astype(np.float32), trial_ids, unit_ids, align, columns


def _rows(path: Path, table: str, wanted: np.ndarray, field: str) -> np.ndarray:
    """Row indices of ``wanted`` ids in the NWB table ``/<table>`` (DataError if absent)."""
    with open_hdf5(path, "an NWB file") as f:
        if table not in f or "id" not in f[table]:
            raise DataError(f"{path}: no /{table} table, so {field} refer to nothing")
        ids = np.asarray(f[table]["id"][()], dtype=np.int64)
    if ids.size == 0:
        raise DataError(f"{path}: /{table} is empty, so {field} refer to nothing")
    order = np.argsort(ids, kind="stable")
    pos = np.minimum(np.searchsorted(ids, wanted, sorter=order), ids.size - 1)
    rows = order[pos]
    missing = ids[rows] != wanted
    if missing.any():
        shown = ", ".join(str(i) for i in wanted[missing][:20])
        raise DataError(f"{path}: /{table} has no row with id {shown} ({field})")
    return rows


def write_rates_nwb(
    src: Path,
    dst: Path,
    rates: np.ndarray,
    trial_ids: np.ndarray,
    unit_ids: np.ndarray,
    bin_ms: int,
    align_times_s: np.ndarray,
    window_ms: tuple[int, int],
    description: str,
    extra: dict[str, np.ndarray] | None = None,
) -> None:
    """Copy the NWB file ``src`` to ``dst`` with ``rates`` added in processing module ``lfads``.

    ``rates`` [trial, time, neuron] spikes per bin; ``trial_ids`` [trial] ids in
    ``/intervals/trials``; ``unit_ids`` [neuron] ids in ``/units``; ``align_times_s`` [trial]
    s, with bin ``k`` covering ``align + (window_ms[0] + k * bin_ms) / 1000`` s onward;
    ``description`` says what made the rates (model, run); ``extra`` name -> [trial, ...]
    arrays stored as further per-trial columns. Layout: see the module docstring.

    Everything is checked before anything is written (ValueError naming the field; DataError
    for ids absent from ``src``); ``dst`` must not exist (FileExistsError). ``dst`` appears
    whole or not at all; ``src`` is only read.
    """
    from hdmf.common import DynamicTable, DynamicTableRegion, VectorData
    from pynwb import NWBHDF5IO, H5DataIO

    src, dst = Path(src), Path(dst)
    rates, trial_ids, unit_ids, align, columns = _check_inputs(
        rates, trial_ids, unit_ids, bin_ms, align_times_s, window_ms, extra
    )
    if dst.exists():
        raise FileExistsError(f"{dst}: already exists; will not overwrite it")
    trial_rows = _rows(src, "intervals/trials", trial_ids, "trial_ids")
    unit_rows = _rows(src, "units", unit_ids, "unit_ids")
    w0, w1 = (int(w) for w in window_ms)
    bin_ms = int(bin_ms)

    def col(name: str, data: Any, doc: str) -> VectorData:
        data = np.asarray(data)
        if data.size > 1024:
            data = H5DataIO(data, compression="gzip", compression_opts=4, shuffle=True)
        return VectorData(name=name, description=doc, data=data)

    def write(tmp: str) -> None:
        shutil.copyfile(src, tmp)
        with warnings.catch_warnings():  # the temporary name does not end in .nwb; dst may
            warnings.filterwarnings("ignore", message=".*does not end in '.nwb'")
            with NWBHDF5IO(tmp, "a") as io:
                nwb = io.read()
                module = nwb.create_processing_module(MODULE, description)
                rate_cols = [
                    col("trial_id", trial_ids, "id of the trial in /intervals/trials"),
                    DynamicTableRegion(
                        name="trial",
                        data=trial_rows,
                        description="the trial's row in /intervals/trials",
                        table=nwb.trials,
                    ),
                    col("align_time", align, "alignment time of the trial (s)"),
                    col("start_time", align + w0 / 1000, "start of the first bin (s)"),
                    col("stop_time", align + w1 / 1000, "end of the last bin (s)"),
                    col(
                        "rates",
                        rates,
                        f"[time, neuron] inferred firing rate in spikes per {bin_ms} ms bin; "
                        f"neurons in {UNITS_TABLE} order",
                    ),
                ]
                rate_cols += [
                    col(k, v, f"extra per-trial output {k!r}") for k, v in columns.items()
                ]
                module.add(
                    DynamicTable(
                        name=RATES_TABLE,
                        description=(
                            f"Inferred rates (spikes per bin), one row per trial: {rates.shape[1]} "
                            f"bins of {bin_ms} ms from {w0} to {w1} ms around align_time; bin k "
                            f"covers [start_time + k * {bin_ms} ms, + {bin_ms} ms)"
                        ),
                        columns=rate_cols,
                    )
                )
                module.add(
                    DynamicTable(
                        name=UNITS_TABLE,
                        description=f"The neurons of {RATES_TABLE}.rates, in order",
                        columns=[
                            col("unit_id", unit_ids, "id of the unit in /units"),
                            DynamicTableRegion(
                                name="unit",
                                data=unit_rows,
                                description="the unit's row in /units",
                                table=nwb.units,
                            ),
                        ],
                    )
                )
                module.add(
                    DynamicTable(
                        name=PARAMS_TABLE,
                        description=f"Binning of {RATES_TABLE}: one row",
                        columns=[
                            col("bin_ms", [bin_ms], "bin width (ms); rates are spikes per bin"),
                            col("window_ms", [[w0, w1]], "window around align_time (ms)"),
                        ],
                    )
                )
                io.write(nwb)

    atomic_write(dst, write)


def read_rates_nwb(path: Path) -> dict[str, Any]:
    """What ``write_rates_nwb`` stored (read with h5py).

    Returns ``rates`` [trial, time, neuron] float32 spikes per bin, ``trial_ids``,
    ``align_times_s``, ``start_times_s`` [trial], ``unit_ids`` [neuron], ``bin_ms``,
    ``window_ms``, ``description``, and ``extra`` {name: [trial, ...]}.
    """
    path = Path(path)
    with open_hdf5(path, "an NWB file") as f:
        where = f"processing/{MODULE}"
        for name in (RATES_TABLE, UNITS_TABLE, PARAMS_TABLE):
            if f"{where}/{name}" not in f:
                raise DataError(f"{path}: no /{where}/{name}; write it with write_rates_nwb")
        g = f[where]
        table, params = g[RATES_TABLE], g[PARAMS_TABLE]
        description = g.attrs.get("description", "")
        window = params["window_ms"][0]
        return {
            "rates": table["rates"][()],
            "trial_ids": table["trial_id"][()],
            "align_times_s": table["align_time"][()],
            "start_times_s": table["start_time"][()],
            "unit_ids": g[UNITS_TABLE]["unit_id"][()],
            "bin_ms": int(params["bin_ms"][0]),
            "window_ms": (int(window[0]), int(window[1])),
            "description": description.decode() if isinstance(description, bytes) else description,
            "extra": {k: v[()] for k, v in table.items() if k not in _RESERVED},
        }


# ----------------------------------------------------------------------------- NLB


def nlb_dataset_name(name: str, bin_ms: int) -> str:
    """NLB's name of a dataset at a bin width: ``mc_maze_small`` at 20 ms is
    ``mc_maze_small_20``; 5 ms, NLB's native bin, has no suffix."""
    if name not in NLB_DATASETS:
        raise ValueError(
            f"name: {name!r} is not an NLB dataset; those are {', '.join(NLB_DATASETS)}"
        )
    return nlb.facts(name).nlb_name(bin_ms)


def write_nlb_submission(path: Path, dataset: str, rates: dict[str, np.ndarray]) -> None:
    """Write ``rates`` as the NLB submission file nlb_tools scores: ``/<dataset>/<key>``.

    ``rates``: any of ``SUBMISSION_KEYS`` ([trial, time, neuron] spikes per bin, stored
    float32), at least ``eval_rates_heldout``. Shapes are checked against each other (held-in
    and held-out of one split share trials and bins; a neuron group has one count throughout;
    forward rates cover the eval trials). Written atomically (replacing ``path``).
    """
    if not dataset or "/" in dataset:
        raise ValueError(f"dataset: {dataset!r} is not a usable group name (e.g. mc_maze_small_20)")
    unknown = sorted(set(rates) - set(SUBMISSION_KEYS))
    if unknown:
        raise ValueError(f"rates: unknown keys {unknown}; NLB's are {', '.join(SUBMISSION_KEYS)}")
    if "eval_rates_heldout" not in rates:
        raise ValueError("rates: eval_rates_heldout is required (co-bps is scored from it)")
    arrays: dict[str, np.ndarray] = {}
    for key in SUBMISSION_KEYS:
        if key not in rates:
            continue
        array = np.asarray(rates[key])
        if array.ndim != 3 or array.dtype.kind not in "fiu":
            raise ValueError(
                f"rates[{key!r}]: must be a numeric [trial, time, neuron] array, got "
                f"{array.dtype} {array.shape}"
            )
        if not np.all(np.isfinite(array)):
            raise ValueError(f"rates[{key!r}]: {np.count_nonzero(~np.isfinite(array))} not finite")
        arrays[key] = array.astype(np.float32)

    def agree(what: str, keys: list[str], dims: slice) -> None:
        shapes = {k: arrays[k].shape[dims] for k in keys if k in arrays}
        if len(set(shapes.values())) > 1:
            raise ValueError(
                f"rates: {what} differ: " + ", ".join(f"{k} {s}" for k, s in shapes.items())
            )

    for split in ("train_rates", "eval_rates"):
        agree("[trial, time]", [f"{split}_heldin", f"{split}_heldout"], slice(0, 2))
    agree("[trial, time]", ["eval_rates_heldin_forward", "eval_rates_heldout_forward"], slice(0, 2))
    agree("trial counts", [k for k in SUBMISSION_KEYS if k.startswith("eval")], slice(0, 1))
    for group in ("heldin", "heldout"):
        agree(f"{group} neuron counts", [k for k in SUBMISSION_KEYS if group in k], slice(2, 3))
    save_h5_dict(path, {dataset: arrays})


__all__ = [
    "NLB_DATASETS",
    "SUBMISSION_KEYS",
    "nlb_dataset_name",
    "read_rates_nwb",
    "write_nlb_submission",
    "write_rates_nwb",
]
