"""LFADS-JSLDS math against references: likelihoods, KLs, the AR(1) prior, the JSLDS path."""

import dataclasses
import typing

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
from flax import nnx

from lfads_jslds.models import lfads
from lfads_jslds.models.cells import lfads_gru
from lfads_jslds.pipeline.infer import infer_trials
from lfads_jslds.training.lfads import coordinated_dropout
from lfads_jslds.training.run_config import InferConfig, RunConfig

TINY = lfads.LFADSConfig(
    ic_enc_dim=6, ci_enc_dim=4, con_dim=5, co_dim=2, ic_dim=4, gen_dim=7, fac_dim=3, dropout=0.0
)


def _params(cfg=TINY, n_in=5, n_out=8, seed=0):
    p = lfads.init_params(jax.random.PRNGKey(seed), cfg, n_in, n_out)
    # non-zero expansion weights, so E is not just tanh∘tanh
    if "expansion" in p:
        keys = jax.random.split(jax.random.PRNGKey(seed + 1), len(p["expansion"]))
        p["expansion"] = [
            {
                "W": 0.3 * jax.random.normal(k, layer["W"].shape),
                "b": 0.1 * jnp.ones_like(layer["b"]),
            }
            for k, layer in zip(keys, p["expansion"], strict=True)
        ]
    return jax.tree.map(lambda a: a.astype(jnp.float64), p)  # float64 for tight references


def _counts(shape, seed=0):
    return jax.random.poisson(jax.random.PRNGKey(seed), 1.5, shape).astype(jnp.float64)


def test_poisson_nll_matches_scipy_up_to_the_constant():
    log_rates = jax.random.normal(jax.random.PRNGKey(1), (3, 4, 5), jnp.float64)
    counts = np.array(_counts((3, 4, 5)))
    counts[0, 1, 2] = np.nan  # unobserved: left out
    got = lfads.poisson_nll(log_rates, jnp.asarray(counts), jnp.ones(()))
    seen = ~np.isnan(counts)
    ref = -scipy.stats.poisson.logpmf(np.where(seen, counts, 0), np.exp(np.asarray(log_rates)))
    ref -= scipy.special.gammaln(np.where(seen, counts, 0) + 1)  # drop lgamma(n+1)
    np.testing.assert_allclose(got, np.sum(np.where(seen, ref, 0), (1, 2)), rtol=1e-12)


def test_gaussian_kl_matches_monte_carlo_free_closed_form():
    mean, var = jnp.array([0.3, -1.0]), jnp.array([0.5, 0.02])
    prior_mean, prior_var = jnp.array([0.1, 0.2]), 0.1
    ref = sum(
        np.log(np.sqrt(prior_var) / np.sqrt(v)) + (v + (m - pm) ** 2) / (2 * prior_var) - 0.5
        for m, v, pm in zip(mean, var, prior_mean, strict=True)
    )
    np.testing.assert_allclose(lfads.gaussian_kl(mean, var, prior_mean, prior_var), ref, rtol=1e-12)


def test_ar1_log_prob_fixes_the_innovation_variance_as_lfads_does():
    """LFADS' prior: u_t = α u_{t-1} + ε_t, ε_t ~ N(0, 0.1), u_1 ~ N(0, 0.1/(1 − α²)),
    α = exp(−1/τ); the density written out step by step with scipy.stats.norm."""
    tau, noise_var = 4.0, 0.1
    u = np.asarray(jax.random.normal(jax.random.PRNGKey(2), (5, 2), jnp.float64))
    alpha = np.exp(-1.0 / tau)
    ref = 0.0
    for d in range(2):
        ref += scipy.stats.norm(0.0, np.sqrt(noise_var / (1 - alpha**2))).logpdf(u[0, d])
        for t in range(1, 5):
            ref += scipy.stats.norm(alpha * u[t - 1, d], np.sqrt(noise_var)).logpdf(u[t, d])
    got = lfads.ar1_log_prob(jnp.asarray(u), jnp.full(2, np.log(tau)), noise_var)
    np.testing.assert_allclose(got, ref, rtol=1e-12)
    # the stationary covariance is σ²/(1 − α²) · α^|i−j| (Toeplitz): the same density
    t = np.arange(5)
    cov = noise_var / (1 - alpha**2) * alpha ** np.abs(np.subtract.outer(t, t))
    joint = sum(scipy.stats.multivariate_normal(np.zeros(5), cov).logpdf(u[:, d]) for d in range(2))
    np.testing.assert_allclose(got, joint, rtol=1e-10)


def test_only_the_ar1_time_constant_is_a_parameter():
    p = lfads.init_params(jax.random.PRNGKey(0), TINY, 5, 8)
    assert set(p["co_prior"]) == {"log_tau"}
    np.testing.assert_allclose(np.exp(p["co_prior"]["log_tau"]), TINY.co_prior_tau, rtol=1e-6)


