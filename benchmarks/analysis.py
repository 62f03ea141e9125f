"""Time and peak memory of the per-trial Jacobian-mode analysis at MC_Maze size.

A generator GRU at MC_Maze's sizes (gen 100, co_dim 4; random LFADS-init weights) and
random expansion points and states for ``--trials`` × 140 bins (MC_Maze: 2295 trials);
runs what ``analyze`` runs on them: ``jacobian_modes`` (Jacobians, eigenvalues, dominant
pairs, planes; chunked), ``summarize_modes``, ``fixed_point_residual``, ``count_distinct``.
Prints the wall time of each stage and the process's peak resident memory.

    python benchmarks/analysis.py [--trials 2295] [--bins 140] [--chunk 256]
"""

from __future__ import annotations

import argparse
import functools
import resource
import time

import jax
import numpy as np

from lfads_jslds.analysis import modes
from lfads_jslds.models.cells import init_lfads_gru, lfads_gru


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=2295)
    parser.add_argument("--bins", type=int, default=140)
    parser.add_argument("--gen", type=int, default=100)
    parser.add_argument("--co-dim", type=int, default=4)
    parser.add_argument("--chunk", type=int, default=256)
    args = parser.parse_args()
    params, _ = init_lfads_gru(jax.random.PRNGKey(0), args.gen, args.co_dim)
    cell = functools.partial(lfads_gru, clip=5.0)
    rng = np.random.default_rng(0)
    shape = (args.trials, args.bins, args.gen)
    points = (0.3 * rng.standard_normal(shape)).astype(np.float32)
    states = points + (0.1 * rng.standard_normal(shape)).astype(np.float32)
    condition = rng.integers(0, 27, args.trials)
    times = {}
    t0 = time.perf_counter()
    m = modes.jacobian_modes(
        cell,
        params,
        points,
        args.co_dim,
        0.005,
        states=states,
        initial=states[:, 0],  # a_0: any state of the same law
        chunk=args.chunk,
    )
    times["jacobian_modes"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    modes.summarize_modes(m, condition)
    times["summarize_modes"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    modes.fixed_point_residual(cell, params, points, u_dim=args.co_dim)
    times["fixed_point_residual"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    modes.count_distinct(points, 0.05)
    times["count_distinct"] = time.perf_counter() - t0
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    n = args.trials * args.bins
    print(
        f"{args.trials} trials x {args.bins} bins = {n} points, "
        f"gen {args.gen}, co_dim {args.co_dim}"
    )
    for k, v in times.items():
        print(f"{k:>22}: {v:8.1f} s")
    print(
        f"{'total':>22}: {sum(times.values()):8.1f} s "
        f"({sum(times.values()) / n * 1e3:.2f} ms/point)"
    )
    print(f"peak resident memory: {peak_gb:.2f} GB")


if __name__ == "__main__":
    main()
