"""The JSLDS step and scan against explicit Jacobians, and the cells against their formulas."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lfads_jslds.models.cells import CELLS, lfads_gru, paper_sigmoid
from lfads_jslds.models.expansion import expansion_point, init_expansion
from lfads_jslds.models.jslds import InputExpansion, jslds_step, run_jslds, run_rnn

N, M, T = 7, 4, 6


def random_model(cell_name: str, seed: int = 0) -> dict:
    """Float64 cell params with nonzero biases, and a non-trivial (nonzero) E."""
    k = jax.random.split(jax.random.PRNGKey(seed), 4)
    cell_params, h0 = CELLS[cell_name][1](k[0], N, M, h_factor=1.2, dtype=jnp.float64)
    cell_params = jax.tree_util.tree_map(
        lambda x: x + 0.1 * jax.random.normal(k[1], x.shape, jnp.float64), cell_params
    )
    expansion = [
        {"W": 0.3 * jax.random.normal(kk, (N, N), jnp.float64), "b": 0.1 * jnp.ones(N)}
        for kk in jax.random.split(k[2], 2)
    ]
    return {"cell": cell_params, "h0": h0 + 0.3, "expansion": expansion}


@pytest.mark.parametrize("cell_name", sorted(CELLS))
def test_jvp_step_equals_explicit_jacobian_products(cell_name):
    params = random_model(cell_name)
    cell = CELLS[cell_name][0]
    k = jax.random.split(jax.random.PRNGKey(1), 3)
    a_prev = jax.random.normal(k[0], (N,), jnp.float64) * 0.5
    u = jax.random.normal(k[1], (M,), jnp.float64)
    u_star = jax.random.normal(k[2], (M,), jnp.float64) * 0.3

    a, e_star, f_star = jslds_step(cell, params["cell"], params["expansion"], a_prev, u, u_star)

    e_ref = expansion_point(params["expansion"], a_prev)
    F = lambda h, x: cell(params["cell"], h, x)  # noqa: E731
    J_h, J_u = jax.jacfwd(F, argnums=(0, 1))(e_ref, u_star)
    a_ref = e_ref + J_h @ (a_prev - e_ref) + J_u @ (u - u_star)
    np.testing.assert_allclose(e_star, e_ref, rtol=0, atol=1e-12)
    np.testing.assert_allclose(f_star, F(e_ref, u_star), rtol=0, atol=1e-12)
    np.testing.assert_allclose(a, a_ref, rtol=0, atol=1e-10)


@pytest.mark.parametrize("cell_name", ["gru", "tanh"])
def test_scan_matches_step_by_step_loop(cell_name):
    """``run_jslds`` (lax.scan) equals the equations iterated by hand with jacfwd matrices."""
    params = random_model(cell_name, seed=2)
    cell = CELLS[cell_name][0]
    inputs = jax.random.normal(jax.random.PRNGKey(3), (T, M), jnp.float64)
    policy = InputExpansion(keep=(2, 3))
    traj = run_jslds(cell, params, inputs, input_expansion=policy)

    F = lambda h, x: cell(params["cell"], h, x)  # noqa: E731
    h = a = params["h0"]
    for t in range(T):
        u = inputs[t]
        u_star = jnp.zeros(M).at[2:].set(u[2:])
        e = expansion_point(params["expansion"], a)
        J_h, J_u = jax.jacfwd(F, argnums=(0, 1))(e, u_star)
        h, a = F(h, u), e + J_h @ (a - e) + J_u @ (u - u_star)
        np.testing.assert_allclose(traj.h[t], h, atol=1e-12)
        np.testing.assert_allclose(traj.a[t], a, atol=1e-10)
        np.testing.assert_allclose(traj.e_star[t], e, atol=1e-12)
        np.testing.assert_allclose(traj.f_star[t], F(e, u_star), atol=1e-12)
    np.testing.assert_allclose(run_rnn(cell, params, inputs), traj.h, atol=1e-12)


@pytest.mark.parametrize("cell_name", ["gru", "tanh"])
def test_scan_gradients_match_hand_iterated_equations(cell_name):
    """Gradients through the scans (their steps recomputed in the backward pass) equal
    gradients through the equations iterated in Python with explicit jacfwd matrices."""
    params = random_model(cell_name, seed=5)
    cell = CELLS[cell_name][0]
    inputs = jax.random.normal(jax.random.PRNGKey(6), (T, M), jnp.float64)

    def objective(h, a, e, f):
        return jnp.sum(jnp.sin(a)) + jnp.sum(h**2) + jnp.sum((f - e) ** 2) + jnp.sum(h * a)

    def by_scan(p):
        traj = run_jslds(cell, p, inputs)
        return objective(traj.h, traj.a, traj.e_star, traj.f_star) + jnp.sum(
            jnp.cos(run_rnn(cell, p, inputs))
        )

    def by_hand(p):
        F = lambda h, x: cell(p["cell"], h, x)  # noqa: E731
        h = a = p["h0"]
        total = 0.0
        for t in range(T):
            u, zero = inputs[t], jnp.zeros(M)
            e = expansion_point(p["expansion"], a)
            J_h, J_u = jax.jacfwd(F, argnums=(0, 1))(e, zero)
            h, a = F(h, u), e + J_h @ (a - e) + J_u @ u
            total += objective(h, a, e, F(e, zero)) + jnp.sum(jnp.cos(h))
        return total

    got, want = jax.grad(by_scan)(params), jax.grad(by_hand)(params)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-12)


def test_jslds_is_exact_for_an_affine_cell_expanded_at_its_fixed_point():
    """F affine and E(a) ≡ its fixed point e0 (W = −I makes E constant, tanh(b)): a_t = h_t."""
    k = jax.random.split(jax.random.PRNGKey(4), 3)
    A = 0.5 * jax.random.normal(k[0], (N, N), jnp.float64) / np.sqrt(N)
    B = jax.random.normal(k[1], (N, M), jnp.float64)
    b = jnp.linspace(-0.5, 0.5, N)
    e0 = jnp.tanh(b)
    c = (jnp.eye(N) - A) @ e0  # F(e0, 0) = e0
    cell = lambda p, h, x: p["A"] @ h + p["B"] @ x + p["c"]  # noqa: E731
    params = {
        "cell": {"A": A, "B": B, "c": c},
        "h0": jnp.ones(N),
        "expansion": [{"W": -jnp.eye(N), "b": b}],
    }
    traj = run_jslds(cell, params, jax.random.normal(k[2], (T, M), jnp.float64))
    np.testing.assert_allclose(traj.e_star, jnp.broadcast_to(e0, (T, N)), atol=1e-15)
    np.testing.assert_allclose(traj.a, traj.h, atol=1e-12)


def test_paper_sigmoid_is_the_logistic():
    z = jnp.linspace(-20, 20, 101, dtype=jnp.float64)
    np.testing.assert_allclose(paper_sigmoid(z), 1 / (1 + jnp.exp(-z)), atol=1e-15)


def test_paper_gru_against_its_equations():
    """The paper's GRU written out with the logistic on split weight blocks."""
    params = random_model("gru")["cell"]
    h = jnp.linspace(-0.5, 0.5, N)
    x = jnp.linspace(1.0, -1.0, M)
    W, b = params["wRUHX"], params["bRU"]
    logistic = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    r = logistic(W[:N, :N] @ h + W[:N, N:] @ x + b[:N])
    u = logistic(W[N:, :N] @ h + W[N:, N:] @ x + b[N:])
    Wc = params["wCHX"]
    c = np.tanh(Wc[:, :N] @ (r * h) + Wc[:, N:] @ x + params["bC"])
    np.testing.assert_allclose(CELLS["gru"][0](params, h, x), u * h + (1 - u) * c, atol=1e-12)


