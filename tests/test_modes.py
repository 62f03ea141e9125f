"""Per-trial Jacobian modes checked against planted rotations (float64, see conftest)."""

from __future__ import annotations

import json
from dataclasses import fields
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from lfads_jslds.analysis.eigen import EIG_SORT, eig_modes, principal_angles
from lfads_jslds.analysis.modes import (
    _jacobian_fn,
    count_distinct,
    distance_to_nearest,
    fixed_point_residual,
    jacobian_modes,
    previous_states,
    summarize_modes,
    trial_summaries,
)
from lfads_jslds.models.cells import lfads_gru

DT = 0.02  # s
F0, TAU0 = 2.0, 0.4  # Hz, s


def _rot(r: float, theta: float) -> np.ndarray:
    return r * np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])


def _affine_cell(params, h, u):
    """``F(h, u) = e + A (h − e) + B u``: a linear system with fixed point ``e``."""
    return params["e"] + params["A"] @ (h - params["e"]) + params["B"] @ u


def _affine_params(block: np.ndarray, seed: int = 0, m: int = 2):
    """``A = S block S^{-1}`` with a random (non-orthogonal) basis ``S``."""
    rng = np.random.default_rng(seed)
    n = block.shape[0]
    S = rng.normal(size=(n, n)) + 2.0 * np.eye(n)
    params = {
        "A": jnp.asarray(S @ block @ np.linalg.inv(S)),
        "B": jnp.asarray(rng.normal(size=(n, m))),
        "e": jnp.asarray(rng.normal(size=n)),
    }
    return params, S


def _trajectory(prev: np.ndarray) -> dict:
    """``jacobian_modes``'s ``states`` (a_1..a_T) and ``initial`` (a_0) for given a_{t−1}.

    ``prev: [trial, time, n]`` are the states the local systems act on; the last state
    ``a_T`` is never used (here: a copy of ``a_{T−1}``).
    """
    return {"states": np.concatenate([prev[:, 1:], prev[:, -1:]], 1), "initial": prev[:, 0]}


def _no_nan(modes) -> None:
    for f in fields(modes):
        x = getattr(modes, f.name)
        if isinstance(x, np.ndarray):
            assert not np.isnan(x).any(), f.name


# ---------------------------------------------------------------- planted rotation


def _planted():
    r0, th0 = np.exp(-DT / TAU0), 2 * np.pi * F0 * DT
    block = np.zeros((8, 8))
    block[:2, :2] = _rot(r0, th0)  # the planted rotation: 2 Hz, τ = 0.4 s
    block[2:4, 2:4] = _rot(0.99, 2 * np.pi * 5.0 * DT)  # slower pair (5 Hz, |λ| 0.99 > r0)
    block[4, 4], block[5, 5], block[6, 6], block[7, 7] = 0.995, 0.3, -0.2, 0.5  # real modes
    params, S = _affine_params(block)
    n_trial, n_time = 3, 12
    rng = np.random.default_rng(1)
    coords = np.zeros((n_trial, n_time, 8))
    phase = 0.7 * np.arange(n_time)
    coords[..., 0], coords[..., 1] = np.cos(phase), np.sin(phase)  # planted pair, amplitude 1
    coords[..., 2:4] = 0.05 * rng.normal(size=(n_trial, n_time, 2))
    coords[..., 4] = 2.0  # the slow real mode carries *more* of d than the rotation
    coords[..., 5:] = 0.1 * rng.normal(size=(n_trial, n_time, 3))
    coords[1, :5, 2:4] = 3.0  # trial 1, bins 0-4: the slower pair dominates
    points = rng.normal(size=(n_trial, n_time, 8))  # J_h is A at every point
    states = points + coords @ S.T
    return params, S, coords, points, states


def _block_amplitudes(S, coords):
    """Modal amplitudes in block coordinates: pairs (0, 1), (2, 3), then real modes 4…."""
    sn = np.linalg.norm(S, axis=0)
    pair = lambda a, b: np.hypot(coords[..., a], coords[..., b]) * np.hypot(sn[a], sn[b])  # noqa: E731
    n = coords.shape[-1]
    return [pair(0, 1), pair(2, 3)] + [np.abs(coords[..., k]) * sn[k] for k in range(4, n)]


