"""Co-train the context-integration JSLDS from scratch until ‖a−h‖/‖h‖ ≤ a target.

Trains with the task's defaults (the paper's: tanh RNN n=128, λ 1/1/100/10, L2 1e-5,
Adam eps 0.1, lr·0.9999^step, batch 256; but lr 0.005, not 0.02, see lfads_jslds/tasks),
evaluating on 1024 fresh trials every ``--eval-every``
steps, and prints the step and wall time at which the target is first reached.
``--task-mse`` also requires the RNN to have learned the task (held-out ``mse_rnn`` at
or below it) before stopping: a low relative error alone is also reached by a network
that outputs ≈ 0 (a saturated RNN the JSLDS tracks trivially). ``--set KEY=VALUE``
(repeatable) overrides the config as the CLI's ``--set`` does, e.g.
``--set optim.lr=0.02`` for the paper's rate.

    python benchmarks/context_cotrain.py --out runs/bench-context --task-mse 0.01
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from lfads_jslds import config as config_lib
from lfads_jslds.tasks import default_config
from lfads_jslds.training.tasks import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/bench-context"))
    parser.add_argument("--target", type=float, default=0.02)
    parser.add_argument(
        "--task-mse",
        type=float,
        default=None,
        help="also require held-out mse_rnn ≤ this before stopping (default: not required)",
    )
    parser.add_argument("--eval-every", type=int, default=1000)
    parser.add_argument("--max-steps", type=int, default=40000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override (repeatable), e.g. model.h_factor=0.9 or loss.fixed_point=10",
    )
    args = parser.parse_args()

    base = default_config("context")
    t0 = time.perf_counter()
    step = 0
    goal = f"mean relative error ≤ {args.target}"
    if args.task_mse is not None:
        goal += f" and mse_rnn ≤ {args.task_mse}"
    while step < args.max_steps:
        step = min(step + args.eval_every, args.max_steps)
        cfg = config_lib.resolve(
            base,
            overrides=[*args.overrides, f"optim.steps={step}", f"optim.seed={args.seed}"],
        )
        metrics = train(cfg, args.out, resume=step > args.eval_every, progress=False)
        wall = time.perf_counter() - t0
        print(
            f"step {step:6d}  wall {wall:7.1f} s  mean relative error "
            f"{metrics['mean_relative_error']:.4f}  mse_rnn {metrics['mse_rnn']:.2e}  "
            f"mse_jslds {metrics['mse_jslds']:.2e}",
            flush=True,
        )
        reached = metrics["mean_relative_error"] <= args.target
        if args.task_mse is not None:
            reached = reached and metrics["mse_rnn"] <= args.task_mse
        if reached:
            print(f"reached {goal} at step {step} after {wall:.1f} s (wall, incl. evals)")
            return
    print(f"did not reach {goal} in {args.max_steps} steps")


if __name__ == "__main__":
    main()
