"""The Neural Latents Benchmark's per-dataset facts, in one table, and how a file is matched
to its row.

Why one table: the PSTH kernel, the behaviour lag, the smoothing baseline's settings and
the names NLB files go by differ between datasets, and every stage (prepare, evaluate,
the submission writer) must agree on them. Values are nlb_tools' (``make_tensors.PARAMS``:
``lag``, ``psth_params.kern_sd``; ``examples/baselines/smoothing/run_smoothing.py``:
``default_dict``, tuned at 5 ms), or None where NLB defines none.

A file whose dataset cannot be told (a synthetic session, another lab's recording) gets
``GENERIC``: lag 100 ms (the textbook motor-cortex-to-hand delay, NLB's MC_Maze value) and a
50 ms PSTH kernel (NLB's value for three of the four maze sets). Whatever row is used is
recorded with the tensors (``dataset``, ``lag_ms``, ``psth_kern_sd_ms`` attributes).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.signal.windows import gaussian

#: Bins (ms) NLB evaluates at; a bin other than 5 ms adds ``_<bin_ms>`` to the dataset name.
BINS_MS = (5, 20)


@dataclass(frozen=True)
class DatasetFacts:
    """One dataset's conventions. Times in ms; None where NLB defines no value."""

    name: str  # NLB's name (mc_maze_small), or "generic"
    dandiset: str | None  # DANDI Archive id ("000140")
    session: str | None  # the ``ses-<...>`` tag of its DANDI file names ("small")
    lag_ms: int | None  # behaviour lag behind the neural window
    psth_kern_sd_ms: float | None  # Gaussian s.d. of the empirical PSTHs (1 ms smoothing)
    smooth_sd_ms: float  # smoothing baseline: kernel s.d.
    smooth_alpha: float  # smoothing baseline: Poisson GLM L2 penalty

    def nlb_name(self, bin_ms: int) -> str:
        """NLB's group name at ``bin_ms``: ``mc_maze_small`` at 20 ms is ``mc_maze_small_20``;
        5 ms, NLB's native bin, has no suffix."""
        if self.name == GENERIC.name:
            raise ValueError("name: the generic row names no NLB dataset")
        if bin_ms not in BINS_MS:
            raise ValueError(f"bin_ms: NLB evaluates at {BINS_MS} ms, not {bin_ms}")
        return self.name if bin_ms == 5 else f"{self.name}_{bin_ms}"


DATASETS: dict[str, DatasetFacts] = {
    f.name: f
    for f in (
        DatasetFacts("mc_maze", "000128", "full", 100, 70.0, 50.0, 0.01),
        DatasetFacts("mc_maze_large", "000138", "large", 120, 50.0, 40.0, 0.1),
        DatasetFacts("mc_maze_medium", "000139", "medium", 120, 50.0, 60.0, 0.1),
        DatasetFacts("mc_maze_small", "000140", "small", 120, 50.0, 60.0, 0.1),
        DatasetFacts("mc_rtt", "000129", None, 140, None, 30.0, 0.1),
        DatasetFacts("area2_bump", "000127", None, -20, 40.0, 30.0, 0.01),
        DatasetFacts("dmfc_rsg", "000130", None, None, 70.0, 60.0, 0.001),
    )
}
GENERIC = DatasetFacts("generic", None, None, 100, 50.0, 50.0, 0.01)


def facts(name: str) -> DatasetFacts:
    """The row called ``name`` (an NLB name or "generic"); ValueError listing the names."""
    if name == GENERIC.name:
        return GENERIC
    if name not in DATASETS:
        raise ValueError(
            f"dataset: {name!r} is not an NLB dataset; those are {', '.join(DATASETS)} "
            f"(or {GENERIC.name!r})"
        )
    return DATASETS[name]


def _patterns() -> list[tuple[re.Pattern[str], DatasetFacts]]:
    """Name, session-tag and dandiset patterns; longer names first (mc_maze_small before
    mc_maze). A match may not touch a letter or digit on either side."""
    out = []
    for f in sorted(DATASETS.values(), key=lambda f: len(f.name), reverse=True):
        out.append((re.compile(rf"(?<![a-z0-9]){f.name}(?![a-z])"), f))
        if f.session is not None:
            out.append((re.compile(rf"(?<![a-z0-9])ses_{f.session}(?![a-z0-9])"), f))
        if f.dandiset is not None:
            out.append((re.compile(rf"(?<![0-9]){f.dandiset}(?![0-9])"), f))
    return out


def identify(path: str | Path | None) -> DatasetFacts:
    """The dataset a file belongs to, from its path; ``GENERIC`` when nothing matches.

    The file name is tried first, then each folder up: NLB names (``mc_maze_small_20.h5``),
    DANDI session tags (``sub-Jenkins_ses-small_desc-train_behavior+ecephys.nwb``) and
    dandiset ids as DANDI lays downloads out (``000140/sub-Jenkins/...``). Case and
    ``-`` / ``_`` do not matter.
    """
    if path is None:
        return GENERIC
    for part in reversed(Path(path).parts):
        text = part.lower().replace("-", "_")
        for pattern, row in _patterns():
            if pattern.search(text):
                return row
    return GENERIC


def gaussian_window(sd_samples: float) -> np.ndarray:
    """NLB's smoothing kernel: ``gaussian(int(6 sd), sd)`` normalised to sum 1.

    An even length is kept as NLB has it: convolved with 'same' alignment it reaches
    ``L // 2`` samples back and ``L // 2 - 1`` ahead (half a sample of shift).
    """
    width = int(6 * sd_samples)
    if width < 1:
        raise ValueError(f"kernel s.d. {sd_samples} samples is too small: 6·sd must be >= 1")
    window = gaussian(width, sd_samples, sym=True)
    return window / window.sum()
