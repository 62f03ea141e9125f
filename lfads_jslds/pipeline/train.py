"""The ``train`` stage: make (or reopen) a run folder, then train LFADS-JSLDS into it.

A new run writes ``config.yaml`` (as resolved), ``data.json`` (where the tensors are and
their provenance: path, sha256, shapes and bin width, checked by every later stage) and,
for an NWB input, ``data.h5`` (the tensors cut from it) before training; nothing is
written before every check on the config, the folder and the data has passed.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

from lfads_jslds import config as config_lib
from lfads_jslds.data import dataset
from lfads_jslds.data.dataset import LFADSData
from lfads_jslds.io import atomic
from lfads_jslds.pipeline.run import RunFolder, sha256
from lfads_jslds.training import lfads as lfads_training
from lfads_jslds.training.loop import RunFolderError, check_out_folder, check_resume
from lfads_jslds.training.run_config import RunConfig, validate

#: What a resumed run may change: more epochs, other inference and evaluation settings.
RESUMABLE = {
    "infer": None,
    "evaluate": None,
    "train": ("max_epochs", "patience", "checkpoint_every"),
}


def train_run(
    path: Path, cfg: RunConfig, data_path: Path, resume: bool = False, progress: bool = True
) -> dict[str, Any]:
    """Train into the run folder ``path``; returns the summary written to ``train.json``."""
    run, data = prepare_run(path, cfg, data_path, resume)
    summary = lfads_training.train(cfg, run.train_files, data, resume, progress)
    atomic.write_json(run / run.SUMMARY, summary)  # strict JSON: a NaN best becomes null
    return summary


def prepare_run(
    path: Path, cfg: RunConfig, data_path: Path, resume: bool
) -> tuple[RunFolder, LFADSData]:
    """Check the run folder and the data, then (new run) write config and data files."""
    validate(cfg)
    run = RunFolder(path)
    check_out_folder(run.path)
    if resume:
        # A run killed before its first checkpoint has config.yaml and data.json: it restarts
        # from epoch 0 (train drops the log rows it had written).
        if not (run / run.CONFIG).exists() or not (run / run.DATA_INFO).exists():
            raise RunFolderError(f"{run} has no checkpoint; nothing to resume")
        run = RunFolder.open(run.path)
        if cfg.data.bin_ms is None:  # not given: the width this run's train resolved
            cfg = replace(cfg, data=replace(cfg.data, bin_ms=run.config.data.bin_ms))
        check_resume(run / run.CONFIG, run.config, cfg, RESUMABLE)
        return run, run.data
    if run.path.exists() and any(run.path.iterdir()):
        raise RunFolderError(
            f"run folder {run} already exists; pass --resume to continue it, or choose a new --out"
        )
    return run, _new_run(run, cfg, Path(data_path))


def _new_run(run: RunFolder, cfg: RunConfig, data_path: Path) -> LFADSData:
    if not data_path.exists():
        raise dataset.DataError(f"data file {data_path} does not exist")
    nwb = dataset.is_nwb(data_path)
    if nwb:  # check the session before creating anything
        from lfads_jslds.data.nwb import read_session

        read_session(data_path, behavior=["hand_vel"])
    created = not run.path.exists()  # a user's own empty folder (or a symlink to one) stays
    run.path.mkdir(parents=True, exist_ok=True)
    tensors_path = run / run.DATA_FILE if nwb else data_path.resolve()
    try:
        data = _load_input(data_path, tensors_path, cfg) if nwb else _load_tensors(data_path, cfg)
        check_batch(data, cfg)
    except Exception:
        (run / run.DATA_FILE).unlink(missing_ok=True)  # nothing half-written stays behind
        if created and not any(run.path.iterdir()):
            run.path.rmdir()
        raise
    source = data.attrs.get("source")  # the NWB the tensors were cut from, if recorded
    input_sha256 = sha256(data_path)
    info = {
        # the run's own data.h5 is named relative to the run, so the folder can move
        "tensors": run.DATA_FILE if nwb else str(tensors_path),
        "source": source,
        "ids_positional": data.attrs.get("ids_positional", []),  # ids the file lacked
        "provenance": {
            "input": {"path": str(data_path.resolve()), "sha256": input_sha256},
            "tensors_sha256": sha256(tensors_path) if nwb else input_sha256,  # else the same
            "shapes": {k: list(v.shape) for k, v in data.tensors.items() if hasattr(v, "shape")},
            "bin_ms": data.bin_ms,
        },
    }
    atomic.write_text(run / run.DATA_INFO, json.dumps(info, indent=2))
    cfg = replace(cfg, data=replace(cfg.data, bin_ms=data.bin_ms))  # as resolved: later stages
    atomic.write_text(run / run.CONFIG, config_lib.dump_yaml(cfg))
    return data


def _load_input(nwb: Path, tensors_path: Path, cfg: RunConfig) -> LFADSData:
    """Cut an NWB session into the run's own tensor file."""
    d = cfg.data
    tensors, attrs = dataset.tensors_from_nwb(
        nwb,
        tensors_path,
        d.bin_ms,
        d.lag_ms,
        val_fraction=d.val_fraction,
        heldout_fraction=d.heldout_fraction,
        heldout_units=d.heldout_units,
        split_seed=d.split_seed,
    )
    return dataset.from_tensors(tensors_path, tensors, attrs)


def _load_tensors(path: Path, cfg: RunConfig) -> LFADSData:
    """A tensor file, used where it is (it comes split: the split options do not apply)."""
    data = dataset.load(path.resolve(), cfg.data.bin_ms)
    split = ("val_fraction", "heldout_fraction", "heldout_units")
    given = [f"data.{k}" for k in split if getattr(cfg.data, k) is not None]
    if given:
        warnings.warn(
            f"{path}: a tensor file comes split; {', '.join(given)} not used", stacklevel=3
        )
    return data


def check_batch(data: LFADSData, cfg: RunConfig) -> None:
    n = data.train_input.shape[0]
    if n < cfg.train.batch_size:
        raise config_lib.ConfigError(
            f"{data.path}: {n} train trials are fewer than one batch (train.batch_size = "
            f"{cfg.train.batch_size}); lower train.batch_size"
        )
