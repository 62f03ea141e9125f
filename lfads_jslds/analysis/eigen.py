"""Eigenmodes of discrete-time Jacobians and their continuous-time reading.

Why: a JSLDS linearisation ``a_t - e* ≈ J_h (a_{t-1} - e*)`` is a discrete-time linear
system; its eigenvalues ``λ = r e^{±iθ}`` say how fast each mode decays (or grows) and
rotates, its right eigenvectors where the mode lives in state space, and its left
eigenvectors how strongly a perturbation excites it. Rotational dynamics live in the
real plane ``span{Re v, Im v}`` of a complex eigenvector; planes are compared with
principal angles.

Conventions (stated in every output):
- Sort order ``EIG_SORT = "abs_desc"``: eigenvalues by ``|λ|`` descending (slowest mode
  first); ties broken by ``|angle(λ)|`` ascending (non-rotating before rotating, ``+r``
  before ``-r``), then ``Im λ > 0`` before ``Im λ < 0`` (within a conjugate pair the
  positive-frequency member comes first).
- Right eigenvectors are the *columns* of ``V`` (``J V = V Λ``, unit 2-norm columns as
  LAPACK returns them); left eigenvectors are the *rows* of ``W = V^{-1}``
  (``W J = Λ W``, ``W V = I``: biorthogonal, so ``W[k] @ x`` is the coordinate of ``x``
  along mode ``k``).
- ``Δt`` (``dt``) in seconds, frequencies in Hz, time constants and half-lives in seconds.
  Frequency ``θ / (2π Δt)`` with ``θ = |angle λ| ∈ [0, π]`` (so at most the Nyquist
  frequency ``1 / (2Δt)``: faster rotations alias); time constant ``τ = -Δt / ln r``;
  half-life ``τ ln 2``; stable iff ``r < 1``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import scipy.linalg

__all__ = [
    "EIG_SORT",
    "EigModes",
    "ContinuousModes",
    "eig_modes",
    "discrete_to_continuous",
    "continuous_time_matrix",
    "rotation_plane",
    "rotation_planes",
    "principal_angles",
]

#: Eigenvalue order of every output here: |λ| descending, ties by |angle λ| ascending,
#: then Im λ > 0 first (see the module docstring).
EIG_SORT = "abs_desc"


@dataclass(frozen=True)
class EigModes:
    """Sorted eigen-decomposition of ``J: [..., n, n]`` (order: ``sort``, i.e. EIG_SORT).

    - ``eigenvalues: [..., n]`` complex.
    - ``right: [..., n, n]`` complex, right eigenvectors as columns: ``J @ right[..., :, k]
      = eigenvalues[..., k] * right[..., :, k]``; unit 2-norm columns.
    - ``left: [..., n, n]`` complex, left eigenvectors as rows of ``inv(right)``:
      ``left[..., k, :] @ J = eigenvalues[..., k] * left[..., k, :]`` and
      ``left @ right = I`` (biorthogonal; rows are *not* unit norm).
    """

    eigenvalues: np.ndarray
    right: np.ndarray
    left: np.ndarray
    sort: str = EIG_SORT


def _sort_index(lam: np.ndarray) -> np.ndarray:
    """Indices ``[..., n]`` putting ``lam`` in EIG_SORT order along the last axis."""
    # np.lexsort: last key is primary.
    return np.lexsort((-np.sign(lam.imag), np.abs(np.angle(lam)), -np.abs(lam)), axis=-1)


def eig_modes(J: np.ndarray) -> EigModes:
    """Eigenvalues, right (columns) and left (rows of ``V^{-1}``) eigenvectors of ``J``.

    ``J: [..., n, n]`` (batched over leading axes), returns :class:`EigModes` sorted by
    EIG_SORT (``|λ|`` descending). Outputs are always complex. ``J`` must be
    diagonalisable: for a defective ``J`` the eigenvector matrix is (near) singular and
    ``inv`` raises ``LinAlgError`` or returns huge left eigenvectors.
    """
    J = np.asarray(J)
    if J.ndim < 2 or J.shape[-1] != J.shape[-2]:
        raise ValueError(f"J must be [..., n, n], got shape {J.shape}")
    lam, V = np.linalg.eig(J)
    ctype = np.result_type(lam.dtype, np.complex64)
    lam = lam.astype(ctype, copy=False)
    V = V.astype(ctype, copy=False)
    order = _sort_index(lam)
    lam = np.take_along_axis(lam, order, axis=-1)
    V = np.take_along_axis(V, order[..., None, :], axis=-1)
    W = np.linalg.inv(V)
    return EigModes(eigenvalues=lam, right=V, left=W)


class ContinuousModes(NamedTuple):
    """Continuous-time reading of discrete-time eigenvalues ``λ = r e^{iθ}`` (same shape).

    - ``freq_hz = |θ| / (2π Δt)``: rotation frequency in Hz, in ``[0, 1/(2Δt)]``
      (0 for real positive λ and for λ = 0; Nyquist ``1/(2Δt)`` for real negative λ).
    - ``tau_s = -Δt / ln r``: e-folding time constant in seconds. ``0`` for λ = 0,
      ``inf`` for ``r = 1`` (marginal: neither decays nor grows), *negative* for
      ``r > 1``: then ``-tau_s`` is the e-folding growth time.
    - ``half_life_s = tau_s · ln 2``: time to halve (negative: ``-half_life_s`` is the
      doubling time of an unstable mode).
    - ``stable = r < 1`` (strict: ``r = 1`` counts as not stable).
    """

    freq_hz: np.ndarray
    tau_s: np.ndarray
    half_life_s: np.ndarray
    stable: np.ndarray


def discrete_to_continuous(lam: np.ndarray, dt: float) -> ContinuousModes:
    """Frequency (Hz), time constant and half-life (s), stability of eigenvalues ``lam``.

    ``lam: [...]`` complex or real discrete-time eigenvalues of a map applied every
    ``dt`` seconds; outputs have the same shape and order as ``lam`` (see
    :class:`ContinuousModes` for the conventions). Never NaN for finite ``lam``.
    """
    if not dt > 0:
        raise ValueError(f"dt must be > 0 seconds, got {dt}")
    lam = np.asarray(lam)
    r = np.abs(lam)
    theta = np.abs(np.angle(lam))  # [0, π]; angle(0) = 0, angle(-x ± 0j) = ±π
    freq = theta / (2.0 * np.pi * dt)
    with np.errstate(divide="ignore"):
        log_r = np.log(r)  # -inf at r = 0 -> tau = 0
        tau = np.where(log_r == 0.0, np.inf, -dt / np.where(log_r == 0.0, 1.0, log_r))
    tau = np.asarray(tau, dtype=np.result_type(r.dtype, np.float32))
    return ContinuousModes(freq_hz=freq, tau_s=tau, half_life_s=tau * np.log(2.0), stable=r < 1.0)


def continuous_time_matrix(J: np.ndarray, dt: float) -> np.ndarray:
    """Continuous-time generator ``A = logm(J) / Δt`` with ``expm(A Δt) = J``.

    ``J: [..., n, n]`` discrete-time Jacobian of a map applied every ``dt`` seconds;
    returns ``A: [..., n, n]`` in 1/s (principal matrix logarithm, so rotations are read
    below the Nyquist frequency). The first-order ``(J - I) / Δt`` is biased (it equals
    ``A`` only to first order in ``A Δt``); use this instead. Real when ``J`` is real with
    no eigenvalue on the negative real axis, complex otherwise (as scipy returns it).
    """
    if not dt > 0:
        raise ValueError(f"dt must be > 0 seconds, got {dt}")
    J = np.asarray(J)
    if J.ndim < 2 or J.shape[-1] != J.shape[-2]:
        raise ValueError(f"J must be [..., n, n], got shape {J.shape}")
    batch = J.shape[:-2]
    logs = [scipy.linalg.logm(J[idx]) for idx in np.ndindex(*batch)]
    dtype = np.result_type(*[x.dtype for x in logs]) if logs else J.dtype
    out = np.empty(J.shape, dtype)
    for idx, x in zip(np.ndindex(*batch), logs, strict=True):
        out[idx] = x
    return out / dt


def rotation_planes(v: np.ndarray, rtol: float = 1e-8) -> tuple[np.ndarray, np.ndarray]:
    """Orthonormal bases ``[..., n, 2]`` of the real planes ``span{Re v, Im v}``, and validity.

    ``v: [..., n]`` complex eigenvectors of a real matrix for non-real eigenvalues; each
    plane is the mode's real invariant subspace and does not depend on the phase of ``v``.
    Columns from a reduced QR of ``[Re v, Im v]``, signed so that column 0 points along
    ``Re v``. ``valid: [...]`` is False (and the basis zeros) where ``Re v`` and ``Im v``
    are (near) parallel (``|R[1, 1]| <= rtol · max(|R[0, 0]|, |R[0, 1]|)``, e.g. a real
    eigenvector): no plane is defined there.
    """
    v = np.asarray(v)
    Q, R = np.linalg.qr(np.stack([v.real, v.imag], axis=-1))
    d0, d1, r01 = np.abs(R[..., 0, 0]), np.abs(R[..., 1, 1]), np.abs(R[..., 0, 1])
    valid = (d0 > 0) & (d1 > rtol * np.maximum(d0, r01))
    sign = np.where(np.stack([R[..., 0, 0], R[..., 1, 1]], -1) < 0, -1.0, 1.0)
    return np.where(valid[..., None, None], Q * sign[..., None, :], 0.0), valid


def rotation_plane(v: np.ndarray, rtol: float = 1e-8) -> np.ndarray:
    """Orthonormal basis ``[n, 2]`` of ``span{Re v, Im v}`` for one ``v: [n]``
    (:func:`rotation_planes`); raises ``ValueError`` where that plane is not defined."""
    v = np.asarray(v)
    if v.ndim != 1:
        raise ValueError(f"v must be [n], got shape {v.shape}")
    Q, valid = rotation_planes(v, rtol)
    if not valid:
        raise ValueError("Re v and Im v are (near) parallel: v spans no rotation plane")
    return Q


def principal_angles(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """Principal angles (radians, ascending, in ``[0, π/2]``) between ``span A`` and ``span B``.

    ``A: [n, p]``, ``B: [n, q]`` (columns span the subspaces; need not be orthonormal).
    Returns ``[min(p, q)]``; all ≈ 0 means the spans coincide (when ``p = q``), π/2
    means orthogonal. Uses ``scipy.linalg.subspace_angles`` (which sorts descending).
    """
    return np.sort(scipy.linalg.subspace_angles(np.asarray(A), np.asarray(B)))
