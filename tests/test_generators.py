"""The generator objects of ``models.lfads.GENERATORS`` against hand-written references."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lfads_jslds.models import lfads
from lfads_jslds.models.cells import lfads_gru

TINY = lfads.LFADSConfig(
    ic_enc_dim=6, ci_enc_dim=4, con_dim=5, co_dim=2, ic_dim=4, gen_dim=7, fac_dim=3, dropout=0.0
)


def _params(cfg, n_in=5, n_out=8, seed=0):
    """Float64 params; a non-zero expansion network, so E is not just tanh∘tanh."""
    p = lfads.init_params(jax.random.PRNGKey(seed), cfg, n_in, n_out)
    if "expansion" in p:
        keys = jax.random.split(jax.random.PRNGKey(seed + 1), len(p["expansion"]))
        p["expansion"] = [
            {"W": 0.3 * jax.random.normal(k, layer["W"].shape), "b": 0.1 + layer["b"]}
            for k, layer in zip(keys, p["expansion"], strict=True)
        ]
    return jax.tree.map(lambda a: a.astype(jnp.float64), p)


def _counts(shape, seed=0):
    return jax.random.poisson(jax.random.PRNGKey(seed), 1.5, shape).astype(jnp.float64)


@pytest.mark.parametrize("generator", ["jslds", "slds"])
def test_jslds_step_is_the_explicit_jacobian_product(generator):
    """``a_t = e* + J_h(e*, 0)(a_{t-1} − e*) + J_u(e*, 0) u_t`` with ``e* = E(a_{t-1})``
    written out layer by layer and the Jacobians from ``jax.jacfwd``; ``g_t = F(g, u)``."""
    cfg = dataclasses.replace(TINY, generator=generator)
    p = _params(cfg)
    k = jax.random.split(jax.random.PRNGKey(7), 3)
    g, a = (jax.random.normal(kk, (cfg.gen_dim,), jnp.float64) for kk in k[:2])
    u = jax.random.normal(k[2], (cfg.co_dim,), jnp.float64)
    got = lfads.GENERATORS[generator].step(lfads.generator_cell(cfg), p, g, a, u)

    F = lambda h, x: lfads_gru(p["gen"], h, x, clip=cfg.cell_clip)  # noqa: E731
    e = a
    for layer in p["expansion"]:
        e = np.tanh(e + layer["W"] @ e + layer["b"])
    j_h, j_u = jax.jacfwd(F, argnums=(0, 1))(e, jnp.zeros(cfg.co_dim))
    # float64, O(1) entries: the jvp and the explicit products differ by rounding only
    np.testing.assert_allclose(got.g, F(g, u), rtol=0, atol=1e-13)
    np.testing.assert_allclose(got.e_star, e, rtol=0, atol=1e-13)
    np.testing.assert_allclose(got.f_star, F(e, jnp.zeros(cfg.co_dim)), rtol=0, atol=1e-13)
    np.testing.assert_allclose(got.a, e + j_h @ (a - e) + j_u @ u, rtol=0, atol=1e-12)


def test_gru_generator_adds_no_parameters_and_no_a_path():
    cfg = dataclasses.replace(TINY, generator="gru")
    p = _params(cfg)
    assert "expansion" not in p and lfads.GENERATORS["gru"].init_params(cfg) == {}
    g = jax.random.normal(jax.random.PRNGKey(2), (cfg.gen_dim,), jnp.float64)
    u = jnp.array([0.3, -0.7])
    got = lfads.GENERATORS["gru"].step(lfads.generator_cell(cfg), p, g, jnp.zeros(0), u)
    np.testing.assert_array_equal(got.g, lfads_gru(p["gen"], g, u, clip=cfg.cell_clip))
    assert got.a.shape == got.e_star.shape == got.f_star.shape == (0,)
    out = lfads.forward(p, cfg, _counts((2, 6, 5)), 2, jax.random.PRNGKey(0), train=False)
    assert out.jslds_states.shape == out.log_rates_a.shape == (2, 8, 0)
    # the JSLDS generators add E: expansion_layers zero-initialised residual tanh layers
    jslds = dataclasses.replace(cfg, generator="jslds")
    p_j = lfads.init_params(jax.random.PRNGKey(0), jslds, 5, 8)
    assert len(p_j["expansion"]) == cfg.expansion_layers
    assert all(float(jnp.abs(layer["W"]).max()) == 0.0 for layer in p_j["expansion"])
    assert set(p_j) - set(p) == {"expansion"}


def test_slds_total_loss_is_the_jslds_terms_without_the_rnn_nll():
    """Terms written out from the outputs; λ_RNN = 0: the g path's NLL has no weight."""
    cfg = dataclasses.replace(TINY, generator="slds")
    p = _params(cfg)
    out = lfads.forward(p, cfg, _counts((3, 6, 5)), 2, jax.random.PRNGKey(1), train=True)
    target = np.asarray(_counts((3, 8, 8), 1))
    terms = lfads.loss_terms(p, cfg, out, jnp.asarray(target), jnp.ones(()))
    r_a = np.asarray(out.log_rates_a)
    nll_a = np.mean(np.sum(np.exp(r_a) - target * r_a, (1, 2)))
    r_e = np.mean(np.sum((np.asarray(out.f_star) - np.asarray(out.expansion_points)) ** 2, (1, 2)))
    r_approx = np.mean(np.sum((np.asarray(out.gen_states - out.jslds_states)) ** 2, (1, 2)))
    np.testing.assert_allclose(terms["nll_jslds"], nll_a, rtol=1e-12)
    np.testing.assert_allclose(terms["fixed_point"], r_e, rtol=1e-12)
    np.testing.assert_allclose(terms["approx"], r_approx, rtol=1e-12)

    w = lfads.LossWeights(rnn=2.0, jslds=3.0, fixed_point=5.0, approx=7.0, l2_expansion=0.5)
    kl = terms["kl_ic"] + terms["kl_co"]
    l2 = terms["l2_gen"] + terms["l2_con"] + 0.5 * terms["l2_expansion"]
    expected = 0.5 * kl + 0.1 * l2 + 3.0 * nll_a + 5.0 * r_e + 7.0 * r_approx
    np.testing.assert_allclose(lfads.total_loss(terms, cfg, w, 0.5, 0.1), expected, rtol=1e-12)
    for generator, lam_rnn in (("slds", 0.0), ("jslds", 2.0)):  # jslds: the g path's NLL counts
        mode = dataclasses.replace(cfg, generator=generator)
        d_nll = jax.grad(lambda n, m=mode: lfads.total_loss({**terms, "nll": n}, m, w, 0.5, 0.1))
        assert float(d_nll(terms["nll"])) == lam_rnn