def test_lfads_gru_clips_state():
    params, _ = CELLS["lfads_gru"][1](jax.random.PRNGKey(0), N, M, dtype=jnp.float64)
    h = jnp.full(N, 50.0)  # far outside the clip range; z·h would pass it through
    out = lfads_gru(params, h, jnp.zeros(M), clip=5.0)
    assert float(jnp.max(jnp.abs(out))) == pytest.approx(5.0)


def test_tanh_rnn_against_formula():
    params = random_model("tanh")["cell"]
    h, x = jnp.linspace(-1, 1, N), jnp.linspace(0, 1, M)
    ref = np.tanh(params["wR"] @ h + params["wI"] @ x + params["bR"])
    np.testing.assert_allclose(CELLS["tanh"][0](params, h, x), ref, atol=1e-12)


def test_expansion_network_starts_as_repeated_tanh():
    a = jnp.linspace(-2, 2, N)
    np.testing.assert_allclose(
        expansion_point(init_expansion(N, 2, jnp.float64), a), np.tanh(np.tanh(a)), atol=1e-15
    )


def test_input_expansion_policies():
    u = jnp.array([0.3, -0.2, 1.0, 0.0])
    params = {"u_star": jnp.array([0.1, 0.1, 0.0, 0.0])}
    np.testing.assert_array_equal(InputExpansion()(params, u), jnp.zeros(4))
    np.testing.assert_array_equal(InputExpansion(keep=(2, 3))(params, u), [0, 0, 1.0, 0])
    np.testing.assert_allclose(
        InputExpansion(keep=(2, 3), learned=True)(params, u), [0.1, 0.1, 1.0, 0]
    )
