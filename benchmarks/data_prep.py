"""Data-layer speed: ``synth --preset mc_maze`` and ``prepare`` on it (MC_Maze sizes).

Each stage runs in its own process, so wall time and peak memory (max RSS) are its own.
Goals: synth ≤ 60 s; prepare ≤ 15 s with peak memory ≤ 2 GB.

    python benchmarks/data_prep.py [--workdir DIR] [--bin-ms 5]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SYNTH = (
    "from lfads_jslds.data.synth import write_synthetic_nwb; "
    "write_synthetic_nwb({!r}, 'mc_maze', 0)"
)
PREPARE = """
from lfads_jslds.data.nwb import read_session
from lfads_jslds.data.prepare import prepare, write_tensors
s = read_session({!r}, behavior=['hand_vel'])
t = prepare(s, bin_ms={})
write_tensors({!r}, t, {{'bin_ms': {}}})
"""


def run(code: str) -> tuple[float, float]:
    """Wall seconds and peak RSS (GB) of ``python -c code`` in a fresh process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", code])
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"stage failed: {code}")
    return wall, usage.ru_maxrss / 1024**2  # ru_maxrss is in KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--bin-ms", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        nwb, h5 = Path(tmp) / "mc_maze.nwb", Path(tmp) / "tensors.h5"
        wall, peak = run(SYNTH.format(str(nwb)))
        print(
            f"synth --preset mc_maze: {wall:.1f} s wall (incl. start-up), peak RSS {peak:.2f} GB, "
            f"{nwb.stat().st_size / 1e6:.0f} MB"
        )
        wall, peak = run(PREPARE.format(str(nwb), args.bin_ms, str(h5), args.bin_ms))
        print(
            f"prepare --bin-ms {args.bin_ms}: {wall:.1f} s wall (incl. start-up), "
            f"peak RSS {peak:.2f} GB"
        )


if __name__ == "__main__":
    main()