def test_factor_rows_are_unit_length():
    w = jax.random.normal(jax.random.PRNGKey(3), (4, 9)) * 5
    np.testing.assert_allclose(np.linalg.norm(lfads.normalised_rows(w), axis=1), 1.0, rtol=1e-6)


def test_jslds_path_is_the_explicit_linearisation_of_the_generator():
    """a_t = e* + J_g(e*)(a_{t-1} − e*) + J_u(e*)(u_t − 0), e* = E(a_{t-1}) (DESIGN §1), jacfwd."""
    cfg = dataclasses.replace(TINY, generator="jslds")
    p = _params(cfg)
    x = _counts((2, 6, 5))
    out = lfads.forward(p, cfg, x, 3, jax.random.PRNGKey(4), train=False)
    cell = lambda h, u: lfads_gru(p["gen"], h, u, clip=cfg.cell_clip)  # noqa: E731
    jac = jax.jit(jax.jacfwd(cell, argnums=(0, 1)))
    for trial in range(2):
        a_prev = out.g0[trial]
        for t in range(9):
            e = out.expansion_points[trial, t]
            u = out.inputs[trial, t]
            jh, ju = jac(e, jnp.zeros_like(u))
            ref = e + jh @ (a_prev - e) + ju @ u
            np.testing.assert_allclose(out.jslds_states[trial, t], ref, atol=1e-10)
            e_ref = p["expansion"]
            h = a_prev
            for layer in e_ref:
                h = jnp.tanh(h + layer["W"] @ h + layer["b"])
            np.testing.assert_allclose(e, h, atol=1e-12)
            np.testing.assert_allclose(out.f_star[trial, t], cell(e, jnp.zeros_like(u)), atol=1e-12)
            a_prev = out.jslds_states[trial, t]


def test_gru_states_follow_the_cell_and_rates_the_readout():
    cfg = dataclasses.replace(TINY, generator="gru", co_dim=0)
    p = _params(cfg)
    out = lfads.forward(p, cfg, _counts((1, 5, 5)), 2, jax.random.PRNGKey(5), train=False)
    g = out.g0[0]
    w = p["factors"] / np.linalg.norm(p["factors"], axis=1, keepdims=True)
    for t in range(7):
        g = lfads_gru(p["gen"], g, jnp.zeros(0), clip=cfg.cell_clip)
        np.testing.assert_allclose(out.gen_states[0, t], g, atol=1e-12)
        ref = p["readout"]["W"] @ (w @ g) + p["readout"]["b"]
        np.testing.assert_allclose(out.log_rates[0, t], ref, atol=1e-12)


def test_posterior_mean_pass_is_deterministic_and_sampling_is_not():
    p = _params()
    x = _counts((2, 6, 5))
    a = lfads.forward(p, TINY, x, 2, jax.random.PRNGKey(0), train=False, sample=False)
    b = lfads.forward(p, TINY, x, 2, jax.random.PRNGKey(1), train=False, sample=False)
    np.testing.assert_array_equal(a.log_rates, b.log_rates)
    c = lfads.forward(p, TINY, x, 2, jax.random.PRNGKey(1), train=False, sample=True)
    assert np.abs(np.asarray(c.log_rates - a.log_rates)).max() > 1e-3


def test_coordinated_dropout_blocks_gradients_through_what_the_encoder_saw():
    x = _counts((3, 4, 5))
    x_in, mask = coordinated_dropout(jax.random.PRNGKey(0), x, 6, 8, 0.4)
    log_rates = jnp.zeros((3, 6, 8))
    target = _counts((3, 6, 8), seed=1)
    grad = jax.grad(lambda r: jnp.sum(lfads.poisson_nll(r, target, mask)))(log_rates)
    obs = np.asarray(grad[:, :4, :5])
    hidden = np.asarray(mask[:, :4, :5]) == 1.0
    assert np.all(obs[~hidden] == 0.0)  # entries given to the encoder: no gradient
    np.testing.assert_allclose(obs[hidden], 1.0 - np.asarray(target[:, :4, :5])[hidden])
    # forward bins and the held-out columns always pass gradient: d/dr (e^r − n r) = 1 − n at r=0
    np.testing.assert_array_equal(grad[:, 4:], 1.0 - target[:, 4:])
    np.testing.assert_array_equal(grad[:, :4, 5:], 1.0 - target[:, :4, 5:])
    np.testing.assert_array_equal(np.asarray(x_in)[hidden], 0.0)  # hidden from the encoder
    np.testing.assert_allclose(x_in[~hidden], x[~hidden] / 0.6)


