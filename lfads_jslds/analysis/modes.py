"""Per-trial Jacobian modes of a JSLDS generator: which rotation carries each trial.

Why: a trained JSLDS generator is, at every (trial, time), the linear system
``a_t = e*_t + J_h (a_{t−1} − e*_t) + J_u u_t`` around its expansion point
``e*_t = E(a_{t−1})``.
Its eigenvalues say how each local mode rotates and decays, but the slowest mode is
not the one the trajectory uses: the question here is *which* complex-conjugate pair
moves the trajectory around ``e*``, at what frequency and time constant,
in which plane, and whether that differs between trials and conditions. Over a data
set (e.g. 2295 trials × 140 bins at n = 100) the ``n × n`` eigenvector matrices of every
point would not fit in memory, so everything here runs in fixed-size chunks and keeps
only compact summaries; memory is bounded by ``chunk`` plus the ``[trial, time, n]``
eigenvalues, whatever the number of points.
Most points are not decomposed at all: they are perturbations of a nearby point that
is, accepted only where a Bauer–Fike bound and a per-point error estimate of the
dominant pair hold, with LAPACK wherever they fail (:func:`jacobian_modes`;
``exact=True``, ``analyze --exact``, decomposes every point).

Dominant rotational mode of a point (``jacobian_modes``), with ``J_h = V Λ V^{-1}``
(right eigenvectors ``v_k`` the columns of ``V``, left eigenvectors ``w_k`` the rows of
``W = V^{-1}``, see ``analysis.eigen``):

- The deviation decomposed is the one ``J_h`` acts on, ``d_t = a_{t−1} − e*_t`` (with
  ``a_0`` the initial state for the first bin), not the result ``a_t − e*_t = J_h d_t +
  J_u u_t``: that one also holds the input injected at bin ``t``, which would count in
  every mode it touches, so a pair that the inputs kick but that carries nothing of the
  state would be named dominant.
- ``d`` is written in mode coordinates ``c_k = w_k · d`` (exactly,
  ``d = Σ_k c_k v_k``, also for a non-orthogonal ``V``). Mode ``k``'s amplitude is
  ``|c_k| · ‖v_k‖``: the norm of its component ``c_k v_k`` in state space. ``|c_k|``
  alone is not a measure: rescaling ``v_k → s v_k`` rescales ``w_k → w_k / s`` and hence
  ``c_k → c_k / s``; only the product is independent of how eigenvectors are normalised
  (LAPACK returns ``‖v_k‖ = 1``, so it equals ``|c_k|`` there, but it is computed).
- A conjugate pair ``(k, k̄)`` has amplitude ``|c_k|‖v_k‖ + |c_k̄|‖v_k̄‖ = 2|c_k|‖v_k‖``
  (for real ``J_h`` and ``d``, ``c_k̄ = conj(c_k)`` and ``v_k̄ = conj(v_k)``). This sum,
  rather than the norm of the real component ``2 Re(c_k v_k)``, is used because it does
  not depend on the phase of the oscillation at time ``t``: ``‖2 Re(c_k v_k)‖``
  swings between ``2|c_k|·σ_min`` and ``2|c_k|·σ_max`` of ``[Re v_k, Im v_k]`` over a
  cycle, while ``2|c_k|‖v_k‖`` is √2 times its RMS over phase.
- The dominant pair is the rotating pair that carries the most of the trajectory's
  **motion** (``rule="motion"``, the default): the local system moves the state by
  ``a_t − a_{t−1} = (J_h − I) d_t + J_u u_t``; of its own part ``(J_h − I) d_t =
  Σ_k (λ_k − 1) c_k v_k`` mode ``k`` carries ``|λ_k − 1| |c_k| ‖v_k‖``.
  ``rule="deviation"`` weighs the amplitude alone (``|c_k|‖v_k‖``: the pair holding
  most of ``d``). Why motion: a trained generator parks much of ``d`` in slow modes
  (``λ ≈ 1``, often with a slight rotation) that hold a condition's offset, e.g. through
  a preparatory period, but barely move it; the rotation the trajectory *follows* is the
  one that moves it. On the synthetic demo (planted
  2.0 Hz; measured when ``d`` was still ``a_t − e*_t`` and jPCA used the whole window),
  the deviation rule named slow pairs in most bins (median ≈ 0.5 Hz), the motion rule
  the learned ≈ 2.2 Hz pair (jPCA of the same run: ≈ 1.9 Hz).
- ``share`` = the dominant pair's weight / the sum of all ``n`` modes' weights under the
  rule (so the shares of all modes sum to 1): a share of modal motion (or amplitude),
  not of ``‖(J_h − I) d‖`` or ``‖d‖``: for non-normal ``J_h`` modes can cancel.
- Rotating pairs are the eigenvalues with ``Im λ > imag_tol · |λ|`` (i.e.
  ``sin|angle λ| > imag_tol``; one member per pair, the ``Im λ > 0`` one); ties go to
  the first in EIG_SORT order, i.e. the slowest. Non-rotating modes never compete,
  however large their ``|λ|`` or weight: a real mode carries no rotation.
- A point with no rotating pair has ``has_rotation = False`` and every dominant-mode
  field reads as ``λ = 0``: frequency, τ, half-life, ``|λ|``, share, amplitude and input
  gain are 0, ``stable`` is True, ``dominant_index`` is −1. Nothing is ever NaN.
- ``inference.h5`` stores ``a_1..a_T`` (``jslds_states``, or ``gen_states`` for the
  RNN path) and ``a_0`` (``g0``, where both paths start): :func:`jacobian_modes` takes
  both and forms ``a_{t−1}`` with :func:`previous_states`.

Conventions: ``dt`` (Δt) in seconds, frequencies in Hz (``|angle λ| / (2π Δt)``, at most
Nyquist ``1/(2Δt)``), time constants ``τ = −Δt / ln|λ|`` and half-lives ``τ ln 2`` in
seconds; *here* ``τ = half-life = +inf`` for every non-decaying mode (``|λ| ≥ 1``: use
``abs_lambda`` and ``stable`` for the growth; ``analysis.eigen`` would give a negative τ),
and JSON summaries write ``+inf`` as ``None`` with an explicit ``*_infinite`` flag.
Eigenvalues are in EIG_SORT order (``|λ|`` descending). Shapes: ``[trial, time, n]``;
the cell acts on one sample, ``cell(params, h: [n], u: [u_dim]) -> [n]``, linearised at
``u* = 0``.
"""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

from lfads_jslds.analysis.eigen import (
    EIG_SORT,
    _sort_index,
    discrete_to_continuous,
    rotation_planes,
)
from lfads_jslds.analysis.jacobians import padded_chunks
from lfads_jslds.models.cells import Cell

__all__ = [
    "JacobianModes",
    "RULES",
    "TrialModeSummary",
    "check_rule",
    "previous_states",
    "jacobian_modes",
    "trial_summaries",
    "plane_angle_summary",
    "summarize_modes",
    "fixed_point_residual",
    "count_distinct",
    "distance_to_nearest",
]

