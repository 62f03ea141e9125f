"""LFADS with a JSLDS generator (DESIGN §3): the math as pure functions over a params dict.

One trial at a time (``vmap`` batches it), time-major inside:

- IC encoder: bidirectional GRU over the held-in input ``x: [time, neuron_in]``; its two
  final states give the Gaussian posterior over ``z`` (posterior variance floored at
  ``ic_post_var_min``); ``g0 = W z + b``. Prior ``N(μ_p, ic_prior_var)``, ``μ_p`` learned.
- Controller (``co_dim > 0``): a bidirectional CI encoder whose forward states lag by
  ``ci_lag`` bins (and backward states lead by it), a controller GRU on ``[ci_t, f_{t-1}]``,
  inferred inputs ``u_t ~ N(μ_t, σ²_t)`` with LFADS' AR(1) prior (``ar1_log_prob``: τ in
  bins learned, innovation variance fixed at ``co_prior_var``).
- Generator: the LFADS GRU (clipped) ``g_t = F(g_{t-1}, u_t)``; with ``generator`` =
  ``jslds`` or ``slds`` a JSLDS state ``a_t`` runs beside it from the same ``g0``,
  ``e*_t = E(a_{t-1})``, ``u* = 0``, one jvp of F per step (``models.jslds.jslds_step``).
- Factors ``f = Ŵ_f dropout(g)`` with the rows of ``W_f`` normalised to unit length; both
  paths share the dropout mask, factors and readout. Log-rates ``W_r f + b_r`` over all
  neurons (held-in then held-out), for the observed and the forward bins; rates are in
  spikes per bin.
- Which path generates the data is one property of the mode (``GENERATORS``): the g path
  for ``gru`` and ``jslds``, the a path for ``slds`` (λ_RNN = 0). The generating path's
  factors feed the controller, and its rates and states are what training validates,
  inference reports and the analysis reads (``generating_path``).

Loss conventions (``loss_terms``): every term is summed over time and units within a trial
and averaged over trials (the ELBO per trial), so λ weights compare like with like.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from lfads_jslds.config import NonNegative, Positive, Rate
from lfads_jslds.models.cells import init_lfads_gru, lfads_gru, lfads_gru_projected
from lfads_jslds.models.expansion import init_expansion
from lfads_jslds.models.jslds import jslds_step

Params = dict[str, Any]
Generator = Literal["gru", "jslds", "slds"]
PathName = Literal["g", "a"]


@dataclass(frozen=True)
class PathFields:
    """Where a path's outputs sit in ``TrialOutput`` (``states`` is also the
    ``inference.h5`` key), and the name that labels its secondary outputs."""

    name: str  # "rnn" or "jslds": ``rates_<name>``, ``<name>_path`` in metrics.json
    log_rates: str
    factors: str
    states: str


PATHS: dict[PathName, PathFields] = {
    "g": PathFields("rnn", "log_rates", "factors", "gen_states"),
    "a": PathFields("jslds", "log_rates_a", "factors_a", "jslds_states"),
}


@dataclass(frozen=True)
class GeneratorMode:
    """What a ``generator`` value runs, and which of its paths generates the data."""

    has_jslds: bool  # a JSLDS state a_t (expansion network, λ_JSLDS, λ_e, λ_a) beside g_t
    path: PathName  # the generating path; the g path's NLL is trained only when it is "g"

    @property
    def secondary(self) -> PathName | None:
        """The other path (reported beside the generating one), None without a JSLDS."""
        if not self.has_jslds:
            return None
        return "a" if self.path == "g" else "g"


GENERATORS: dict[str, GeneratorMode] = {
    "gru": GeneratorMode(has_jslds=False, path="g"),
    "jslds": GeneratorMode(has_jslds=True, path="g"),
    "slds": GeneratorMode(has_jslds=True, path="a"),  # the JSLDS path alone generates
}


@dataclass(frozen=True)
class LFADSConfig:
    """Sizes and fixed hyper-parameters (DESIGN §3; AutoLFADS sizes in mc_maze.yaml)."""

    generator: Generator = "jslds"
    ic_enc_dim: int = 64
    ci_enc_dim: int = 32
    con_dim: int = 32
    co_dim: int = 2  # 0: autonomous model, no controller
    ic_dim: int = 64
    gen_dim: int = 64
    fac_dim: int = 20
    ci_lag: int = 1  # bins
    cell_clip: Positive = 5.0
    expansion_layers: int = 2
    dropout: Rate = 0.05
    ic_prior_var: Positive = 0.1
    ic_post_var_min: NonNegative = 1e-4
    co_prior_tau: Positive = 10.0  # bins, initial value of the learned AR(1) time constant
    co_prior_var: Positive = 0.1  # AR(1) innovation (process) variance, fixed (not learned)


def _linear(key: jax.Array, n_out: int, n_in: int) -> Params:
    """``W ~ N(0, 1/n_in)``, ``b = 0`` (lfads-torch's linear init)."""
    return {
        "W": jax.random.normal(key, (n_out, n_in)) / math.sqrt(n_in),
        "b": jnp.zeros(n_out),
    }


def _gru(key: jax.Array, n: int, u: int) -> Params:
    return init_lfads_gru(key, n, u)[0]


def init_params(
    key: jax.Array, cfg: LFADSConfig, n_in: int, n_out: int, mean_counts: jax.Array | None = None
) -> Params:
    """Parameters for ``n_in`` encoder neurons and ``n_out`` reconstructed neurons.

    ``mean_counts: [n_out]`` (spikes per bin) starts the readout bias at ``log`` of each
    neuron's mean, so early training fits dynamics rather than firing rates.
    """
    k = iter(jax.random.split(key, 16))
    p: Params = {
        "ic_enc": {
            "fwd": _gru(next(k), cfg.ic_enc_dim, n_in),
            "bwd": _gru(next(k), cfg.ic_enc_dim, n_in),
            "h0": jnp.zeros((2, cfg.ic_enc_dim)),
        },
        "ic": _linear(next(k), 2 * cfg.ic_dim, 2 * cfg.ic_enc_dim),
        "ic_prior_mean": jnp.zeros(cfg.ic_dim),
        "ic_to_g0": _linear(next(k), cfg.gen_dim, cfg.ic_dim),
        "gen": _gru(next(k), cfg.gen_dim, max(cfg.co_dim, 0)),
        "factors": jax.random.normal(next(k), (cfg.fac_dim, cfg.gen_dim)) / math.sqrt(cfg.gen_dim),
        "readout": _linear(next(k), n_out, cfg.fac_dim),
    }
    if mean_counts is not None:
        p["readout"]["b"] = jnp.log(jnp.maximum(jnp.asarray(mean_counts, jnp.float32), 1e-3))
    if cfg.co_dim > 0:
        p["ci_enc"] = {
            "fwd": _gru(next(k), cfg.ci_enc_dim, n_in),
            "bwd": _gru(next(k), cfg.ci_enc_dim, n_in),
            "h0": jnp.zeros((2, cfg.ci_enc_dim)),
        }
        p["con"] = _gru(next(k), cfg.con_dim, 2 * cfg.ci_enc_dim + cfg.fac_dim)
        p["con_h0"] = jnp.zeros(cfg.con_dim)
        p["co"] = _linear(next(k), 2 * cfg.co_dim, cfg.con_dim)
        p["co_prior"] = {"log_tau": jnp.full(cfg.co_dim, math.log(cfg.co_prior_tau))}
    if GENERATORS[cfg.generator].has_jslds:
        p["expansion"] = init_expansion(cfg.gen_dim, cfg.expansion_layers)
    # strong float32 leaves: a weak-typed leaf would make the first update recompile the step
    return jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), p)