@pytest.mark.parametrize("generator", ["gru", "jslds", "slds"])
def test_loss_weights_follow_the_mode(generator):
    cfg = dataclasses.replace(TINY, generator=generator)
    p = _params(cfg)
    out = lfads.forward(p, cfg, _counts((2, 6, 5)), 2, jax.random.PRNGKey(0), train=True)
    terms = lfads.loss_terms(p, cfg, out, _counts((2, 8, 8), 1), jnp.ones(()))
    w = lfads.LossWeights(rnn=2.0, jslds=3.0, fixed_point=5.0, approx=7.0, l2_gen=0.5, l2_con=0.25)
    got = lfads.total_loss(terms, cfg, w, 0.5, 0.1)
    reg = 0.5 * (terms["kl_ic"] + terms["kl_co"]) + 0.1 * (
        0.5 * terms["l2_gen"] + 0.25 * terms["l2_con"]
    )
    jslds = 3 * terms["nll_jslds"] + 5 * terms["fixed_point"] + 7 * terms["approx"]
    expected = {
        "gru": 2 * terms["nll"] + reg,
        "jslds": 2 * terms["nll"] + reg + jslds,
        "slds": reg + jslds,
    }[generator]
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    if generator == "gru":
        assert float(terms["approx"]) == float(terms["nll_jslds"]) == 0.0


def test_nnx_module_wraps_the_pure_functions():
    model = lfads.LFADS(TINY, 5, 8, rngs=nnx.Rngs(3))
    params = nnx.state(model, nnx.Param)
    assert len(jax.tree.leaves(params)) == len(jax.tree.leaves(model.values()))
    x = _counts((2, 6, 5))
    out = model(x, n_fwd=2, key=jax.random.PRNGKey(0), sample=False)
    ref = lfads.forward(model.values(), TINY, x, 2, jax.random.PRNGKey(0), False, False)
    np.testing.assert_array_equal(out.log_rates, ref.log_rates)


def test_fused_encoders_equal_separate_gru_loops():
    """``encode`` runs all directions in one scan with hoisted input projections."""
    p = _params()
    xs = _counts((6, 5))
    got = lfads.encode([p["ic_enc"], p["ci_enc"]], xs, 5.0)
    for (fwd, bwd), enc in zip(got, [p["ic_enc"], p["ci_enc"]], strict=True):
        h_f, h_b = enc["h0"][0], enc["h0"][1]
        for t in range(6):
            h_f = lfads_gru(enc["fwd"], h_f, xs[t], clip=5.0)
            np.testing.assert_allclose(fwd[t], h_f, atol=1e-12)
        for t in reversed(range(6)):
            h_b = lfads_gru(enc["bwd"], h_b, xs[t], clip=5.0)
            np.testing.assert_allclose(bwd[t], h_b, atol=1e-12)


def test_every_generator_value_has_a_mode():
    assert set(lfads.GENERATORS) == set(typing.get_args(lfads.Generator))
    assert lfads.GENERATORS["slds"].path == "a" and lfads.GENERATORS["slds"].secondary == "g"
    assert lfads.GENERATORS["jslds"].path == "g" and lfads.GENERATORS["gru"].secondary is None


@pytest.mark.parametrize("generator", ["jslds", "slds"])
def test_inference_reports_the_generating_path(generator):
    """slds: the a path generates the data, so ``rates`` and ``factors`` are the a path's
    (computed here directly from ``forward``); the g path's rates are kept as ``rates_rnn``."""
    model = dataclasses.replace(TINY, generator=generator)
    p = _params(model)
    x = _counts((3, 6, 5))
    cfg = RunConfig(model=model, infer=InferConfig(posterior_mean=True, batch_size=2))
    got = infer_trials(p, cfg, np.asarray(x), 2, progress=False)
    ref = lfads.forward(p, model, x, 2, jax.random.PRNGKey(0), train=False, sample=False)
    rates_g, rates_a = np.exp(ref.log_rates), np.exp(ref.log_rates_a)
    assert np.abs(rates_g - rates_a).max() > 1e-2  # the two paths differ: the test can tell
    if generator == "slds":
        gen, other, other_key = rates_a, rates_g, "rates_rnn"
    else:
        gen, other, other_key = rates_g, rates_a, "rates_jslds"
    np.testing.assert_allclose(got["rates"], gen, rtol=1e-10)
    np.testing.assert_allclose(got[other_key], other, rtol=1e-10)
    factors = ref.factors_a if generator == "slds" else ref.factors
    np.testing.assert_allclose(got["factors"], factors[:, :6], atol=1e-12)
    np.testing.assert_allclose(got["gen_states"], ref.gen_states[:, :6], atol=1e-12)
    np.testing.assert_allclose(got["jslds_states"], ref.jslds_states[:, :6], atol=1e-12)
