"""Context-dependent integration, as the JSLDS paper's code defines it (DESIGN §2)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lfads_jslds.tasks.spec import TaskBatch


def sample_context(
    key: jax.Array,
    batch: int,
    n_time: int = 25,
    duration_s: float = 1.0,
    bias_scale: float = 0.01,
    noise_scale: float = 0.025,
) -> TaskBatch:
    """Sample ``batch`` trials of ``n_time`` steps over ``duration_s`` (Δt = 0.04 s).

    Per trial and channel a bias ``bias_scale·2·(N(0,1) − 0.5)``; per step noise
    ``N(0,1)·noise_scale/√Δt``. Context one-hot ``[ctx1, ctx2]``, ctx1 with probability
    1/2, constant over the trial. ``inputs [trial, time, 4] = [x1, x2, ctx1, ctx2]``;
    ``targets [trial, time, 1]`` = cumulative sum of the cued channel (no Δt factor, as
    the paper keeps outputs O(1)); every step is in the loss.
    """
    dt = duration_s / n_time
    k_bias, k_noise, k_ctx = jax.random.split(key, 3)
    bias = bias_scale * 2.0 * (jax.random.normal(k_bias, (batch, 1, 2)) - 0.5)
    noise = jax.random.normal(k_noise, (batch, n_time, 2)) * (noise_scale / jnp.sqrt(dt))
    signal = (bias + noise).astype(jnp.float32)
    ctx1 = jax.random.bernoulli(k_ctx, 0.5, (batch,))
    context = jnp.stack([ctx1, ~ctx1], axis=-1).astype(jnp.float32)
    inputs = jnp.concatenate([signal, jnp.broadcast_to(context[:, None], (batch, n_time, 2))], -1)
    cued = jnp.where(ctx1[:, None], signal[..., 0], signal[..., 1])
    targets = jnp.cumsum(cued, axis=1)[..., None]
    return TaskBatch(inputs, targets, jnp.ones(n_time, bool))