@dataclass(frozen=True)
class JacobianModes:
    """Result of :func:`jacobian_modes` (numpy arrays; see the module docstring).

    Per point ``[trial, time]`` unless stated:

    - ``eigenvalues: [trial, time, n]`` complex64, eigenvalues of ``J_h(e*, 0)`` in
      EIG_SORT order (``|λ|`` descending).
    - ``has_rotation`` bool: ``J_h`` has a rotating pair (``Im λ > imag_tol·|λ|``).
    - ``dominant_index`` int: index in ``eigenvalues`` of the dominant pair's
      ``Im λ > 0`` member (its conjugate is the next index unless pairs tie); −1 if none.
    - ``dominant_eigenvalue`` complex128 (``Im > 0``); 0 if none.
    - ``freq_hz``, ``tau_s`` (``+inf`` when ``|λ| ≥ 1``), ``half_life_s`` (same),
      ``abs_lambda``, ``stable`` (``|λ| < 1``): of the dominant pair.
    - ``share`` in ``[0, 1]``: its share of the total modal weight under ``rule``
      (motion or amplitude of ``d``); ``amplitude``: its amplitude ``2|w_k·d|‖v_k‖``
      (state units), whatever the rule.
    - ``input_gain``: ``2‖w_k J_u‖‖v_k‖``, the largest pair amplitude a unit-norm input
      ``u`` injects in one step (0 when ``u_dim = 0``).
    - ``deviation_norm``: ``‖d‖``, ``d = a_{t−1} − e*_t``.

    Per trial (the plane is kept once per trial so memory stays bounded):

    - ``plane: [trial, n, 2]``: orthonormal basis of ``span{Re v, Im v}`` of the
      dominant pair at ``plane_time``, the time bin where the dominant pair's ``share``
      is largest (ties: earliest); column 0 along ``Re v`` (as
      ``analysis.eigen.rotation_planes``). Only the subspace is meaningful: the basis
      within it follows the eigenvector's phase, which LAPACK fixes by making the
      largest component real, so a near-tie between components can rotate or flip it;
      compare planes with principal angles or projectors ``Q Qᵀ``. Zeros where
      ``plane_valid`` is False.
    - ``plane_time: [trial]`` int, −1 when the trial never rotates.
    - ``plane_valid: [trial]`` bool.

    ``dt`` (s), ``imag_tol``, ``rule`` (see RULES) and ``sort`` (= EIG_SORT) record the
    settings; ``exact`` whether LAPACK decomposed every point, ``n_exact`` how many
    LAPACK decompositions were made (see :func:`jacobian_modes`).
    """

    eigenvalues: np.ndarray
    has_rotation: np.ndarray
    dominant_index: np.ndarray
    dominant_eigenvalue: np.ndarray
    freq_hz: np.ndarray
    tau_s: np.ndarray
    half_life_s: np.ndarray
    abs_lambda: np.ndarray
    stable: np.ndarray
    share: np.ndarray
    amplitude: np.ndarray
    input_gain: np.ndarray
    deviation_norm: np.ndarray
    plane: np.ndarray
    plane_time: np.ndarray
    plane_valid: np.ndarray
    dt: float
    imag_tol: float
    rule: str
    sort: str = EIG_SORT
    exact: bool = True
    n_exact: int = 0


#: Dominant-pair rules (module docstring): the pair carrying the most modal motion
#: ``|λ_k − 1||c_k|‖v_k‖`` (default) or the most modal amplitude ``|c_k|‖v_k‖`` of ``d``.
RULES = {
    "motion": "rotating pair with the largest 2|λ_k − 1||w_k·d|‖v_k‖, d = a_{t−1} − e*_t",
    "deviation": "rotating pair with the largest 2|w_k·d|‖v_k‖, d = a_{t−1} − e*_t",
}


def check_rule(rule: str) -> None:
    """Raise ``ValueError`` naming the choices unless ``rule`` is one of ``RULES``."""
    if rule not in RULES:
        raise ValueError(f"rule must be one of {sorted(RULES)}, got {rule!r}")


# Per-point scalar fields filled chunk by chunk: name -> dtype.
_POINT_FIELDS = {
    "has_rotation": np.bool_,
    "dominant_index": np.int64,
    "dominant_eigenvalue": np.complex128,
    "share": np.float64,
    "amplitude": np.float64,
    "input_gain": np.float64,
    "deviation_norm": np.float64,
}


def _jacobian_fn(cell: Cell, u_dim: int) -> Callable:
    """Jitted ``(params, h: [c, n], u0: [u_dim]) -> (J_h: [c, n, n], J_u: [c, n, u_dim])``."""

    def one(params, h, u):
        return jax.jacfwd(lambda hh, uu: cell(params, hh, uu), argnums=(0, 1))(h, u)

    return jax.jit(jax.vmap(one, in_axes=(None, 0, None)))


