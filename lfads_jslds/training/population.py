"""A population of K LFADS members trained by one jitted step (PBT's members in one program).

Parameters, optimiser states, random keys and the searched hyperparameters are stacked
along a leading member axis ``[K, ...]`` and the single-member step
(``training.lfads.member_step``) is ``vmap``ped over it, so K small models' matmuls become
batched ones: one process fills the CPU's cores or a GPU.

Searched per member (``Hyperparams``, arrays ``[K]``): the learning rate as ``lr_scale``,
a factor on ``cfg.train.lr`` (the schedule, clipping and Adam constants stay shared), and
the loss weights λ_kl_ic, λ_kl_co, λ_l2_gen, λ_l2_con, λ_a (``approx``) and λ_e
(``fixed_point``). The other loss weights come from ``cfg.loss``. Dropout and
coordinated-dropout rates are shared and static in this version (they are Python floats
inside the model, not traced values).

Each member has its own seed (``loop.seed_keys``): its own initial weights, batch order
(``fold_in(data_key, epoch)``, so batch indices are ``[K, batch]``) and step noise
(``fold_in(step_key, step)``), exactly as a single run with that seed, so member k's
trajectory equals ``training.lfads.make_train_step``'s with member k's seed, lr scale and
loss weights. The KL and L2 ramps follow the shared epoch.

NaN guard: each member's step is ``guarded_update``'s, so a member whose step is not
finite keeps its weights and optimiser state (the others step on); refused steps are
counted per member. There is no rollback here: PBT's exploit replaces a failing member.

Exploit (``exploit``) gathers whole members along the member axis: weights, optimiser
state and hyperparameters; each member keeps its own random keys, so a copy does not
replay its source's noise.

Resume: ``train_population`` saves the stacked state (``Checkpoints``, one tree plus a
meta dict) every ``cfg.train.checkpoint_every`` epochs; resumed, it ends bit for bit where
an uninterrupted run ends.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lfads_jslds.data.dataset import LFADSData
from lfads_jslds.models import lfads
from lfads_jslds.training import lfads as lfads_training
from lfads_jslds.training.checkpoints import Checkpoints
from lfads_jslds.training.loop import drop_later_steps, restore_newest_intact, seed_keys
from lfads_jslds.training.run_config import RunConfig


class Hyperparams(NamedTuple):
    """The searched values, one entry per member (``[K]`` each; scalars inside the vmap)."""

    lr_scale: jax.Array  # × cfg.train.lr
    kl_ic: jax.Array
    kl_co: jax.Array
    l2_gen: jax.Array
    l2_con: jax.Array
    approx: jax.Array  # λ_a
    fixed_point: jax.Array  # λ_e


def hyperparams(cfg: RunConfig, k: int, **values: Sequence[float] | float) -> Hyperparams:
    """``[k]`` arrays: ``values`` where given (one per member, or one for all), else
    ``cfg.loss``'s weight (and lr scale 1)."""
    unknown = sorted(values.keys() - set(Hyperparams._fields))
    if unknown:
        raise ValueError(f"not a searched hyperparameter: {', '.join(unknown)}")
    defaults = {"lr_scale": 1.0} | {f: getattr(cfg.loss, f) for f in Hyperparams._fields[1:]}
    dtype = jnp.result_type(float)  # float64 where jax_enable_x64 is on
    return Hyperparams(
        **{
            n: jnp.broadcast_to(jnp.asarray(values.get(n, d), dtype), (k,))
            for n, d in defaults.items()
        }
    )


def loss_weights(base: lfads.LossWeights, h: Hyperparams) -> lfads.LossWeights:
    """``base`` with the searched weights replaced by ``h``'s (traced values allowed)."""
    return dataclasses.replace(base, **{f: getattr(h, f) for f in Hyperparams._fields[1:]})


class PopulationState(NamedTuple):
    """K members stacked; every leaf ``[K, ...]``."""

    params: Any
    opt_state: Any
    hparams: Hyperparams
    data_key: jax.Array  # [K, 2] batch order
    step_key: jax.Array  # [K, 2] coordinated dropout, dropout, posterior samples


