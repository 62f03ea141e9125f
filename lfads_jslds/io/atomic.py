"""Atomic file writes: readers (and a killed run) never see half a file.

Kept free of heavy imports (no jax) so data commands start fast.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` on a temp file beside ``path``, then rename it onto ``path``.

    The temp file gets the usual permissions (0666 less the umask), not mkstemp's 0600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


#: The temp files ``atomic_write`` makes: ``.NAME.XXXXXXXX.tmp`` (mkstemp's 8 characters).
_TEMP = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")


def remove_orphans(folder: str | os.PathLike) -> list[Path]:
    """Delete the temp files that a killed ``atomic_write`` left under ``folder``; returns them.

    Only files named as ``atomic_write`` names its temp files are touched. Call it where no
    other process writes into ``folder`` (a stage starting on its run folder).
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    orphans = [p for p in folder.rglob(".*.tmp") if p.is_file() and _TEMP.match(p.name)]
    for p in orphans:
        p.unlink()
    return orphans


def write_text(path: str | os.PathLike, text: str) -> None:
    """Atomically write a text file."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def finite_json(obj: Any) -> Any:
    """``obj`` with every non-finite float (NaN, ±Inf) as None: JSON has no NaN, and strict
    parsers refuse the bare ``NaN`` that ``json.dumps`` writes by default."""
    if isinstance(obj, dict):
        return {k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite_json(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Atomically write ``obj`` as strict JSON (non-finite floats as null)."""
    write_text(path, json.dumps(finite_json(obj), indent=2, allow_nan=False))