def _solve_modes(V: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """``V^{-1} rhs`` per point (``V: [b, n, n]``, ``rhs: [b, n, k]``), always finite.

    ``np.linalg.solve``; points whose ``V`` is (numerically) singular, i.e. a defective
    ``J_h`` such as a Jordan block, fall back to the pseudo-inverse (minimum-norm
    coordinates): their shares are then only indicative, but never NaN.
    """
    try:
        out = np.linalg.solve(V, rhs)
        bad = ~np.isfinite(out).all(axis=(-2, -1))
    except np.linalg.LinAlgError:
        out = np.empty_like(rhs)
        bad = np.ones(V.shape[0], bool)
    if bad.any():
        out[bad] = np.linalg.pinv(V[bad]) @ rhs[bad]
    return out


def _eig_sorted(jh: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues ``[b, n]`` and right eigenvectors ``[b, n, n]`` (complex128, EIG_SORT)."""
    lam, V = np.linalg.eig(jh)  # real outputs when the whole block has a real spectrum
    lam = lam.astype(np.complex128, copy=False)
    V = V.astype(np.complex128, copy=False)
    order = _sort_index(lam)
    return np.take_along_axis(lam, order, axis=-1), np.take_along_axis(V, order[:, None, :], -1)


def _weight(lam: np.ndarray, amp: np.ndarray, rule: str) -> np.ndarray:
    """A mode's weight under ``rule``: its motion ``|λ − 1|·amp`` or its amplitude."""
    return amp * np.abs(lam - 1.0) if rule == "motion" else amp


def _rotating(lam: np.ndarray, imag_tol: float) -> np.ndarray:
    """The ``Im λ > 0`` member of each rotating pair (``Im λ > imag_tol · |λ|``)."""
    return lam.imag > imag_tol * np.abs(lam)


def _point_fields(lam, has, k, lam_k, weight_k, total, amp_k, gain_k, d, v_k) -> dict:
    """The per-point outputs of a block (see :class:`JacobianModes`), zeros where ``~has``.

    ``lam: [b, n]`` sorted eigenvalues, ``k: [b]`` the dominant index, ``lam_k``,
    ``weight_k``, ``amp_k``, ``gain_k`` its eigenvalue, weight, amplitude and input gain
    (one member of the pair), ``total: [b]`` the summed weight of all n modes,
    ``v_k: [b, n]`` its right eigenvector.
    """
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(total > 0, 2.0 * weight_k / np.where(total > 0, total, 1.0), 0.0)
    return {
        "eigenvalues": lam.astype(np.complex64),
        "has_rotation": has,
        "dominant_index": np.where(has, k, -1),
        "dominant_eigenvalue": np.where(has, lam_k, 0.0),
        "share": np.where(has, np.clip(share, 0.0, 1.0), 0.0),
        "amplitude": np.where(has, 2.0 * amp_k, 0.0),
        "input_gain": np.where(has, 2.0 * gain_k, 0.0),
        "deviation_norm": np.linalg.norm(d, axis=-1),
        "v": np.where(has[:, None], v_k, 0.0),
    }


def _modes_block(jh: np.ndarray, ju: np.ndarray, d: np.ndarray, imag_tol: float, rule: str) -> dict:
    """Eigen-decomposition and dominant rotating pair of a block of points (exact path).

    ``jh: [b, n, n]``, ``ju: [b, n, m]``, ``d: [b, n]`` (float64). Returns per-point
    arrays (see :class:`JacobianModes`) plus ``v: [b, n]`` the dominant right eigenvector.
    """
    lam, V = _eig_sorted(jh)
    rhs = np.concatenate([d[:, :, None], ju], axis=-1).astype(np.complex128)
    coef = _solve_modes(V, rhs)  # [b, n, 1 + m]: mode coordinates of d and of J_u's columns
    vnorm = np.linalg.norm(V, axis=-2)  # [b, n]
    amp = np.abs(coef[:, :, 0]) * vnorm  # amplitude of each mode in d
    weight = _weight(lam, amp, rule)
    rotating = _rotating(lam, imag_tol)
    has = rotating.any(-1)
    k = np.argmax(np.where(rotating, weight, -1.0), axis=-1)  # first max = slowest on ties
    rows = np.arange(d.shape[0])
    gain = np.linalg.norm(coef[rows, k, 1:], axis=-1) * vnorm[rows, k]
    return _point_fields(
        lam, has, k, lam[rows, k], weight[rows, k], weight.sum(-1), amp[rows, k], gain, d,
        V[rows, :, k],
    )  # fmt: skip


#: Fast path (``jacobian_modes(exact=False)``): the largest accepted estimated error of
#: the dominant eigenvalue after its second-order refinement (|Δλ|, dimensionless).
FAST_TOL = 1e-6
#: Fast path: the largest accepted Bauer–Fike radius ``κ(V_r)‖J_h − J_r‖_F`` (|Δλ|: every
#: eigenvalue of ``J_h`` lies that close to one of ``J_r``'s, which are stored).
FAST_SPECTRUM_TOL = 5e-2
#: Fast path: the most modes per point whose rotation or weight is refined before the
#: point is decomposed exactly instead.
FAST_CONTENDERS = 32
#: Fast path: a rotating pair is refined when its weight is within
#: ``max(CLOSE_MIN, CLOSE_FACTOR · δ)`` of the dominant pair's (relative; ``δ`` the dominant
#: pair's relative change of weight on refinement); farther ones are taken as beaten.
CLOSE_FACTOR = 20.0
CLOSE_MIN = 0.05
#: Fast path: rounds with a new representative go on while at least FAST_MIN_GROUP points
#: remain and the last round accepted at least FAST_MIN_SHARE of those it tried.
FAST_MIN_GROUP = 8
FAST_MIN_SHARE = 0.25
#: Fast path: the largest perturbation ratio ``|F_lj| / |λ_j − λ_l|`` accepted for a refined
#: mode (the perturbation series then shrinks at least tenfold per order).
RHO_MAX = 0.1


def _refine(E, lam, V, W, gram, coef, j, rule):
    """First-order eigenvectors and second-order eigenvalues of modes ``j`` of ``J_r + E``.

    ``J_r = V diag(lam) W`` (``W = V^{-1}``, ``gram = Vᴴ V``, shared by the block),
    ``E: [b, n, n]`` each point's ``J_h − J_r``, ``coef: [b, n, 1 + m]`` the mode
    coordinates ``W [d, J_u]`` at ``J_r``, ``j: [b, c]`` ``c`` mode indices per point.
    With ``F = W E V`` (only rows and columns ``j`` formed: ``O(c n²)`` per point, one
    pass over ``E``) and ``P_jl = 1 / (λ_j − λ_l)`` (0 at ``l = j``):

    - ``λ_j' = λ_j + F_jj + Σ_l F_jl F_lj P_jl`` (second order);
    - ``v_j' = v_j + Σ_l F_lj P_jl v_l`` and ``w_j' = w_j + Σ_l F_jl P_jl w_l`` (first
      order), so ``w_j' [d, J_u] = coef_j + Σ_l F_jl P_jl coef_l`` and, to first order,
      ``‖v_j'‖ = ‖v_j‖ + Re(Σ_l gram_jl F_lj P_jl) / ‖v_j‖``.

    Returns ``[b, c]`` arrays: ``lam`` (λ_j'), ``second`` (|second-order term|), ``rho``
    (the largest ratio ``|F_lj P_jl|`` or ``|F_jl P_jl|``: the perturbation series shrinks
    by about that factor per order), ``amp``, ``gain``, ``weight`` (as ``_modes_block``
    defines them, from ``w_j'``, ``v_j'``, ``λ_j'``) and ``pv: [b, c, n]`` (``v_j' = v_j +
    V pv``).
    """
    vj = np.moveaxis(V[:, j], 0, -1)  # [b, c, n]
    wj = W[j]  # [b, c, n]
    x = np.concatenate([vj.real, vj.imag], axis=1)  # real and imaginary parts apart:
    y = np.concatenate([wj.real, wj.imag], axis=1)  # no complex copy of E
    c = j.shape[1]
    ev = x @ np.swapaxes(E, 1, 2)  # rows (E v_j)ᵀ
    we = y @ E  # rows w_j E
    col = (ev[:, :c] + 1j * ev[:, c:]) @ W.T  # [b, c, l]: F_lj = w_l E v_j
    row = (we[:, :c] + 1j * we[:, c:]) @ V  # [b, c, l]: F_jl = w_j E v_l
    with np.errstate(divide="ignore", invalid="ignore"):
        inv_gap = 1.0 / (lam[j][:, :, None] - lam)
    self_ = j[:, :, None] == np.arange(lam.size)
    inv_gap[self_] = 0.0
    pv, pw = col * inv_gap, row * inv_gap
    second = np.sum(row * pv, axis=-1)
    lam_j = lam[j] + row[self_].reshape(j.shape) + second
    rows = np.arange(j.shape[0])[:, None]
    cw = coef[rows, j] + pw @ coef  # [b, c, 1 + m]: w_j' [d, J_u]
    vn0 = np.sqrt(np.real(gram[j, j]))
    vn = vn0 + np.real(np.einsum("bcl,bcl->bc", gram[j], pv)) / vn0
    amp = np.abs(cw[..., 0]) * vn
    rho = np.maximum(np.abs(pv).max(-1), np.abs(pw).max(-1))
    return {
        "lam": lam_j,
        "second": np.abs(second),
        "rho": np.where(np.isfinite(rho), rho, np.inf),
        "amp": amp,
        "gain": np.linalg.norm(cw[..., 1:], axis=-1) * vn,
        "weight": _weight(lam_j, amp, rule),
        "pv": pv,
    }


def _refine_live(E, lam, V, W, gram, coef, ranked, live, rule):
    """:func:`_refine` of modes ``ranked: [b, c]`` where ``live: [b, c]``, rank by rank on
    the points that have one (work in the number of live entries, not ``b × c``); dead
    entries read ``rho = inf``, ``second = inf``, ``weight = 0``."""
    b, c = ranked.shape
    out = {
        "lam": np.zeros((b, c), complex),
        "second": np.full((b, c), np.inf),
        "rho": np.full((b, c), np.inf),
        "weight": np.zeros((b, c)),
    }
    for i in range(c):
        sel = np.flatnonzero(live[:, i])
        ref = _refine(E[sel], lam, V, W, gram, coef[sel], ranked[sel, i : i + 1], rule)
        for key, val in out.items():
            val[sel, i] = ref[key][:, 0]
    return out


def _tail(rho: np.ndarray) -> np.ndarray:
    """``ρ / (1 − ρ)``: the neglected rest of a series whose terms shrink by ``ρ`` per order,
    relative to the last term kept (``inf`` for ``ρ ≥ 1``)."""
    with np.errstate(divide="ignore"):
        return np.where(rho < 1, rho / np.where(rho < 1, 1 - rho, 1.0), np.inf)


def _frobenius(x: np.ndarray) -> np.ndarray:
    """``‖x_i‖_F`` of each ``x_i: [n, n]`` in ``x: [b, n, n]``."""
    return np.sqrt(np.einsum("bij,bij->b", x, x))


def _perturb(
    jh: np.ndarray,
    ju: np.ndarray,
    d: np.ndarray,
    imag_tol: float,
    rule: str,
    tol: float,
    spectrum_tol: float,
) -> tuple[dict | None, np.ndarray]:
    """One round of the fast path: perturbation from one exactly decomposed point.

    Returns the ``_modes_block`` fields of every point (None when none is accepted) and
    ``good: [b]``, the points whose fields hold; see :func:`_modes_block_fast`.
    """
    b, n = d.shape
    r = int(np.argmin(_frobenius(jh - jh.mean(0))))
    lam_r, V_r = _eig_sorted(jh[r : r + 1])
    lam, V = lam_r[0], V_r[0]
    try:
        W = np.linalg.inv(V)
    except np.linalg.LinAlgError:
        return None, np.zeros(b, bool)
    kappa = np.linalg.norm(V, 2) * np.linalg.norm(W, 2)
    E = jh - jh[r]
    rad = kappa * _frobenius(E)  # Bauer–Fike radius, ‖E‖_2 ≤ ‖E‖_F
    ok = np.isfinite(rad) & (rad <= spectrum_tol)
    good = np.zeros(b, bool)
    out = None
    if ok.any():  # all points are computed, only the accepted ones kept
        rows = np.arange(b)
        spec = np.broadcast_to(lam, (b, n))  # J_r's spectrum, within rad of J_i's
        coef = W @ np.concatenate([d[:, :, None], ju], axis=-1)  # [b, n, 1 + u]
        gram = V.conj().T @ V
        vnorm = np.sqrt(np.real(np.diagonal(gram)))
        amp = np.abs(coef[:, :, 0]) * vnorm
        weight = _weight(spec, amp, rule)
        rotating = _rotating(spec, imag_tol)
        # modes whose rotation a first-order move |Δλ_l| ≤ s_l ‖E‖ (s_l = ‖w_l‖‖v_l‖, the
        # eigenvalue's condition number) leaves open: near the rotation threshold, or real
        # and within reach of the next real eigenvalue (only neighbours on the real line
        # can meet and leave it as a pair)
        with np.errstate(invalid="ignore"):
            move = np.linalg.norm(W, axis=1) * vnorm * (rad / kappa)[:, None]  # [b, n]
        near = np.abs(spec.imag - imag_tol * np.abs(spec)) <= move * (1 + imag_tol)
        real = np.flatnonzero(lam.imag == 0)
        line = real[np.argsort(lam[real].real)]
        hit = (move[:, line[:-1]] + move[:, line[1:]]) >= np.diff(lam[line].real)
        reach = np.zeros((b, n), bool)
        reach[:, line[:-1]] |= hit
        reach[:, line[1:]] |= hit
        open_ = (near | reach) & (spec.imag >= 0)
        has = rotating.any(-1)
        k = np.argmax(np.where(rotating, weight, -1.0), axis=-1)
        top = {
            key: val[:, 0]
            for key, val in _refine(E, lam, V, W, gram, coef, k[:, None], rule).items()
        }
        w_top = np.where(has, top["weight"], 0.0)
        # contenders, refined like the top pair: modes whose rotation is open weighing at
        # least half the top pair's, and rotating pairs within CLOSE_FACTOR times the top
        # pair's relative change of weight (both are first order in ‖E‖; at least 5 %)
        rel = np.abs(top["weight"] - weight[rows, k]) / np.where(w_top > 0, w_top, 1.0)
        close = 1.0 - np.maximum(CLOSE_MIN, CLOSE_FACTOR * rel)
        contend = (open_ & (weight >= 0.5 * w_top[:, None])) | (
            rotating & (weight >= close[:, None] * w_top[:, None])
        )
        contend[rows, k] &= ~has
        count = contend.sum(-1)
        c = min(FAST_CONTENDERS, int(count.max(initial=0)))
        ranked = np.argsort(np.where(contend, -weight, np.inf), axis=-1, kind="stable")[:, :c]
        live = np.arange(c) < count[:, None]  # [b, c]
        other = _refine_live(E, lam, V, W, gram, coef, ranked, live, rule)
        # errors left after refinement, estimated as the rest of a geometric series
        top_err = _tail(top["rho"]) * top["second"]
        oth_err = _tail(other["rho"]) * other["second"]
        margin = top["lam"].imag - imag_tol * np.abs(top["lam"])
        pair = lam[ranked].imag > 0  # a complex pair of J_r; a real eigenvalue stays real
        gap_rot = np.abs(other["lam"].imag - imag_tol * np.abs(other["lam"]))
        resolved = (other["rho"] <= RHO_MAX) & (~pair | (gap_rot > oth_err + tol))
        rot = pair & _rotating(other["lam"], imag_tol)
        w0 = np.take_along_axis(weight, ranked, -1)
        # the first-order changes themselves bound what the refinement may have missed
        # (their rest is ρ/(1−ρ) of them only asymptotically: near-real pairs are touchy)
        slack = 2 * (
            np.abs(top["weight"] - weight[rows, k])[:, None] + np.abs(other["weight"] - w0)
        )
        beaten = has[:, None] & (top["weight"][:, None] - other["weight"] > slack)
        good = (
            ok
            & (count <= FAST_CONTENDERS)
            & (~live | (resolved & (~rot | beaten))).all(-1)
            & (~has | ((top_err <= tol) & (top["rho"] <= RHO_MAX) & (margin > top_err + tol)))
        )
        v_top = V[:, k].T + top["pv"] @ V.T  # [b, n] first-order right eigenvector
        # the summed weight of all modes, the dominant pair's refined (the others: J_r's)
        total = weight.sum(-1) + 2.0 * (top["weight"] - weight[rows, k])
        out = _point_fields(
            spec, has, k, top["lam"], top["weight"],
            total, top["amp"], top["gain"], d, v_top,
        )  # fmt: skip
    return out, good


def _modes_block_fast(
    jh: np.ndarray,
    ju: np.ndarray,
    d: np.ndarray,
    imag_tol: float,
    rule: str,
    tol: float,
    spectrum_tol: float,
) -> tuple[dict, int]:
    """``_modes_block`` by perturbation from a few exactly decomposed points of the block.

    Rounds: the representative ``r`` is the remaining point whose ``J_h`` is nearest
    (Frobenius) their mean; it is decomposed with LAPACK, and every remaining point
    ``i``, ``J_h = J_r + E_i``, is accepted when

    1. Bauer–Fike bounds the move of the whole spectrum: ``κ(V_r) ‖E_i‖_F ≤
       spectrum_tol`` (every eigenvalue of ``J_i`` within that distance of one of
       ``J_r``'s): the perturbative regime;
    2. its dominant pair, refined by :func:`_refine` (eigenvalue to second order,
       eigenvectors to first), has a perturbation ratio ``ρ ≤ RHO_MAX`` and an estimated
       rest ``ρ/(1−ρ)·|second-order term| ≤ tol``, and its rotation test ``Im λ >
       imag_tol·|λ|`` holds by more than that;
    3. the choice is decided: every contender, refined the same way, is resolved and
       beaten. Contenders are the modes whose rotation a first-order move ``s_l ‖E_i‖``
       (``s_l`` the eigenvalue's condition number) leaves open, near the rotation
       threshold or real and within reach of the next real eigenvalue, weighing at least
       half the dominant pair's; and the rotating pairs within ``max(CLOSE_MIN,
       CLOSE_FACTOR·δ)`` of its weight (``δ`` the dominant pair's relative change on
       refinement: farther pairs would need a change CLOSE_FACTOR times larger than the
       dominant pair's, also first order in ``‖E_i‖``). Resolved: ``ρ ≤ RHO_MAX`` (a real
       eigenvalue then stays real) and a pair's rotation test decided beyond its estimated
       rest; beaten: it trails by more than twice both weights' first-order changes.

    Accepted points get ``J_r``'s eigenvalues (each of ``J_i``'s within the Bauer–Fike
    radius of one of them), the mode coordinates ``W [d, J_u]`` of ``J_r``'s left
    eigenvectors (so ``share``'s denominator, the summed weight of all modes, is first
    order in ``‖E_i‖``), and the refined dominant pair. The others go to the next round,
    until fewer than FAST_MIN_GROUP remain or a round accepts under FAST_MIN_SHARE of
    them; what is left is decomposed exactly. Returns the fields of ``_modes_block`` and
    the number of LAPACK decompositions (representatives and left-overs).
    """
    b = d.shape[0]
    out: dict | None = None
    todo = np.arange(b)
    n_lapack = 0
    while todo.size >= FAST_MIN_GROUP:
        part, good = _perturb(jh[todo], ju[todo], d[todo], imag_tol, rule, tol, spectrum_tol)
        n_lapack += 1
        if part is not None and good.any():
            if out is None:
                out = {key: np.zeros((b,) + v.shape[1:], v.dtype) for key, v in part.items()}
            for key, v in part.items():
                out[key][todo[good]] = v[good]
        accepted = int(good.sum())
        todo = todo[~good]
        if accepted < FAST_MIN_SHARE * (accepted + todo.size):
            break
    if out is None:
        return _modes_block(jh, ju, d, imag_tol, rule), n_lapack + b
    if todo.size:
        res = _modes_block(jh[todo], ju[todo], d[todo], imag_tol, rule)
        for key, val in res.items():
            out[key] = out[key].astype(np.result_type(val, out[key]), copy=False)
            out[key][todo] = val
    return out, n_lapack + todo.size


def previous_states(states: np.ndarray, initial: np.ndarray) -> np.ndarray:
    """``a_{t−1}`` of every bin, ``[trial, time, n]``, from ``a_1..a_T`` and ``a_0``.

    Why: the local system of bin ``t`` acts on ``a_{t−1}``, while ``inference.h5`` stores
    the states after each step (``states: [trial, time, n]``) and the initial state
    (``initial: [trial, n]``, ``g0``) apart.
    """
    states, initial = np.asarray(states), np.asarray(initial)
    if states.ndim != 3 or initial.shape != (states.shape[0], states.shape[2]):
        raise ValueError(
            f"states must be [trial, time, n] and initial [trial, n], got {states.shape}, "
            f"{initial.shape}"
        )
    return np.concatenate([initial[:, None], states[:, :-1]], axis=1)


def jacobian_modes(
    cell: Cell,
    cell_params: Any,
    points: np.ndarray,
    u_dim: int,
    dt: float,
    *,
    states: np.ndarray,
    initial: np.ndarray,
    chunk: int = 256,
    imag_tol: float = 1e-3,
    rule: str = "motion",
    workers: int | None = None,
    exact: bool = False,
    tol: float = FAST_TOL,
    spectrum_tol: float = FAST_SPECTRUM_TOL,
    progress: bool = False,
) -> JacobianModes:
    """Eigenvalues and dominant rotating pair of ``J_h`` at every expansion point.

    ``cell(params, h: [n], u: [u_dim]) -> [n]`` one sample (e.g.
    ``functools.partial(lfads_gru, clip=cfg.cell_clip)`` with ``params["gen"]``);
    ``points: [trial, time, n]`` expansion points ``e*_t``; ``states: [trial, time, n]``
    the trajectory ``a_1..a_T`` (``jslds_states``) and ``initial: [trial, n]`` its start
    ``a_0`` (``g0``): the deviation decomposed at bin ``t`` is ``d_t = a_{t−1} − e*_t``
    (module docstring), so ``a_T`` itself is never used;
    ``u_dim``: the cell's input size (``cfg.co_dim``, may be 0), linearised at
    ``u* = 0``; ``dt``: bin width in seconds. ``imag_tol``: a pair rotates iff
    ``Im λ > imag_tol · |λ|``; the default 1e-3 sits above the ~√ε ≈ 3e-4 splitting
    that float32 round-off in ``J_h`` gives a (nearly) repeated real eigenvalue, and
    counts rotations down to ``1e-3 / (2π Δt)`` (0.008 Hz at Δt = 20 ms). ``rule``: how
    the dominant pair is chosen, ``"motion"`` or ``"deviation"`` (module docstring).

    ``J_h`` and ``J_u`` come from one jitted ``vmap(jacfwd)`` run over chunks of
    ``chunk`` points (the last one padded, so one shape is compiled; the next chunk is
    dispatched before the current one is decomposed, so JAX and LAPACK overlap). Each
    chunk is split in ``workers`` blocks (threads; default: the CPUs this process may
    use) with BLAS limited to one thread each (batch parallelism beats BLAS threading at
    ``n ≈ 100``; the BLAS limit is process-wide while this runs), all in float64.

    ``exact=True``: every point is eigen-decomposed with ``np.linalg.eig`` (LAPACK
    ``geev``, ≈ 7 ms per point at n = 100 on one core). ``exact=False`` (default): the
    fast path, ``_modes_block_fast``: per block a few points are decomposed with LAPACK
    and the others are perturbations of them (first-order eigenvectors, second-order
    dominant eigenvalue), each accepted only where a Bauer–Fike radius
    ``κ(V_r)‖J_h − J_r‖_F ≤ spectrum_tol`` holds, the dominant eigenvalue's estimated
    error is at most ``tol`` and the dominant pair's choice is decided; any other point
    is decomposed exactly. Expansion points that repeat or move slowly, as a trained
    JSLDS names them, mostly take the fast path; random ones all fall back. Agreement
    with ``exact=True``: the same dominant pair (``has_rotation``, ``dominant_index``)
    and, within ``tol``, its eigenvalue, hence frequency and τ; ``share`` to first
    order in ``‖J_h − J_r‖`` (its denominator sums all modes); the spectrum within
    ``spectrum_tol`` (each of ``J_h``'s eigenvalues that close to one stored; the stored
    spectrum is the representative's, in practice within ≈ 1e-4). ``n_exact`` in the
    result counts the LAPACK decompositions. ``progress``: a tqdm bar over points.

    Peak memory is a few ``chunk × n × n`` complex128 arrays (≈ 0.55 MB per chunk point
    at n = 100, 140 MB at the default chunk) plus the outputs (≈ ``8 n + 100`` bytes per
    point, mostly the complex64 eigenvalues). Returns :class:`JacobianModes`.
    """
    points = np.asarray(points)
    prev = previous_states(states, initial)  # a_{t−1}
    if prev.shape != points.shape:
        raise ValueError(
            f"points and states must both be [trial, time, n], got {points.shape}, {prev.shape}"
        )
    if not dt > 0:
        raise ValueError(f"dt must be > 0 seconds, got {dt}")
    check_rule(rule)
    if chunk < 1 or u_dim < 0:
        raise ValueError(f"need chunk >= 1 and u_dim >= 0, got {chunk}, {u_dim}")
    if not (np.isfinite(points).all() and np.isfinite(prev).all()):
        raise ValueError("points, states and initial must be finite")
    n_trial, n_time, n = points.shape
    n_points = n_trial * n_time
    if workers is None:
        affinity = getattr(os, "sched_getaffinity", None)
        workers = len(affinity(0)) if affinity else os.cpu_count() or 1
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if not (tol > 0 and spectrum_tol > 0):
        raise ValueError(f"need tol > 0 and spectrum_tol > 0, got {tol}, {spectrum_tol}")
    if exact:
        block = functools.partial(_modes_block, imag_tol=imag_tol, rule=rule)
    else:
        fast = functools.partial(
            _modes_block_fast, imag_tol=imag_tol, rule=rule, tol=tol, spectrum_tol=spectrum_tol
        )

    flat_pts = points.reshape(n_points, n)
    flat_prev = prev.reshape(n_points, n)
    eigenvalues = np.zeros((n_points, n), np.complex64)
    out = {name: np.zeros(n_points, dt_) for name, dt_ in _POINT_FIELDS.items()}
    best_share = np.full(n_trial, -1.0)
    plane = np.zeros((n_trial, n, 2))
    plane_time = np.full(n_trial, -1, np.int64)
    plane_valid = np.zeros(n_trial, bool)
    n_exact = 0

    if n_points:
        jac = _jacobian_fn(cell, u_dim)
        if not np.issubdtype(flat_pts.dtype, np.floating):
            flat_pts = flat_pts.astype(float)
        u0 = jnp.zeros(u_dim, jnp.asarray(flat_pts[:1]).dtype)  # the dtype JAX computes in
        chunks = list(padded_chunks(n_points, min(chunk, n_points)))

        def dispatch(i: int):
            return jac(cell_params, jnp.asarray(flat_pts[chunks[i][2]]), u0)

        pending = dispatch(0)
        bar = tqdm(total=n_points, desc="jacobian modes", unit="pt", disable=not progress)
        with threadpool_limits(limits=1), ThreadPoolExecutor(workers) as pool, bar:
            for i, (start, stop, _) in enumerate(chunks):
                jh, ju = (np.asarray(x, np.float64)[: stop - start] for x in pending)
                if i + 1 < len(chunks):
                    pending = dispatch(i + 1)  # runs asynchronously while LAPACK works
                d = flat_prev[start:stop].astype(np.float64) - flat_pts[start:stop]
                splits = np.array_split(np.arange(stop - start), min(workers, stop - start))
                blocks = [(jh[s], ju[s], d[s]) for s in splits]
                if exact:
                    parts = list(pool.map(lambda b: block(*b), blocks))
                    n_exact += stop - start
                else:
                    parts, counts = zip(*pool.map(lambda b: fast(*b), blocks), strict=True)
                    n_exact += sum(counts)
                res = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
                eigenvalues[start:stop] = res["eigenvalues"]
                for name in out:
                    out[name][start:stop] = res[name]
                _update_planes(start, n_time, res, best_share, plane, plane_time, plane_valid)
                bar.update(stop - start)

    lam = out["dominant_eigenvalue"]
    cont = discrete_to_continuous(lam, dt)
    r = np.abs(lam)
    decaying = r < 1.0
    tau = np.where(decaying, cont.tau_s, np.inf)
    shape = (n_trial, n_time)
    return JacobianModes(
        eigenvalues=eigenvalues.reshape(n_trial, n_time, n),
        has_rotation=out["has_rotation"].reshape(shape),
        dominant_index=out["dominant_index"].reshape(shape),
        dominant_eigenvalue=lam.reshape(shape),
        freq_hz=cont.freq_hz.reshape(shape),
        tau_s=tau.reshape(shape),
        half_life_s=(tau * np.log(2.0)).reshape(shape),
        abs_lambda=r.reshape(shape),
        stable=decaying.reshape(shape),
        share=out["share"].reshape(shape),
        amplitude=out["amplitude"].reshape(shape),
        input_gain=out["input_gain"].reshape(shape),
        deviation_norm=out["deviation_norm"].reshape(shape),
        plane=plane,
        plane_time=plane_time,
        plane_valid=plane_valid,
        dt=float(dt),
        imag_tol=float(imag_tol),
        rule=rule,
        exact=bool(exact),
        n_exact=int(n_exact),
    )


def _update_planes(start, n_time, res, best_share, plane, plane_time, plane_valid) -> None:
    """Keep, per trial, the plane at the time bin of largest dominant-pair share (in place).

    Chunks are visited in (trial, time) order and only a strictly larger share replaces
    the running best, so ties go to the earliest time bin.
    """
    flat = start + np.arange(res["share"].shape[0])
    trial, time = flat // n_time, flat % n_time
    key = np.where(res["has_rotation"], res["share"], -1.0)
    o = np.lexsort((time, -key, trial))  # per trial: largest share, then earliest
    first = np.r_[True, trial[o][1:] != trial[o][:-1]]
    cand = o[first]
    cand = cand[key[cand] > best_share[trial[cand]]]
    if not cand.size:
        return
    q, valid = rotation_planes(res["v"][cand])
    tr = trial[cand]
    best_share[tr] = key[cand]
    plane[tr] = q
    plane_time[tr] = np.where(valid, time[cand], -1)
    plane_valid[tr] = valid


# ---------------------------------------------------------------- summaries


@dataclass(frozen=True)
class TrialModeSummary:
    """Per-trial summaries of :class:`JacobianModes` (all ``[trial]``).

    Over a trial's *rotating* time bins (``has_rotation``), each statistic is a median
    over time, unweighted (numpy's linearly interpolated median) or, with
    ``weighted=True``, weighted by the dominant pair's ``share`` (the lower weighted
    median: the first value whose cumulative weight reaches half the total).

    - ``has_rotation``: the trial has at least one rotating bin (all other fields are 0
      where it has none, and such trials are left out of condition statistics).
    - ``fraction_rotating``: fraction of its bins with a rotating pair.
    - ``freq_hz``: median frequency (Hz).
    - ``decay_rate``: median of ``−ln|λ| / Δt`` (1/s; ≤ 0 for non-decaying modes).
    - ``tau_s = 1 / decay_rate`` (``+inf`` when ``decay_rate ≤ 0``), ``half_life_s =
      τ ln 2``. τ is summarised through its rate because rates are finite for every
      mode: for an odd number of bins (or weighted) this is exactly the median of τ (τ is
      monotone in the rate); for an even number it is the harmonic rather than the
      arithmetic mean of the two middle τ.
    - ``abs_lambda``, ``share``: medians of the dominant pair's ``|λ|`` and share.
    """

    has_rotation: np.ndarray
    fraction_rotating: np.ndarray
    freq_hz: np.ndarray
    decay_rate: np.ndarray
    tau_s: np.ndarray
    half_life_s: np.ndarray
    abs_lambda: np.ndarray
    share: np.ndarray
    weighted: bool


def _decay_rate(abs_lambda: np.ndarray, dt: float, mask: np.ndarray) -> np.ndarray:
    """``−ln|λ| / Δt`` (1/s) where ``mask``, 0 elsewhere (|λ| > 0 on rotating points)."""
    with np.errstate(divide="ignore"):
        return np.where(mask, -np.log(np.where(mask, abs_lambda, 1.0)) / dt, 0.0)


def _rate_to_tau(rate: np.ndarray) -> np.ndarray:
    """``τ = 1 / rate`` (s), ``+inf`` for ``rate ≤ 0``."""
    with np.errstate(divide="ignore"):
        return np.where(rate > 0, 1.0 / np.where(rate > 0, rate, 1.0), np.inf)


def _row_median(x: np.ndarray, w: np.ndarray, weighted: bool) -> np.ndarray:
    """Median along the last axis of ``x: [r, t]`` over entries with ``w > 0``; 0 if none.

    Unweighted: ``np.nanmedian`` of the kept entries. Weighted: lower weighted median.
    """
    keep = w > 0
    any_kept = keep.any(-1)
    if not weighted:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows
            med = np.nanmedian(np.where(keep, x, np.nan), axis=-1)
        return np.where(any_kept, med, 0.0)
    o = np.argsort(np.where(keep, x, np.inf), axis=-1, kind="stable")
    xs = np.take_along_axis(x, o, -1)
    ws = np.take_along_axis(np.where(keep, w, 0.0), o, -1)
    cw = np.cumsum(ws, -1)
    idx = np.argmax(cw >= 0.5 * cw[..., -1:], axis=-1)
    med = np.take_along_axis(xs, idx[..., None], -1)[..., 0]
    return np.where(any_kept, med, 0.0)


def trial_summaries(modes: JacobianModes, *, weighted: bool = False) -> TrialModeSummary:
    """Per-trial medians over time of the dominant rotating pair (see the class docstring).

    ``weighted=False``: every rotating bin counts once; ``True``: bins weighted by the
    dominant pair's ``share``. Vectorised over trials and bins.
    """
    rot = modes.has_rotation
    w = np.where(rot, modes.share if weighted else 1.0, 0.0)
    if weighted:  # a rotating bin with zero share (d = 0) still counts, with a tiny weight
        w = np.where(rot, np.maximum(w, 1e-300), 0.0)
    rate_pts = _decay_rate(modes.abs_lambda, modes.dt, rot)
    rate = _row_median(rate_pts, w, weighted)
    has = rot.any(-1)
    tau = np.where(has, _rate_to_tau(rate), 0.0)
    return TrialModeSummary(
        has_rotation=has,
        fraction_rotating=rot.mean(-1) if rot.shape[-1] else np.zeros(rot.shape[0]),
        freq_hz=_row_median(modes.freq_hz, w, weighted),
        decay_rate=rate,
        tau_s=tau,
        half_life_s=tau * np.log(2.0),
        abs_lambda=_row_median(modes.abs_lambda, w, weighted),
        share=_row_median(modes.share, w, weighted),
        weighted=weighted,
    )


def _json_float(x: float) -> float | None:
    """A finite float, or None for ``±inf`` / NaN (JSON has neither)."""
    x = float(x)
    return x if np.isfinite(x) else None


def _group_stats(ts: TrialModeSummary, modes: JacobianModes, trials: np.ndarray) -> dict:
    """Median / IQR across the given trials' summaries (trials without rotation left out)."""
    rot = trials[ts.has_rotation[trials]]
    bins_rot = modes.has_rotation[trials]
    stats: dict[str, Any] = {
        "n_trials": int(trials.size),
        "n_trials_rotating": int(rot.size),
        "fraction_bins_rotating": float(bins_rot.mean()) if bins_rot.size else 0.0,
    }
    if not rot.size:
        none = {"median": None, "q25": None, "q75": None, "iqr": None}
        return stats | {
            "freq_hz": none,
            "tau_s_median": None,
            "tau_s_median_infinite": False,
            "half_life_s_median": None,
            "share_median": None,
            "fraction_rotating_bins_stable": None,
        }
    q25, med, q75 = np.quantile(ts.freq_hz[rot], [0.25, 0.5, 0.75])
    tau = float(_rate_to_tau(np.median(ts.decay_rate[rot])))
    stable = modes.stable[trials][bins_rot]
    return stats | {
        "freq_hz": {
            "median": float(med),
            "q25": float(q25),
            "q75": float(q75),
            "iqr": float(q75 - q25),
        },
        "tau_s_median": _json_float(tau),
        "tau_s_median_infinite": bool(np.isinf(tau)),
        "half_life_s_median": _json_float(tau * np.log(2.0)),
        "share_median": float(np.median(ts.share[rot])),
        "fraction_rotating_bins_stable": float(stable.mean()),
    }


def _pair_angles(Qa: np.ndarray, Qb: np.ndarray) -> np.ndarray:
    """Principal angles ``[a, b, 2]`` (rad, ascending) between planes ``[a, n, 2]``, ``[b, n, 2]``.

    Singular values of ``M = Qa_i^T Qb_j`` (2×2) in closed form, ``s = |Q ± R|`` with
    ``Q = ½‖(m00 + m11, m10 − m01)‖``, ``R = ½‖(m00 − m11, m10 + m01)‖`` (no
    cancellation), then ``arccos``; resolution ≈ 1e-8 rad near 0 in float64.
    """
    a, n, _ = Qa.shape
    b = Qb.shape[0]
    M = Qa.transpose(0, 2, 1).reshape(2 * a, n) @ Qb.transpose(1, 0, 2).reshape(n, 2 * b)
    M = M.reshape(a, 2, b, 2).transpose(0, 2, 1, 3)  # [a, b, 2, 2]: Qa_i^T Qb_j
    m00, m01, m10, m11 = M[..., 0, 0], M[..., 0, 1], M[..., 1, 0], M[..., 1, 1]
    q = 0.5 * np.hypot(m00 + m11, m10 - m01)
    r = 0.5 * np.hypot(m00 - m11, m10 + m01)
    s = np.stack([q + r, np.abs(q - r)], -1)
    return np.arccos(np.clip(s, 0.0, 1.0))


def plane_angle_summary(
    plane: np.ndarray, plane_valid: np.ndarray, condition: np.ndarray, *, chunk: int = 256
) -> dict:
    """Principal angles between trials' dominant planes, within vs across conditions.

    ``plane: [trial, n, 2]`` orthonormal, ``plane_valid: [trial]``, ``condition: [trial]``
    ints. For every pair of distinct valid trials the two principal angles are averaged
    (radians, in ``[0, π/2]``; 0 = same plane, π/2 = orthogonal); returns a JSON-safe
    dict: ``conditions`` (labels), ``mean_angle_rad: [C][C]`` (mean over trial pairs of
    conditions ``(c1, c2)``, None without pairs), ``n_pairs: [C][C]`` (unordered pairs),
    ``within_mean_rad`` / ``across_mean_rad`` (mean over all same- / different-condition
    pairs, None without pairs). Rows are processed ``chunk`` trials at a time: memory
    ``O(chunk · trial)``.
    """
    plane = np.asarray(plane, np.float64)
    valid = np.asarray(plane_valid, bool)
    condition = np.asarray(condition)
    if condition.shape != valid.shape or plane.shape[:1] != valid.shape:
        raise ValueError("plane, plane_valid and condition must share the trial axis")
    idx = np.flatnonzero(valid)
    Q = plane[idx]
    labels, ci = np.unique(condition[idx], return_inverse=True)
    onehot = np.eye(labels.size)[ci]  # [N, C]
    sums = np.zeros((labels.size, labels.size))
    counts = np.zeros_like(sums)
    for s in range(0, idx.size, chunk):
        e = min(s + chunk, idx.size)
        ang = _pair_angles(Q[s:e], Q).mean(-1)  # [b, N]
        w = np.ones_like(ang)
        w[np.arange(e - s), np.arange(s, e)] = 0.0  # no self-pairs
        sums += onehot[s:e].T @ (ang * w) @ onehot
        counts += onehot[s:e].T @ w @ onehot
    diag = np.eye(labels.size, dtype=bool)

    def mean(total: float, count: float) -> float | None:
        return float(total / count) if count > 0 else None

    return {
        "angle": "mean of the 2 principal angles per pair of trials (rad)",
        "conditions": [int(c) for c in labels],
        "mean_angle_rad": [
            [mean(sums[i, j], counts[i, j]) for j in range(labels.size)] for i in range(labels.size)
        ],
        "n_pairs": [  # ordered pairs counted twice on the diagonal, once per order off it
            [
                int(round(counts[i, j] / 2)) if i == j else int(round(counts[i, j]))
                for j in range(labels.size)
            ]
            for i in range(labels.size)
        ],
        "within_mean_rad": mean(sums[diag].sum(), counts[diag].sum()),
        "across_mean_rad": mean(sums[~diag].sum(), counts[~diag].sum()),
    }


def summarize_modes(
    modes: JacobianModes, condition: np.ndarray | None = None, *, weighted: bool = False
) -> dict:
    """JSON-safe summary (no NaN / inf) of :func:`jacobian_modes` results.

    ``condition: [trial]`` ints (None: one condition 0). Time bins → trial: median over a
    trial's rotating bins (:func:`trial_summaries`, share-weighted iff ``weighted``).
    Trials → condition / overall: each trial with at least one rotating bin counts once;
    ``freq_hz`` median / q25 / q75 / IQR across trials, ``tau_s_median`` =
    1 / median trial decay rate (None with ``tau_s_median_infinite`` True when the
    median mode does not decay), ``half_life_s_median``, ``share_median``,
    ``fraction_bins_rotating``, ``fraction_rotating_bins_stable``. Plus
    ``plane_angles`` (:func:`plane_angle_summary`) and per-trial lists (``tau_s`` None
    where infinite; 0 and ``has_rotation`` False for trials that never rotate).
    """
    n_trial = modes.has_rotation.shape[0]
    condition = np.zeros(n_trial, int) if condition is None else np.asarray(condition)
    if condition.shape != (n_trial,) or not np.issubdtype(condition.dtype, np.integer):
        raise ValueError(f"condition must be [trial] ints, got {condition.shape} {condition.dtype}")
    ts = trial_summaries(modes, weighted=weighted)
    all_trials = np.arange(n_trial)
    return {
        "conventions": {
            "dt_s": modes.dt,
            "eig_sort": modes.sort,
            "imag_tol": modes.imag_tol,
            "frequency": "Hz, |angle λ| / (2π Δt)",
            "tau": "s, −Δt / ln|λ|; None means +inf (|λ| ≥ 1, the mode does not decay)",
            "dominant_rule": modes.rule,
            "dominant_pair": RULES[modes.rule],
            "time_aggregation": ("share-weighted lower median" if weighted else "unweighted median")
            + " over a trial's rotating bins",
            "trial_aggregation": "median / quartiles over trials with a rotating bin",
            "plane": "per trial, at the bin where the dominant pair's share is largest",
        },
        "overall": _group_stats(ts, modes, all_trials),
        "per_condition": {
            str(int(c)): _group_stats(ts, modes, all_trials[condition == c])
            for c in np.unique(condition)
        },
        "plane_angles": plane_angle_summary(modes.plane, modes.plane_valid, condition),
        "per_trial": {
            "condition": [int(c) for c in condition],
            "has_rotation": [bool(x) for x in ts.has_rotation],
            "fraction_rotating": [float(x) for x in ts.fraction_rotating],
            "freq_hz": [float(x) for x in ts.freq_hz],
            "tau_s": [_json_float(x) for x in ts.tau_s],
            "share": [float(x) for x in ts.share],
            "plane_time": [int(x) for x in modes.plane_time],
        },
    }


# ---------------------------------------------------------------- fixed-point quality


def fixed_point_residual(
    cell: Cell, params: Any, points: np.ndarray, *, u_dim: int = 0, chunk: int = 4096
) -> np.ndarray:
    """``‖F(e*, 0) − e*‖`` at every point: how far each expansion point is from fixed.

    ``points: [..., n]`` (e.g. ``[trial, time, n]``); ``u_dim``: the cell's input size
    (``u* = 0`` of that size; a wrong size fails loudly in the cell). Jitted, ``vmap``-ed
    over chunks of ``chunk`` points (last one padded). Returns ``[...]`` in the cell's
    float type.
    """
    points = np.asarray(points)
    n = points.shape[-1]
    flat = points.reshape(-1, n)
    if not np.issubdtype(flat.dtype, np.floating):
        flat = flat.astype(float)
    u0 = jnp.zeros(u_dim, jnp.asarray(flat[:1]).dtype)

    @jax.jit
    def res(p, h):
        return jax.vmap(lambda hh: jnp.linalg.norm(cell(p, hh, u0) - hh))(h)

    out = None
    for start, stop, idx in padded_chunks(flat.shape[0], max(1, min(chunk, flat.shape[0]))):
        r = np.asarray(res(params, jnp.asarray(flat[idx])))[: stop - start]
        if out is None:
            out = np.empty(flat.shape[0], r.dtype)
        out[start:stop] = r
    if out is None:
        out = np.zeros(0, u0.dtype)
    return out.reshape(points.shape[:-1])


def count_distinct(points_of_trial: np.ndarray, tol: float, *, chunk: int = 256) -> Any:
    """Number of distinct points a trial visits, by greedy clustering with radius ``tol``.

    ``points_of_trial: [time, n]`` → int, or ``[trial, time, n]`` → ``[trial]`` ints.
    Greedy in time order: the earliest point not yet covered opens a cluster and covers
    every point within Euclidean distance ``tol`` (``<=``) of it; repeat until all are
    covered. So cluster centres are ``> tol`` apart and every point lies within ``tol``
    of its centre (the count depends on ``tol``, e.g. 0.025 as fixed-point
    de-duplication uses). Each round is vectorised over time and over trials (``chunk``
    trials at a time); the number of rounds is the largest count.
    """
    X = np.asarray(points_of_trial)
    single = X.ndim == 2
    if single:
        X = X[None]
    if X.ndim != 3:
        raise ValueError(f"points must be [time, n] or [trial, time, n], got {X.shape}")
    counts = np.zeros(X.shape[0], np.int64)
    for s in range(0, X.shape[0], chunk):
        Xc = X[s : s + chunk].astype(np.float64)  # float64 one chunk at a time
        rows = np.arange(Xc.shape[0])
        remaining = np.ones(Xc.shape[:2], bool)
        while remaining.any():
            active = remaining.any(-1)
            first = np.argmax(remaining, -1)
            centre = Xc[rows, first]  # [r, n]
            dist = np.linalg.norm(Xc - centre[:, None, :], axis=-1)
            remaining &= ~(dist <= tol)
            counts[s : s + Xc.shape[0]] += active
    return int(counts[0]) if single else counts


def distance_to_nearest(
    points: np.ndarray,
    fixed_points: np.ndarray,
    *,
    chunk: int | None = None,
    return_index: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Euclidean distance from every point to its nearest fixed point.

    ``points: [..., n]`` (e.g. ``[trial, time, n]``), ``fixed_points: [p, n]``. Returns
    ``[...]`` distances (``+inf`` when ``p = 0``) and, with ``return_index``, the index of
    the nearest fixed point (−1 when ``p = 0``). Differences are formed explicitly (no
    ``‖x‖² + ‖y‖² − 2x·y`` cancellation), ``chunk`` points at a time (default: about 4M
    floats per chunk, i.e. ``chunk · p · n ≈ 2**22``).
    """
    points = np.asarray(points)
    fp = np.asarray(fixed_points, np.float64)
    n = points.shape[-1]
    if fp.ndim != 2 or fp.shape[1] != n:
        raise ValueError(f"fixed_points must be [p, {n}], got {fp.shape}")
    flat = points.reshape(-1, n)
    dist = np.full(flat.shape[0], np.inf)
    index = np.full(flat.shape[0], -1, np.int64)
    if fp.shape[0]:
        size = chunk or max(1, 2**22 // (fp.shape[0] * max(n, 1)))
        for s in range(0, flat.shape[0], size):
            diff = flat[s : s + size, None, :].astype(np.float64) - fp[None]
            d = np.linalg.norm(diff, axis=-1)  # [c, p]
            index[s : s + size] = np.argmin(d, -1)
            dist[s : s + size] = np.take_along_axis(d, index[s : s + size, None], -1)[:, 0]
    shape = points.shape[:-1]
    return (dist.reshape(shape), index.reshape(shape)) if return_index else dist.reshape(shape)