# --------------------------------------------------------------------------- pieces


def encode(encoders: list[Params], xs: jax.Array, clip: float) -> list[tuple[jax.Array, jax.Array]]:
    """Bidirectional GRU encoders over ``xs: [time, u]``: ``[(fwd, bwd), ...]``, each ``[time, n]``.

    All directions of all encoders advance in one ``lax.scan`` (fewer sequential steps),
    with their input projections computed for every time step up front (one matmul each).
    ``bwd[t]`` is the backward state after reading ``xs[t:]`` (aligned to input time).
    """
    cells = [enc[d] for enc in encoders for d in ("fwd", "bwd")]
    h0 = tuple(enc["h0"][i] for enc in encoders for i in (0, 1))
    inputs = [xs if i % 2 == 0 else xs[::-1] for i in range(len(cells))]
    gxs = tuple(x @ c["W_x"].T + c["b_x"] for x, c in zip(inputs, cells, strict=True))

    def step(hs: tuple, gx: tuple) -> tuple[tuple, tuple]:
        hs = tuple(
            lfads_gru_projected(c, h, g, clip) for c, h, g in zip(cells, hs, gx, strict=True)
        )
        return hs, hs

    seqs = jax.lax.scan(step, h0, gxs)[1]
    return [(seqs[2 * i], seqs[2 * i + 1][::-1]) for i in range(len(encoders))]


