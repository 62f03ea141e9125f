"""The 3-bit flip-flop (memory) task, as the JSLDS paper's code defines it (DESIGN §2)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lfads_jslds.tasks.spec import TaskBatch


def sample_flipflop(
    key: jax.Array, batch: int, n_time: int = 25, n_bits: int = 3, n_settle: int = 5
) -> TaskBatch:
    """Sample ``batch`` trials.

    Per bit and step a pulse in {−1, 0, +1}, each with probability 1/3. Input per bit is
    one-hot ``[pulse == −1, pulse == +1]``, bits concatenated: ``inputs [trial, time, 2·bits]``
    ordered (bit0−, bit0+, bit1−, ...). Target per bit is the last nonzero pulse, −1
    before the first (``targets [trial, time, bits]``). Loss on steps ``n_settle..n_time-1``.
    """
    pulses = jax.random.randint(key, (batch, n_time, n_bits), -1, 2).astype(jnp.float32)
    inputs = jnp.stack([pulses < 0, pulses > 0], axis=-1).astype(jnp.float32)
    t = jnp.arange(n_time)[None, :, None]
    last = jax.lax.cummax(jnp.where(pulses != 0, t, -1), axis=1)
    held = jnp.take_along_axis(pulses, jnp.maximum(last, 0), axis=1)
    targets = jnp.where(last >= 0, held, -1.0)
    mask = jnp.arange(n_time) >= n_settle
    return TaskBatch(inputs.reshape(batch, n_time, 2 * n_bits), targets, mask)
