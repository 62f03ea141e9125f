"""Recurrent cells as pure functions ``cell(params, h, x) -> h_next``.

Every cell acts on one sample: ``h: [n]``, ``x: [u]``; batch with ``jax.vmap``.
Keeping cells single-sample makes ``jax.jvp`` / ``jax.jacfwd`` give per-sample
Jacobians directly (the JSLDS step and the post-hoc analysis rely on that).

Three cells (``CELLS`` names them for the task models' ``cell`` option):
- ``paper_gru`` (``CELLS["gru"]``): the JSLDS paper's GRU (concatenated ``[h; x]``
  weights, its sigmoid).
- ``tanh_rnn`` (``CELLS["tanh"]``): the paper's vanilla tanh RNN (context-dependent
  integration).
- ``lfads_gru`` (``CELLS["lfads_gru"]``): the GRU as LFADS implementations write it
  (separate input and recurrent weights, state clipping). It is the LFADS model's
  generator cell (``models.lfads.generator_cell``) for every ``model.generator`` value,
  including ``gru``, which names the LFADS GRU alone, not ``CELLS["gru"]``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

Params = dict[str, Any]
#: ``cell(params, h: [n], x: [u]) -> h_next: [n]``, one sample.
Cell = Callable[[Params, jax.Array, jax.Array], jax.Array]


def paper_sigmoid(z: jax.Array) -> jax.Array:
    """σ(z) = (tanh(z/2) + 1)/2: equal to the logistic, written as the paper's code does."""
    return 0.5 * (jnp.tanh(z / 2.0) + 1.0)


def paper_gru(params: Params, h: jax.Array, x: jax.Array, forget_bias: float = 0.0) -> jax.Array:
    """The paper's GRU: ``[r; u] = σ(W_ru [h; x] + b_ru)``, ``c = tanh(W_c [r*h; x] + b_c)``.

    ``forget_bias`` is added to the update gate before σ (the paper's ``bfg``, 0 in its runs).
    Params: ``wRUHX [2n, n+u]``, ``bRU [2n]``, ``wCHX [n, n+u]``, ``bC [n]``.
    """
    n = h.shape[-1]
    ru = params["wRUHX"] @ jnp.concatenate([h, x]) + params["bRU"]
    r = paper_sigmoid(ru[:n])
    u = paper_sigmoid(ru[n:] + forget_bias)
    c = jnp.tanh(params["wCHX"] @ jnp.concatenate([r * h, x]) + params["bC"])
    return u * h + (1.0 - u) * c


def tanh_rnn(params: Params, h: jax.Array, x: jax.Array) -> jax.Array:
    """The paper's vanilla RNN: ``h' = tanh(wR h + wI x + bR)``."""
    return jnp.tanh(params["wR"] @ h + params["wI"] @ x + params["bR"])


def lfads_gru(
    params: Params, h: jax.Array, x: jax.Array, clip: float = 5.0, forget_bias: float = 1.0
) -> jax.Array:
    """LFADS' clipped GRU with separate input and recurrent weights.

    Gates ``z`` (update), ``r`` (reset) with ``forget_bias`` added to ``z``'s
    pre-activation (as LFADS does, so that early training keeps state), candidate
    ``n = tanh(W_xn x + b_xn + W_hn (r*h) + b_hn)`` and ``h' = z h + (1-z) n``, then
    clipped elementwise to ``[-clip, clip]``.
    Params: ``W_x [3n, u]``, ``b_x [3n]``, ``W_h [3n, n]``, ``b_h [3n]`` in gate order (z, r, n).
    """
    return lfads_gru_projected(params, h, params["W_x"] @ x + params["b_x"], clip, forget_bias)


