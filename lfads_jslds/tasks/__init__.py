"""The JSLDS paper's synthetic tasks: 3-bit flip-flop and context-dependent integration."""

from __future__ import annotations

import difflib

from lfads_jslds.tasks.context import sample_context
from lfads_jslds.tasks.flipflop import sample_flipflop
from lfads_jslds.tasks.spec import (
    LossWeights,
    ModelConfig,
    OptimConfig,
    TaskBatch,
    TaskSpec,
    TaskTrainConfig,
)

TASKS: dict[str, TaskSpec] = {
    "flipflop": TaskSpec(
        name="flipflop",
        sample=sample_flipflop,
        n_in=6,
        n_out=3,
        # Paper: GRU n=100, λ = 3 / 1 / 100 / 10, no L2.
        defaults=TaskTrainConfig(
            task="flipflop",
            model=ModelConfig(cell="gru", n_hidden=100, h_factor=0.9),
            loss=LossWeights(rnn=3.0, jslds=1.0, fixed_point=100.0, approx=10.0, l2=0.0),
        ),
        dt_s=1.0,  # no physical time: one step is one unit
    ),
    "context": TaskSpec(
        name="context",
        sample=sample_context,
        n_in=4,
        n_out=1,
        # Paper: tanh RNN n=128, u* = [0, 0, ctx1, ctx2], λ = 1 / 1 / 100 / 10, L2 1e-5.
        defaults=TaskTrainConfig(
            task="context",
            model=ModelConfig(cell="tanh", n_hidden=128, h_factor=0.9, u_star_keep=(2, 3)),
            loss=LossWeights(rnn=1.0, jslds=1.0, fixed_point=100.0, approx=10.0, l2=1e-5),
            # lr 0.005, not the paper's 0.02: at 0.02 the fixed-point term drives the tanh
            # units into saturation within ~50 steps and the task is never learned (output
            # MSE stays ≈ 0.3 for thousands of steps); at 0.005 both systems learn it
            # (benchmarks/context_cotrain.py).
            optim=OptimConfig(lr=0.005),
        ),
        dt_s=0.04,
    ),
}


class UnknownTaskError(KeyError):
    def __str__(self) -> str:
        return self.args[0]


def get_task(name: str) -> TaskSpec:
    """The task called ``name``, or an error naming the known ones."""
    if name not in TASKS:
        close = difflib.get_close_matches(name, TASKS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise UnknownTaskError(f"unknown task {name!r}{hint}; known tasks: {', '.join(TASKS)}")
    return TASKS[name]


def default_config(name: str) -> TaskTrainConfig:
    """The paper's settings for task ``name`` (frozen: override with ``config.resolve``)."""
    return get_task(name).defaults


__all__ = [
    "TASKS",
    "LossWeights",
    "ModelConfig",
    "OptimConfig",
    "TaskBatch",
    "TaskSpec",
    "TaskTrainConfig",
    "UnknownTaskError",
    "default_config",
    "get_task",
    "sample_context",
    "sample_flipflop",
]