def test_motion_rule_names_the_moving_pair_where_a_slow_pair_holds_the_offset():
    # A slow pair (0.3 Hz, |λ| 0.995) holds 3× the planted pair's deviation but barely
    # moves it: the deviation rule names the slow pair, the motion rule the planted one.
    block = np.zeros((6, 6))
    block[:2, :2] = _rot(np.exp(-DT / TAU0), 2 * np.pi * F0 * DT)
    block[2:4, 2:4] = _rot(0.995, 2 * np.pi * 0.3 * DT)
    block[4, 4], block[5, 5] = 0.9, 0.5
    params, S = _affine_params(block, m=2)
    phase = 0.7 * np.arange(10)
    coords = np.zeros((1, 10, 6))
    coords[..., 0], coords[..., 1] = np.cos(phase), np.sin(phase)
    coords[..., 2], coords[..., 3] = 3.0 * np.cos(0.1 * phase), 3.0 * np.sin(0.1 * phase)
    coords[..., 4:] = 0.1
    points = np.random.default_rng(0).normal(size=(1, 10, 6))
    states = points + coords @ S.T
    amp = _block_amplitudes(S, coords)
    lam0 = np.exp(-DT / TAU0 + 2j * np.pi * F0 * DT)
    lam1 = 0.995 * np.exp(2j * np.pi * 0.3 * DT)
    assert (amp[1] > amp[0]).all()  # the slow pair holds more of d …
    assert (amp[1] * abs(lam1 - 1) < amp[0] * abs(lam0 - 1)).all()  # … and moves it less
    by = {r: jacobian_modes(_affine_cell, params, points, 2, DT, **_trajectory(states), rule=r)
          for r in ("motion", "deviation")}  # fmt: skip
    np.testing.assert_allclose(by["motion"].freq_hz, F0, rtol=1e-9)
    np.testing.assert_allclose(by["motion"].tau_s, TAU0, rtol=1e-9)
    np.testing.assert_allclose(by["deviation"].freq_hz, 0.3, rtol=1e-9)
    for r, m in by.items():
        assert summarize_modes(m)["conventions"]["dominant_rule"] == r
    with pytest.raises(ValueError, match="rule must be one of"):
        jacobian_modes(_affine_cell, params, points, 2, DT, **_trajectory(states), rule="largest")


def _input_driven_trajectory():
    """A JSLDS-like trajectory whose inputs kick a pair that carries nothing of the state.

    ``a_t = e*_t + A (a_{t−1} − e*_t) + B u_t`` with ``e*_t = E(a_{t−1})``: the planted
    2 Hz pair (τ 0.4 s) carries the state; a fast 7 Hz pair (|λ| 0.6) is what the inputs
    drive (``B`` lies in its plane, ``|u_t| = 3``), and ``E`` follows the state within that
    plane (as a trained expansion network follows input-driven directions), so the pair
    holds nothing of ``a_{t−1} − e*_t`` but each fresh kick ``B u_t`` of ``a_t − e*_t``.
    Returns params, S, ``a: [trial, 1 + time, n]`` (``a_0`` first) and ``e*: [trial, time, n]``.
    """
    block = np.zeros((6, 6))
    block[:2, :2] = _rot(np.exp(-DT / TAU0), 2 * np.pi * F0 * DT)
    block[2:4, 2:4] = _rot(0.6, 2 * np.pi * 7.0 * DT)
    block[4, 4], block[5, 5] = 0.9, 0.5
    params, S = _affine_params(block, seed=6)
    params["B"] = jnp.asarray(S[:, 2:4])  # u moves the 7 Hz pair's block coordinates by u
    A, e0 = np.asarray(params["A"]), np.asarray(params["e"])
    follow = S[:, 2:4] @ np.linalg.inv(S)[2:4]  # oblique projector on the kicked plane
    n_trial, n_time = 2, 12
    phase = 1.3 * np.arange(n_time) + np.arange(n_trial)[:, None]
    u = 3.0 * np.stack([np.cos(phase), np.sin(phase)], -1)  # [trial, time, 2]
    a = np.zeros((n_trial, n_time + 1, 6))
    a[:, 0] = (
        e0 + np.array([[1.0, 0.0, 0.5, -0.5, 0.3, 0.2], [0.0, -1.0, 0.2, 0.1, -0.3, 0.4]]) @ S.T
    )
    e_star = np.zeros((n_trial, n_time, 6))
    for t in range(n_time):
        e_star[:, t] = e0 + (a[:, t] - e0) @ follow.T
        a[:, t + 1] = e_star[:, t] + (a[:, t] - e_star[:, t]) @ A.T + u[:, t] @ S[:, 2:4].T
    return params, S, a, e_star


