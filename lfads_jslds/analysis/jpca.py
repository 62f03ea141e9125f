"""jPCA: the rotational structure of condition-averaged population trajectories.

Why: Churchland et al. (2012, Nature, "Neural population dynamics during reaching")
fit the linear dynamical system ``dx/dt = M x`` to condition-averaged motor-cortex
activity twice, once with ``M`` unconstrained (``M_best``) and once with ``M``
skew-symmetric (``M_skew``, a pure rotation: its eigenvalues are ``±iω``). How much of
``dx/dt`` the skew fit explains (``r2_skew``, compared with ``r2_best``) measures how
rotational the dynamics are; the eigen-planes of ``M_skew`` (jPC planes) show the
rotation as a "rosette" of one trajectory per condition. Applied here to e.g.
condition-averaged LFADS factors, and comparable with the rotation frequencies that
:mod:`lfads_jslds.analysis.eigen` reads off JSLDS Jacobians.

Steps (those of Churchland's released MATLAB ``jPCA.m``, closed-form where it iterates):

1. Optional soft normalisation: each dim divided by ``range + norm_constant`` (range
   over every condition and *all* times, not only the analysed ones).
2. Optional removal of the cross-condition mean: at each time the mean over conditions
   (over all conditions, per time) is subtracted.
3. PCA of the analysed ``[condition·time, dim]`` matrix (centred on its grand mean,
   which step 2 already makes zero); keep the top ``n_pcs = k`` components.
4. Finite differences within each condition along time, ``dX = (x[t+1] - x[t]) / Δt``,
   regressed on the state ``X`` = the *earlier* sample ``x[t]`` (``state="earlier"``:
   the paper's ``preState``) or the midpoint ``(x[t] + x[t+1]) / 2``
   (``state="midpoint"``: a sampled pure rotation then fits a skew ``M`` exactly and
   the frequency bias is ``+(ωΔt)²/12`` instead of ``-(ωΔt)²/6``).
5. ``M_best`` = least squares of ``dX ≈ X Mᵀ`` (rows are samples, so ``M`` acts on
   column states: ``dx/dt = M x``); ``M_skew`` = least squares over skew matrices,
   solved in closed form through the normal equations of the ``k(k-1)/2`` free entries.
6. jPC planes: the real invariant planes of ``M_skew`` (one per conjugate pair ``±iω``),
   ordered by ``ω`` descending (the first jPC plane is the fastest rotation, i.e. the
   pair with the largest ``|eigenvalue|`` of ``M_skew``, as in the paper).

Conventions:
- ``x: [condition, time, dim]``; ``Δt`` (``dt``) in seconds per bin; ``M_best``,
  ``M_skew`` in 1/s (derivatives are divided by ``Δt``); eigenvalues ``±iω`` in rad/s;
  frequencies ``ω / (2π)`` in Hz, ``>= 0``, descending.
- Matrices in PCA coordinates (``[k, k]``); ``pcs: [dim, k]`` orthonormal columns, each
  signed so its largest-magnitude entry is positive; planes as ``[dim or k, 2]``
  orthonormal bases.
- R² = ``1 - SSE / SST`` over all ``k`` dims with ``SST = Σ dX²`` about *zero*, as in
  ``jPCA.m`` (with the cross-condition mean removed, ``dX`` has zero mean, so this equals
  SST about the mean).
- Plane orientation (Churchland's ``getRealVs``): (a) counter-clockwise: in the plane's
  basis ``[e1, e2]`` the restricted ``M_skew`` is ``[[0, -ω], [ω, 0]]`` with ``ω >= 0``,
  so ``e1`` turns towards ``e2`` (the rosette turns CCW with axis 0 horizontal); (b) then
  rotated within the plane so that the spread (PCA) of the starting points (first
  analysed time, all conditions) lies along axis 0; (c) then turned by π if needed so
  that the largest-magnitude value of axis 1 over all analysed samples is positive.
  (b) and (c) are rotations, so (a) still holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import scipy.linalg

__all__ = [
    "CHURCHLAND_WINDOW_MS",
    "JPCAResult",
    "jpca",
    "window_bins",
    "fit_m_best",
    "fit_m_skew",
    "rotation_frequency_hz",
]


#: The analysed window in ms from movement onset: Churchland et al. (2012) fit jPCA
#: from 50 ms before to 150 ms after it, the epoch whose dynamics drive the reach (a
#: whole 700 ms trial adds the preparatory period and the end of the movement).
CHURCHLAND_WINDOW_MS = (-50.0, 150.0)


@dataclass(frozen=True)
class JPCAResult:
    """What :func:`jpca` found (``k = n_pcs``; conventions in the module docstring).

    - ``m_skew``, ``m_best: [k, k]`` in 1/s, PCA coordinates, ``dx/dt ≈ M x``.
    - ``r2_skew``, ``r2_best``: fraction of ``Σ dX²`` (about zero) explained.
    - ``eigenvalues: [k]`` complex, of ``m_skew`` (``±iω``): ``|λ|`` descending, ``+iω``
      before ``-iω`` within a pair.
    - ``frequencies_hz: [k/2]`` = ``ω / 2π`` per jPC plane, descending.
    - ``planes: [k/2, dim, 2]`` jPC planes in the (normalised) original space;
      ``planes_pca: [k/2, k, 2]`` the same in PCA coordinates (``planes = pcs @
      planes_pca``). Orthonormal columns, oriented as in the module docstring.
    - ``projection: [condition, time, 2]`` analysed data on the first plane (rosette).
    - ``pcs: [dim, k]``; ``variance_captured``: fraction of the total variance (all
      dims) of the preprocessed analysed data that lies in the first plane.
    - Preprocessing, to project other data the same way: ``((x[:, times] / norm_factors
      - cross_condition_mean) - center) @ planes[j]``. ``norm_factors: [dim]`` (ones
      without soft normalisation), ``cross_condition_mean: [time, dim]`` over the
      analysed times (zeros when not subtracted), ``center: [dim]``.
    - ``times: [time]`` the analysed time indices; ``dt`` seconds per bin; ``state``.
    """

    m_skew: np.ndarray
    m_best: np.ndarray
    r2_skew: float
    r2_best: float
    eigenvalues: np.ndarray
    frequencies_hz: np.ndarray
    planes: np.ndarray
    planes_pca: np.ndarray
    projection: np.ndarray
    pcs: np.ndarray
    variance_captured: float
    norm_factors: np.ndarray
    cross_condition_mean: np.ndarray
    center: np.ndarray
    times: np.ndarray
    dt: float
    state: str


def _check_regression(X: np.ndarray, dX: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    X = np.asarray(X, dtype=np.float64)
    dX = np.asarray(dX, dtype=np.float64)
    if X.ndim != 2 or X.shape != dX.shape:
        raise ValueError(f"X and dX must both be [sample, k], got {X.shape} and {dX.shape}")
    if not (np.isfinite(X).all() and np.isfinite(dX).all()):
        raise ValueError("X and dX must be finite (no NaN or inf)")
    return X, dX


def fit_m_best(X: np.ndarray, dX: np.ndarray) -> np.ndarray:
    """Least-squares ``M: [k, k]`` with ``dX ≈ X Mᵀ`` (``dx = M x`` per sample row).

    ``X, dX: [sample, k]``. Minimum-norm solution when ``X`` is rank deficient.
    """
    X, dX = _check_regression(X, dX)
    Mt, *_ = np.linalg.lstsq(X, dX, rcond=None)
    return Mt.T


def _skew_basis(k: int) -> np.ndarray:
    """Linear map ``L: [k·k, k(k-1)/2]`` from free parameters to row-major ``vec(S)``.

    Parameter ``p`` for the pair ``i < j`` (``np.triu_indices`` order) is ``S[i, j]``, so
    column ``p`` is ``vec(E_ij - E_ji)``.
    """
    i, j = np.triu_indices(k, 1)
    L = np.zeros((k * k, i.size))
    p = np.arange(i.size)
    L[i * k + j, p] = 1.0
    L[j * k + i, p] = -1.0
    return L


def fit_m_skew(X: np.ndarray, dX: np.ndarray) -> np.ndarray:
    """Least-squares skew-symmetric ``S: [k, k]`` (``S = -Sᵀ``) with ``dX ≈ X Sᵀ``.

    ``X, dX: [sample, k]``. Closed form: with ``S = unvec(L θ)`` (``θ`` the ``k(k-1)/2``
    free entries, ``L`` from the parameters to skew matrices) the loss
    ``||dX - X Sᵀ||² = θᵀ H θ - 2 bᵀ θ + const`` with ``H = Lᵀ (I ⊗ XᵀX) L`` and
    ``b = Lᵀ vec(dXᵀ X)``; ``θ`` solves ``H θ = b`` (minimum norm if ``H`` is singular).
    """
    X, dX = _check_regression(X, dX)
    k = X.shape[1]
    L = _skew_basis(k)
    C = X.T @ X
    D = dX.T @ X  # unconstrained normal equations read M C = D
    H = L.T @ np.kron(np.eye(k), C) @ L
    b = L.T @ D.reshape(-1)
    theta, *_ = np.linalg.lstsq(H, b, rcond=None)
    S = (L @ theta).reshape(k, k)
    return S


def _r2(X: np.ndarray, dX: np.ndarray, M: np.ndarray) -> float:
    """``1 - Σ (dX - X Mᵀ)² / Σ dX²`` (SST about zero, as in ``jPCA.m``)."""
    sst = float(np.sum(dX**2))
    if sst == 0.0:
        return float("nan")
    return 1.0 - float(np.sum((dX - X @ M.T) ** 2)) / sst


def _skew_planes(S: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Invariant planes ``[k/2, k, 2]`` and ``ω >= 0`` ``[k/2]`` of skew ``S``, ω descending.

    From the real Schur form ``S = Z T Zᵀ`` (``T`` block diagonal for a normal matrix):
    each 2×2 block is a rotation plane; 1×1 blocks (zero eigenvalues, an even number of
    them since ``k`` is even) are paired in order. Each plane is signed so that
    ``Qᵀ S Q = [[0, -ω], [ω, 0]]`` with ``ω >= 0`` (counter-clockwise).
    """
    k = S.shape[0]
    T, Z = scipy.linalg.schur(S, output="real")
    blocks: list[list[int]] = []
    singles: list[int] = []
    i = 0
    while i < k:
        if i + 1 < k and T[i + 1, i] != 0.0:
            blocks.append([i, i + 1])
            i += 2
        else:
            singles.append(i)
            i += 1
    blocks += [singles[n : n + 2] for n in range(0, len(singles), 2)]
    planes, omegas = [], []
    for cols in blocks:
        Q = Z[:, cols].copy()
        m2 = Q.T @ S @ Q
        omega = 0.5 * (m2[1, 0] - m2[0, 1])
        if omega < 0:
            Q[:, 1] *= -1.0
            omega = -omega
        planes.append(Q)
        omegas.append(omega)
    order = np.argsort(-np.asarray(omegas), kind="stable")
    return np.stack(planes)[order], np.asarray(omegas)[order]


