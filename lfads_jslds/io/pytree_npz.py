"""Pytrees of arrays <-> ``.npz`` files without pickle, written atomically.

Keys are ``/``-joined paths (``cell/wRUHX``, ``expansion/0/W``); list indices are
digits. Loading goes through ``safe_npz`` and refuses any member but a numeric array.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import numpy as np

from lfads_jslds.io.atomic import atomic_write
from lfads_jslds.io.safe_npz import load_npz_safely, require_numeric


def flatten(tree: Any) -> dict[str, np.ndarray]:
    """Nested dicts/lists of arrays -> ``{"a/b/0": array}``."""
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        parts = [str(getattr(p, "key", getattr(p, "idx", p))) for p in path]
        out["/".join(parts)] = np.asarray(leaf)
    return out


def unflatten(flat: dict[str, np.ndarray]) -> Any:
    """Inverse of ``flatten`` for dict/list trees (digit keys become list positions)."""
    root: dict[str, Any] = {}
    for key, value in flat.items():
        node = root
        *parents, leaf = key.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value

    def lists(node: Any) -> Any:
        if not isinstance(node, dict):
            return node
        node = {k: lists(v) for k, v in node.items()}
        if node and all(k.isdigit() for k in node):
            return [node[k] for k in sorted(node, key=int)]
        return node

    return lists(root)


def save(path: Path, tree: Any) -> None:
    """Write ``flatten(tree)`` as an uncompressed ``.npz``, atomically."""
    flat = flatten(tree)

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **flat)

    atomic_write(path, write)


def load(path: Path) -> dict[str, np.ndarray]:
    """Read a flat ``{key: array}`` mapping (``safe_npz``: a regular file of bounded size, no
    code run); a file that is not an ``.npz`` (truncated, say) or holds anything but numeric
    arrays is a ``WeightsFileError`` naming the file and the member."""
    flat = load_npz_safely(path)
    require_numeric(flat, Path(path))
    return {k: np.asarray(v) for k, v in flat.items()}