class PopulationData(NamedTuple):
    """What every member trains and validates on (shared)."""

    inputs: jax.Array  # [trial, T_obs, held-in]
    targets: jax.Array  # [trial, T, neuron]
    sv: lfads_training.SampleValidation
    n_fwd: int

    @property
    def n_trials(self) -> int:
        return self.inputs.shape[0]


def population_data(cfg: RunConfig, data: LFADSData) -> PopulationData:
    """The training arrays and the sample-validation set, as ``training.lfads.train`` has them."""
    t = cfg.train
    sv = lfads_training.sample_validation(data.eval_input, t.sv_rate, t.seed)
    inputs, targets = lfads_training.training_arrays(data, sv, t)
    return PopulationData(jnp.asarray(inputs), jnp.asarray(targets), sv, data.n_fwd)


def make_optimizer(cfg: RunConfig, pop: PopulationData) -> optax.GradientTransformation:
    """The single trainer's optimiser (rate decayed once per epoch), shared by all members."""
    return lfads_training.make_optimizer(cfg, pop.n_trials // cfg.train.batch_size)


def init_population(
    cfg: RunConfig, data: LFADSData, hparams: Hyperparams, seeds: Sequence[int]
) -> PopulationState:
    """Member k: ``init_state`` of a single run with seed ``seeds[k]``, and ``hparams[k]``."""
    if len(seeds) != hparams.lr_scale.shape[0]:
        raise ValueError(f"{len(seeds)} seeds for {hparams.lr_scale.shape[0]} members")
    keys = [seed_keys(s) for s in seeds]
    stack = lambda name: jnp.stack([getattr(k, name) for k in keys])  # noqa: E731
    mean_counts = np.nanmean(data.train_target[:, : data.n_obs], axis=(0, 1))
    params = jax.vmap(
        lambda key: lfads.init_params(key, cfg.model, data.n_heldin, data.n_neurons, mean_counts)
    )(stack("init"))
    tx = make_optimizer(cfg, population_data(cfg, data))
    return PopulationState(params, jax.vmap(tx.init)(params), hparams, stack("data"), stack("step"))


def batch_order(data_key: jax.Array, epoch: int, n_trials: int) -> jax.Array:
    """``[K, n_trials]``: each member's trial order in ``epoch`` (the single trainer's)."""
    return jax.vmap(lambda k: jax.random.permutation(jax.random.fold_in(k, epoch), n_trials))(
        data_key
    )


def make_population_step(
    cfg: RunConfig, tx: optax.GradientTransformation, n_fwd: int
) -> Callable[..., Any]:
    """Jitted ``(state, inputs, targets, idx [K, batch], step, kl_w, l2_w)`` →
    ``(state, terms {name: [K]}, ok [K])``: one guarded step of every member."""
    member = lfads_training.member_step(cfg, tx, n_fwd)

    def one(params, opt_state, h, step_key, idx, inputs, targets, step, kl_w, l2_w):
        w = loss_weights(cfg.loss, h)
        args = inputs, targets, idx, step_key, step, h.lr_scale, kl_w, l2_w, w
        return member(params, opt_state, *args)

    members = jax.vmap(one, in_axes=(0, 0, 0, 0, 0, None, None, None, None, None))

    @jax.jit
    def step_fn(state, inputs, targets, idx, step, kl_w, l2_w):
        params, opt_state, terms, ok = members(
            state.params, state.opt_state, state.hparams, state.step_key, idx,
            inputs, targets, step, kl_w, l2_w,
        )  # fmt: skip
        return state._replace(params=params, opt_state=opt_state), terms, ok

    return step_fn


def make_population_validation(cfg: RunConfig) -> Callable[..., Any]:
    """Jitted ``(params [K, ...], x, target) -> (nll, rel)``, each ``[K, trial]``:
    ``training.lfads.make_validation`` for every member."""
    return jax.jit(jax.vmap(lfads_training.make_validation(cfg), in_axes=(0, None, None)))


def validate(val_fn: Callable[..., Any], params: Any, pop: PopulationData, size: int) -> np.ndarray:
    """``[K]``: each member's sample-validation NLL averaged over the eval trials (in
    batches of ``size`` trials, as the single trainer validates)."""
    x, target = jnp.asarray(pop.sv.input), jnp.asarray(pop.sv.target)
    chunks = [
        np.asarray(val_fn(params, x[i : i + size], target[i : i + size])[0])
        for i in range(0, x.shape[0], size)
    ]
    return np.concatenate(chunks, axis=1).mean(axis=1)


@jax.jit
def exploit(state: PopulationState, winners: jax.Array) -> PopulationState:
    """PBT's exploit: member i takes member ``winners[i]``'s weights, optimiser state and
    hyperparameters (``winners[i] = i`` keeps its own); random keys stay each member's."""
    take = lambda tree: jax.tree.map(lambda x: x[winners], tree)  # noqa: E731
    return state._replace(
        params=take(state.params), opt_state=take(state.opt_state), hparams=take(state.hparams)
    )


@functools.lru_cache(maxsize=4)
def _compiled(cfg: RunConfig, n_trials: int, n_fwd: int) -> tuple[Callable, Callable]:
    """The step and validation of ``train_population``, built once per config and sizes:
    a search calls it once per perturbation interval, and jit caches by function."""
    tx = lfads_training.make_optimizer(cfg, n_trials // cfg.train.batch_size)
    return make_population_step(cfg, tx, n_fwd), make_population_validation(cfg)


class PopulationResult(NamedTuple):
    state: PopulationState
    val_nll: np.ndarray  # [epoch, K] sample-validation NLL after each epoch of this call
    skipped: np.ndarray  # [K] refused (non-finite) steps per member, all epochs
    epochs: int  # epochs completed


def train_population(
    cfg: RunConfig,
    data: LFADSData,
    hparams: Hyperparams,
    seeds: Sequence[int],
    epochs: int,
    checkpoints: Path | None = None,
    resume: bool = False,
) -> PopulationResult:
    """Train every member to ``epochs`` epochs (validating after each), saving the stacked
    state into ``checkpoints`` every ``cfg.train.checkpoint_every`` epochs and at the end.

    ``resume``: continue from the newest intact checkpoint there (its hyperparameters,
    which exploit may have changed, replace ``hparams``); none yet: start afresh.
    """
    t = cfg.train
    pop = population_data(cfg, data)
    step_fn, val_fn = _compiled(cfg, pop.n_trials, pop.n_fwd)
    state = init_population(cfg, data, hparams, seeds)
    saved = None if checkpoints is None else Checkpoints(checkpoints, keep=2)
    epoch, step, skipped = 0, 0, jnp.zeros(len(seeds), jnp.int32)
    if resume and saved is not None and saved.latest_step() is not None:
        epoch, state, meta = restore_newest_intact(saved, state)
        drop_later_steps(checkpoints, epoch)  # redone
        step, skipped = meta["step"], jnp.asarray(meta["skipped"], jnp.int32)
    steps_per_epoch = pop.n_trials // t.batch_size
    val_nll = []
    while epoch < epochs:
        kl_w = lfads_training.ramp(epoch, t.kl_start_epoch, t.kl_ramp_epochs)
        l2_w = lfads_training.ramp(epoch, t.l2_start_epoch, t.l2_ramp_epochs)
        order = batch_order(state.data_key, epoch, pop.n_trials)
        for b in range(steps_per_epoch):
            idx = order[:, b * t.batch_size : (b + 1) * t.batch_size]
            state, _, ok = step_fn(state, pop.inputs, pop.targets, idx, step, kl_w, l2_w)
            skipped = skipped + ~ok
            step += 1
        epoch += 1
        val_nll.append(validate(val_fn, state.params, pop, t.batch_size))
        if saved is not None and (epoch % t.checkpoint_every == 0 or epoch == epochs):
            meta = {"epoch": epoch, "step": step, "skipped": np.asarray(skipped).tolist()}
            saved.save(epoch, state, meta)
    val = np.asarray(val_nll).reshape(-1, len(seeds))
    return PopulationResult(state, val, np.asarray(skipped), epoch)