@pytest.mark.parametrize("rule", ["motion", "deviation"])
def test_the_deviation_j_h_acts_on_names_the_pair_carrying_the_state(rule):
    params, S, a, e_star = _input_driven_trajectory()
    lam = {0: np.exp(-DT / TAU0 + 2j * np.pi * F0 * DT), 1: 0.6 * np.exp(2j * np.pi * 7.0 * DT)}
    scale = {k: abs(v - 1) if rule == "motion" else 1.0 for k, v in lam.items()}
    inv = np.linalg.inv(S)
    # By hand, in block coordinates: a_t − e*_t (the old choice) is dominated by the kicked
    # 7 Hz pair at every bin, a_{t−1} − e*_t holds none of it.
    amp_old = _block_amplitudes(S, (a[:, 1:] - e_star) @ inv.T)
    assert (amp_old[1] * scale[1] > amp_old[0] * scale[0]).all()
    d = a[:, :-1] - e_star
    coords = d @ inv.T
    np.testing.assert_allclose(coords[..., 2:4], 0.0, atol=1e-12)
    amp = _block_amplitudes(S, coords)
    weight = [x * (abs(v - 1) if rule == "motion" else 1.0)
              for x, v in zip(amp, [lam[0], lam[1], 0.9, 0.5], strict=True)]  # fmt: skip

    modes = jacobian_modes(
        _affine_cell, params, e_star, 2, DT, states=a[:, 1:], initial=a[:, 0], rule=rule
    )
    np.testing.assert_allclose(modes.freq_hz, F0, rtol=1e-9)
    np.testing.assert_allclose(modes.tau_s, TAU0, rtol=1e-9)
    np.testing.assert_allclose(modes.amplitude, amp[0], rtol=1e-9)
    np.testing.assert_allclose(modes.share, weight[0] / sum(weight), rtol=1e-9)
    np.testing.assert_allclose(modes.deviation_norm, np.linalg.norm(d, axis=-1), rtol=1e-12)
    # Decomposing a_t − e*_t instead (what analyze did before) names the kicked pair.
    old = jacobian_modes(_affine_cell, params, e_star, 2, DT, **_trajectory(a[:, 1:]), rule=rule)
    np.testing.assert_allclose(old.freq_hz, 7.0, rtol=1e-9)


def test_previous_states_puts_the_initial_state_first():
    a = np.arange(2 * 3 * 2, dtype=float).reshape(2, 3, 2)  # a_1..a_3 of 2 trials
    a0 = -np.ones((2, 2))
    prev = previous_states(a, a0)
    np.testing.assert_array_equal(prev[:, 0], a0)
    np.testing.assert_array_equal(prev[:, 1:], a[:, :2])
    with pytest.raises(ValueError, match="initial"):
        previous_states(a, a0[:1])