def _orient_plane(Q: np.ndarray, start: np.ndarray, samples: np.ndarray) -> np.ndarray:
    """Rotate the CCW plane ``Q: [k, 2]`` within itself as Churchland's ``getRealVs``.

    ``start: [condition, k]`` states at the first analysed time, ``samples: [n, k]`` all
    analysed states. Axis 0 along the main spread of ``start`` (about its mean), then a
    turn by π if the largest-magnitude value on axis 1 is negative. Only proper
    rotations are applied, so the sense of rotation is kept.
    """
    p = start @ Q
    p = p - p.mean(axis=0)
    _, vecs = np.linalg.eigh(p.T @ p)
    u = vecs[:, -1]  # direction of largest spread
    R = np.array([[u[0], -u[1]], [u[1], u[0]]])  # rotation taking e1 to u
    Q = Q @ R
    a1 = samples @ Q[:, 1]
    if a1[np.argmax(np.abs(a1))] < 0:
        Q = -Q
    return Q


def window_bins(
    window_ms: tuple[float, float], data_window_ms: tuple[float, float], bin_ms: float
) -> slice:
    """The bins lying wholly inside ``window_ms`` (ms from the alignment event), as a slice.

    The data's bin ``i`` spans ``[w0 + i·bin_ms, w0 + (i + 1)·bin_ms)`` ms with
    ``(w0, w1) = data_window_ms``; a bin cut by an edge of ``window_ms`` is left out.
    Raises ``ValueError`` unless ``start < stop``, the window lies inside the data's, and
    it holds at least 2 bins (one difference for jPCA).
    """
    start, stop = (float(v) for v in window_ms)
    w0, w1 = (float(v) for v in data_window_ms)
    b = float(bin_ms)
    if not (np.isfinite(start) and np.isfinite(stop) and start < stop):
        raise ValueError(
            f"jPCA window [{start:g}, {stop:g}] ms: its start must come before its stop"
        )
    if not (b > 0 and w0 < w1):
        raise ValueError(f"bad data window [{w0:g}, {w1:g}] ms or bin width {b:g} ms")
    if start < w0 or stop > w1:
        raise ValueError(
            f"jPCA window [{start:g}, {stop:g}] ms is not inside the data's window_ms "
            f"[{w0:g}, {w1:g}]"
        )
    eps = 1e-9  # bin edges that coincide with the window's up to float round-off
    first = int(np.ceil((start - w0) / b - eps))
    end = int(np.floor((stop - w0) / b + eps))
    if end - first < 2:
        raise ValueError(
            f"jPCA window [{start:g}, {stop:g}] ms holds {max(end - first, 0)} whole bins of "
            f"{b:g} ms; jPCA needs at least 2"
        )
    return slice(first, end)


