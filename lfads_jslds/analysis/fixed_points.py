"""Numerical fixed-point finder (Sussillo & Barak 2013), the baseline JSLDS is compared to.

Why: a standard RNN does not say where its fixed points are; the classical recipe
minimises the "speed" ``q(h) = ½‖F(h, u*) − h‖²`` from many sampled states, keeps the
minima with ``q`` below a tolerance, and de-duplicates them. A co-trained JSLDS gets
its expansion points for free; this finder is what the JSLDS paper compares them with.

Procedure (``find_fixed_points``):
1. All ``k`` candidates ``h_init: [k, n]`` are optimised at once (``vmap``) with Adam on
   ``q``, inside one jitted ``jax.lax.scan`` over ``steps`` (no Python loop over steps).
   Adam is elementwise, so optimising ``Σ_k q_k`` is the same as optimising each
   candidate on its own. The learning rate decays exponentially from ``lr`` to
   ``lr_final``: Adam's step is ≈ lr per coordinate whatever the gradient size, so the
   final precision is set by ``lr_final``. Each candidate's lowest-``q`` iterate is kept.
2. Candidates with ``q < q_tol`` are kept (slow points above it are dropped).
3. De-duplication: repeatedly take the remaining candidate with the smallest ``q``
   (the slowest) and drop every other candidate within Euclidean distance ``dedup_tol``.
4. Optional Newton polish: ``h <- h − (J_h − I)^{-1} (F(h) − h)`` for ``newton_steps``
   iterations, each accepted per point only if it lowers ``q`` (a singular ``J_h − I``,
   e.g. on a line attractor, gives a non-finite step that is rejected); then
   de-duplicate again.

Defaults are chosen for GRUs / tanh RNNs with ``n ≈ 100`` units and states of order 1
(float32): 5000 Adam steps, ``lr`` 3e-2 → ``lr_final`` 1e-5 (total travel up to ~19 per
coordinate), ``q_tol`` 1e-6 (an RMS per-unit residual of ~1.4e-4 for n = 100, far
below the ~1e-2 of slow points/ghosts and far above float32 round-off), ``dedup_tol``
0.025 (as in the Golub & Sussillo finder: distinct fixed points of such networks are
O(1) apart). Note that ``q < q_tol`` bounds the distance to the true fixed point only
through the smallest singular value of ``J_h − I``: near-marginal modes (line
attractors) leave points loosely placed along them; ``newton_polish`` tightens
isolated, non-degenerate points to round-off. In float32 a ``q`` of ~1e-14 (for
n = 100, states of order 1) is round-off: differences below that level mean nothing.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

__all__ = ["FixedPoints", "find_fixed_points", "speed", "deduplicate"]

#: With ``progress``, the Adam scan runs in this many pieces (one bar update each).
PROGRESS_CHUNKS = 20


@dataclass(frozen=True)
class FixedPoints:
    """Result of :func:`find_fixed_points` (numpy arrays).

    - ``points: [p, n]`` unique fixed points, sorted by ``q`` ascending (slowest first).
    - ``q: [p]`` their speed ``½‖F(h, u) − h‖²``.
    - ``n_candidates``: ``k``, the number of initial states.
    - ``n_converged``: candidates with ``q < q_tol`` before de-duplication.
    - ``candidates: [k, n]``, ``candidate_q: [k]``: every optimised candidate and its
      speed (in ``h_init`` order), for diagnostics (e.g. a histogram of ``q``).
    """

    points: np.ndarray
    q: np.ndarray
    n_candidates: int
    n_converged: int
    candidates: np.ndarray
    candidate_q: np.ndarray


def speed(F: Callable[[jax.Array, jax.Array], jax.Array], h: jax.Array, u: jax.Array) -> jax.Array:
    """``q(h) = ½‖F(h, u) − h‖²`` for one state ``h: [n]`` and input ``u: [m]`` (scalar)."""
    r = F(h, u) - h
    return 0.5 * jnp.sum(r * r)


def deduplicate(points: np.ndarray, q: np.ndarray, tol: float) -> np.ndarray:
    """Indices of the points kept, slowest first: one per cluster of radius ``tol``.

    ``points: [k, n]``, ``q: [k]``. Greedy: the remaining point with the smallest ``q``
    is kept and every remaining point within Euclidean distance ``tol`` of it (``<=``)
    is dropped; repeat. Memory ``O(k n)``, time ``O(k n p)`` for ``p`` kept points.
    """
    points = np.asarray(points)
    order = np.argsort(np.asarray(q), kind="stable")
    remaining = order
    kept = []
    while remaining.size:
        i = remaining[0]
        kept.append(i)
        d = np.linalg.norm(points[remaining] - points[i], axis=-1)
        remaining = remaining[d > tol]
    return np.asarray(kept, dtype=np.intp)


def find_fixed_points(
    F: Callable[[jax.Array, jax.Array], jax.Array],
    h_init: np.ndarray | jax.Array,
    u: np.ndarray | jax.Array,
    *,
    steps: int = 5000,
    lr: float = 3e-2,
    lr_final: float = 1e-5,
    q_tol: float = 1e-6,
    dedup_tol: float = 0.025,
    newton_polish: bool = False,
    newton_steps: int = 5,
    progress: bool = False,
) -> FixedPoints:
    """Fixed points of ``h -> F(h, u)`` found by minimising ``q`` from ``h_init``.

    ``F(h: [n], u: [m]) -> [n]`` single-sample; ``h_init: [k, n]`` initial states
    (e.g. states sampled from trajectories, optionally with noise); ``u: [m]`` the fixed
    input ``u*``. Dtype follows ``h_init`` (float64 when given float64 with x64 on).
    All zeros of ``F(h) − h`` are targets, stable or not. See the module docstring for
    the procedure and the choice of defaults. ``progress``: a bar over the Adam steps (the
    scan runs in ``PROGRESS_CHUNKS`` pieces; the iterates are the same). Returns
    :class:`FixedPoints`.
    """
    h0 = jnp.asarray(h_init)
    if not jnp.issubdtype(h0.dtype, jnp.inexact):
        h0 = h0.astype(jnp.result_type(float))
    if h0.ndim != 2:
        raise ValueError(f"h_init must be [k, n], got shape {h0.shape}")
    u = jnp.asarray(u)
    if u.ndim != 1:
        raise ValueError(f"u must be [m], got shape {u.shape}")
    if steps < 1 or not 0 < lr_final <= lr:
        raise ValueError("need steps >= 1 and 0 < lr_final <= lr")
    k = h0.shape[0]

    q_one = lambda h: speed(F, h, u)  # noqa: E731
    q_batch = jax.vmap(q_one)
    schedule = optax.exponential_decay(
        init_value=lr, transition_steps=steps, decay_rate=lr_final / lr
    )
    opt = optax.adam(schedule)

    def total(h):
        qs = q_batch(h)
        return jnp.sum(qs), qs

    def step(carry, _):
        h, state, best_h, best_q = carry
        (_, qs), g = jax.value_and_grad(total, has_aux=True)(h)
        better = qs < best_q
        best_h = jnp.where(better[:, None], h, best_h)
        best_q = jnp.where(better, qs, best_q)
        upd, state = opt.update(g, state, h)
        return (optax.apply_updates(h, upd), state, best_h, best_q), None

    @functools.partial(jax.jit, static_argnums=1)
    def advance(carry, length: int):
        return jax.lax.scan(step, carry, None, length=length)[0]

    @jax.jit
    def finish(carry):
        h, _, best_h, best_q = carry
        qs = q_batch(h)
        better = qs < best_q
        return jnp.where(better[:, None], h, best_h), jnp.where(better, qs, best_q)

    carry = (h0, opt.init(h0), h0, jnp.full((k,), jnp.inf, h0.dtype))
    chunk = -(-steps // PROGRESS_CHUNKS) if progress else steps
    with tqdm(total=steps, desc="fixed points", unit="step", disable=not progress) as bar:
        for start in range(0, steps, chunk):
            carry = advance(carry, min(chunk, steps - start))
            bar.update(min(chunk, steps - start))
    cand, cand_q = (np.asarray(x) for x in finish(carry))
    ok = np.flatnonzero(cand_q < q_tol)
    n_converged = int(ok.size)
    keep = ok[deduplicate(cand[ok], cand_q[ok], dedup_tol)]
    points, q = cand[keep], cand_q[keep]

    if newton_polish and points.shape[0]:
        points, q = (np.asarray(x) for x in _newton(F, u, newton_steps)(jnp.asarray(points)))
        keep = deduplicate(points, q, dedup_tol)
        points, q = points[keep], q[keep]

    return FixedPoints(
        points=points,
        q=q,
        n_candidates=k,
        n_converged=n_converged,
        candidates=cand,
        candidate_q=cand_q,
    )


def _newton(F, u, n_steps: int):
    """Jitted ``h: [p, n] -> (h, q)``: Newton steps on ``F(h) − h = 0``, kept if q drops."""

    def one(h):
        def body(_, carry):
            h, q = carry
            r = F(h, u) - h
            J = jax.jacfwd(F, argnums=0)(h, u) - jnp.eye(h.shape[0], dtype=h.dtype)
            h_new = h - jnp.linalg.solve(J, r)
            q_new = speed(F, h_new, u)
            better = jnp.isfinite(q_new) & jnp.all(jnp.isfinite(h_new)) & (q_new < q)
            return jnp.where(better, h_new, h), jnp.where(better, q_new, q)

        return jax.lax.fori_loop(0, n_steps, body, (h, speed(F, h, u)))

    return jax.jit(jax.vmap(one))