@pytest.mark.parametrize("rule", ["motion", "deviation"])
def test_planted_rotation_recovered_over_slower_and_real_modes(rule):
    params, S, coords, points, states = _planted()
    modes = jacobian_modes(
        _affine_cell, params, points, 2, DT, **_trajectory(states), chunk=7, rule=rule
    )
    assert modes.rule == rule
    assert modes.sort == EIG_SORT and modes.eigenvalues.dtype == np.complex64
    assert modes.eigenvalues.shape == (3, 12, 8)
    # Slowest first: the real 0.995 mode, then the 0.99 pair, before the planted pair.
    np.testing.assert_allclose(np.abs(modes.eigenvalues[0, 0, :3]), [0.995, 0.99, 0.99], atol=1e-6)
    assert modes.has_rotation.all()

    planted = np.ones((3, 12), bool)
    planted[1, :5] = False
    np.testing.assert_allclose(modes.freq_hz[planted], F0, rtol=1e-2)
    np.testing.assert_allclose(modes.freq_hz[planted], F0, rtol=1e-9)  # in fact exact
    np.testing.assert_allclose(modes.tau_s[planted], TAU0, rtol=1e-9)
    np.testing.assert_allclose(modes.half_life_s[planted], TAU0 * np.log(2), rtol=1e-9)
    np.testing.assert_allclose(modes.abs_lambda[planted], np.exp(-DT / TAU0), rtol=1e-12)
    assert modes.stable.all()
    np.testing.assert_allclose(modes.freq_hz[~planted], 5.0, rtol=1e-9)
    np.testing.assert_allclose(modes.tau_s[~planted], -DT / np.log(0.99), rtol=1e-9)
    assert (modes.dominant_eigenvalue.imag > 0).all()
    lam = modes.eigenvalues[0, 0][modes.dominant_index]
    np.testing.assert_allclose(lam, modes.dominant_eigenvalue, atol=1e-6)

    # Share = pair weight / Σ weights, in the planted (real-block) coordinates: a pair with
    # block coordinates (x, y) has amplitude √(x² + y²) √(‖s1‖² + ‖s2‖²), a real mode
    # |x| ‖s‖ (see the module docstring); the motion rule weighs each by |λ − 1|.
    amp = _block_amplitudes(S, coords)
    lam = [np.exp(-DT / TAU0 + 2j * np.pi * F0 * DT), 0.99 * np.exp(2j * np.pi * 5.0 * DT)]
    lam += [0.995, 0.3, -0.2, 0.5]
    weight = [a * (abs(x - 1) if rule == "motion" else 1.0) for a, x in zip(amp, lam, strict=True)]
    total = sum(weight)
    np.testing.assert_allclose(modes.share[planted], (weight[0] / total)[planted], rtol=1e-9)
    np.testing.assert_allclose(modes.amplitude[planted], amp[0][planted], rtol=1e-9)
    np.testing.assert_allclose(modes.share[~planted], (weight[1] / total)[~planted], rtol=1e-9)
    d = states - points
    np.testing.assert_allclose(modes.deviation_norm, np.linalg.norm(d, axis=-1), rtol=1e-12)

    # Planes: trial 0 and 2 at the planted plane span{s1, s2}; trial 1's largest share is
    # in bins 0-4 (the 5 Hz pair's plane span{s3, s4}).
    for trial, cols in [(0, [0, 1]), (2, [0, 1]), (1, [2, 3])]:
        assert modes.plane_valid[trial]
        Q = modes.plane[trial]
        np.testing.assert_allclose(Q.T @ Q, np.eye(2), atol=1e-12)
        assert principal_angles(Q, S[:, cols]).max() < 1e-6
    t1 = modes.plane_time
    assert t1[1] in range(5) and t1[0] == np.argmax(modes.share[0])

    # Input gain: 2 ‖w_k B‖ ‖v_k‖ for the dominant pair (eigenvectors from eigen.py).
    em = eig_modes(np.asarray(params["A"]))
    k = modes.dominant_index[0, 0]
    expect = (
        2 * np.linalg.norm(em.left[k] @ np.asarray(params["B"])) * np.linalg.norm(em.right[:, k])
    )
    np.testing.assert_allclose(modes.input_gain[0, 0], expect, rtol=1e-9)

    ts = trial_summaries(modes)
    np.testing.assert_allclose(ts.freq_hz, F0, rtol=1e-9)  # trial 1: 7 of 12 bins at 2 Hz
    np.testing.assert_allclose(ts.tau_s, TAU0, rtol=1e-9)
    np.testing.assert_allclose(ts.fraction_rotating, 1.0)
    _no_nan(modes)


# ---------------------------------------------------------------- Jacobians of the GRU


def _gru(n=6, m=3, seed=0, scale=2.0):
    """Random ``lfads_gru`` params: Uniform(±scale/√n) (init_lfads_gru's law, ×scale)."""
    rng = np.random.default_rng(seed)
    s = scale / np.sqrt(n)
    shapes = {"W_x": (3 * n, m), "b_x": (3 * n,), "W_h": (3 * n, n), "b_h": (3 * n,)}
    params = {k: jnp.asarray(rng.uniform(-s, s, size=v)) for k, v in shapes.items()}
    return params, partial(lfads_gru, clip=5.0)


