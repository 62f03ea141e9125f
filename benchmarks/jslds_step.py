"""Training-step time: co-trained JSLDS vs the standard RNN, at the paper's flip-flop sizes.

GRU n=100, batch 256, T=25; the real jitted training step of ``task train`` (fresh batch,
forward, backward, clip, Adam). Both timed in one run, interleaved in rounds, so the
ratio is robust to machine load; prints medians and the ratio.

    python benchmarks/jslds_step.py [--steps 30] [--rounds 5]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from lfads_jslds import config as config_lib
from lfads_jslds.tasks import default_config, get_task
from lfads_jslds.tasks import model as task_model
from lfads_jslds.training.tasks import make_optimizer, make_train_step, seed_keys

STANDARD = ["loss.rnn=1.0", "loss.jslds=0.0", "loss.fixed_point=0.0", "loss.approx=0.0"]


def stepper(overrides: list[str]):
    cfg = config_lib.resolve(default_config("flipflop"), overrides=overrides)
    spec = get_task("flipflop")
    tx = make_optimizer(cfg.optim)
    params = task_model.init_params(seed_keys(0)[0], cfg.model, spec.n_in, spec.n_out)
    state = [params, tx.init(params)]
    step_fn = make_train_step(cfg, tx)

    def run(n: int, start: int) -> float:
        t0 = time.perf_counter()
        for i in range(n):
            state[0], state[1], terms, _ = step_fn(state[0], state[1], jnp.asarray(start + i))
        jax.block_until_ready(terms)
        return (time.perf_counter() - t0) / n

    run(2, 0)  # compile
    return cfg, run


def flops(overrides: list[str]) -> float:
    """XLA's count of floating-point operations of one loss-and-gradient evaluation."""
    cfg = config_lib.resolve(default_config("flipflop"), overrides=overrides)
    spec = get_task("flipflop")
    params = task_model.init_params(seed_keys(0)[0], cfg.model, spec.n_in, spec.n_out)
    batch = spec.sample(jax.random.PRNGKey(0), cfg.optim.batch_size)
    grad = jax.jit(jax.grad(lambda p: task_model.losses(p, batch, cfg.model, cfg.loss)[0]))
    cost = grad.lower(params).compile().cost_analysis()
    return float((cost[0] if isinstance(cost, list) else cost)["flops"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="steps per timing round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    cfg, jslds = stepper([])
    _, standard = stepper(STANDARD)
    times = {"jslds": [], "standard": []}
    for r in range(args.rounds):
        times["jslds"].append(jslds(args.steps, 10 + r * args.steps))
        times["standard"].append(standard(args.steps, 10 + r * args.steps))
    med = {k: float(np.median(v)) * 1e3 for k, v in times.items()}
    print(
        f"flip-flop GRU n={cfg.model.n_hidden}, batch {cfg.optim.batch_size}, T=25, "
        f"{jax.devices()[0].platform}, jax {jax.__version__}"
    )
    print(f"co-trained JSLDS step: {med['jslds']:.1f} ms (median of {args.rounds} rounds)")
    print(f"standard RNN step:     {med['standard']:.1f} ms")
    print(f"ratio JSLDS / standard: {med['jslds'] / med['standard']:.2f}")
    print(
        f"arithmetic ratio (XLA flop count, scan body): {flops([]) / flops(STANDARD):.2f}: the "
        "co-trained step evaluates F at h, E, and F with its tangent at e*"
    )


if __name__ == "__main__":
    main()
