"""The task network (cell + expansion network + shared readout), its losses and evaluation.

Parameters are a plain pytree::

    {"cell": {...}, "h0": [n], "expansion": [{W, b}, ...], "readout": {W: [out, n], b: [out]},
     "u_star": [in]  (only with a learned u*)}

Losses are means over trials × (masked) time × units, as the paper's code takes them.
"""

from __future__ import annotations

from dataclasses import replace
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lfads_jslds.models.cells import CELLS, Params
from lfads_jslds.models.expansion import init_expansion
from lfads_jslds.models.jslds import (
    InputExpansion,
    Trajectory,
    approx_loss,
    fixed_point_loss,
    mean_relative_error,
    run_jslds,
    run_rnn,
)
from lfads_jslds.tasks.spec import LossWeights, ModelConfig, TaskBatch, TaskSpec

LOSS_TERMS = ("rnn", "jslds", "fixed_point", "approx", "l2")


def init_params(key: jax.Array, cfg: ModelConfig, n_in: int, n_out: int) -> Params:
    """Initialise as the paper's code: cell by its rule, zero E, readout N(0,1)/√n."""
    k_cell, k_out = jax.random.split(key)
    _, init_cell = CELLS[cfg.cell]
    n = cfg.n_hidden
    cell, h0 = init_cell(
        k_cell, n, n_in, i_factor=cfg.i_factor, h_factor=cfg.h_factor, h_scale=cfg.h_scale
    )
    params = {
        "cell": cell,
        "h0": h0,
        "expansion": init_expansion(n, cfg.expansion_layers),
        "readout": {
            "W": jax.random.normal(k_out, (n_out, n), jnp.float32) / jnp.sqrt(n),
            "b": jnp.zeros(n_out, jnp.float32),
        },
    }
    if cfg.u_star_learned:
        params["u_star"] = jnp.zeros(n_in, jnp.float32)
    return params


def input_expansion(cfg: ModelConfig) -> InputExpansion:
    return InputExpansion(keep=tuple(cfg.u_star_keep), learned=cfg.u_star_learned)


def readout(params: Params, states: jax.Array) -> jax.Array:
    """Linear readout ``[..., n] -> [..., out]``, shared by the RNN and the JSLDS."""
    return states @ params["readout"]["W"].T + params["readout"]["b"]


def run_batch(params: Params, inputs: jax.Array, cfg: ModelConfig) -> Trajectory:
    """Both systems over ``inputs [trial, time, in]``; fields ``[trial, time, n]``."""
    cell = CELLS[cfg.cell][0]
    return jax.vmap(lambda x: run_jslds(cell, params, x, input_expansion=input_expansion(cfg)))(
        inputs
    )


def masked_mse(outputs: jax.Array, targets: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean squared error over trials × masked steps × outputs (``mask [time]`` bool)."""
    sq = (outputs - targets) ** 2 * mask[None, :, None]
    return jnp.sum(sq) / (outputs.shape[0] * jnp.sum(mask) * outputs.shape[-1])


def l2_norm_sq(params: Params) -> jax.Array:
    """``‖θ, φ‖²`` over every parameter (cell, h0, E, readout), as the paper's L2."""
    return sum(jnp.sum(x**2) for x in jax.tree_util.tree_leaves(params))


def losses(
    params: Params,
    batch: TaskBatch,
    cfg: ModelConfig,
    weights: LossWeights,
    with_jslds: bool | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Weighted total and the unweighted terms ``LOSS_TERMS``.

    ``with_jslds`` defaults to ``weights.uses_jslds``: with λ_JSLDS = λ_e = λ_a = 0 the
    JSLDS path is skipped and training is a standard RNN's (those terms report 0).
    """
    with_jslds = weights.uses_jslds if with_jslds is None else with_jslds
    if with_jslds:
        traj = run_batch(params, batch.inputs, cfg)
        h = traj.h
        terms = {
            "jslds": masked_mse(readout(params, traj.a), batch.targets, batch.mask),
            "fixed_point": fixed_point_loss(traj),
            "approx": approx_loss(traj),
        }
    else:
        cell = CELLS[cfg.cell][0]
        h = jax.vmap(lambda x: run_rnn(cell, params, x))(batch.inputs)
        terms = {k: jnp.zeros((), h.dtype) for k in ("jslds", "fixed_point", "approx")}
    terms["rnn"] = masked_mse(readout(params, h), batch.targets, batch.mask)
    terms["l2"] = l2_norm_sq(params)
    total = sum(getattr(weights, k) * terms[k] for k in LOSS_TERMS)
    return total, terms


@partial(jax.jit, static_argnames=("spec", "cfg", "size"))
def _batch_metrics(
    params: Params, key: jax.Array, spec: TaskSpec, cfg: ModelConfig, size: int
) -> dict[str, jax.Array]:
    batch = spec.sample(key, size)
    traj = run_batch(params, batch.inputs, cfg)
    return {
        "mean_relative_error": mean_relative_error(traj),
        "mse_rnn": masked_mse(readout(params, traj.h), batch.targets, batch.mask),
        "mse_jslds": masked_mse(readout(params, traj.a), batch.targets, batch.mask),
        "fp_loss": fixed_point_loss(traj),
        "approx_loss": approx_loss(traj),
    }


def evaluate(
    params: Params,
    spec: TaskSpec,
    cfg: ModelConfig,
    n_trials: int = 1024,
    seed: int = 0,
    batch_size: int = 1024,
) -> dict[str, float]:
    """Held-out metrics on ``n_trials`` fresh trials (DESIGN §7 keys), in bounded batches.

    ``mean_relative_error`` (mean of ‖a−h‖/‖h‖), ``mse_rnn``/``mse_jslds`` (masked output
    MSE), ``fp_loss`` (R_e) and ``approx_loss`` (R_a); batch means weighted by trial count.
    """
    if n_trials < 1:
        raise ValueError(f"n_trials must be at least 1, got {n_trials}")

    key = jax.random.PRNGKey(seed)
    totals: dict[str, float] = {}
    done = 0
    while done < n_trials:
        size = min(batch_size, n_trials - done)
        part = jax.device_get(
            _batch_metrics(params, jax.random.fold_in(key, done), spec, cfg, size)
        )
        for k, v in part.items():
            totals[k] = totals.get(k, 0.0) + float(v) * size
        done += size
    out: dict[str, Any] = {k: v / n_trials for k, v in totals.items()}
    out["n_trials"] = n_trials
    out["seed"] = seed
    return out


def infer_model_config(params: Params, base: ModelConfig | None = None) -> ModelConfig:
    """``base`` with what the weights tell: cell type (from its keys), sizes, learned ``u*``."""
    cell = params["cell"]
    name = next(
        (n for n, keys in (("gru", "wRUHX"), ("tanh", "wR"), ("lfads_gru", "W_x")) if keys in cell),
        None,
    )
    if name is None:
        raise ValueError(f"unrecognised cell parameters {sorted(cell)}")
    return replace(
        base or ModelConfig(),
        cell=name,
        n_hidden=int(np.shape(params["h0"])[0]),
        expansion_layers=len(params["expansion"]),
        u_star_learned="u_star" in params,
    )
