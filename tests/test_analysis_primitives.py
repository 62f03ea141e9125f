"""Post-hoc analysis primitives checked against planted answers (float64, see conftest)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from lfads_jslds.analysis.eigen import (
    EIG_SORT,
    continuous_time_matrix,
    discrete_to_continuous,
    eig_modes,
    principal_angles,
    rotation_plane,
)
from lfads_jslds.analysis.fixed_points import deduplicate, find_fixed_points
from lfads_jslds.analysis.jacobians import jacobians

# ---------------------------------------------------------------- Jacobians


def _tanh_rnn(seed=0, n=6, m=3):
    rng = np.random.default_rng(seed)
    W = rng.normal(size=(n, n)) / np.sqrt(n)
    U = rng.normal(size=(n, m))
    b = rng.normal(size=n) * 0.1

    def F(h, u):
        return jnp.tanh(W @ h + U @ u + b)

    return F, W, U, b


def test_jacobians_match_central_differences_and_analytic():
    F, W, U, b = _tanh_rnn()
    n, m = U.shape
    rng = np.random.default_rng(1)
    h = rng.normal(size=(10, n))
    u = rng.normal(size=(10, m))
    J_h, J_u = jacobians(F, h, u)
    assert J_h.shape == (10, n, n) and J_u.shape == (10, n, m)
    assert J_h.dtype == np.float64 and J_u.dtype == np.float64

    # Analytic: d tanh(z) = (1 - tanh²z) dz.
    s = 1.0 - np.tanh(h @ W.T + u @ U.T + b) ** 2  # [point, n]
    np.testing.assert_allclose(J_h, s[:, :, None] * W, rtol=0, atol=1e-13)
    np.testing.assert_allclose(J_u, s[:, :, None] * U, rtol=0, atol=1e-13)

    # Central differences: truncation ε²|F'''|/6 ~ 1e-10, round-off 1e-16/ε ~ 1e-11.
    eps = 1e-5
    Fj = jax.jit(F)
    Fn = lambda h, u: np.asarray(Fj(h, u))  # noqa: E731
    for p in range(3):
        fd_h = np.stack(
            [(Fn(h[p] + eps * e, u[p]) - Fn(h[p] - eps * e, u[p])) / (2 * eps) for e in np.eye(n)],
            axis=1,
        )
        fd_u = np.stack(
            [(Fn(h[p], u[p] + eps * e) - Fn(h[p], u[p] - eps * e)) / (2 * eps) for e in np.eye(m)],
            axis=1,
        )
        np.testing.assert_allclose(J_h[p], fd_h, rtol=0, atol=1e-8)
        np.testing.assert_allclose(J_u[p], fd_u, rtol=0, atol=1e-8)


def test_jacobians_chunking_and_broadcast_input():
    F, W, U, b = _tanh_rnn(seed=2)
    n, m = U.shape
    rng = np.random.default_rng(3)
    h = rng.normal(size=(10, n))
    u = rng.normal(size=(10, m))
    big = jacobians(F, h, u, chunk_size=1024)
    small = jacobians(F, h, u, chunk_size=3)  # 4 chunks, the last one padded
    for a, c in zip(big, small, strict=True):  # equal up to batched-matmul rounding
        np.testing.assert_allclose(a, c, rtol=0, atol=1e-14)
    # Chunks must map to the right points (not e.g. all the padded last point).
    s = 1.0 - np.tanh(h @ W.T + u @ U.T + b) ** 2
    np.testing.assert_allclose(small[0], s[:, :, None] * W, atol=1e-13)

    # u: [m] is broadcast to every point.
    J_h, J_u = jacobians(F, h, u[0], chunk_size=4)
    J_h_ref, J_u_ref = jacobians(F, h, np.repeat(u[:1], 10, axis=0))
    np.testing.assert_allclose(J_h, J_h_ref, atol=1e-15)
    np.testing.assert_allclose(J_u, J_u_ref, atol=1e-15)


def test_jacobians_keep_float32():
    F, _, U, _ = _tanh_rnn()
    h = np.zeros((2, U.shape[0]), np.float32)
    u = np.zeros((U.shape[1],), np.float32)
    F32 = lambda h, u: F(h, u).astype(h.dtype)  # noqa: E731 (params are float64)
    J_h, J_u = jacobians(F32, h, u)
    assert J_h.dtype == np.float32 and J_u.dtype == np.float32


# ---------------------------------------------------------------- eigenmodes


def _planted(seed=0):
    r, theta = 0.9, 0.3
    lam = np.array([r * np.exp(1j * theta), r * np.exp(-1j * theta), 0.95, -0.5, 0.2])
    rng = np.random.default_rng(seed)
    # Real matrix with that spectrum: block-diag real form, random real basis.
    B = np.zeros((5, 5))
    B[:2, :2] = r * np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    B[2, 2], B[3, 3], B[4, 4] = 0.95, -0.5, 0.2
    S = rng.normal(size=(5, 5))
    J = S @ B @ np.linalg.inv(S)
    return J, lam, S


def test_eig_modes_recovers_planted_spectrum_sorted():
    J, lam, _ = _planted()
    modes = eig_modes(J)
    assert modes.sort == EIG_SORT == "abs_desc"
    expected = np.array([0.95, 0.9 * np.exp(0.3j), 0.9 * np.exp(-0.3j), -0.5, 0.2])
    np.testing.assert_allclose(modes.eigenvalues, expected, atol=1e-12)
    V, W, L = modes.right, modes.left, np.diag(modes.eigenvalues)
    np.testing.assert_allclose(J @ V, V @ L, atol=1e-12)
    np.testing.assert_allclose(W @ J, L @ W, atol=1e-12)
    np.testing.assert_allclose(W @ V, np.eye(5), atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(V, axis=0), 1.0, atol=1e-12)


def test_eig_modes_batched_and_tie_order():
    J, _, _ = _planted()
    D = np.diag([0.5, -0.5, 0.5j, -0.5j, 0.1]).astype(complex)  # four-way |λ| tie
    modes = eig_modes(np.stack([J, J.T]))
    assert modes.eigenvalues.shape == (2, 5) and modes.right.shape == (2, 5, 5)
    for b, Jb in enumerate([J, J.T]):
        V, W = modes.right[b], modes.left[b]
        np.testing.assert_allclose(Jb @ V, V * modes.eigenvalues[b], atol=1e-12)
        np.testing.assert_allclose(W @ V, np.eye(5), atol=1e-12)
    ties = eig_modes(D).eigenvalues
    # |λ| desc, then |angle| asc (0, π/2, π/2, π), Im > 0 before Im < 0.
    np.testing.assert_allclose(ties, [0.5, 0.5j, -0.5j, -0.5, 0.1], atol=1e-15)


def test_discrete_to_continuous_planted_values():
    f, dt = 2.0, 0.01
    theta = 2 * np.pi * f * dt
    lam = np.array([0.9 * np.exp(1j * theta), 0.9 * np.exp(-1j * theta)])
    c = discrete_to_continuous(lam, dt)
    np.testing.assert_allclose(c.freq_hz, [2.0, 2.0], rtol=1e-12)
    np.testing.assert_allclose(c.tau_s, -0.01 / np.log(0.9), rtol=1e-12)
    np.testing.assert_allclose(c.half_life_s, -0.01 / np.log(0.9) * np.log(2), rtol=1e-12)
    # Half-life means what it says: r^(t/dt) = 1/2 at t = half-life.
    np.testing.assert_allclose(0.9 ** (c.half_life_s / dt), 0.5, rtol=1e-12)
    assert c.stable.all()

    edge = discrete_to_continuous(np.array([0.5, 1.0, 0.0, -0.5, 1.1 + 0j, -1.0]), dt)
    for arr in edge:
        assert not np.isnan(arr).any()
    np.testing.assert_allclose(edge.freq_hz, [0, 0, 0, 50.0, 0, 50.0], rtol=1e-12)  # Nyquist
    assert edge.tau_s[1] == np.inf and edge.tau_s[5] == np.inf  # |λ| = 1: marginal
    assert edge.tau_s[2] == 0.0  # λ = 0: gone in one step
    np.testing.assert_allclose(edge.tau_s[[0, 3]], -dt / np.log(0.5), rtol=1e-12)
    assert edge.tau_s[4] < 0  # growth: -tau is the e-folding growth time
    np.testing.assert_allclose(-edge.tau_s[4], dt / np.log(1.1), rtol=1e-12)
    np.testing.assert_array_equal(edge.stable, [True, False, True, True, False, False])
    with pytest.raises(ValueError):
        discrete_to_continuous(lam, 0.0)


def test_continuous_time_matrix_inverts_expm_and_agrees_with_eigen_reading():
    dt = 0.01
    rng = np.random.default_rng(4)
    A = rng.normal(size=(4, 4)) * 3.0 - 5.0 * np.eye(4)  # rates well below Nyquist
    J = scipy.linalg.expm(A * dt)
    A_hat = continuous_time_matrix(J, dt)
    np.testing.assert_allclose(A_hat, A, atol=1e-9)
    np.testing.assert_allclose(continuous_time_matrix(np.stack([J, J]), dt)[1], A, atol=1e-9)
    # (J - I)/dt is measurably biased at this dt.
    assert np.abs((J - np.eye(4)) / dt - A).max() > 1e-2
    # Continuous eigenvalues μ = -1/τ ± 2πi f.
    mu = np.linalg.eigvals(A)
    c = discrete_to_continuous(np.linalg.eigvals(J), dt)
    np.testing.assert_allclose(np.sort(-1 / c.tau_s), np.sort(mu.real), atol=1e-9)
    np.testing.assert_allclose(np.sort(2 * np.pi * c.freq_hz), np.sort(np.abs(mu.imag)), atol=1e-9)


def test_rotation_plane_spans_planted_plane_and_principal_angles():
    J, _, S = _planted(seed=5)
    modes = eig_modes(J)
    k = int(np.flatnonzero(modes.eigenvalues.imag > 0)[0])
    P = rotation_plane(modes.right[:, k])
    assert P.shape == (5, 2)
    np.testing.assert_allclose(P.T @ P, np.eye(2), atol=1e-12)
    # The planted rotation lives in span of the first two columns of S.
    np.testing.assert_allclose(principal_angles(P, S[:, :2]), [0, 0], atol=1e-7)
    # Independent of the eigenvector's phase.
    P2 = rotation_plane(np.exp(0.7j) * modes.right[:, k])
    np.testing.assert_allclose(principal_angles(P, P2), [0, 0], atol=1e-7)
    # And not some other plane.
    assert principal_angles(P, S[:, 2:4]).max() > 0.1

    E = np.eye(5)
    ang = principal_angles(E[:, :2], E[:, 2:4])
    np.testing.assert_allclose(ang, [np.pi / 2, np.pi / 2], atol=1e-12)
    ang = principal_angles(E[:, :2], np.stack([E[:, 0], E[:, 1] + E[:, 2]], axis=1))
    np.testing.assert_allclose(ang, [0, np.pi / 4], atol=1e-12)  # ascending
    with pytest.raises(ValueError):
        rotation_plane(np.array([1.0, 2.0, 0.0]) * (1 + 1j))  # Re ∥ Im: no plane


# ---------------------------------------------------------------- fixed points


def _cubic_map(h, u):
    """h + 0.1 (h − h³) per coordinate: fixed points at {−1, 0, 1}², 9 of them."""
    return h + 0.1 * (h - h**3) + 0.0 * jnp.sum(u)


PLANTED = np.array([[a, b] for a in (-1.0, 0.0, 1.0) for b in (-1.0, 0.0, 1.0)])


def _match(found, planted):
    d = np.linalg.norm(found[:, None, :] - planted[None, :, :], axis=-1)
    return d.min(axis=1), d.min(axis=0)


# Adam alone: 3000 steps reach round-off here. Newton: after only 200 Adam steps (kept
# with a loose q_tol) the points are ~3e-4 off; a few quadratically convergent Newton
# steps must reach 1e-10 (halved steps, say, would not).
@pytest.mark.parametrize(
    "newton, steps, q_tol, tol", [(False, 3000, 1e-6, 1e-5), (True, 200, 1e-3, 1e-10)]
)
def test_find_fixed_points_recovers_planted_set(newton, steps, q_tol, tol):
    rng = np.random.default_rng(0)
    h_init = rng.uniform(-1.5, 1.5, size=(256, 2))
    fp = find_fixed_points(
        _cubic_map,
        h_init,
        np.zeros(1),
        steps=steps,
        q_tol=q_tol,
        newton_polish=newton,
        dedup_tol=0.1,
    )
    assert fp.points.shape == (9, 2)
    assert fp.n_candidates == 256 and fp.candidates.shape == (256, 2)
    assert fp.n_converged == 256  # no spurious minima in this system
    to_planted, from_planted = _match(fp.points, PLANTED)
    assert to_planted.max() < tol and from_planted.max() < tol
    assert (fp.q < 1e-6).all()
    assert np.all(np.diff(fp.q) >= 0)  # slowest first
    assert fp.points.dtype == np.float64


def test_find_fixed_points_progress_runs_the_same_iterates():
    """With a progress bar the Adam scan runs in pieces (1003 steps: 19 of 51, then 34);
    each piece continues the optimiser state, so every candidate is bit for bit the
    one-scan result."""
    h_init = np.random.default_rng(1).uniform(-1.5, 1.5, size=(64, 2))
    whole = find_fixed_points(_cubic_map, h_init, np.zeros(1), steps=1003, dedup_tol=0.1)
    parts = find_fixed_points(
        _cubic_map, h_init, np.zeros(1), steps=1003, dedup_tol=0.1, progress=True
    )
    np.testing.assert_array_equal(parts.candidates, whole.candidates)
    np.testing.assert_array_equal(parts.candidate_q, whole.candidate_q)
    np.testing.assert_array_equal(parts.points, whole.points)


def test_find_fixed_points_drops_slow_points_above_tolerance():
    # F(h) = h + 0.1 (1 + h²) has no fixed point; q has a minimum 0.005 at h = 0 (a ghost).
    F = lambda h, u: h + 0.1 * (1 + h**2)  # noqa: E731
    fp = find_fixed_points(F, np.linspace(-1, 1, 8)[:, None], np.zeros(0), steps=2000)
    assert fp.points.shape == (0, 1) and fp.n_converged == 0
    # Adam crawls in this flat basin (curvature 0.02): close to the ghost, not on it.
    np.testing.assert_allclose(fp.candidate_q, 0.005, rtol=1e-3)
    np.testing.assert_allclose(fp.candidates, 0.0, atol=0.03)


def test_newton_polish_rejects_steps_that_raise_q():
    # g(h) = cbrt(h): a Newton step maps h to -2h and raises q by 2^(2/3); never accept it.
    F = lambda h, u: h + jnp.cbrt(h)  # noqa: E731
    h_init = np.array([-1.0, -0.75, -0.5, 0.5, 0.75, 1.0])[:, None]
    plain = find_fixed_points(F, h_init, np.zeros(0), dedup_tol=0.1)
    polished = find_fixed_points(F, h_init, np.zeros(0), dedup_tol=0.1, newton_polish=True)
    assert plain.points.shape == (1, 1)
    np.testing.assert_array_equal(polished.points, plain.points)
    np.testing.assert_array_equal(polished.q, plain.q)


def test_deduplicate_keeps_slowest_per_cluster():
    rng = np.random.default_rng(1)
    centres = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    pts = np.concatenate([c + 1e-3 * rng.normal(size=(5, 2)) for c in centres])
    q = rng.uniform(1e-9, 1e-7, size=15)
    kept = deduplicate(pts, q, tol=0.05)
    assert len(kept) == 3
    for c in range(3):
        members = np.arange(5 * c, 5 * c + 5)
        assert members[np.argmin(q[members])] in kept
    assert np.all(np.diff(q[kept]) >= 0)
    assert len(deduplicate(pts, q, tol=1e-9)) == 15


@pytest.mark.parametrize("max_points, shown", [(1000, 200), (50, 50)])
def test_eigenvalue_figure_thins_a_crowded_panel(tmp_path, monkeypatch, max_points, shown):
    """A panel draws every eigenvalue up to ``max_points``, else that many of them (each
    one a real eigenvalue), and the title says it was thinned."""
    from matplotlib.collections import PathCollection

    from lfads_jslds.analysis import figures

    rng = np.random.default_rng(0)
    eig = rng.normal(size=(10, 5, 4)) + 1j * rng.normal(size=(10, 5, 4))
    drawn = {}

    def keep(fig, path):
        (coll,) = [c for c in fig.axes[0].collections if isinstance(c, PathCollection)]
        drawn["xy"], drawn["title"] = coll.get_offsets(), fig._suptitle.get_text()
        return path

    monkeypatch.setattr(figures, "_save", keep)
    figures.eigenvalue_spectra(
        eig, np.zeros(10, int), np.arange(5) * 0.02, tmp_path / "e.png", max_points=max_points
    )
    xy = np.asarray(drawn["xy"])
    assert xy.shape == (shown, 2)
    every = {(z.real, z.imag) for z in eig.ravel()}
    assert {tuple(p) for p in xy} <= every
    assert ("at most 50 random points" in drawn["title"]) == (shown < 200)
