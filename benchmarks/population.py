"""Member-steps per second of a population trained in one jitted step, K = 1, 4, 8.

MC_Maze 20 ms sizes (``pipelines/configs/mc_maze_20ms.yaml``: encoders 64/32, controller
32, co_dim 2, ic_dim 32, gen 64, factors 16, ``jslds`` generator; batch 50), random
Poisson counts of MC_Maze's 20 ms shape: 35 + 10 forward bins, 103 held-in and 34
held-out neurons. The step is ``training.population.make_population_step`` (coordinated
dropout, forward, backward, clip, AdamW, NaN guard, per member), every K in one run,
interleaved in rounds after compiling; the median step time gives member-steps/s, printed
as ratios to K = 1.

    taskset -c 0,1 python benchmarks/population.py [--ks 1 4 8] [--steps 5] [--rounds 5]

Measured 2026-11-29 on this project's shared 2-core CPU machine, pinned to both cores
(``taskset -c 0,1``), jax 0.10.2, float32, median of 5 rounds x 5 steps. Other jobs ran
(load average 4.4 before, 2.6 after):

    K =  1: step    87 ms, 11.6 member-steps/s = 1.00 x K = 1
    K =  4: step   272 ms, 14.7 member-steps/s = 1.27 x K = 1
    K =  8: step   593 ms, 13.5 member-steps/s = 1.17 x K = 1

An earlier run under more load (8.9 before, 6.0 after): 1.00 / 0.99 / 1.25 (K = 1: 300
ms). The time per member barely falls with K (87 → 74 ms at K = 8): at these sizes the
step is bound by arithmetic on 2 cores, not by per-operation overhead, so stacking gains
little here; the issue's target (K = 8 at 2x K = 1) is not reached on this machine.
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
from lfads_jslds.training import population as pop_lib
from lfads_jslds.training.run_config import RunConfig

CONFIGS = Path(__file__).parents[1] / "pipelines" / "configs"
#: MC_Maze at 20 ms: 700 ms aligned window, 200 ms forward, 137 neurons (a quarter held out).
SIZES_20MS = {"t_obs": 35, "t_fwd": 10, "n_in": 103, "n_all": 137}


def random_data(
    cfg: RunConfig, t_obs: int, t_fwd: int, n_in: int, n_all: int, bin_ms: int = 20
) -> LFADSData:
    """Poisson counts (0.1 per bin) of the given shape: 4 batches of train and 1 of eval trials."""
    b, rng = cfg.train.batch_size, np.random.default_rng(0)
    x = rng.poisson(0.1, (4 * b, t_obs, n_in)).astype(np.float32)
    y = rng.poisson(0.1, (4 * b, t_obs + t_fwd, n_all)).astype(np.float32)
    return LFADSData(x, y, x[:b], y[:b], {}, {"bin_ms": bin_ms}, Path("random"))


def population_timer(cfg: RunConfig, data: LFADSData, k: int):
    """``(time(n) -> seconds per step over n steps, compile_s)`` for a population of ``k``."""
    h = pop_lib.hyperparams(cfg, k, lr_scale=np.linspace(0.5, 1.5, k))
    state = pop_lib.init_population(cfg, data, h, list(range(k)))
    pop = pop_lib.population_data(cfg, data)
    step_fn = pop_lib.make_population_step(cfg, pop_lib.make_optimizer(cfg, pop), pop.n_fwd)
    b = cfg.train.batch_size
    idx = pop_lib.batch_order(state.data_key, 0, pop.n_trials)[:, :b]
    box = {"state": state, "step": 0}

    def run(n: int) -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            box["state"], terms, _ = step_fn(
                box["state"], pop.inputs, pop.targets, idx, box["step"], 1.0, 1.0
            )
            box["step"] += 1
        jax.block_until_ready(terms)
        return (time.perf_counter() - t0) / n

    t0 = time.perf_counter()
    run(1)
    return run, time.perf_counter() - t0


def measure(cfg: RunConfig, data: LFADSData, ks: list[int], steps: int, rounds: int) -> dict:
    """``{k: {"step_s", "member_steps_per_s", "compile_s"}}``: medians over ``rounds``
    rounds of ``steps`` steps, the K values interleaved in each round."""
    timers = {k: population_timer(cfg, data, k) for k in ks}
    times: dict[int, list[float]] = {k: [] for k in ks}
    for _ in range(rounds):
        for k, (run, _) in timers.items():
            times[k].append(run(steps))
    out = {}
    for k in ks:
        step_s = float(np.median(times[k]))
        out[k] = {"step_s": step_s, "member_steps_per_s": k / step_s, "compile_s": timers[k][1]}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--steps", type=int, default=5, help="steps per timing round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    cfg = config_lib.resolve(RunConfig(), CONFIGS / "mc_maze_20ms.yaml", [])
    data = random_data(cfg, **SIZES_20MS)
    res = measure(cfg, data, args.ks, args.steps, args.rounds)
    base = res[args.ks[0]]["member_steps_per_s"]
    print(
        f"MC_Maze 20 ms sizes: batch {cfg.train.batch_size}, {SIZES_20MS}, "
        f"gen {cfg.model.gen_dim}, {cfg.model.generator}; {jax.devices()[0].platform}, "
        f"jax {jax.__version__}, {jnp.zeros(0).dtype}; median of {args.rounds} x {args.steps}"
    )
    for k, r in res.items():
        print(
            f"K = {k:>2}: step {r['step_s'] * 1e3:7.1f} ms, {r['member_steps_per_s']:6.2f} "
            f"member-steps/s = {r['member_steps_per_s'] / base:4.2f} x K = {args.ks[0]} "
            f"(compile {r['compile_s']:.0f} s)"
        )


if __name__ == "__main__":
    main()
