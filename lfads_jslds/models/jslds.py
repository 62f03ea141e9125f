"""The JSLDS: a switching linear system that co-runs with a nonlinear cell F.

Two states start from the same ``h0`` (DESIGN §1):

- RNN:   ``h_t = F(h_{t-1}, u_t)``
- JSLDS: ``e*_t = E(a_{t-1})``,
  ``a_t = e*_t + J_h(e*_t, u*)(a_{t-1} - e*_t) + J_u(e*_t, u*)(u_t - u*)``.

The linear term and ``F(e*, u*)`` (needed by the fixed-point loss) come from one
``jax.jvp``: no Jacobian is ever materialised in training. The JSLDS runs
autonomously; it is never reset to ``h``.

Loss terms here take means over batch × time × units, as the paper's code does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from lfads_jslds.models.cells import Cell, Params
from lfads_jslds.models.expansion import ExpansionParams, expansion_point


@dataclass(frozen=True)
class InputExpansion:
    """The input expansion point ``u*`` as a function of the current input.

    ``u* = u_t · 1[channel ∈ keep] + (params["u_star"] if learned else 0)``:
    - default: ``u* = 0`` (flip-flop, LFADS);
    - ``keep=(2, 3)``: context channels kept, noise zeroed (context integration);
    - ``learned=True``: a trained offset ``params["u_star"]: [u]`` (an extension; the
      paper fixes u*).
    """

    keep: tuple[int, ...] = ()
    learned: bool = False

    def __call__(self, params: Params, u: jax.Array) -> jax.Array:
        u_star = jnp.zeros_like(u)
        if self.keep:
            idx = jnp.asarray(self.keep)
            u_star = u_star.at[..., idx].set(u[..., idx])
        if self.learned:
            u_star = u_star + params["u_star"]
        return u_star


def jslds_step(
    cell: Cell,
    cell_params: Params,
    expansion: ExpansionParams,
    a_prev: jax.Array,
    u: jax.Array,
    u_star: jax.Array,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One JSLDS step for one sample (``a_prev: [n]``, ``u, u_star: [m]``).

    Returns ``(a_t, e*_t, F(e*_t, u*))``. One forward-mode pass gives both
    ``F(e*, u*)`` and ``J_h(a − e*) + J_u(u − u*)``.
    """
    e_star = expansion_point(expansion, a_prev)
    f_star, linear = jax.jvp(
        lambda h, x: cell(cell_params, h, x), (e_star, u_star), (a_prev - e_star, u - u_star)
    )
    return e_star + linear, e_star, f_star


def recomputed(step: Any) -> Any:
    """``step`` for ``lax.scan`` with nothing saved for the backward pass (recomputed there).

    Why: at the task sizes the backward pass of the scan spent more time storing and
    re-reading per-step residuals than recomputing them. Measured in one interleaved run
    of ``benchmarks/jslds_step.py`` (2 CPU cores): co-trained step 158 ms vs 224 ms
    saved, standard step 52 vs 61 ms. Values and gradients are unchanged. (The LFADS
    scans, with longer trials and more work per step, were slower recomputed; they save.)
    """
    return jax.checkpoint(step, policy=jax.checkpoint_policies.nothing_saveable)


class Trajectory(NamedTuple):
    """States of one trial, each ``[time, n]`` (``[trial, time, n]`` when vmapped)."""

    h: jax.Array  # RNN states h_1..h_T
    a: jax.Array  # JSLDS states a_1..a_T
    e_star: jax.Array  # expansion points e*_1..e*_T
    f_star: jax.Array  # F(e*_t, u*_t)


def run_jslds(
    cell: Cell,
    params: Params,
    inputs: jax.Array,
    h0: jax.Array | None = None,
    input_expansion: InputExpansion = InputExpansion(),
) -> Trajectory:
    """Run RNN and JSLDS side by side over ``inputs: [time, m]`` with ``lax.scan``
    (the step ``recomputed`` in the backward pass).

    ``params`` holds ``cell``, ``expansion``, ``h0`` (used when ``h0`` is None) and,
    for a learned ``u*``, ``u_star``.
    """
    h0 = params["h0"] if h0 is None else h0

    def step(carry: tuple[jax.Array, jax.Array], u_t: jax.Array) -> tuple[Any, Trajectory]:
        h, a = carry
        h_t = cell(params["cell"], h, u_t)
        a_t, e_star, f_star = jslds_step(
            cell, params["cell"], params["expansion"], a, u_t, input_expansion(params, u_t)
        )
        return (h_t, a_t), Trajectory(h_t, a_t, e_star, f_star)

    return jax.lax.scan(recomputed(step), (h0, h0), inputs)[1]


def run_rnn(
    cell: Cell, params: Params, inputs: jax.Array, h0: jax.Array | None = None
) -> jax.Array:
    """The RNN alone, ``inputs: [time, m] -> h: [time, n]`` (standard training and baselines)."""
    h0 = params["h0"] if h0 is None else h0

    def step(h: jax.Array, u_t: jax.Array) -> tuple[jax.Array, jax.Array]:
        h_t = cell(params["cell"], h, u_t)
        return h_t, h_t

    return jax.lax.scan(recomputed(step), h0, inputs)[1]


def fixed_point_loss(traj: Trajectory) -> jax.Array:
    """``R_e = mean((F(e*, u*) − e*)²)`` over trials × time × units."""
    return jnp.mean((traj.f_star - traj.e_star) ** 2)


def approx_loss(traj: Trajectory) -> jax.Array:
    """``R_a = mean((h − a)²)`` over trials × time × units."""
    return jnp.mean((traj.h - traj.a) ** 2)


def relative_error(a: jax.Array, h: jax.Array) -> jax.Array:
    """``‖a_t − h_t‖ / ‖h_t‖`` per point: ``a``, ``h`` ``[..., state]`` → ``[...]``."""
    return jnp.linalg.norm(a - h, axis=-1) / jnp.linalg.norm(h, axis=-1)


def mean_relative_error(traj: Trajectory) -> jax.Array:
    """The paper's quality measure: mean over trials and time of ``‖a_t − h_t‖ / ‖h_t‖``."""
    return jnp.mean(relative_error(traj.a, traj.h))
