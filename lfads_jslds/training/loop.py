"""What both trainers share: the run-folder errors and checks every trainer needs, the
guarded update's finiteness test, and resuming a CSV log."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from lfads_jslds import config as config_lib
from lfads_jslds.io import atomic


class RunFolderError(RuntimeError):
    """A run folder that cannot be used as asked (exists without --resume, no checkpoint)."""


def check_out_folder(run: Path) -> None:
    """Refuse an ``--out`` that cannot hold a run: a file, or a symlink to nothing (making
    the folder would fail on it). A symlink to a folder is used as that folder."""
    if run.is_symlink() and not run.exists():
        raise RunFolderError(
            f"--out {run} is a symlink to {os.readlink(run)}, which does not exist; create "
            "that folder, or choose another --out"
        )
    if run.exists() and not run.is_dir():
        raise RunFolderError(f"run folder {run} exists and is not a folder")


def all_finite(*trees: Any) -> jax.Array:
    """True when every entry of every leaf is finite; traceable (the guarded update's test:
    an update can turn finite params non-finite even when loss and gradients are finite)."""
    leaves = [x for tree in trees for x in jax.tree_util.tree_leaves(tree)]
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def trim_log(path: Path, last_step: int) -> None:
    """Drop CSV log rows (first column: step or epoch) after the checkpoint a resume starts from."""
    if not path.exists():
        return
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    kept = rows[:1] + [r for r in rows[1:] if int(r[0]) <= last_step]

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            csv.writer(f).writerows(kept)

    atomic.atomic_write(path, write)


def _flat(cfg: Any) -> dict[str, Any]:
    """A config as ``{"section.field": value}`` (top-level plain values under their name)."""
    out: dict[str, Any] = {}
    for section, value in config_lib.to_dict(cfg).items():
        if isinstance(value, dict):
            out.update({f"{section}.{k}": v for k, v in value.items()})
        else:
            out[section] = value
    return out


def check_resume(
    path: Path, saved: Any, cfg: Any, resumable: dict[str, tuple[str, ...] | None]
) -> None:
    """Refuse to resume with a config that differs from the saved one (``path``) outside
    ``resumable``: section name → the fields that may change (None: all of them)."""

    def fixed(key: str) -> bool:
        section, _, name = key.partition(".")
        fields = resumable.get(section, ())
        return section not in resumable or (fields is not None and name not in fields)

    a, b = _flat(saved), _flat(cfg)
    diff = [k for k in sorted(a.keys() | b.keys()) if fixed(k) and a.get(k) != b.get(k)]
    if diff:
        allowed = [
            f"{s}.*" if f is None else f"{s}.{n}" for s, f in resumable.items() for n in (f or [""])
        ]
        raise RunFolderError(
            f"{path} differs from the requested config in {', '.join(diff)}; resume with the "
            f"saved config (only {', '.join(allowed)} may change)"
        )