def _resolve_times(times, n_time: int) -> np.ndarray:
    if times is None:
        idx = np.arange(n_time)
    elif isinstance(times, slice):
        idx = np.arange(n_time)[times]
    else:
        idx = np.asarray(times)
        if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer):
            raise ValueError(f"times must be a slice or 1-D integer indices, got {times!r}")
        if idx.size and (idx.min() < -n_time or idx.max() >= n_time):
            raise ValueError(f"times indices out of range for {n_time} time bins")
        idx = np.where(idx < 0, idx + n_time, idx)
    if idx.size < 2:
        raise ValueError(f"times must select at least 2 time bins, got {idx.size}")
    if np.any(np.diff(idx) != 1):
        raise ValueError("times must select consecutive, increasing bins (step 1)")
    return idx


def jpca(
    x: np.ndarray,
    dt: float,
    *,
    n_pcs: int = 6,
    times: slice | np.ndarray | None = None,
    subtract_cross_condition_mean: bool = True,
    soft_normalize: bool = False,
    norm_constant: float = 5.0,
    state: Literal["earlier", "midpoint"] = "earlier",
) -> JPCAResult:
    """jPCA of condition-averaged ``x: [condition, time, dim]`` sampled every ``dt`` s.

    ``n_pcs``: even, ``2 <= n_pcs <= dim``. ``times``: slice or consecutive integer
    indices of the analysed bins (default all). ``subtract_cross_condition_mean``: remove
    the mean over conditions at each time (the paper's default). ``soft_normalize``:
    divide each dim by ``range + norm_constant`` (off by default: LFADS factors are
    already on comparable scales); ``norm_constant`` is in the units of ``x`` (5 as in
    the paper, for spikes/s; the released ``jPCA.m`` defaults to 10). ``state``: the
    regressor, ``"earlier"`` (paper) or ``"midpoint"``. Returns :class:`JPCAResult`;
    steps and conventions are in the module docstring.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 3:
        raise ValueError(f"x must be [condition, time, dim], got shape {x.shape}")
    n_cond, n_time, dim = x.shape
    if n_cond < 2:
        raise ValueError(f"x needs at least 2 conditions, got {n_cond}")
    if not np.isfinite(x).all():
        raise ValueError("x contains NaN or inf")
    if not (np.isfinite(dt) and dt > 0):
        raise ValueError(f"dt must be a finite number of seconds > 0, got {dt}")
    if isinstance(n_pcs, bool) or not isinstance(n_pcs, int | np.integer):
        raise ValueError(f"n_pcs must be an int, got {n_pcs!r}")
    if n_pcs < 2 or n_pcs % 2:
        raise ValueError(f"n_pcs must be even and >= 2, got {n_pcs}")
    if n_pcs > dim:
        raise ValueError(f"n_pcs = {n_pcs} exceeds dim = {dim}")
    if state not in ("earlier", "midpoint"):
        raise ValueError(f"state must be 'earlier' or 'midpoint', got {state!r}")
    idx = _resolve_times(times, n_time)
    n_t = idx.size
    if n_cond * (n_t - 1) < n_pcs:
        raise ValueError(
            f"{n_cond} conditions × {n_t - 1} differences = {n_cond * (n_t - 1)} samples "
            f"cannot determine a {n_pcs}×{n_pcs} M (need >= n_pcs)"
        )

    # 1. Soft normalisation (range over all conditions and all times).
    if soft_normalize:
        if not (np.isfinite(norm_constant) and norm_constant >= 0):
            raise ValueError(f"norm_constant must be finite and >= 0, got {norm_constant}")
        norm = np.ptp(x.reshape(-1, dim), axis=0) + norm_constant
        if np.any(norm == 0):
            raise ValueError("soft normalisation divides by 0 (a constant dim, norm_constant 0)")
    else:
        norm = np.ones(dim)
    xn = x / norm
    # 2. Cross-condition mean, per time.
    ccm = xn.mean(axis=0) if subtract_cross_condition_mean else np.zeros((n_time, dim))
    xa = (xn - ccm)[:, idx]  # [condition, time, dim]
    # 3. PCA of the analysed samples.
    flat = xa.reshape(-1, dim)
    center = flat.mean(axis=0)
    flat = flat - center
    _, _, Vt = np.linalg.svd(flat, full_matrices=False)
    pcs = Vt[:n_pcs].T
    pcs = pcs * np.sign(pcs[np.argmax(np.abs(pcs), axis=0), np.arange(n_pcs)])
    z = (flat @ pcs).reshape(n_cond, n_t, n_pcs)
    # 4. Derivatives and states.
    dz = np.diff(z, axis=1) / dt
    zs = z[:, :-1] if state == "earlier" else 0.5 * (z[:, :-1] + z[:, 1:])
    X = zs.reshape(-1, n_pcs)
    dX = dz.reshape(-1, n_pcs)
    # 5. Fits.
    m_best = fit_m_best(X, dX)
    m_skew = fit_m_skew(X, dX)
    # 6. Planes, oriented; eigenvalues ±iω.
    planes_pca, omega = _skew_planes(m_skew)
    samples = z.reshape(-1, n_pcs)
    planes_pca = np.stack([_orient_plane(Q, z[:, 0], samples) for Q in planes_pca])
    eigenvalues = np.stack([1j * omega, -1j * omega], axis=1).reshape(-1)
    planes = pcs @ planes_pca
    projection = z @ planes_pca[0]
    total = float(np.sum(flat**2))
    var_cap = float(np.sum(projection**2)) / total if total > 0 else float("nan")
    return JPCAResult(
        m_skew=m_skew,
        m_best=m_best,
        r2_skew=_r2(X, dX, m_skew),
        r2_best=_r2(X, dX, m_best),
        eigenvalues=eigenvalues,
        frequencies_hz=omega / (2.0 * np.pi),
        planes=planes,
        planes_pca=planes_pca,
        projection=projection,
        pcs=pcs,
        variance_captured=var_cap,
        norm_factors=norm,
        cross_condition_mean=ccm[idx],
        center=center,
        times=idx,
        dt=float(dt),
        state=state,
    )


def rotation_frequency_hz(result: JPCAResult) -> float:
    """Frequency (Hz) of the first jPC plane: the largest ``|eigenvalue|`` of ``M_skew``."""
    return float(result.frequencies_hz[0])
