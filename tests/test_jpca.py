"""jPCA checked against planted rotations and independent least-squares solutions."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg

from lfads_jslds.analysis.eigen import principal_angles
from lfads_jslds.analysis.jpca import (
    fit_m_best,
    fit_m_skew,
    jpca,
    rotation_frequency_hz,
    window_bins,
)
from lfads_jslds.pipeline.analyze import condition_jpca


def _rot(theta):
    c, s = np.cos(theta), np.sin(theta)
    return np.array([[c, -s], [s, c]])


def _random_skew(k, rng, scale=10.0):
    A = rng.normal(size=(k, k)) * scale
    return 0.5 * (A - A.T)


# ---------------------------------------------------------------- planted rotation


def _planted_rosette(seed=0, f0=2.0, dt=0.01, n_cond=8, n_time=50, dim=10, noise=0.005):
    """Rotation at f0 in a random plane P, a decaying mode along u ⟂ P, white noise."""
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.normal(size=(dim, 3)))
    P, u = basis[:, :2], basis[:, 2]
    t = np.arange(n_time) * dt
    phase0 = 2 * np.pi * np.arange(n_cond) / n_cond + rng.uniform(-0.2, 0.2, n_cond)
    radius = rng.uniform(0.8, 1.2, n_cond)
    # Decay amplitudes orthogonal (across conditions) to 1, r cos φ, r sin φ: the decay
    # is then uncorrelated with the rotation at every time, dXᵀX and XᵀX have no
    # plane-u cross terms, and without noise the skew fit's plane is exactly P.
    # (Correlated amplitudes tilt it by a few degrees: a real bias, not tested here.)
    W = np.stack([np.ones(n_cond), radius * np.cos(phase0), radius * np.sin(phase0)], axis=1)
    amp = rng.normal(size=n_cond)
    amp -= W @ np.linalg.lstsq(W, amp, rcond=None)[0]
    amp *= np.sqrt(n_cond) / np.linalg.norm(amp)
    rot = np.stack(
        [
            radius[:, None] * np.cos(phase0[:, None] + 2 * np.pi * f0 * t),
            radius[:, None] * np.sin(phase0[:, None] + 2 * np.pi * f0 * t),
        ],
        axis=-1,
    )
    decay = amp[:, None] * np.exp(-t / 0.2)  # τ = 0.2 s, no rotation
    x = rot @ P.T + decay[..., None] * u + noise * rng.normal(size=(n_cond, n_time, dim))
    return x, P


def test_planted_rotation_frequency_plane_and_orientation():
    f0, dt = 2.0, 0.01
    x, P = _planted_rosette(f0=f0, dt=dt)
    res = jpca(x, dt)
    k = 6
    assert res.m_skew.shape == res.m_best.shape == (k, k)
    assert res.frequencies_hz.shape == (k // 2,) and res.eigenvalues.shape == (k,)
    assert res.planes.shape == (k // 2, 10, 2) and res.planes_pca.shape == (k // 2, k, 2)
    assert res.projection.shape == (8, 50, 2) and res.pcs.shape == (10, k)
    assert res.dt == dt and res.state == "earlier"

    # Forward differences on the earlier sample read sin(ωΔt)/Δt: -(ωΔt)²/6 = -0.26 % here.
    assert rotation_frequency_hz(res) == res.frequencies_hz[0]
    np.testing.assert_allclose(rotation_frequency_hz(res), f0, rtol=0.02)
    theta = 2 * np.pi * f0 * dt
    f_fd = np.sin(theta) / (2 * np.pi * dt)  # 1.9947 Hz
    np.testing.assert_allclose(rotation_frequency_hz(res), f_fd, rtol=2e-3)
    assert res.r2_skew > 0.9 and res.r2_best >= res.r2_skew
    assert np.all(np.diff(res.frequencies_hz) <= 0) and np.all(res.frequencies_hz >= 0)
    assert np.degrees(principal_angles(res.planes[0], P)).max() < 1.0  # noise only
    x0, P0 = _planted_rosette(f0=f0, dt=dt, noise=0.0)
    np.testing.assert_allclose(principal_angles(jpca(x0, dt).planes[0], P0), 0, atol=1e-7)
    # Variance in the first plane ≈ variance of the (cross-condition-centred) data in P.
    xc = x - x.mean(axis=0)
    in_p = np.sum((xc @ P) ** 2) / np.sum(xc**2)  # ≈ 1.01 / (1.01 + 0.2): rotation vs decay
    np.testing.assert_allclose(res.variance_captured, in_p, rtol=1e-3)

    # Eigenvalues are ±iω of m_skew, in its spectrum, +iω first.
    omega = 2 * np.pi * res.frequencies_hz
    np.testing.assert_allclose(res.eigenvalues[::2], 1j * omega, atol=0)
    np.testing.assert_allclose(res.eigenvalues[1::2], -1j * omega, atol=0)
    lam = np.linalg.eigvals(res.m_skew)  # LAPACK's, with round-off real parts
    np.testing.assert_allclose(lam.real, 0, atol=1e-12 * omega[0])
    np.testing.assert_allclose(
        np.sort(lam.imag), np.sort(res.eigenvalues.imag), atol=1e-12 * omega[0]
    )

    for j in range(k // 2):
        Q = res.planes_pca[j]
        np.testing.assert_allclose(Q.T @ Q, np.eye(2), atol=1e-12)
        np.testing.assert_allclose(res.planes[j].T @ res.planes[j], np.eye(2), atol=1e-12)
        # Counter-clockwise: restricted M_skew = [[0, -ω], [ω, 0]], ω >= 0.
        np.testing.assert_allclose(
            Q.T @ res.m_skew @ Q, omega[j] * _rot(np.pi / 2), atol=1e-10 * omega[0]
        )
    np.testing.assert_allclose(res.planes, res.pcs @ res.planes_pca, atol=1e-14)

    # The rosette turns CCW: z × dz > 0 for every condition on average.
    p = res.projection
    cross = p[:, :-1, 0] * np.diff(p[:, :, 1], axis=1) - p[:, :-1, 1] * np.diff(p[:, :, 0], axis=1)
    assert (cross.mean(axis=1) > 0).all()
    # Starting points spread along axis 0; largest |axis 1| excursion is positive.
    start = p[:, 0] - p[:, 0].mean(axis=0)
    cov = start.T @ start
    assert cov[0, 0] >= cov[1, 1] and abs(cov[0, 1]) < 1e-9 * cov[0, 0]
    a1 = p[..., 1].ravel()
    assert a1[np.argmax(np.abs(a1))] > 0

    # -x is x turned by π in every plane: same picture once axis 1's largest excursion is
    # made positive (exactly one of x, -x needs that turn).
    neg = jpca(-x, dt)
    np.testing.assert_allclose(neg.projection, res.projection, atol=1e-10)
    np.testing.assert_allclose(neg.frequencies_hz, res.frequencies_hz, rtol=1e-10)

    # The stored preprocessing reproduces the projection.
    again = (x[:, res.times] / res.norm_factors - res.cross_condition_mean) - res.center
    np.testing.assert_allclose(again @ res.planes[0], res.projection, atol=1e-12)


@pytest.mark.parametrize("state", ["earlier", "midpoint"])
def test_sampled_rotation_exact_frequency_per_state_convention(state):
    # Evenly spaced starts on a circle make Σ x xᵀ ∝ I, so the skew fit is exactly the
    # skew part of M_best. Earlier sample: M_best = (R(θ) - I)/Δt, ω = sin θ / Δt and
    # R²_skew = 1 - (1 - cos θ)/2. Midpoint: M = (2/Δt) tan(θ/2) J (Cayley), exactly skew.
    f0, dt, n_cond, n_time = 2.0, 0.01, 6, 40
    theta = 2 * np.pi * f0 * dt
    starts = np.stack([_rot(2 * np.pi * c / n_cond) @ [1.0, 0.0] for c in range(n_cond)])
    x2 = np.stack(
        [[np.linalg.matrix_power(_rot(theta), n) @ s for n in range(n_time)] for s in starts]
    )
    E, _ = np.linalg.qr(np.random.default_rng(1).normal(size=(5, 2)))
    res = jpca(x2 @ E.T, dt, n_pcs=2, state=state)
    if state == "earlier":
        f_expected, r2_expected = np.sin(theta) / dt, 1 - (1 - np.cos(theta)) / 2
    else:
        f_expected, r2_expected = 2 * np.tan(theta / 2) / dt, 1.0
    np.testing.assert_allclose(rotation_frequency_hz(res), f_expected / (2 * np.pi), rtol=1e-12)
    np.testing.assert_allclose(res.r2_skew, r2_expected, rtol=1e-12)
    np.testing.assert_allclose(res.r2_best, 1.0, rtol=1e-12)
    np.testing.assert_allclose(principal_angles(res.planes[0], E), 0, atol=1e-7)
    np.testing.assert_allclose(res.variance_captured, 1.0, rtol=1e-12)


# ---------------------------------------------------------------- the skew fit


def test_fit_m_skew_matches_brute_force_and_sylvester():
    rng = np.random.default_rng(2)
    n, k = 200, 6
    X = rng.normal(size=(n, k)) @ rng.normal(size=(k, k))  # anisotropic covariance
    dX = rng.normal(size=(n, k))  # no skew M fits: the constraint binds
    S = fit_m_skew(X, dX)
    np.testing.assert_array_equal(S, -S.T)

    # (a) Brute force: design matrix built column by column from E_ij - E_ji.
    pairs = [(i, j) for i in range(k) for j in range(i + 1, k)]
    cols = []
    for i, j in pairs:
        B = np.zeros((k, k))
        B[i, j], B[j, i] = 1.0, -1.0
        cols.append((X @ B.T).ravel())
    theta, *_ = np.linalg.lstsq(np.stack(cols, axis=1), dX.ravel(), rcond=None)
    S_bf = np.zeros((k, k))
    for (i, j), th in zip(pairs, theta, strict=True):
        S_bf[i, j], S_bf[j, i] = th, -th
    np.testing.assert_allclose(S, S_bf, atol=1e-12 * np.abs(S_bf).max())

    # (b) Stationarity projected on skew matrices: S C + C S = D - Dᵀ, D = dXᵀX, C = XᵀX.
    C, D = X.T @ X, dX.T @ X
    S_syl = scipy.linalg.solve_sylvester(C, C, D - D.T)
    np.testing.assert_allclose(S, S_syl, atol=1e-10 * np.abs(S_syl).max())

    # M_best is the ordinary least-squares solution; no skew matrix beats S.
    np.testing.assert_allclose(fit_m_best(X, dX).T, np.linalg.lstsq(X, dX, rcond=None)[0])
    loss = lambda M: np.sum((dX - X @ M.T) ** 2)  # noqa: E731
    for _ in range(5):
        assert loss(S + 1e-3 * _random_skew(k, rng, 1.0)) > loss(S)


def _exact_linear(M, dt, n_cond=8, n_time=30, seed=3):
    """x[t+1] = (I + Δt M) x[t]: forward differences on the earlier sample are exactly M x."""
    rng = np.random.default_rng(seed)
    A = np.eye(M.shape[0]) + dt * M
    x = np.empty((n_cond, n_time, M.shape[0]))
    x[:, 0] = rng.normal(size=(n_cond, M.shape[0]))
    for t in range(1, n_time):
        x[:, t] = x[:, t - 1] @ A.T
    return x


def test_exact_skew_dynamics_recovered_and_best_equals_skew():
    rng = np.random.default_rng(4)
    k, dt = 6, 0.01
    M = _random_skew(k, rng)  # |ω| ~ 10–30 rad/s
    x = _exact_linear(M, dt)
    # Cross-condition mean removal is linear, so dX = X Mᵀ survives it (grand mean 0).
    res = jpca(x, dt, n_pcs=k)
    V = res.pcs  # square and orthogonal: PCA is a change of basis
    np.testing.assert_allclose(V @ res.m_skew @ V.T, M, atol=1e-8)
    np.testing.assert_allclose(V @ res.m_best @ V.T, M, atol=1e-8)
    np.testing.assert_allclose(res.m_skew, res.m_best, atol=1e-8)
    np.testing.assert_allclose(res.r2_skew, res.r2_best, atol=1e-12)
    np.testing.assert_allclose(res.r2_skew, 1.0, atol=1e-12)
    w = np.sort(np.abs(np.linalg.eigvals(M).imag))[::-1][::2]
    np.testing.assert_allclose(res.frequencies_hz, w / (2 * np.pi), rtol=1e-9)


def test_pure_decay_is_not_rotational():
    dt = 0.01
    # One rate: dXᵀX = -a XᵀX is symmetric, so the best skew fit is exactly 0.
    res = jpca(_exact_linear(-5.0 * np.eye(6), dt), dt)
    np.testing.assert_allclose(res.m_skew, 0, atol=1e-10)
    assert abs(res.r2_skew) < 1e-12 and res.r2_best > 1 - 1e-12
    np.testing.assert_allclose(res.frequencies_hz, 0, atol=1e-10)
    # Several rates in a random basis (symmetric M): little to explain with rotations.
    rng = np.random.default_rng(5)
    Q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    M = Q @ np.diag([-2.0, -4.0, -6.0, -8.0, -10.0, -12.0]) @ Q.T
    res = jpca(_exact_linear(M, dt), dt)
    assert res.r2_skew < 0.1 and res.r2_best > 1 - 1e-9


# ---------------------------------------------------------------- options


def test_times_and_soft_normalization_options():
    x, _ = _planted_rosette(seed=6)
    dt = 0.01
    sub = jpca(x, dt, times=slice(5, 40))
    cut = jpca(x[:, 5:40], dt)
    np.testing.assert_array_equal(sub.times, np.arange(5, 40))
    np.testing.assert_allclose(sub.projection, cut.projection, atol=1e-10)
    np.testing.assert_allclose(sub.frequencies_hz, cut.frequencies_hz, rtol=1e-10)
    same = jpca(x, dt, times=np.arange(5, 40))
    np.testing.assert_allclose(same.m_skew, sub.m_skew, atol=0)

    # Soft normalisation divides each dim by range (all conditions, all times) + constant.
    scale = np.linspace(1.0, 20.0, x.shape[-1])
    xs = x * scale
    norm = np.ptp(xs.reshape(-1, x.shape[-1]), axis=0) + 5.0
    a = jpca(xs, dt, soft_normalize=True)
    b = jpca(xs / norm, dt)
    np.testing.assert_allclose(a.norm_factors, norm, rtol=1e-14)
    np.testing.assert_allclose(a.m_skew, b.m_skew, atol=1e-9)
    np.testing.assert_allclose(a.projection, b.projection, atol=1e-12)

    # Without mean subtraction nothing is subtracted per time, and dX has a mean (a common
    # drift here), so R² about zero (the paper's) differs from R² about the mean.
    drift = 3.0 * np.arange(x.shape[1])[:, None] * dt * np.linspace(-1, 1, x.shape[-1])
    c = jpca(x + drift, dt, subtract_cross_condition_mean=False)
    np.testing.assert_array_equal(c.cross_condition_mean, 0.0)
    z = (x + drift - c.center) @ c.pcs
    X, dX = z[:, :-1].reshape(-1, 6), (np.diff(z, axis=1) / dt).reshape(-1, 6)
    sse = np.sum((dX - X @ c.m_skew.T) ** 2)
    np.testing.assert_allclose(c.r2_skew, 1 - sse / np.sum(dX**2), rtol=1e-10)
    assert abs(c.r2_skew - (1 - sse / np.sum((dX - dX.mean(axis=0)) ** 2))) > 1e-3


# ---------------------------------------------------------------- window around movement onset

MC_MAZE = {"bin_ms": 20, "window_ms": np.array([-250, 450]), "align_field": "move_onset_time"}


def test_window_bins_are_the_bins_wholly_inside_the_window():
    # Bin i spans [w0 + 20 i, w0 + 20 (i + 1)) ms: -50 is the start of bin 10 and +150
    # the end of bin 19; at 5 ms, of bins 40 and 79.
    assert window_bins((-50, 150), (-250, 450), 20) == slice(10, 20)
    assert window_bins((-50, 150), (-250, 450), 5) == slice(40, 80)
    assert window_bins((-250, 450), (-250, 450), 20) == slice(0, 35)
    # Edges inside bins: bins starting at -240 + 20 i; the first wholly inside [-50, 150]
    # is bin 10 ([-40, -20)), the last bin 18 ([120, 140)).
    assert window_bins((-50, 150), (-240, 460), 20) == slice(10, 19)
    with pytest.raises(ValueError, match=r"not inside the data's window_ms \[-80, 80\]"):
        window_bins((-50, 150), (-80, 80), 20)
    with pytest.raises(ValueError, match="start must come before"):
        window_bins((100, 50), (-250, 450), 20)
    with pytest.raises(ValueError, match="1 whole bins of 20 ms"):
        window_bins((0, 30), (-250, 450), 20)  # [0, 30] holds only the bin [10, 30) whole


def _rotation_inside_junk_outside(f0=3.0, dt=0.02, n_time=35, inside=slice(10, 20), seed=0):
    """Factors ``[trial, time, 2]`` of 4 conditions (2 identical trials each).

    Inside ``inside``: a pure rotation at ``f0``, the conditions' phases a quarter turn
    apart (so the cross-condition mean is 0 and the states are isotropic); outside: noise.
    """
    rng = np.random.default_rng(seed)
    theta = 2 * np.pi * f0 * dt
    x = rng.normal(size=(4, n_time, 2))
    k = np.arange(inside.stop - inside.start)
    phase = np.pi / 2 * np.arange(4)[:, None] + theta * k
    x[:, inside] = np.stack([np.cos(phase), np.sin(phase)], -1)
    return np.repeat(x, 2, axis=0), np.repeat(np.arange(4), 2), theta


def test_condition_jpca_analyses_exactly_the_bins_from_50_ms_before_to_150_after_onset():
    factors, condition, theta = _rotation_inside_junk_outside()
    jp, summary = condition_jpca(factors, condition, MC_MAZE)
    np.testing.assert_array_equal(jp.times, np.arange(10, 20))
    # x[t+1] = R x[t] exactly in the window: the free fit is (R − I)/Δt (R² = 1) and, the
    # states being isotropic, the skew fit its skew part: ω = sin θ / Δt.
    assert jp.r2_best == pytest.approx(1.0, abs=1e-12)
    assert summary["rotation_hz"] == pytest.approx(np.sin(theta) / (2 * np.pi * 0.02), rel=1e-9)
    assert summary["window_ms"] == [-50.0, 150.0] and summary["bins"] == [10, 20]
    assert summary["bins_ms"] == [-50.0, 150.0] and summary["align_field"] == "move_onset_time"
    assert summary["source"].startswith("default")
    # The whole 700 ms (what analyze used before) mixes in the noise.
    assert jpca(factors[::2], 0.02, n_pcs=2).r2_best < 0.5


def test_condition_jpca_window_the_data_do_not_cover():
    factors, condition, _ = _rotation_inside_junk_outside(n_time=8, inside=slice(1, 7))
    short = {"bin_ms": 20, "window_ms": [-80, 80], "align_field": "move_onset_time"}
    jp, summary = condition_jpca(factors, condition, short)  # the default: skipped, saying why
    assert jp is None and "not inside the data's window_ms [-80, 80]" in summary["skipped"]
    with pytest.raises(ValueError, match="not inside"):  # asked for: refused
        condition_jpca(factors, condition, short, (-50, 150))
    jp, summary = condition_jpca(factors, condition, short, (-60, 60))
    np.testing.assert_array_equal(jp.times, np.arange(1, 7))
    assert summary["source"] == "--jpca-window" and summary["bins_ms"] == [-60.0, 60.0]


def test_bad_input_errors():
    x, _ = _planted_rosette(n_time=20)
    with pytest.raises(ValueError, match="x must be"):
        jpca(x[0], 0.01)
    with pytest.raises(ValueError, match="2 conditions"):
        jpca(x[:1], 0.01)
    with pytest.raises(ValueError, match="n_pcs must be even"):
        jpca(x, 0.01, n_pcs=5)
    with pytest.raises(ValueError, match="n_pcs must be even"):
        jpca(x, 0.01, n_pcs=0)
    with pytest.raises(ValueError, match="exceeds dim"):
        jpca(x, 0.01, n_pcs=12)
    bad = x.copy()
    bad[1, 2, 3] = np.nan
    with pytest.raises(ValueError, match="x contains NaN"):
        jpca(bad, 0.01)
    with pytest.raises(ValueError, match="dt"):
        jpca(x, 0.0)
    with pytest.raises(ValueError, match="times"):
        jpca(x, 0.01, times=np.array([0, 1, 3]))
    with pytest.raises(ValueError, match="times"):
        jpca(x, 0.01, times=slice(3, 4))
    with pytest.raises(ValueError, match="samples"):
        jpca(x[:2], 0.01, times=slice(0, 3))  # 2 × 2 differences < 6
    with pytest.raises(ValueError, match="state"):
        jpca(x, 0.01, state="later")
    with pytest.raises(ValueError, match="X and dX"):
        fit_m_skew(np.zeros((5, 2)), np.zeros((5, 3)))
