"""Nested dicts of arrays <-> HDF5 (NLB-style tensor and submission files).

Groups are dicts; ragged sequences (object arrays or lists of 1-D arrays, e.g. nlb_tools'
``eval_cond_idx``) are variable-length datasets, as nlb_tools stores them. Writes are
atomic: a reader never sees a half-written file, a failed write leaves the old one.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import h5py
import numpy as np

from lfads_jslds.io.atomic import atomic_write


def _is_ragged(value: Any) -> bool:
    if isinstance(value, np.ndarray):
        return value.dtype == object
    return isinstance(value, list | tuple) and len({np.shape(v) for v in value}) > 1


def write_group(group: h5py.Group, tree: Mapping[str, Any]) -> None:
    """Write ``tree`` under ``group``; arrays keep their dtype, large ones are gzipped."""
    for key, value in tree.items():
        if isinstance(value, Mapping):
            write_group(group.create_group(key), value)
        elif _is_ragged(value):
            items = [np.asarray(v) for v in value]
            stored = np.empty(len(items), dtype=object)
            stored[:] = items
            dtype = h5py.vlen_dtype(items[0].dtype if items else np.int64)
            group.create_dataset(key, data=stored, dtype=dtype)
        else:
            array = np.asarray(value)
            big = {"compression": "gzip", "compression_opts": 4, "shuffle": True}
            group.create_dataset(key, data=array, **(big if array.size > 1024 else {}))


def read_group(group: h5py.Group) -> dict[str, Any]:
    """Inverse of ``write_group``: groups -> dicts, ragged datasets -> object arrays."""
    return {k: read_group(v) if isinstance(v, h5py.Group) else v[()] for k, v in group.items()}


def save_h5_dict(
    path: str | os.PathLike, data: Mapping[str, Any], attrs: Mapping[str, Any] | None = None
) -> None:
    """Write nested dicts of arrays (and ``attrs`` as file attributes) atomically."""

    def write(tmp: str) -> None:
        with h5py.File(tmp, "w") as f:
            write_group(f, data)
            for k, v in (attrs or {}).items():
                f.attrs[k] = v

    atomic_write(path, write)


def load_h5_dict(path: str | os.PathLike) -> dict[str, Any]:
    """Read an HDF5 file into nested dicts of arrays."""
    with h5py.File(path, "r") as f:
        return read_group(f)