def test_jacobians_match_finite_differences_and_feed_the_modes():
    n, m = 6, 3
    params, cell = _gru(n, m)
    rng = np.random.default_rng(2)
    h = 0.5 * rng.normal(size=(4, n))
    u0 = np.zeros(m)
    J_h, J_u = (np.asarray(x) for x in _jacobian_fn(cell, m)(params, jnp.asarray(h), u0))
    F = jax.jit(lambda hh, uu: cell(params, hh, uu))
    eps = 1e-5  # central differences: truncation ε²|F'''|/6 ~ 1e-10, round-off ~1e-11
    for p in range(4):
        fd_h = np.stack([(F(h[p] + eps * e, u0) - F(h[p] - eps * e, u0)) / (2 * eps)
                         for e in np.eye(n)], 1)  # fmt: skip
        fd_u = np.stack([(F(h[p], eps * e) - F(h[p], -eps * e)) / (2 * eps)
                         for e in np.eye(m)], 1)  # fmt: skip
        np.testing.assert_allclose(J_h[p], fd_h, rtol=0, atol=1e-8)
        np.testing.assert_allclose(J_u[p], fd_u, rtol=0, atol=1e-8)

    # The modes are those of these matrices: eigenvalues (as multisets), dominant pair,
    # share and input gain recomputed from eigen.eig_modes.
    d = 0.3 * rng.normal(size=(4, n))
    modes = jacobian_modes(cell, params, h[None], m, DT, **_trajectory((h + d)[None]), chunk=3)
    for p in range(4):
        ref = np.linalg.eigvals(J_h[p])
        got = modes.eigenvalues[0, p]
        cost = np.abs(got[:, None] - ref[None, :])
        i, j = linear_sum_assignment(cost)
        assert cost[i, j].max() < 1e-6  # complex64 storage
        em = eig_modes(J_h[p])
        amp = np.abs(em.left @ d[p]) * np.linalg.norm(em.right, axis=0)
        motion = amp * np.abs(em.eigenvalues - 1)  # the default rule's weight
        rot = em.eigenvalues.imag > modes.imag_tol * np.abs(em.eigenvalues)
        if not rot.any():
            assert not modes.has_rotation[0, p]
            continue
        k = np.argmax(np.where(rot, motion, -1))
        assert modes.dominant_index[0, p] == k
        np.testing.assert_allclose(modes.dominant_eigenvalue[0, p], em.eigenvalues[k], atol=1e-12)
        np.testing.assert_allclose(modes.share[0, p], 2 * motion[k] / motion.sum(), rtol=1e-9)
        np.testing.assert_allclose(modes.amplitude[0, p], 2 * amp[k], rtol=1e-9)
        gain = 2 * np.linalg.norm(em.left[k] @ J_u[p]) * np.linalg.norm(em.right[:, k])
        np.testing.assert_allclose(modes.input_gain[0, p], gain, rtol=1e-9)
    assert modes.has_rotation.any()


# ---------------------------------------------------------------- degenerate spectra


def _run(block, states_equal=False, m=2):
    params, _ = _affine_params(block, seed=3, m=m)
    rng = np.random.default_rng(4)
    points = rng.normal(size=(2, 5, block.shape[0]))
    states = points if states_equal else points + rng.normal(size=points.shape)
    modes = jacobian_modes(_affine_cell, params, points, m, DT, **_trajectory(states), chunk=4)
    _no_nan(modes)
    summary = summarize_modes(modes, np.array([0, 1]))
    json.dumps(summary, allow_nan=False)  # JSON-safe: no NaN, no inf
    return modes, summary


