"""One prepared timing run for an accelerator: train step, inference, population throughput.

At MC_Maze 5 ms sizes (``pipelines/configs/mc_maze.yaml``: encoders 100/80, controller 80,
co_dim 4, ic_dim 100, gen 100, factors 40, ``jslds``; batch 100; 140 + 40 bins, 137
held-in of 182 neurons; random Poisson counts) on whatever ``jax.devices()`` offers:

- ``train_step_s``: the single trainer's jitted step (``training.lfads.make_train_step``);
- ``infer_batch_s``: ``pipeline.infer.make_batch_fn`` on one batch with ``infer.samples``
  posterior samples, and trials per second;
- ``population``: ``training.population`` steps at K = 1, 8, 32 members, member-steps/s
  and the ratio to K = 1.

Each timing is the median over rounds after a compiling call (whose time is recorded).
The JSON (``--out``) also holds the device kind, platform, versions and sizes.
``--quick`` shrinks sizes, samples and K (1, 2) so that the script checks itself on a
CPU: 8 minutes on 2 loaded cores (load 8.9), almost all of it compiling (the train step
140 s, each population step 100 s); its timings mean nothing.

    python benchmarks/gpu.py --out gpu.json            # on the GPU machine
    python benchmarks/gpu.py --quick --out quick.json  # anywhere
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from population import measure, random_data  # noqa: E402 (the sibling benchmark)

from lfads_jslds import config as config_lib  # noqa: E402
from lfads_jslds.pipeline.infer import make_batch_fn  # noqa: E402
from lfads_jslds.training import lfads as lfads_training  # noqa: E402
from lfads_jslds.training.run_config import RunConfig  # noqa: E402

CONFIG = Path(__file__).parents[1] / "pipelines" / "configs" / "mc_maze.yaml"
FULL = {"t_obs": 140, "t_fwd": 40, "n_in": 137, "n_all": 182}
QUICK = {"t_obs": 20, "t_fwd": 5, "n_in": 30, "n_all": 40}
QUICK_SETS = ["train.batch_size=10", "infer.samples=2", "model.gen_dim=32", "model.fac_dim=8"]


def median_time(fn, rounds: int) -> tuple[float, float]:
    """``(median seconds of fn() over rounds, seconds of the first, compiling, call)``."""
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - t0
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), first


def time_single(cfg: RunConfig, data, steps: int, rounds: int) -> dict:
    """The single trainer's step and one inference batch."""
    b, n_fwd = cfg.train.batch_size, data.n_fwd
    tx = lfads_training.make_optimizer(cfg, 1)
    params, opt = lfads_training.init_state(cfg, data, tx)
    step_fn = lfads_training.make_train_step(cfg, tx, n_fwd)
    xs, ys, idx = jnp.asarray(data.train_input), jnp.asarray(data.train_target), jnp.arange(b)
    box = {"p": params, "o": opt, "i": 0}

    def train() -> jax.Array:
        for _ in range(steps):
            box["p"], box["o"], terms, _ = step_fn(
                box["p"], box["o"], xs, ys, idx, box["i"], 1.0, 1.0, 1.0
            )
            box["i"] += 1
        return terms["total"]

    infer_fn = make_batch_fn(cfg, n_fwd)
    step_s, step_first = median_time(train, rounds)
    infer_s, infer_first = median_time(
        lambda: infer_fn(box["p"], xs[:b], jax.random.PRNGKey(0)), rounds
    )
    return {
        "train_step_s": step_s / steps,
        "train_compile_s": step_first,
        "infer_batch_s": infer_s,
        "infer_trials_per_s": b / infer_s,
        "infer_samples": cfg.infer.samples,
        "infer_compile_s": infer_first,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a self-check on CPU")
    parser.add_argument("--ks", type=int, nargs="+", help="population sizes (default 1 8 32)")
    parser.add_argument("--steps", type=int, default=5, help="steps per timing round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    sizes, sets = (QUICK, QUICK_SETS) if args.quick else (FULL, [])
    ks = args.ks or ([1, 2] if args.quick else [1, 8, 32])
    cfg = config_lib.resolve(RunConfig(), CONFIG, sets)
    data = random_data(cfg, **sizes, bin_ms=5)
    dev = jax.devices()[0]
    result = {
        "device_kind": dev.device_kind,
        "platform": dev.platform,
        "devices": len(jax.devices()),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "python": platform.python_version(),
        "quick": args.quick,
        "sizes": {**sizes, "batch": cfg.train.batch_size, "gen_dim": cfg.model.gen_dim},
        "generator": cfg.model.generator,
        "dtype": str(jnp.zeros(0).dtype),
        "steps_per_round": args.steps,
        "rounds": args.rounds,
        **time_single(cfg, data, args.steps, args.rounds),
    }
    print(json.dumps(result, indent=1), flush=True)
    pop = measure(cfg, data, ks, args.steps, args.rounds)
    base = pop[ks[0]]["member_steps_per_s"]
    result["population"] = {
        str(k): {**r, "ratio_to_first": r["member_steps_per_s"] / base} for k, r in pop.items()
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result["population"], indent=1))


if __name__ == "__main__":
    main()
