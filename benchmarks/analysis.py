"""Time and peak memory of the per-trial Jacobian-mode analysis at MC_Maze size.

A generator GRU at MC_Maze's sizes (gen 100, co_dim 4; random LFADS-init weights) and
expansion points and states for ``--trials`` × 140 bins (MC_Maze: 2295 trials at 5 ms);
runs what ``analyze`` runs on them: ``jacobian_modes`` (Jacobians, eigenvalues, dominant
pairs, planes; chunked; the fast path unless ``--exact``), ``summarize_modes``,
``fixed_point_residual``, ``count_distinct``. Prints each stage's wall time and the
process's CPU time and peak resident memory after it (``getrusage``: user + system,
maxrss), the total, the points
decomposed with LAPACK and the load average.

Expansion points (``--points``):

- ``trained`` (default): as a trained JSLDS names them. Measured on a real-spike run
  (MC_Maze 20 ms, gen 64, 574 trials × 35 bins): every e* within a median 0.010 of the
  mean e* (‖·‖₂), 0.0008 per 20 ms bin, while ‖a_{t−1} − e*‖ is 0.62. Here: one centre
  ``0.3·N(0, I)`` plus a smooth per-trial drift of norm 0.01 (a sum of 3 sinusoids of
  0.5–2 Hz per unit, random phases), so ≈ 0.0003 per 5 ms bin; ``a_{t−1} − e*``
  ``0.06·N(0, I)`` (norm ≈ 0.6).
- ``random``: i.i.d. ``0.3·N(0, I)`` points, no two alike: the worst case for the fast
  path, which then decomposes every point exactly (plus its checks).

    python benchmarks/analysis.py [--trials 2295] [--bins 140] [--chunk 256] [--exact]
                                  [--points trained|random]

Measured on the project machine (2 CPU cores, AMD EPYC, OpenBLAS 0.3.31), shared with
other jobs: load average 5–7 throughout (``uptime``), so wall times are 1.5–2.5× what 2
idle cores would give; CPU time (user + system) is the steadier figure.

- Before, as the issue measured it (exact, random points, lower load): 24 min, 1427 s of
  it in ``jacobian_modes`` (4.48 ms per point).
- ``--trials 2295`` (fast path, trained-like points), 2026-11-29 09:25, load 5.5–6.7:
  410.6 s wall, 261.9 s CPU, peak RSS 1.41 GB; ``jacobian_modes`` 405.1 s wall;
  LAPACK at 17 334 of 321 300 points (5.4 %: 2 510 representatives, the rest fallbacks).
- ``--trials 230 --exact``, 09:12, load 5–6: 311.0 s wall, 248.1 s CPU (9.66 ms per point
  wall, 7.7 ms CPU), peak RSS 0.68 GB. At 2295 trials that is ≈ 3 100 s wall (52 min)
  and ≈ 2 480 s CPU at this load: the full exact run could not finish in the session's
  time, so it was measured at a tenth of the size.
- Speed-up of the fast path: ≈ 7.6× wall, ≈ 9.5× CPU at 2295 trials.
"""

from __future__ import annotations

import argparse
import functools
import os
import resource
import time

import jax
import numpy as np

from lfads_jslds.analysis import modes
from lfads_jslds.models.cells import init_lfads_gru, lfads_gru

BIN_S = 0.005
DRIFT = 6e-4


def trained_like_points(
    rng: np.random.Generator, trials: int, bins: int, n: int
) -> tuple[np.ndarray, np.ndarray]:
    """Expansion points ``[trial, time, n]`` and ``a_{t−1} − e*`` as a trained JSLDS has them
    (module docstring): one centre, a smooth drift of norm 0.01, deviations of norm ≈ 0.6."""
    t = np.arange(bins) * BIN_S
    centre = 0.03 * rng.standard_normal(n)
    freq = rng.uniform(0.5, 2.0, (3, n))
    drift = np.zeros((trials, bins, n))
    for f in freq:
        phase = rng.uniform(0, 2 * np.pi, (trials, 1, n))
        drift += np.sin(2 * np.pi * f * t[None, :, None] + phase)
    drift *= DRIFT / np.linalg.norm(drift, axis=-1, keepdims=True).mean()
    dev = 0.06 * rng.standard_normal((trials, bins, n))
    return (centre + drift).astype(np.float32), dev.astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=2295)
    parser.add_argument("--bins", type=int, default=140)
    parser.add_argument("--gen", type=int, default=100)
    parser.add_argument("--co-dim", type=int, default=4)
    parser.add_argument("--chunk", type=int, default=256)
    parser.add_argument("--exact", action="store_true", help="LAPACK at every point")
    parser.add_argument("--points", choices=["trained", "random"], default="trained")
    args = parser.parse_args()
    params, _ = init_lfads_gru(jax.random.PRNGKey(0), args.gen, args.co_dim)
    cell = functools.partial(lfads_gru, clip=5.0)
    rng = np.random.default_rng(0)
    shape = (args.trials, args.bins, args.gen)
    if args.points == "trained":
        points, dev = trained_like_points(rng, *shape)
    else:
        points = (0.3 * rng.standard_normal(shape)).astype(np.float32)
        dev = (0.1 * rng.standard_normal(shape)).astype(np.float32)
    # a_{t-1} = e*_t + dev_t: states a_1..a_T and a_0 laid out as inference.h5 has them
    prev = points + dev
    states, initial = np.concatenate([prev[:, 1:], prev[:, -1:]], 1), prev[:, 0]
    condition = rng.integers(0, 27, args.trials)
    stages: dict[str, tuple[float, float, float]] = {}

    def cpu_s() -> float:
        use = resource.getrusage(resource.RUSAGE_SELF)
        return use.ru_utime + use.ru_stime

    def stage(name, fn):
        t0, c0 = time.perf_counter(), cpu_s()
        out = fn()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
        stages[name] = (time.perf_counter() - t0, cpu_s() - c0, peak)
        return out

    m = stage(
        "jacobian_modes",
        lambda: modes.jacobian_modes(
            cell,
            params,
            points,
            args.co_dim,
            BIN_S,
            states=states,
            initial=initial,
            chunk=args.chunk,
            exact=args.exact,
            progress=True,
        ),
    )
    stage("summarize_modes", lambda: modes.summarize_modes(m, condition))
    stage(
        "fixed_point_residual",
        lambda: modes.fixed_point_residual(cell, params, points, u_dim=args.co_dim),
    )
    stage("count_distinct", lambda: modes.count_distinct(points, 0.05))
    n = args.trials * args.bins
    total = sum(s for s, _, _ in stages.values())
    cpu = sum(c for _, c, _ in stages.values())
    print(
        f"{args.trials} trials x {args.bins} bins = {n} points, gen {args.gen}, "
        f"co_dim {args.co_dim}, {args.points} points, {'exact' if args.exact else 'fast'} path"
    )
    for k, (s, c, peak) in stages.items():
        print(f"{k:>22}: {s:8.1f} s wall {c:8.1f} s CPU   peak RSS so far {peak:5.2f} GB")
    print(f"{'total':>22}: {total:8.1f} s wall {cpu:8.1f} s CPU ({total / n * 1e3:.3f} ms/point)")
    print(f"decomposed with LAPACK: {m.n_exact} of {n} points ({m.n_exact / n:.1%})")
    print(f"peak resident memory: {max(p for _, _, p in stages.values()):.2f} GB")
    print(f"load average (1, 5, 15 min) at the end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