def test_real_only_spectrum_marks_no_rotation():
    rng = np.random.default_rng(5)
    X = rng.normal(size=(5, 5))
    sym = (X + X.T) / 2
    sym *= 0.9 / np.abs(np.linalg.eigvalsh(sym)).max()
    modes, summary = _run(sym)
    assert not modes.has_rotation.any() and not modes.plane_valid.any()
    assert (modes.dominant_index == -1).all() and (modes.plane_time == -1).all()
    for name in ["freq_hz", "tau_s", "half_life_s", "abs_lambda", "share", "amplitude"]:
        assert (getattr(modes, name) == 0).all(), name
    assert summary["overall"]["n_trials_rotating"] == 0
    assert summary["overall"]["freq_hz"]["median"] is None
    assert summary["plane_angles"]["within_mean_rad"] is None


@pytest.mark.parametrize(
    "kind", ["scaled_identity", "jordan", "repeated_pair", "marginal", "unstable", "zero_d"]
)
def test_repeated_defective_and_non_decaying_spectra_give_no_nan(kind):
    block = np.zeros((6, 6))
    rot = _rot(np.exp(-DT / TAU0), 2 * np.pi * F0 * DT)
    block[:2, :2] = rot
    block[2:, 2:] = 0.5 * np.eye(4)
    if kind == "scaled_identity":
        block = 0.9 * np.eye(6)
    elif kind == "jordan":
        block[2:4, 2:4] = [[0.9, 1.0], [0.0, 0.9]]
    elif kind == "repeated_pair":
        block[2:4, 2:4] = rot
    elif kind == "marginal":
        block[:2, :2] = _rot(1.0, 2 * np.pi * F0 * DT)
    elif kind == "unstable":
        block[:2, :2] = _rot(1.05, 2 * np.pi * F0 * DT)
    modes, summary = _run(block, states_equal=kind == "zero_d")
    if kind == "scaled_identity":
        assert not modes.has_rotation.any()
        return
    assert modes.has_rotation.all()
    np.testing.assert_allclose(modes.freq_hz, F0, rtol=1e-6)
    if kind == "marginal":  # |λ| = 1 up to round-off: τ = +inf or huge, never NaN
        assert (modes.tau_s > 1e9).all() and (modes.half_life_s > 1e9).all()
    elif kind == "unstable":
        assert np.isposinf(modes.tau_s).all() and np.isposinf(modes.half_life_s).all()
        assert not modes.stable.any()
        assert summary["overall"]["tau_s_median"] is None
        assert summary["overall"]["tau_s_median_infinite"]
        assert summary["per_trial"]["tau_s"] == [None, None]
    else:
        np.testing.assert_allclose(modes.tau_s, TAU0, rtol=1e-6)
        assert summary["overall"]["tau_s_median"] == pytest.approx(TAU0, rel=1e-6)
    if kind == "zero_d":
        assert (modes.share == 0).all() and (modes.amplitude == 0).all()
    assert ((modes.share >= 0) & (modes.share <= 1)).all()


# ---------------------------------------------------------------- chunking


def test_chunked_equals_unchunked():
    n, m = 16, 4
    params, cell = _gru(n, m, seed=1)
    rng = np.random.default_rng(6)
    points = 0.5 * rng.normal(size=(50, 40, n))
    states = points + 0.2 * rng.normal(size=points.shape)
    small = jacobian_modes(cell, params, points, m, DT, **_trajectory(states), chunk=37, workers=3)
    whole = jacobian_modes(
        cell, params, points, m, DT, **_trajectory(states), chunk=10**6, workers=1
    )
    assert small.has_rotation.any() and small.plane_valid.any()
    for f in fields(small):
        a, b = getattr(small, f.name), getattr(whole, f.name)
        if f.name == "plane":  # the subspace, not its basis (see JacobianModes.plane)
            proj = lambda Q: Q @ Q.transpose(0, 2, 1)  # noqa: E731
            np.testing.assert_allclose(proj(a), proj(b), atol=1e-9)
        elif isinstance(a, np.ndarray) and a.dtype.kind in "biu":
            np.testing.assert_array_equal(a, b, err_msg=f.name)
        elif isinstance(a, np.ndarray):
            np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-9, err_msg=f.name)
        else:
            assert a == b
    _no_nan(small)


# ---------------------------------------------------------------- summaries


def _context_cell(params, h, u):
    """``x' = ((1 − c) A0 + c A1) x + B u``, ``c' = 0.2 c``: the context ``c`` picks the map."""
    x, c = h[:-1], h[-1]
    x_new = (1 - c) * params["A0"] @ x + c * params["A1"] @ x + params["B"] @ u
    return jnp.concatenate([x_new, 0.2 * c[None]])