def normalised_rows(w: jax.Array) -> jax.Array:
    """Rows scaled to unit norm: the factor map cannot grow to cheat the L2 / KL trade-off."""
    return w / jnp.linalg.norm(w, axis=1, keepdims=True)


def dropout(key: jax.Array, x: jax.Array, rate: float, train: bool) -> jax.Array:
    if not train or rate == 0.0:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0.0)


def gaussian_kl(
    mean: jax.Array, var: jax.Array, prior_mean: jax.Array, prior_var: float
) -> jax.Array:
    """``KL(N(mean, var) ‖ N(prior_mean, prior_var))`` summed over dimensions (nats)."""
    return 0.5 * jnp.sum(
        jnp.log(prior_var / var) + (var + (mean - prior_mean) ** 2) / prior_var - 1.0
    )


def gaussian_log_prob(x: jax.Array, mean: jax.Array, var: jax.Array) -> jax.Array:
    return -0.5 * (jnp.log(2 * jnp.pi * var) + (x - mean) ** 2 / var)


def ar1_log_prob(u: jax.Array, log_tau: jax.Array, noise_var: float) -> jax.Array:
    """``log p(u)`` of ``u: [time, dim]`` under LFADS' AR(1) prior per dimension, summed.

    ``u_t = α u_{t-1} + ε_t``, ``ε_t ~ N(0, σ²)``, ``α = exp(−1/τ)`` (τ in bins, learned;
    σ² = ``noise_var`` the innovation variance, fixed), started from the stationary
    ``u_1 ~ N(0, σ²/(1 − α²))``, as lfads-torch's ``AutoregressiveMultivariateNormal`` and
    TF LFADS define it (there too only τ is trained).
    """
    alpha = jnp.exp(-1.0 / jnp.exp(log_tau))
    first = gaussian_log_prob(u[0], 0.0, noise_var / (1.0 - alpha**2))
    rest = gaussian_log_prob(u[1:], alpha * u[:-1], noise_var)
    return jnp.sum(first) + jnp.sum(rest)


class TrialOutput(NamedTuple):
    """One trial's outputs (``[trial, ...]`` when vmapped); ``T = T_obs + T_fwd``.

    ``*_a`` and ``jslds``-only fields are zero-sized for the ``gru`` generator;
    ``inputs`` / ``co_*`` are ``[T, 0]`` for an autonomous model.
    """

    log_rates: jax.Array  # [T, neuron] generator (g) path
    log_rates_a: jax.Array  # [T, neuron] JSLDS (a) path
    factors: jax.Array  # [T, fac] from g
    factors_a: jax.Array  # [T, fac] from a
    gen_states: jax.Array  # [T, gen] g_1..g_T
    jslds_states: jax.Array  # [T, gen] a_1..a_T
    expansion_points: jax.Array  # [T, gen] e*_t = E(a_{t-1})
    f_star: jax.Array  # [T, gen] F(e*_t, 0)
    inputs: jax.Array  # [T, co] sampled inferred inputs u_t
    co_mean: jax.Array  # [T, co] posterior means of u_t
    g0: jax.Array  # [gen]
    kl_ic: jax.Array  # scalar, nats
    kl_co: jax.Array  # scalar, nats (one-sample Monte Carlo)