@pytest.mark.parametrize("generator", ["jslds", "slds"])
def test_controller_reads_the_generating_paths_factors(generator):
    """``μ_t`` from the controller GRU on ``[ci_t, f_{t-1}]``, ``f`` the generating path's
    factors (a for slds, g for jslds), iterated by hand from the model's own outputs."""
    cfg = dataclasses.replace(TINY, generator=generator)
    p = _params(cfg)
    x = _counts((6, 5))
    out = lfads.forward_trial(p, cfg, x, 3, jax.random.PRNGKey(2), train=False, sample=False)
    _, ci_seq = lfads.encode([p["ic_enc"], p["ci_enc"]], x, cfg.cell_clip)
    ci = lfads.controller_input(cfg, [ci_seq], 9, jax.random.PRNGKey(0), False, jnp.float64)
    fac = {"jslds": out.factors, "slds": out.factors_a}[generator]
    assert np.abs(np.asarray(out.factors - out.factors_a)).max() > 1e-3  # the paths differ
    w_fac = p["factors"] / jnp.linalg.norm(p["factors"], axis=1, keepdims=True)
    con_h, f_prev = p["con_h0"], w_fac @ out.g0
    for t in range(9):
        con_h = lfads_gru(p["con"], con_h, jnp.concatenate([ci[t], f_prev]), clip=cfg.cell_clip)
        mu = (p["co"]["W"] @ con_h + p["co"]["b"])[: cfg.co_dim]
        np.testing.assert_allclose(out.co_mean[t], mu, rtol=0, atol=1e-12)
        np.testing.assert_array_equal(out.inputs[t], out.co_mean[t])  # sample=False
        f_prev = fac[t]


def test_generator_cell_is_the_clipped_lfads_gru():
    cfg = dataclasses.replace(TINY, cell_clip=0.25)
    p = _params(cfg)
    h = jnp.linspace(-3.0, 3.0, cfg.gen_dim)
    u = jnp.array([2.0, -1.0])
    got = lfads.generator_cell(cfg)(p["gen"], h, u)
    np.testing.assert_array_equal(got, lfads_gru(p["gen"], h, u, clip=0.25))
    assert float(jnp.abs(got).max()) <= 0.25


def test_registry_modes_name_their_paths():
    gens = lfads.GENERATORS
    assert [gens[n].paths for n in ("gru", "jslds", "slds")] == [("g",), ("g", "a"), ("g", "a")]
    assert [gens[n].has_jslds for n in ("gru", "jslds", "slds")] == [False, True, True]
    assert gens["jslds"].secondary == "a" and gens["slds"].secondary == "g"
    w = lfads.LossWeights(rnn=2.0)
    assert [gens[n].rnn_weight(w) for n in ("gru", "jslds", "slds")] == [2.0, 2.0, 0.0]