def test_summaries_per_condition_and_plane_angles():
    rng = np.random.default_rng(7)
    n = 6
    Q, _ = np.linalg.qr(rng.normal(size=(n, n)))
    P0, P1 = Q[:, :2], Q[:, 2:4]  # orthogonal planes
    blocks = []
    for f, tau in [(2.0, 0.4), (3.0, 0.2)]:
        B = 0.3 * np.eye(n)
        B[:2, :2] = _rot(np.exp(-DT / tau), 2 * np.pi * f * DT)
        blocks.append(B)
    params = {
        "A0": jnp.asarray(Q @ blocks[0] @ Q.T),
        "A1": jnp.asarray(np.roll(Q, -2, axis=1) @ blocks[1] @ np.roll(Q, -2, axis=1).T),
        "B": jnp.asarray(rng.normal(size=(n, 1))),
    }
    condition = np.array([0, 1, 1, 0, 0, 1, 0, 1])
    n_time = 9
    points = np.zeros((8, n_time, n + 1))
    points[..., -1] = condition[:, None]  # x = 0: J_h is block-diag
    dx = np.where((condition == 0)[:, None, None, None], P0, P1) @ rng.normal(
        size=(8, n_time, 2, 1)
    )
    dx = dx[..., 0] + 0.01 * rng.normal(size=(8, n_time, n))
    states = points + np.concatenate([dx, np.zeros((8, n_time, 1))], -1)
    modes = jacobian_modes(_context_cell, params, points, 1, DT, **_trajectory(states), chunk=16)
    for weighted in (False, True):
        s = summarize_modes(modes, condition, weighted=weighted)
        json.dumps(s, allow_nan=False)
        for c, f, tau in [("0", 2.0, 0.4), ("1", 3.0, 0.2)]:
            st = s["per_condition"][c]
            assert st["n_trials"] == st["n_trials_rotating"] == 4
            assert st["freq_hz"]["median"] == pytest.approx(f, rel=1e-9)
            assert st["freq_hz"]["iqr"] == pytest.approx(0.0, abs=1e-9)
            assert st["tau_s_median"] == pytest.approx(tau, rel=1e-9)
            assert st["half_life_s_median"] == pytest.approx(tau * np.log(2), rel=1e-9)
            assert st["fraction_rotating_bins_stable"] == 1.0
        assert s["overall"]["freq_hz"]["median"] == pytest.approx(2.5, rel=1e-9)
        pa = s["plane_angles"]
        assert pa["conditions"] == [0, 1]
        assert pa["n_pairs"] == [[6, 16], [16, 6]]
        assert pa["within_mean_rad"] < 1e-6
        assert pa["across_mean_rad"] == pytest.approx(np.pi / 2, abs=1e-6)
        assert pa["mean_angle_rad"][0][1] == pytest.approx(np.pi / 2, abs=1e-6)
    for t in range(8):  # the plane lives in x: c's coordinate is 0
        assert np.abs(modes.plane[t, -1]).max() < 1e-12
        P = P0 if condition[t] == 0 else P1
        assert principal_angles(modes.plane[t, :-1], P).max() < 1e-6


def test_trial_summary_medians_weighted_and_unweighted():
    params, _, _, points, states = _planted()
    modes = jacobian_modes(_affine_cell, params, points, 2, DT, **_trajectory(states))
    trial1 = (modes.freq_hz[1], modes.share[1])
    ts = trial_summaries(modes, weighted=True)
    # Lower weighted median of trial 1's bin frequencies, weights = shares.
    o = np.argsort(trial1[0], kind="stable")
    cw = np.cumsum(trial1[1][o])
    expect = trial1[0][o][np.argmax(cw >= cw[-1] / 2)]
    assert ts.freq_hz[1] == expect and ts.weighted


# ---------------------------------------------------------------- fixed-point quality