def forward_trial(
    params: Params,
    cfg: LFADSConfig,
    x: jax.Array,
    n_fwd: int,
    key: jax.Array,
    train: bool,
    sample: bool = True,
) -> TrialOutput:
    """Run the model on one trial's encoder input ``x: [T_obs, neuron_in]`` (counts).

    ``n_fwd``: extra forward-prediction bins the generator runs past the observed window
    (no encoder input there). ``train`` turns dropout on; ``sample=False`` uses posterior
    means for ``z`` and ``u`` (the "posterior mean" inference option).
    """
    dt = params["readout"]["W"].dtype  # the model's float type; counts may come as int/float64
    x = x.astype(dt)
    t_obs = x.shape[0]
    n_total = t_obs + n_fwd
    keys = jax.random.split(key, 8)
    clip = cfg.cell_clip
    x = dropout(keys[0], x, cfg.dropout, train)

    encoders = [params["ic_enc"]] + ([params["ci_enc"]] if cfg.co_dim > 0 else [])
    (fwd, bwd), *ci_seqs = encode(encoders, x, clip)
    h_ic = dropout(keys[1], jnp.concatenate([fwd[-1], bwd[0]]), cfg.dropout, train)
    ic = params["ic"]["W"] @ h_ic + params["ic"]["b"]
    ic_mean, ic_var = ic[: cfg.ic_dim], jnp.exp(ic[cfg.ic_dim :]) + cfg.ic_post_var_min
    z = ic_mean + (
        jnp.sqrt(ic_var) * jax.random.normal(keys[2], ic_mean.shape, dt) if sample else 0.0
    )
    kl_ic = gaussian_kl(ic_mean, ic_var, params["ic_prior_mean"], cfg.ic_prior_var)
    g0 = params["ic_to_g0"]["W"] @ z + params["ic_to_g0"]["b"]
    w_fac = normalised_rows(params["factors"])

    co, mode = cfg.co_dim, GENERATORS[cfg.generator]
    use_jslds = mode.has_jslds
    if co > 0:
        ((cf, cb),) = ci_seqs
        lag = cfg.ci_lag
        cf = jnp.concatenate([jnp.zeros((lag, cf.shape[1]), dt), cf[: t_obs - lag]])
        cb = jnp.concatenate([cb[lag:], jnp.zeros((lag, cb.shape[1]), dt)])
        ci = jnp.concatenate([cf, cb], 1)
        ci = dropout(
            keys[3], jnp.concatenate([ci, jnp.zeros((n_fwd, ci.shape[1]), dt)]), cfg.dropout, train
        )
    else:
        ci = jnp.zeros((n_total, 0), dt)
    eps = jax.random.normal(keys[4], (n_total, co), dt) * (1.0 if sample else 0.0)
    gen_keep = dropout(keys[5], jnp.ones((n_total, cfg.gen_dim), dt), cfg.dropout, train)
    fac_keep = dropout(keys[6], jnp.ones((n_total, cfg.fac_dim), dt), cfg.dropout, train)

    def step(carry: tuple, xs: tuple) -> tuple[tuple, tuple]:
        g, a, con_h, f_prev = carry
        ci_t, eps_t, gk, fk = xs
        if co > 0:
            con_h = lfads_gru(params["con"], con_h, jnp.concatenate([ci_t, f_prev * fk]), clip=clip)
            out = params["co"]["W"] @ con_h + params["co"]["b"]
            mu, var = out[:co], jnp.exp(out[co:]) + cfg.ic_post_var_min
            u = mu + jnp.sqrt(var) * eps_t
        else:
            mu = var = u = jnp.zeros(0, dt)
        g_new = lfads_gru(params["gen"], g, u, clip=clip)
        if use_jslds:
            cell = lambda p, h, inp: lfads_gru(p, h, inp, clip=clip)  # noqa: E731
            a_new, e_star, f_star = jslds_step(
                cell, params["gen"], params["expansion"], a, u, jnp.zeros_like(u)
            )
        else:
            a_new = e_star = f_star = jnp.zeros(0, dt)
        f_g = w_fac @ (g_new * gk)
        f_a = w_fac @ (a_new * gk) if use_jslds else jnp.zeros(0, dt)
        primary = f_a if mode.path == "a" else f_g  # the controller reads what generates
        return (g_new, a_new, con_h, primary), (g_new, a_new, e_star, f_star, u, mu, var, f_g, f_a)

    con_h0 = params["con_h0"] if co > 0 else jnp.zeros(0, dt)
    a0 = g0 if use_jslds else jnp.zeros(0, dt)
    carry0 = (g0, a0, con_h0, w_fac @ g0)
    _, (g, a, e_star, f_star, u, mu, var, f_g, f_a) = jax.lax.scan(
        step, carry0, (ci, eps, gen_keep, fac_keep)
    )
    if co > 0:
        log_q = jnp.sum(gaussian_log_prob(u, mu, var))
        kl_co = log_q - ar1_log_prob(u, params["co_prior"]["log_tau"], cfg.co_prior_var)
    else:
        kl_co = jnp.zeros((), dt)
    readout = params["readout"]
    log_rates = f_g @ readout["W"].T + readout["b"]
    log_rates_a = f_a @ readout["W"].T + readout["b"] if use_jslds else jnp.zeros((n_total, 0), dt)
    return TrialOutput(
        log_rates, log_rates_a, f_g, f_a, g, a, e_star, f_star, u, mu, g0, kl_ic, kl_co
    )


