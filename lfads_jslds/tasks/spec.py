"""What a synthetic task is: a batch format and the settings the paper trained it with."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import jax

from lfads_jslds.config import Decay, NonNegative, Positive, Rate


class TaskBatch(NamedTuple):
    """``inputs [trial, time, in]``, ``targets [trial, time, out]``, ``mask [time]`` (bool)."""

    inputs: jax.Array
    targets: jax.Array
    mask: jax.Array


@dataclass(frozen=True)
class ModelConfig:
    """The task network: cell F, expansion network E, linear readout, and ``u*``."""

    cell: str = "gru"  # gru (paper's GRU) | tanh (paper's vanilla RNN) | lfads_gru
    n_hidden: int = 100
    expansion_layers: int = 2
    i_factor: float = 1.0  # input weight scale (× 1/√inputs)
    h_factor: float = 0.9  # recurrent weight scale (× 1/√n)
    h_scale: float = 0.1  # std of the initial h0
    u_star_keep: tuple[int, ...] = ()  # input channels kept in u* (context integration: 2, 3)
    u_star_learned: bool = False  # add a trained offset to u* (extension; the paper fixes u*)


@dataclass(frozen=True)
class LossWeights:
    """λ weights of ``λ_RNN L_RNN + λ_JSLDS L_JSLDS + λ_e R_e + λ_a R_a + l2 ‖θ, φ‖²``.

    ``jslds = fixed_point = approx = 0`` trains a standard RNN; ``rnn = 0`` a pure SLDS.
    """

    rnn: NonNegative = 1.0
    jslds: NonNegative = 1.0
    fixed_point: NonNegative = 100.0
    approx: NonNegative = 10.0
    l2: NonNegative = 0.0

    @property
    def uses_jslds(self) -> bool:
        return any(w != 0.0 for w in (self.jslds, self.fixed_point, self.approx))


@dataclass(frozen=True)
class OptimConfig:
    """The paper's optimiser: Adam(eps 0.1), lr · decay^step, global-norm clip, fresh batches."""

    steps: int = 40000
    batch_size: int = 256
    lr: Positive = 0.02
    lr_decay: Decay = 0.9999
    adam_b1: Rate = 0.9
    adam_b2: Rate = 0.999
    adam_eps: Positive = 0.1
    clip_norm: Positive = 10.0
    seed: int = 0
    checkpoint_every: int = 500
    log_every: int = 50
    eval_trials: int = 1024
    max_bad_steps: int = 100  # consecutive non-finite steps before the run stops


@dataclass(frozen=True)
class TaskTrainConfig:
    task: str = "flipflop"
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossWeights = field(default_factory=LossWeights)
    optim: OptimConfig = field(default_factory=OptimConfig)


@dataclass(frozen=True)
class TaskSpec:
    """A task: its sampler ``sample(key, batch) -> TaskBatch``, sizes and paper defaults."""

    name: str
    sample: Callable[[jax.Array, int], TaskBatch]
    n_in: int
    n_out: int
    defaults: TaskTrainConfig
    dt_s: float  # seconds per step (for frequencies and time constants)
