"""LFADS with a JSLDS generator (DESIGN §3): the math as pure functions over a params dict.

One trial at a time (``vmap`` batches it), time-major inside:

- IC encoder: bidirectional GRU over the held-in input ``x: [time, neuron_in]``; its two
  final states give the Gaussian posterior over ``z`` (posterior variance floored at
  ``ic_post_var_min``); ``g0 = W z + b``. Prior ``N(μ_p, ic_prior_var)``, ``μ_p`` learned.
- Controller (``co_dim > 0``): a bidirectional CI encoder whose forward states lag by
  ``ci_lag`` bins (and backward states lead by it), a controller GRU on ``[ci_t, f_{t-1}]``,
  inferred inputs ``u_t ~ N(μ_t, σ²_t)`` with LFADS' AR(1) prior (``ar1_log_prob``: τ in
  bins learned, innovation variance fixed at ``co_prior_var``).
- Generator: the LFADS GRU (clipped; ``generator_cell``) ``g_t = F(g_{t-1}, u_t)``; with
  ``generator`` = ``jslds`` or ``slds`` a JSLDS state ``a_t`` runs beside it from the same
  ``g0``, ``e*_t = E(a_{t-1})``, ``u* = 0``, one jvp of F per step (``models.jslds.jslds_step``).
- Factors ``f = Ŵ_f dropout(g)`` with the rows of ``W_f`` normalised to unit length; both
  paths share the dropout mask, factors and readout. Log-rates ``W_r f + b_r`` over all
  neurons (held-in then held-out), for the observed and the forward bins; rates are in
  spikes per bin.
- Each ``generator`` value is an object in the registry ``GENERATORS`` (``GeneratorMode``:
  ``gru``; ``JSLDSGenerator``: ``jslds``, ``slds``) that owns the parameters it adds, its
  per-step update, its extra loss terms and their weights, and which path generates the
  data: the g path for ``gru`` and ``jslds``, the a path for ``slds`` (λ_RNN = 0). The
  forward pass and the losses delegate to it. The generating path's
  factors feed the controller, and its rates and states are what training validates,
  inference reports and the analysis reads (``generating_path``).

Loss conventions (``loss_terms``): every term is summed over time and units within a trial
and averaged over trials (the ELBO per trial), so λ weights compare like with like.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from lfads_jslds.config import NonNegative, Positive, Rate
from lfads_jslds.models.cells import Cell, init_lfads_gru, lfads_gru, lfads_gru_projected
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


# --------------------------------------------------------------------------- generators


class GeneratorStep(NamedTuple):
    """One generator step's states, each ``[gen]`` (``[0]`` where the mode has no a path).

    The fields ``g`` and ``a`` are named as the paths (``PathName``) whose states they are.
    """

    g: jax.Array  # g_t = F(g_{t-1}, u_t)
    a: jax.Array  # a_t, the JSLDS state
    e_star: jax.Array  # e*_t = E(a_{t-1})
    f_star: jax.Array  # F(e*_t, 0)


@dataclass(frozen=True)
class GeneratorMode:
    """A ``model.generator`` value as an object: what it adds to the model and which of its
    paths generates the data. The registry ``GENERATORS`` holds one per value.

    This base class is ``gru``: the LFADS GRU (``cells.lfads_gru``, clipped; not the
    paper's GRU ``cells.CELLS["gru"]``) alone, one path g, no parameters or losses beyond
    LFADS'. ``JSLDSGenerator`` adds the a path.
    """

    path: PathName = "g"  # the generating path; the g path's NLL is trained only when it is "g"

    @property
    def paths(self) -> tuple[PathName, ...]:
        """The paths this mode runs (factors, rates and states are computed for each)."""
        return ("g",)

    @property
    def has_jslds(self) -> bool:
        """A JSLDS state a_t (expansion network, λ_JSLDS, λ_e, λ_a) beside g_t."""
        return "a" in self.paths

    @property
    def secondary(self) -> PathName | None:
        """The other path (reported beside the generating one), None without a JSLDS."""
        return next((p for p in self.paths if p != self.path), None)

    def init_params(self, cfg: LFADSConfig) -> Params:
        """The parameters this mode adds to LFADS'."""
        return {}

    def initial_a(self, g0: jax.Array) -> jax.Array:
        """``a_0`` from ``g0: [gen]``; ``[0]`` without an a path."""
        return jnp.zeros(0, g0.dtype)

    def step(
        self, cell: Cell, params: Params, g: jax.Array, a: jax.Array, u: jax.Array
    ) -> GeneratorStep:
        """``(g_{t-1}, a_{t-1}, u_t) -> (g_t, a_t, e*_t, F(e*_t, 0))``; ``cell`` is
        ``generator_cell(cfg)`` over ``params["gen"]``."""
        empty = jnp.zeros(0, g.dtype)
        return GeneratorStep(cell(params["gen"], g, u), empty, empty, empty)

    def loss_terms(
        self, out: TrialOutput, target: jax.Array, grad_mask: jax.Array
    ) -> dict[str, jax.Array]:
        """``nll_jslds``, ``fixed_point``, ``approx`` (conventions of ``loss_terms``); 0 here."""
        zero = jnp.zeros(())
        return {"nll_jslds": zero, "fixed_point": zero, "approx": zero}

    def rnn_weight(self, w: LossWeights) -> float:
        """λ_RNN: the g path's NLL is trained only when the g path generates the data."""
        return w.rnn if self.path == "g" else 0.0

    def add_losses(
        self, total: jax.Array, terms: dict[str, jax.Array], w: LossWeights
    ) -> jax.Array:
        """``total`` plus this mode's weighted terms (none here)."""
        return total


@dataclass(frozen=True)
class JSLDSGenerator(GeneratorMode):
    """The LFADS GRU g_t with a JSLDS a_t beside it from the same ``g0`` (``jslds``, and
    ``slds`` where the a path generates): ``e*_t = E(a_{t-1})``, ``u* = 0``, one jvp of F
    per step (``models.jslds.jslds_step``)."""

    @property
    def paths(self) -> tuple[PathName, ...]:
        return ("g", "a")

    def init_params(self, cfg: LFADSConfig) -> Params:
        return {"expansion": init_expansion(cfg.gen_dim, cfg.expansion_layers)}

    def initial_a(self, g0: jax.Array) -> jax.Array:
        return g0

    def step(
        self, cell: Cell, params: Params, g: jax.Array, a: jax.Array, u: jax.Array
    ) -> GeneratorStep:
        g_new = cell(params["gen"], g, u)
        a_new, e_star, f_star = jslds_step(
            cell, params["gen"], params["expansion"], a, u, jnp.zeros_like(u)
        )
        return GeneratorStep(g_new, a_new, e_star, f_star)

    def loss_terms(
        self, out: TrialOutput, target: jax.Array, grad_mask: jax.Array
    ) -> dict[str, jax.Array]:
        """NLL of the a path's rates, ``R_e = Σ (F(e*, 0) − e*)²``, ``R_a = Σ (g − a)²``."""
        sq = lambda d: jnp.mean(jnp.sum(d**2, (-2, -1)))  # noqa: E731
        return {
            "nll_jslds": jnp.mean(poisson_nll(out.log_rates_a, target, grad_mask)),
            "fixed_point": sq(out.f_star - out.expansion_points),
            "approx": sq(out.gen_states - out.jslds_states),
        }

    def add_losses(
        self, total: jax.Array, terms: dict[str, jax.Array], w: LossWeights
    ) -> jax.Array:
        """``total + λ_JSLDS NLL(a) + λ_e R_e + λ_a R_a``."""
        total += w.jslds * terms["nll_jslds"] + w.fixed_point * terms["fixed_point"]
        return total + w.approx * terms["approx"]


GENERATORS: dict[str, GeneratorMode] = {
    "gru": GeneratorMode(path="g"),
    "jslds": JSLDSGenerator(path="g"),
    "slds": JSLDSGenerator(path="a"),  # the JSLDS path alone generates (λ_RNN = 0)
}


def generator_cell(cfg: LFADSConfig) -> Cell:
    """The generator's cell F: the LFADS GRU clipped at ``cfg.cell_clip``,
    ``F(params["gen"], h: [gen], u: [co]) -> [gen]`` (the analysis linearises this too)."""
    return functools.partial(lfads_gru, clip=cfg.cell_clip)


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
    p.update(GENERATORS[cfg.generator].init_params(cfg))
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


def ic_posterior(
    params: Params, cfg: LFADSConfig, h_ic: jax.Array, key: jax.Array, sample: bool
) -> tuple[jax.Array, jax.Array]:
    """``(g0: [gen], KL_ic)`` from the IC encoder's final states ``h_ic: [2 ic_enc]``.

    ``z ~ N(μ, σ²)`` (σ² floored at ``ic_post_var_min``; ``sample=False``: ``z = μ``),
    ``g0 = W z + b``; ``KL_ic`` against ``N(μ_p, ic_prior_var)`` in nats.
    """
    ic = params["ic"]["W"] @ h_ic + params["ic"]["b"]
    ic_mean, ic_var = ic[: cfg.ic_dim], jnp.exp(ic[cfg.ic_dim :]) + cfg.ic_post_var_min
    z = ic_mean + (
        jnp.sqrt(ic_var) * jax.random.normal(key, ic_mean.shape, ic_mean.dtype) if sample else 0.0
    )
    kl_ic = gaussian_kl(ic_mean, ic_var, params["ic_prior_mean"], cfg.ic_prior_var)
    return params["ic_to_g0"]["W"] @ z + params["ic_to_g0"]["b"], kl_ic


def controller_input(
    cfg: LFADSConfig,
    ci_seqs: list[tuple[jax.Array, jax.Array]],
    n_total: int,
    key: jax.Array,
    train: bool,
    dtype: Any,
) -> jax.Array:
    """The controller's input ``ci: [T, 2 ci_enc]`` (``[T, 0]`` for an autonomous model).

    The CI encoder's forward states lag by ``ci_lag`` bins and its backward states lead by
    it (zeros where there is none), zeros over the forward bins, then dropout.
    """
    if cfg.co_dim == 0:
        return jnp.zeros((n_total, 0), dtype)
    ((cf, cb),) = ci_seqs
    t_obs, lag = cf.shape[0], cfg.ci_lag
    cf = jnp.concatenate([jnp.zeros((lag, cf.shape[1]), dtype), cf[: t_obs - lag]])
    cb = jnp.concatenate([cb[lag:], jnp.zeros((lag, cb.shape[1]), dtype)])
    ci = jnp.concatenate([cf, cb], 1)
    ci = jnp.concatenate([ci, jnp.zeros((n_total - t_obs, ci.shape[1]), dtype)])
    return dropout(key, ci, cfg.dropout, train)


def controller_step(
    params: Params,
    cfg: LFADSConfig,
    con_h: jax.Array,
    ci_t: jax.Array,
    f_prev: jax.Array,
    eps_t: jax.Array,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """``(con_h, u_t, μ_t, σ²_t)``: the controller GRU on ``[ci_t, f_{t-1}]`` (``f_prev`` the
    generating path's factors, dropout applied) and ``u_t = μ_t + σ_t ε_t``; all ``[0]``
    but ``con_h`` for an autonomous model."""
    co = cfg.co_dim
    if co == 0:
        empty = jnp.zeros(0, con_h.dtype)
        return con_h, empty, empty, empty
    con_h = lfads_gru(params["con"], con_h, jnp.concatenate([ci_t, f_prev]), clip=cfg.cell_clip)
    out = params["co"]["W"] @ con_h + params["co"]["b"]
    mu, var = out[:co], jnp.exp(out[co:]) + cfg.ic_post_var_min
    return con_h, mu + jnp.sqrt(var) * eps_t, mu, var


class _Generated(NamedTuple):
    """What the generator scan returns, each ``[T, ...]``."""

    states: GeneratorStep  # g, a, e*, F(e*, 0): [T, gen] ([T, 0] without an a path)
    inputs: jax.Array  # [T, co] u_t
    co_mean: jax.Array  # [T, co]
    co_var: jax.Array  # [T, co]
    factors: dict[PathName, jax.Array]  # per path run, [T, fac]


def generate(
    params: Params,
    cfg: LFADSConfig,
    g0: jax.Array,
    ci: jax.Array,
    eps: jax.Array,
    keep: tuple[jax.Array, jax.Array],
) -> _Generated:
    """Controller and generator over ``T`` bins in one ``lax.scan``.

    ``ci: [T, ·]`` controller input, ``eps: [T, co]`` the inferred inputs' noise, ``keep``
    the dropout masks ``([T, gen], [T, fac])`` both paths share. The controller reads the
    generating path's factors of the previous bin.
    """
    mode, cell = GENERATORS[cfg.generator], generator_cell(cfg)
    w_fac = normalised_rows(params["factors"])
    con_h0 = params["con_h0"] if cfg.co_dim > 0 else jnp.zeros(0, g0.dtype)

    def step(carry: tuple, xs: tuple) -> tuple[tuple, tuple]:
        g, a, con_h, f_prev = carry
        ci_t, eps_t, gk, fk = xs
        con_h, u, mu, var = controller_step(params, cfg, con_h, ci_t, f_prev * fk, eps_t)
        new = mode.step(cell, params, g, a, u)
        fac = {p: w_fac @ (getattr(new, p) * gk) for p in mode.paths}
        return (new.g, new.a, con_h, fac[mode.path]), (new, u, mu, var, fac)

    carry0 = (g0, mode.initial_a(g0), con_h0, w_fac @ g0)
    return _Generated(*jax.lax.scan(step, carry0, (ci, eps, *keep))[1])


def readout(params: Params, factors: jax.Array) -> jax.Array:
    """Log-rates ``[T, neuron]`` (spikes per bin, log) from ``factors: [T, fac]``."""
    return factors @ params["readout"]["W"].T + params["readout"]["b"]


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
    n_total = x.shape[0] + n_fwd
    keys = jax.random.split(key, 8)
    x = dropout(keys[0], x.astype(dt), cfg.dropout, train)
    encoders = [params["ic_enc"]] + ([params["ci_enc"]] if cfg.co_dim > 0 else [])
    (fwd, bwd), *ci_seqs = encode(encoders, x, cfg.cell_clip)
    h_ic = dropout(keys[1], jnp.concatenate([fwd[-1], bwd[0]]), cfg.dropout, train)
    g0, kl_ic = ic_posterior(params, cfg, h_ic, keys[2], sample)
    ci = controller_input(cfg, ci_seqs, n_total, keys[3], train, dt)
    eps = jax.random.normal(keys[4], (n_total, cfg.co_dim), dt) * (1.0 if sample else 0.0)
    keep = (
        dropout(keys[5], jnp.ones((n_total, cfg.gen_dim), dt), cfg.dropout, train),
        dropout(keys[6], jnp.ones((n_total, cfg.fac_dim), dt), cfg.dropout, train),
    )
    gen = generate(params, cfg, g0, ci, eps, keep)
    if cfg.co_dim > 0:
        log_q = jnp.sum(gaussian_log_prob(gen.inputs, gen.co_mean, gen.co_var))
        kl_co = log_q - ar1_log_prob(gen.inputs, params["co_prior"]["log_tau"], cfg.co_prior_var)
    else:
        kl_co = jnp.zeros((), dt)
    empty = jnp.zeros((n_total, 0), dt)  # a path's outputs without one
    f_a = gen.factors.get("a", empty)
    return TrialOutput(
        log_rates=readout(params, gen.factors["g"]),
        log_rates_a=readout(params, f_a) if "a" in gen.factors else empty,
        factors=gen.factors["g"],
        factors_a=f_a,
        gen_states=gen.states.g,
        jslds_states=gen.states.a,
        expansion_points=gen.states.e_star,
        f_star=gen.states.f_star,
        inputs=gen.inputs,
        co_mean=gen.co_mean,
        g0=g0,
        kl_ic=kl_ic,
        kl_co=kl_co,
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
    l2 = l2_penalty(params)
    terms = {
        "nll": jnp.mean(poisson_nll(out.log_rates, target, grad_mask)),
        "kl_ic": jnp.mean(out.kl_ic),
        "kl_co": jnp.mean(out.kl_co),
        "l2_gen": l2["gen"],
        "l2_con": l2["con"],
        "l2_expansion": l2["expansion"],
        **GENERATORS[cfg.generator].loss_terms(out, target, grad_mask),
    }
    return {k: terms[k] for k in LOSS_TERMS}


def total_loss(
    terms: dict[str, jax.Array],
    cfg: LFADSConfig,
    w: LossWeights,
    kl_ramp: jax.Array,
    l2_ramp: jax.Array,
) -> jax.Array:
    """``λ_RNN NLL(g) + λ_JSLDS NLL(a) + kl·(KL_ic + KL_co) + l2·L2 + λ_e R_e + λ_a R_a``."""
    mode = GENERATORS[cfg.generator]
    total = mode.rnn_weight(w) * terms["nll"]
    total += kl_ramp * (w.kl_ic * terms["kl_ic"] + w.kl_co * terms["kl_co"])
    total += l2_ramp * (
        w.l2_gen * terms["l2_gen"]
        + w.l2_con * terms["l2_con"]
        + w.l2_expansion * terms["l2_expansion"]
    )
    return mode.add_losses(total, terms, w)


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