class PathOutput(NamedTuple):
    """One path's outputs, shapes as in ``TrialOutput``."""

    log_rates: jax.Array  # [..., T, neuron]
    factors: jax.Array  # [..., T, fac]
    states: jax.Array  # [..., T, gen]


def path_output(out: TrialOutput, path: PathName) -> PathOutput:
    f = PATHS[path]
    return PathOutput(getattr(out, f.log_rates), getattr(out, f.factors), getattr(out, f.states))


def generating_path(out: TrialOutput, cfg: LFADSConfig) -> PathOutput:
    """The log-rates, factors and states of the path that generates the data."""
    return path_output(out, GENERATORS[cfg.generator].path)


def forward(
    params: Params,
    cfg: LFADSConfig,
    x: jax.Array,
    n_fwd: int,
    key: jax.Array,
    train: bool,
    sample: bool = True,
) -> TrialOutput:
    """``forward_trial`` vmapped over ``x: [trial, T_obs, neuron_in]``; one key per trial."""
    keys = jax.random.split(key, x.shape[0])
    return jax.vmap(lambda xi, ki: forward_trial(params, cfg, xi, n_fwd, ki, train, sample))(
        x, keys
    )


# --------------------------------------------------------------------------- losses


@dataclass(frozen=True)
class LossWeights:
    """λ weights and regulariser scales (DESIGN §3). ``gru`` ignores the JSLDS terms;
    ``slds`` sets λ_RNN to 0 itself."""

    rnn: NonNegative = 1.0  # λ_RNN: NLL of the generator's rates
    jslds: NonNegative = 1.0  # λ_JSLDS: NLL of the JSLDS path's rates
    fixed_point: NonNegative = 1.0  # λ_e: Σ (F(e*, 0) − e*)²
    approx: NonNegative = 1.0  # λ_a: Σ (g − a)²
    kl_ic: NonNegative = 1.0
    kl_co: NonNegative = 1.0
    l2_gen: NonNegative = 1.0  # on the generator's recurrent weights (sum of squares / 2)
    l2_con: NonNegative = 1.0  # on the controller's recurrent weights
    l2_expansion: NonNegative = 0.0


def poisson_nll(log_rates: jax.Array, counts: jax.Array, grad_mask: jax.Array) -> jax.Array:
    """``Σ exp(r) − n r`` over non-NaN ``counts`` (the ``lgamma(n+1)`` constant dropped).

    Entries where ``grad_mask`` is 0 count in the value but pass no gradient (coordinated
    dropout). Shapes ``[..., time, neuron]``; returns the sum over time and neurons per trial.
    """
    seen = ~jnp.isnan(counts)
    n = jnp.where(seen, counts, 0.0)
    elem = jnp.where(seen, jnp.exp(log_rates) - n * log_rates, 0.0)
    elem = grad_mask * elem + jax.lax.stop_gradient((1.0 - grad_mask) * elem)
    return jnp.sum(elem, axis=(-2, -1))


def l2_penalty(params: Params) -> dict[str, jax.Array]:
    """Half sums of squares: generator and controller recurrent weights, expansion weights."""
    half_sq = lambda w: 0.5 * jnp.sum(w**2)  # noqa: E731
    out = {"gen": half_sq(params["gen"]["W_h"])}
    out["con"] = half_sq(params["con"]["W_h"]) if "con" in params else jnp.zeros(())
    out["expansion"] = (
        sum(half_sq(layer["W"]) for layer in params["expansion"])
        if "expansion" in params
        else jnp.zeros(())
    )
    return out