def test_fixed_point_residual_affine_and_gru():
    block = np.diag([0.9, 0.5, -0.3, 0.1])
    params, _ = _affine_params(block, m=3)
    rng = np.random.default_rng(8)
    e = np.asarray(params["e"])
    h = rng.normal(size=(3, 5, 4))
    h[0, 0] = e
    res = fixed_point_residual(_affine_cell, params, h, u_dim=3, chunk=4)
    A = np.asarray(params["A"])
    np.testing.assert_allclose(
        res, np.linalg.norm((h - e) @ (A - np.eye(4)).T, axis=-1), atol=1e-12
    )
    assert res[0, 0] < 1e-12 and res.shape == (3, 5)

    gparams, cell = _gru(5, 4)
    g = rng.normal(size=(2, 3, 5))
    res = fixed_point_residual(cell, gparams, g, u_dim=4, chunk=2)
    step = jax.jit(lambda x: cell(gparams, x, jnp.zeros(4)))
    ref = [np.linalg.norm(step(x) - x) for x in g.reshape(-1, 5)]
    np.testing.assert_allclose(res.ravel(), ref, rtol=1e-12)


def test_count_distinct_planted_clusters():
    rng = np.random.default_rng(9)
    centres = 10.0 * rng.normal(size=(4, 3))
    visits = [
        [0, 0, 1, 1, 2, 3, 3, 0, 0, 2],  # 4 distinct, with revisits
        [2, 2, 2, 2, 2, 2, 2, 2, 2, 2],  # 1
        [1, 3, 1, 3, 1, 3, 1, 3, 1, 3],  # 2
    ]
    X = centres[np.array(visits)] + 0.01 * rng.normal(size=(3, 10, 3))
    np.testing.assert_array_equal(count_distinct(X, tol=0.5, chunk=2), [4, 1, 2])
    assert count_distinct(X[0], tol=0.5) == 4
    assert count_distinct(X[0], tol=1e-6) == 10  # every point its own cluster
    assert count_distinct(X[0], tol=1e3) == 1


def test_distance_to_nearest_matches_brute_force():
    rng = np.random.default_rng(10)
    pts = rng.normal(size=(5, 7, 4))
    fps = rng.normal(size=(9, 4))
    d, idx = distance_to_nearest(pts, fps, chunk=3, return_index=True)
    brute = np.linalg.norm(pts[:, :, None, :] - fps[None, None], axis=-1)
    np.testing.assert_allclose(d, brute.min(-1), rtol=1e-14)
    np.testing.assert_array_equal(idx, brute.argmin(-1))
    np.testing.assert_allclose(distance_to_nearest(pts, fps), brute.min(-1), rtol=1e-14)
    assert np.isposinf(distance_to_nearest(pts, np.zeros((0, 4)))).all()


def test_autonomous_float32_cell_without_inputs():
    params, cell = _gru(8, 0, seed=3)
    params = jax.tree.map(lambda x: x.astype(jnp.float32), params)
    rng = np.random.default_rng(11)
    points = (0.5 * rng.normal(size=(3, 4, 8))).astype(np.float32)
    states = points + np.float32(0.1)
    modes = jacobian_modes(cell, params, points, 0, DT, **_trajectory(states), chunk=5)
    assert modes.eigenvalues.dtype == np.complex64 and modes.eigenvalues.shape == (3, 4, 8)
    assert (modes.input_gain == 0).all()
    _no_nan(modes)
    res = fixed_point_residual(cell, params, points)
    assert res.shape == (3, 4) and res.dtype == np.float32


def test_imag_tol_separates_round_off_splits_from_rotations():
    block = 0.5 * np.eye(4)
    block[:2, :2] = _rot(0.95, 1e-5)  # sin|angle| = 1e-5: below the default 1e-3
    params, _ = _affine_params(block, seed=12)
    rng = np.random.default_rng(13)
    points = rng.normal(size=(1, 3, 4))
    states = points + rng.normal(size=points.shape)
    default = jacobian_modes(_affine_cell, params, points, 2, DT, **_trajectory(states))
    assert not default.has_rotation.any() and (default.freq_hz == 0).all()
    loose = jacobian_modes(
        _affine_cell, params, points, 2, DT, **_trajectory(states), imag_tol=1e-6
    )
    assert loose.has_rotation.all()
    np.testing.assert_allclose(loose.freq_hz, 1e-5 / (2 * np.pi * DT), rtol=1e-6)