def lfads_gru_projected(
    params: Params, h: jax.Array, gx: jax.Array, clip: float = 5.0, forget_bias: float = 1.0
) -> jax.Array:
    """``lfads_gru`` given the input projection ``gx = W_x x + b_x [3n]``.

    Why: when the inputs do not depend on the state (the encoders), all time steps'
    projections are one large matmul outside the recurrence, which is much faster.
    """
    n = h.shape[-1]
    wh, bh = params["W_h"], params["b_h"]
    gzr = wh[: 2 * n] @ h + bh[: 2 * n]
    z = jax.nn.sigmoid(gx[:n] + gzr[:n] + forget_bias)
    r = jax.nn.sigmoid(gx[n : 2 * n] + gzr[n:])
    cand = jnp.tanh(gx[2 * n :] + wh[2 * n :] @ (r * h) + bh[2 * n :])
    return jnp.clip(z * h + (1.0 - z) * cand, -clip, clip)


def init_paper_gru(
    key: jax.Array,
    n: int,
    u: int,
    i_factor: float = 1.0,
    h_factor: float = 0.9,
    h_scale: float = 0.1,
    dtype: Any = jnp.float32,
) -> tuple[Params, jax.Array]:
    """Initialise as the paper's code: N(0,1)·h_factor/√n recurrent, N(0,1)·i_factor/√u input.

    Returns ``(cell_params, h0)`` with ``h0 ~ N(0, h_scale²)``; biases are zero.
    """
    k = jax.random.split(key, 5)
    hf, xf = h_factor / jnp.sqrt(n), i_factor / jnp.sqrt(u)
    normal = lambda kk, shape: jax.random.normal(kk, shape, dtype)  # noqa: E731
    params = {
        "wRUHX": jnp.concatenate([normal(k[0], (2 * n, n)) * hf, normal(k[1], (2 * n, u)) * xf], 1),
        "bRU": jnp.zeros(2 * n, dtype),
        "wCHX": jnp.concatenate([normal(k[2], (n, n)) * hf, normal(k[3], (n, u)) * xf], 1),
        "bC": jnp.zeros(n, dtype),
    }
    return params, normal(k[4], (n,)) * h_scale


def init_tanh_rnn(
    key: jax.Array,
    n: int,
    u: int,
    i_factor: float = 1.0,
    h_factor: float = 1.0,
    h_scale: float = 0.1,
    dtype: Any = jnp.float32,
) -> tuple[Params, jax.Array]:
    """Initialise as the paper's vanilla RNN: N(0,1)·h_factor/√n recurrent, N(0,1)/√u input."""
    k = jax.random.split(key, 3)
    params = {
        "wR": jax.random.normal(k[0], (n, n), dtype) * (h_factor / jnp.sqrt(n)),
        "wI": jax.random.normal(k[1], (n, u), dtype) * (i_factor / jnp.sqrt(u)),
        "bR": jnp.zeros(n, dtype),
    }
    return params, jax.random.normal(k[2], (n,), dtype) * h_scale


def init_lfads_gru(
    key: jax.Array, n: int, u: int, dtype: Any = jnp.float32, **_: Any
) -> tuple[Params, jax.Array]:
    """Uniform(±1/√n) weights and biases, as PyTorch/lfads-torch GRU cells start; ``h0 = 0``."""
    k = jax.random.split(key, 4)
    s = 1.0 / jnp.sqrt(n)
    uni = lambda kk, shape: jax.random.uniform(kk, shape, dtype, -s, s)  # noqa: E731
    params = {
        "W_x": uni(k[0], (3 * n, u)),
        "b_x": uni(k[1], (3 * n,)),
        "W_h": uni(k[2], (3 * n, n)),
        "b_h": uni(k[3], (3 * n,)),
    }
    return params, jnp.zeros(n, dtype)


#: The task models' ``cell`` option -> (cell, init); ``init(key, n, u, **options) -> (params,
#: h0)``. "gru" is the paper's GRU; the LFADS generator's cell is "lfads_gru".
CELLS: dict[str, tuple[Cell, Callable[..., tuple[Params, jax.Array]]]] = {
    "gru": (paper_gru, init_paper_gru),
    "tanh": (tanh_rnn, init_tanh_rnn),
    "lfads_gru": (lfads_gru, init_lfads_gru),
}
