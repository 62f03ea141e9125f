"""The expansion network E: picks the point the JSLDS linearises around.

``E(a) = layer_L(...layer_1(a))`` with residual tanh layers ``a <- tanh(a + W a + b)``
(the paper's ``mlp_tanh``). ``W = b = 0`` at init, so E starts as ``tanh`` applied
L times: close to the identity for small states, which keeps early training stable.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

ExpansionParams = list[dict[str, jax.Array]]


def init_expansion(n: int, n_layers: int = 2, dtype: Any = jnp.float32) -> ExpansionParams:
    """Zero-initialised layers ``[{W: [n, n], b: [n]}, ...]``."""
    return [{"W": jnp.zeros((n, n), dtype), "b": jnp.zeros(n, dtype)} for _ in range(n_layers)]


def expansion_point(params: ExpansionParams, a: jax.Array) -> jax.Array:
    """``e* = E(a)`` for one state ``a: [n]``."""
    for layer in params:
        a = jnp.tanh(a + layer["W"] @ a + layer["b"])
    return a
