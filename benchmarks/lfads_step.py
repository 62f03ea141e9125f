"""LFADS train-step time, ``jslds`` vs ``gru`` generator, and inference throughput.

MC_Maze 5 ms sizes from ``pipelines/configs/mc_maze.yaml`` (IC/CI encoders 100/80,
controller 80, co_dim 4, ic_dim 100, gen 100, factors 40; batch 100; 140 + 40 bins;
137 held-in, 182 neurons), random Poisson counts. The real jitted train step of
``lfads-jslds train`` (coordinated dropout, forward, backward, clip, AdamW). Both
generators are timed in one run, interleaved in rounds; medians and the ratio are printed.
Inference: ``infer.samples`` posterior samples per trial, batches of 100 trials.

    python benchmarks/lfads_step.py [--steps 5] [--rounds 3] [--samples 50]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from lfads_jslds import config as config_lib
from lfads_jslds.data.dataset import LFADSData
from lfads_jslds.pipeline.infer import make_batch_fn
from lfads_jslds.training import lfads as lfads_trainer
from lfads_jslds.training.run_config import RunConfig

CONFIG = Path(__file__).parents[1] / "pipelines" / "configs" / "mc_maze.yaml"
T_OBS, T_FWD, N_IN, N_ALL = 140, 40, 137, 182


def setup(generator: str, samples: int):
    cfg = config_lib.resolve(
        RunConfig(), CONFIG, [f"model.generator={generator}", f"infer.samples={samples}"]
    )
    b = cfg.train.batch_size
    rng = np.random.default_rng(0)
    x = rng.poisson(0.08, (b, T_OBS, N_IN)).astype(np.float32)
    y = rng.poisson(0.08, (b, T_OBS + T_FWD, N_ALL)).astype(np.float32)
    data = LFADSData(x, y, x, y, {}, {"bin_ms": 5}, Path("random"))
    tx = lfads_trainer.make_optimizer(cfg, 1)
    state = list(lfads_trainer.init_state(cfg, data, tx))
    step_fn = lfads_trainer.make_train_step(cfg, tx, T_FWD)
    xs, ys, idx = jnp.asarray(x), jnp.asarray(y), jnp.arange(b)

    def train(n: int, start: int) -> float:
        t0 = time.perf_counter()
        for i in range(n):
            state[0], state[1], terms, _ = step_fn(
                state[0], state[1], xs, ys, idx, start + i, 1.0, 1.0, 1.0
            )
        jax.block_until_ready(terms)
        return (time.perf_counter() - t0) / n

    infer_fn = make_batch_fn(cfg, T_FWD)

    def infer(n: int) -> float:
        t0 = time.perf_counter()
        for i in range(n):
            out = infer_fn(state[0], xs, jax.random.PRNGKey(i))
        jax.block_until_ready(out)
        return (time.perf_counter() - t0) / n

    t0 = time.perf_counter()
    train(1, 0)
    compile_s = time.perf_counter() - t0
    infer(1)
    return cfg, train, infer, compile_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5, help="train steps per timing round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--samples", type=int, default=50, help="posterior samples per trial")
    args = parser.parse_args()
    runs = {g: setup(g, args.samples) for g in ("jslds", "gru")}
    steps: dict[str, list[float]] = {g: [] for g in runs}
    for r in range(args.rounds):
        for g, (_, train, _, _) in runs.items():
            steps[g].append(train(args.steps, 1 + r * args.steps))
    inf = {g: float(np.median([run[2](1) for _ in range(args.rounds)])) for g, run in runs.items()}
    cfg = runs["jslds"][0]
    b = cfg.train.batch_size
    print(
        f"MC_Maze 5 ms sizes: batch {b}, {T_OBS}+{T_FWD} bins, gen {cfg.model.gen_dim}, "
        f"co_dim {cfg.model.co_dim}; {jax.devices()[0].platform}, jax {jax.__version__}"
    )
    med = {g: float(np.median(v)) for g, v in steps.items()}
    for g in runs:
        print(
            f"{g:>5} train step: {med[g]:.3f} s (median of {args.rounds} rounds x {args.steps}; "
            f"first call incl. compile {runs[g][3]:.0f} s)"
        )
    print(f"ratio jslds / gru: {med['jslds'] / med['gru']:.2f}")
    for g in runs:
        print(
            f"{g:>5} inference: {inf[g]:.2f} s per batch of {b} with {args.samples} samples "
            f"= {b / inf[g]:.0f} trials/s"
        )


if __name__ == "__main__":
    main()
