"""Full Jacobians of a single-sample cell at many points, for post-hoc analysis.

Why: training only needs Jacobian-vector products (``jax.jvp``); reading the learned
dynamics needs the full matrices ``J_h = ∂F/∂h`` and ``J_u = ∂F/∂u`` at the expansion
points or fixed points. ``jax.vmap(jax.jacfwd(F))`` gives them, but over all points of a
data set at once it would hold ``point × n × n`` intermediates; this module runs it over
fixed-size chunks so peak memory depends on ``chunk_size``, not on the number of points.

Conventions:
- ``F(h: [n], u: [m]) -> [n]`` acts on one sample (a closure over its parameters).
- ``h: [point, n]``; ``u: [point, m]`` or ``[m]`` (the same input at every point).
- Returns numpy ``J_h: [point, n, n]``, ``J_u: [point, n, m]``, rows index outputs,
  columns index inputs (``J_h[p, i, j] = ∂F_i/∂h_j`` at point ``p``).
- Dtype follows the inputs and ``F`` (float64 in, float64 out when ``jax_enable_x64``
  is on; with x64 off JAX computes in float32).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["jacobians", "padded_chunks"]


def padded_chunks(n_points: int, size: int) -> Iterator[tuple[int, int, np.ndarray]]:
    """``(start, stop, idx)`` over ``[0, n_points)`` in chunks of ``size`` points.

    ``idx: [size]`` indexes the chunk's points, the last chunk padded with copies of its
    last point: every chunk has one shape, so a jitted function over it compiles once
    (keep the first ``stop − start`` results).
    """
    for start in range(0, n_points, size):
        idx = np.arange(start, start + size).clip(max=n_points - 1)
        yield start, min(start + size, n_points), idx


def _as_float(x: np.ndarray | jax.Array) -> jax.Array:
    """To a JAX array, keeping floating dtypes (no float64 -> float32 cast of our own)."""
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.inexact):
        x = x.astype(jnp.result_type(float))
    return x


def jacobians(
    F: Callable[[jax.Array, jax.Array], jax.Array],
    h: np.ndarray | jax.Array,
    u: np.ndarray | jax.Array,
    chunk_size: int = 1024,
) -> tuple[np.ndarray, np.ndarray]:
    """``J_h: [point, n, n]`` and ``J_u: [point, n, m]`` of ``F`` at every point.

    ``h: [point, n]``; ``u: [point, m]`` (one input per point) or ``[m]`` (broadcast).
    Computed with ``jax.vmap(jax.jacfwd(F, argnums=(0, 1)))``, jitted once per call and
    run over chunks of ``min(chunk_size, point)`` points; the last chunk is padded (with
    copies of its last point) to the same size so that only one shape is compiled.
    Results are copied to host numpy arrays chunk by chunk, so device memory is bounded
    by ``chunk_size`` whatever the number of points.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    h = _as_float(h)
    u = _as_float(u)
    if h.ndim != 2:
        raise ValueError(f"h must be [point, n], got shape {h.shape}")
    n_points, n = h.shape
    if u.ndim == 1:
        u_axis = None
    elif u.ndim == 2:
        if u.shape[0] != n_points:
            raise ValueError(f"u has {u.shape[0]} points, h has {n_points}")
        u_axis = 0
    else:
        raise ValueError(f"u must be [point, m] or [m], got shape {u.shape}")
    m = u.shape[-1]

    u_one = jax.ShapeDtypeStruct((m,), u.dtype)
    out = jax.eval_shape(F, jax.ShapeDtypeStruct((n,), h.dtype), u_one)
    if out.ndim != 1:
        raise ValueError(f"F must return a vector [n_out], got shape {out.shape}")
    n_out = out.shape[0]
    if n_points == 0:
        return (np.zeros((0, n_out, n), out.dtype), np.zeros((0, n_out, m), out.dtype))

    jac = jax.jit(jax.vmap(jax.jacfwd(F, argnums=(0, 1)), in_axes=(0, u_axis)))
    size = min(chunk_size, n_points)
    J_h = J_u = None
    for start, stop, idx in padded_chunks(n_points, size):
        hc = h[idx]
        uc = u if u_axis is None else u[idx]
        jh, ju = jac(hc, uc)
        jh = np.asarray(jh)[: stop - start]
        ju = np.asarray(ju)[: stop - start]
        if J_h is None:
            J_h = np.empty((n_points, *jh.shape[1:]), jh.dtype)
            J_u = np.empty((n_points, *ju.shape[1:]), ju.dtype)
        J_h[start:stop] = jh
        J_u[start:stop] = ju
    return J_h, J_u