LOSS_TERMS = (
    "nll",
    "nll_jslds",
    "kl_ic",
    "kl_co",
    "fixed_point",
    "approx",
    "l2_gen",
    "l2_con",
    "l2_expansion",
)


def loss_terms(
    params: Params, cfg: LFADSConfig, out: TrialOutput, target: jax.Array, grad_mask: jax.Array
) -> dict[str, jax.Array]:
    """Unweighted terms, each summed within a trial and averaged over trials.

    ``target: [trial, T, neuron]`` counts (NaN = unobserved); ``grad_mask`` broadcasts to it.
    """
    jslds = GENERATORS[cfg.generator].has_jslds
    zero = jnp.zeros(())
    l2 = l2_penalty(params)
    return {
        "nll": jnp.mean(poisson_nll(out.log_rates, target, grad_mask)),
        "nll_jslds": jnp.mean(poisson_nll(out.log_rates_a, target, grad_mask)) if jslds else zero,
        "kl_ic": jnp.mean(out.kl_ic),
        "kl_co": jnp.mean(out.kl_co),
        "fixed_point": jnp.mean(jnp.sum((out.f_star - out.expansion_points) ** 2, (-2, -1)))
        if jslds
        else zero,
        "approx": jnp.mean(jnp.sum((out.gen_states - out.jslds_states) ** 2, (-2, -1)))
        if jslds
        else zero,
        "l2_gen": l2["gen"],
        "l2_con": l2["con"],
        "l2_expansion": l2["expansion"],
    }


def total_loss(
    terms: dict[str, jax.Array],
    cfg: LFADSConfig,
    w: LossWeights,
    kl_ramp: jax.Array,
    l2_ramp: jax.Array,
) -> jax.Array:
    """``λ_RNN NLL(g) + λ_JSLDS NLL(a) + kl·(KL_ic + KL_co) + l2·L2 + λ_e R_e + λ_a R_a``."""
    mode = GENERATORS[cfg.generator]
    lam_rnn = w.rnn if mode.path == "g" else 0.0
    total = lam_rnn * terms["nll"]
    total += kl_ramp * (w.kl_ic * terms["kl_ic"] + w.kl_co * terms["kl_co"])
    total += l2_ramp * (
        w.l2_gen * terms["l2_gen"]
        + w.l2_con * terms["l2_con"]
        + w.l2_expansion * terms["l2_expansion"]
    )
    if mode.has_jslds:
        total += w.jslds * terms["nll_jslds"] + w.fixed_point * terms["fixed_point"]
        total += w.approx * terms["approx"]
    return total


# --------------------------------------------------------------------------- flax module


class LFADS(nnx.Module):
    """A trained (or fresh) model as a flax nnx module: parameters as ``nnx.Param`` leaves.

    The math stays in the pure functions above; this wraps them for users::

        model = LFADS(cfg, n_in, n_out, rngs=nnx.Rngs(0))
        out = model(spikes_heldin, n_fwd=40, key=jax.random.PRNGKey(1))
    """

    def __init__(
        self,
        cfg: LFADSConfig,
        n_in: int,
        n_out: int,
        *,
        rngs: nnx.Rngs | None = None,
        params: Params | None = None,
    ):
        if params is None:
            params = init_params((rngs or nnx.Rngs(0)).params(), cfg, n_in, n_out)
        self.cfg = cfg
        self.params = nnx.data(jax.tree.map(nnx.Param, params))

    def values(self) -> Params:
        """The parameters as a plain dict of arrays (what the pure functions take)."""
        return jax.tree.map(
            lambda v: v[...], self.params, is_leaf=lambda v: isinstance(v, nnx.Variable)
        )

    def __call__(
        self, x: jax.Array, n_fwd: int, key: jax.Array, sample: bool = True
    ) -> TrialOutput:
        """Inference on ``x: [trial, T_obs, neuron_in]`` (dropout off)."""
        return forward(self.values(), self.cfg, x, n_fwd, key, train=False, sample=sample)
