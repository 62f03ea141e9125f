"""Train LFADS(-JSLDS) on trial tensors: epochs of shuffled batches, one jitted step.

Determinism: batch order comes from ``fold_in(data_key, epoch)`` and every random draw of
a step (coordinated dropout, dropout, posterior samples) from ``fold_in(step_key, step)``,
so a run resumed from a checkpoint ends with the same weights as an uninterrupted one. A run
killed before its first checkpoint resumes from epoch 0, with the same result.

NaN guard: a step whose loss, gradients or updated weights and optimiser state are not
finite leaves weights and optimiser state untouched; after ``max_bad_steps`` of them in a
row the run rolls back to the last epoch that ended cleanly and halves the learning rate
(``max_rollbacks`` times at most, then it stops with a message). Non-finite weights are
never saved.

Validation never rewards copying input to output (lfads-torch's sample validation): a
fixed random mask (``train.sv_rate`` of the entries, drawn once from ``train.seed``) picks
held-in observed entries of the eval trials; validation zeroes them in the encoder input
(the other entries scaled by 1/(1 − sv_rate), as coordinated dropout scales) and scores
only them: the Poisson NLL per trial of the generating path's rates (posterior means,
dropout off). Early stopping watches the exponentially smoothed value; comparison starts
once the KL and L2 ramps are complete.

With ``train.use_eval_heldin`` (NLB allows it: held-in spikes are model inputs) the eval
trials also join the training batches, with the same sample-validation entries withheld
from the encoder and NaN in the target, so validation stays honest.

The eval trials' held-out neurons and forward bins (``data.eval_target``) are read by
nothing in this module: they serve only the final score (``pipeline.evaluate``).

Files (``TrainFiles``; the run folder names them): the latest checkpoints, the
early-stopping weights and a CSV log with one row per epoch.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from lfads_jslds.data.dataset import LFADSData
from lfads_jslds.models import lfads
from lfads_jslds.models.jslds import relative_error
from lfads_jslds.training import loop
from lfads_jslds.training.checkpoints import Checkpoints
from lfads_jslds.training.loop import (
    CsvLog,
    EarlyStopping,
    NanGuard,
    all_finite,
    drop_later_steps,
    guarded_update,
    resume_from_checkpoint,
    seed_keys,
)
from lfads_jslds.training.run_config import RunConfig, TrainConfig


class TrainFiles(NamedTuple):
    """Where ``train`` writes (``pipeline.run.RunFolder.train_files`` names them)."""

    checkpoints: Path  # the latest two, for resume
    best: Path  # the early-stopping weights
    log: Path  # CSV, one row per epoch


def ramp(epoch: int, start: int, length: int) -> float:
    """0 before ``start``, then linear to 1 over ``length`` epochs (1 at once if 0)."""
    if epoch < start:
        return 0.0
    return 1.0 if length == 0 else min(1.0, (epoch - start + 1) / length)


def make_optimizer(cfg: RunConfig, steps_per_epoch: int) -> optax.GradientTransformation:
    """``loop.make_optimizer`` with AdamW and the rate decayed once per epoch."""
    t = cfg.train
    return loop.make_optimizer(
        t.lr,
        t.lr_decay,
        t.clip_norm,
        decay_every=steps_per_epoch,
        staircase=True,
        eps=t.adam_eps,
        weight_decay=t.weight_decay,
    )


def coordinated_dropout(
    key: jax.Array, x: jax.Array, n_target_time: int, n_target_neurons: int, rate: float
) -> tuple[jax.Array, jax.Array]:
    """Mask a ``rate`` of the encoder's input entries; gradients flow only through those.

    Returns the scaled input and a ``grad_mask [trial, T, neuron]`` for the targets: 0 on
    the held-in observed entries the encoder saw (so the model cannot learn to copy its
    input), 1 elsewhere (masked entries, held-out neurons, forward bins).
    """
    if rate == 0.0:
        return x, jnp.ones((1, 1, 1))
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    x_in = jnp.where(keep, x / (1.0 - rate), 0.0)
    mask = jnp.ones((x.shape[0], n_target_time, n_target_neurons))
    mask = mask.at[:, : x.shape[1], : x.shape[2]].set(1.0 - keep)
    return x_in, mask


#: Stream of ``train.seed`` the sample-validation mask is drawn from (apart from the keys).
SV_STREAM = 1


@dataclass(frozen=True)
class SampleValidation:
    """The eval trials as validation sees them; arrays ``[trial, T_obs, held-in]``."""

    mask: np.ndarray  # True: withheld from the encoder, scored
    input: np.ndarray  # encoder input: withheld entries 0, the others scaled by 1/(1 − rate)
    target: np.ndarray  # counts at the withheld entries, NaN elsewhere


def sample_validation(eval_input: np.ndarray, rate: float, seed: int) -> SampleValidation:
    """A fixed mask over the eval trials' held-in observed entries (lfads-torch's sample
    validation): the same entries every epoch, and on resume."""
    mask = np.random.default_rng([seed, SV_STREAM]).random(eval_input.shape) < rate
    x = eval_input.astype(np.float32)
    return SampleValidation(
        mask,
        np.where(mask, 0.0, x / (1.0 - rate)).astype(np.float32),
        np.where(mask, x, np.nan).astype(np.float32),
    )


def training_arrays(
    data: LFADSData, sv: SampleValidation, t: TrainConfig
) -> tuple[np.ndarray, np.ndarray]:
    """``(inputs, targets)`` the training batches are drawn from: the train trials, then with
    ``t.use_eval_heldin`` the eval trials, whose input is validation's and whose target holds
    only their held-in observed counts outside the sample-validation mask (held-out neurons,
    forward bins and withheld entries NaN, which the Poisson NLL skips)."""
    if not t.use_eval_heldin:
        return data.train_input, data.train_target
    n_obs, n_in = sv.input.shape[1:]
    target = np.full((sv.input.shape[0], *data.train_target.shape[1:]), np.nan, np.float32)
    target[:, :n_obs, :n_in] = np.where(sv.mask, np.nan, data.eval_input)
    return (
        np.concatenate([data.train_input, sv.input]),
        np.concatenate([data.train_target, target]),
    )


def member_step(cfg: RunConfig, tx: optax.GradientTransformation, n_fwd: int) -> Callable[..., Any]:
    """One member's step, unjitted and traceable in every argument (``training.population``
    vmaps it over members): ``(params, opt, inputs, targets, idx, step_key, step, lr_scale,
    kl_w, l2_w, w)`` with ``w`` the ``LossWeights`` (fields may be traced; ``total_loss``
    branches only on ``cfg.model``). Returns ``(params, opt, terms, ok)``."""

    def loss_fn(params: Any, x, target, key, kl_w, l2_w, w: lfads.LossWeights):
        k_cd, k_model = jax.random.split(key)
        x_in, grad_mask = coordinated_dropout(k_cd, x, *target.shape[1:], cfg.train.cd_rate)
        out = lfads.forward(params, cfg.model, x_in, n_fwd, k_model, train=True)
        terms = lfads.loss_terms(params, cfg.model, out, target, grad_mask)
        return lfads.total_loss(terms, cfg.model, w, kl_w, l2_w), terms

    def step(params, opt_state, inputs, targets, idx, step_key, step, lr_scale, kl_w, l2_w, w):
        key = jax.random.fold_in(step_key, step)
        args = inputs[idx], targets[idx], key, kl_w, l2_w, w
        new = guarded_update(loss_fn, tx, params, opt_state, lr_scale, *args)
        return new.params, new.opt_state, dict(new.aux, total=new.loss), new.ok

    return step


def make_train_step(
    cfg: RunConfig, tx: optax.GradientTransformation, n_fwd: int
) -> Callable[..., Any]:
    """Jitted ``(params, opt, inputs, targets, idx, step, lr_scale, kl_w, l2_w)``.

    Returns ``(params, opt, terms, ok)``; ``inputs``/``targets`` are the whole train set
    on device and ``idx [batch]`` picks the batch inside the jit.
    """
    step, step_key = member_step(cfg, tx, n_fwd), seed_keys(cfg.train.seed).step

    @jax.jit
    def step_fn(params, opt_state, inputs, targets, idx, i, lr_scale, kl_w, l2_w):
        return step(
            params, opt_state, inputs, targets, idx, step_key, i, lr_scale, kl_w, l2_w, cfg.loss
        )

    return step_fn


def make_validation(cfg: RunConfig) -> Callable[..., Any]:
    """Jitted ``(params, x, target) -> (nll, rel)`` per eval trial, over the observed window.

    ``x``, ``target``: ``SampleValidation.input`` / ``.target``. ``nll``: Poisson NLL of
    the generating path's rates at the withheld entries (posterior means, dropout off);
    ``rel``: mean ‖a − g‖/‖g‖ (0 without a JSLDS).
    """

    @jax.jit
    def val_fn(params, x, target):
        out = lfads.forward(params, cfg.model, x, 0, jax.random.PRNGKey(0), False, False)
        log_rates = lfads.generating_path(out, cfg.model).log_rates[:, :, : x.shape[2]]  # held-in
        nll = lfads.poisson_nll(log_rates, target, 1.0)
        if lfads.GENERATORS[cfg.model.generator].has_jslds:
            rel = jnp.mean(relative_error(out.jslds_states, out.gen_states), axis=1)
        else:
            rel = jnp.zeros(x.shape[0])
        return nll, rel

    return val_fn


@dataclass
class Progress:
    """What a checkpoint must carry besides weights to resume exactly."""

    guard: NanGuard
    stopping: EarlyStopping = field(default_factory=EarlyStopping)
    epoch: int = 0  # epochs completed
    step: int = 0
    lr_scale: float = 1.0

    def meta(self) -> dict[str, Any]:
        """The checkpoint's meta: flat JSON."""
        g = self.guard
        counts = {"rollbacks": g.rollbacks, "skipped": g.skipped}
        return {"epoch": self.epoch, "step": self.step, "lr_scale": self.lr_scale, **counts} | (
            asdict(self.stopping)
        )

    @classmethod
    def from_meta(cls, t: TrainConfig, meta: dict[str, Any] | None = None) -> Progress:
        m = dict(meta or {})
        counts = m.pop("skipped", 0), m.pop("rollbacks", 0)
        guard = NanGuard(t.max_bad_steps, t.max_rollbacks, *counts)
        stops = {f.name for f in fields(EarlyStopping)}
        stopping = EarlyStopping(**{k: m.pop(k) for k in stops & m.keys()})
        return cls(guard, stopping, **m)


def init_state(cfg: RunConfig, data: LFADSData, tx: optax.GradientTransformation) -> tuple:
    mean_counts = np.nanmean(data.train_target[:, : data.n_obs], axis=(0, 1))
    params = lfads.init_params(
        seed_keys(cfg.train.seed).init, cfg.model, data.n_heldin, data.n_neurons, mean_counts
    )
    return params, tx.init(params)


COLUMNS = (
    "epoch",
    "step",
    "lr",
    "kl_weight",
    "l2_weight",
    "total",
    *lfads.LOSS_TERMS,
    "val_nll_sv",
    "val_nll_sv_smoothed",
    "val_rel_error",
    "skipped",
    "seconds",
)


class _Epochs(NamedTuple):
    """What every epoch of one ``train`` call uses."""

    cfg: RunConfig
    files: TrainFiles
    step_fn: Callable[..., Any]
    validate: Callable[[Any], tuple[float, float]]
    inputs: jax.Array  # [trial, T_obs, held-in], all the training batches are drawn from
    targets: jax.Array  # [trial, T, neuron]
    latest: Checkpoints
    best: Checkpoints

    @property
    def steps_per_epoch(self) -> int:
        return self.inputs.shape[0] // self.cfg.train.batch_size


def _start(
    cfg: RunConfig, files: TrainFiles, data: LFADSData, tx: optax.GradientTransformation, resume
) -> tuple[tuple[Any, Any], Progress]:
    """Fresh ``(params, opt_state)`` and progress, or (``resume``) the newest intact
    checkpoint's; what a resumed run redoes (later checkpoints, log rows) is dropped."""
    state = init_state(cfg, data, tx)
    prog = Progress.from_meta(cfg.train)
    if resume:
        restored = resume_from_checkpoint(Checkpoints(files.checkpoints, keep=2), state, files.log)
        if restored is not None:
            _, state, meta = restored
            prog = Progress.from_meta(cfg.train, meta)
        drop_later_steps(files.best, prog.epoch)
    return state, prog


def _validator(cfg: RunConfig, sv: SampleValidation) -> Callable[[Any], tuple[float, float]]:
    """``params -> (nll, rel)``: ``make_validation``'s per-trial values averaged over the
    eval trials, run in batches of ``train.batch_size``."""
    val_fn, size = make_validation(cfg), cfg.train.batch_size
    x, target = jnp.asarray(sv.input), jnp.asarray(sv.target)

    def validate(params: Any) -> tuple[float, float]:
        chunks = [
            val_fn(params, x[i : i + size], target[i : i + size])
            for i in range(0, x.shape[0], size)
        ]
        nll, rel = (np.concatenate([np.asarray(c[j]) for c in chunks]) for j in range(2))
        return float(nll.mean()), float(rel.mean())

    return validate


def _train_epoch(
    run: _Epochs, state: tuple, good: tuple, prog: Progress, weights: tuple[float, float]
) -> tuple[tuple, tuple, dict[str, float]]:
    """One pass over the training trials in the epoch's order; ``weights``: (KL, L2).

    Returns ``(state, good, means)``: ``good`` is the state at the end of the last epoch
    without a refused step (a rollback returns to it); ``means`` the loss terms averaged
    over the applied steps. Raises ``FloatingPointError`` once the guard says stop, after
    saving ``good``.
    """
    t, epoch = run.cfg.train, prog.epoch
    data_key = seed_keys(t.seed).data
    order = jax.random.permutation(jax.random.fold_in(data_key, epoch), run.inputs.shape[0])
    sums: dict[str, float] = {}
    n_ok = 0
    for b in range(run.steps_per_epoch):
        idx = order[b * t.batch_size : (b + 1) * t.batch_size]
        *state, terms, ok = run.step_fn(
            *state, run.inputs, run.targets, idx, prog.step, prog.lr_scale, *weights
        )
        prog.step += 1
        verdict = prog.guard.after(bool(ok))
        if verdict == "ok":
            n_ok += 1
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + float(v)
        elif verdict == "roll back":
            state = good
            prog.lr_scale *= 0.5
            tqdm.write(
                f"warning: {t.max_bad_steps} non-finite steps in a row at step {prog.step}: "
                f"rolled back to epoch {epoch} start, lr scale now {prog.lr_scale:g}"
            )
        elif verdict == "stop":
            if run.latest.latest_step() != epoch:
                run.latest.save(epoch, good, prog.meta())
            fix = f"The lr scale is {prog.lr_scale:g}: check the data or lower train.lr."
            raise prog.guard.stop_error(prog.step, run.files.checkpoints, fix)
    prog.epoch += 1
    state = tuple(state)
    if n_ok == run.steps_per_epoch:
        good = state
    return state, good, {k: v / max(n_ok, 1) for k, v in sums.items()}


def _validate(run: _Epochs, params: Any, prog: Progress, warm: bool) -> tuple[float, float]:
    """Validate when due (``train.val_every``, and after the last epoch), update early
    stopping and save a new best; ``(nll, rel)``, NaN when not due."""
    t = run.cfg.train
    if not (prog.epoch % t.val_every == 0 or prog.epoch == t.max_epochs):
        return math.nan, math.nan
    val = run.validate(params)
    improved = prog.stopping.update(val[0], prog.epoch, t.smoothing, t.val_every, warm)
    if improved and bool(all_finite(params)):
        run.best.save(prog.epoch, params, {"epoch": prog.epoch, "ema": prog.stopping.ema})
    return val


def _log_row(
    t: TrainConfig, prog: Progress, weights: tuple, means: dict, val: tuple, seconds: float
) -> list[Any]:
    """The epoch's ``COLUMNS``."""
    lr = t.lr * t.lr_decay ** (prog.epoch - 1) * prog.lr_scale
    ema = prog.stopping.ema
    return [
        prog.epoch,
        prog.step,
        lr,
        *weights,
        *(means.get(k, math.nan) for k in ("total", *lfads.LOSS_TERMS)),
        val[0],
        ema if ema is not None else math.nan,
        val[1],
        prog.guard.skipped,
        seconds,
    ]


def train(
    cfg: RunConfig,
    files: TrainFiles,
    data: LFADSData,
    resume: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Train, checkpointing into ``files``; returns the summary (``train.json``)."""
    t = cfg.train
    sv = sample_validation(data.eval_input, t.sv_rate, t.seed)
    train_in, train_tgt = training_arrays(data, sv, t)
    tx = make_optimizer(cfg, train_in.shape[0] // t.batch_size)
    state, prog = _start(cfg, files, data, tx, resume)
    run = _Epochs(
        cfg,
        files,
        make_train_step(cfg, tx, data.n_fwd),
        _validator(cfg, sv),
        jnp.asarray(train_in),
        jnp.asarray(train_tgt),
        Checkpoints(files.checkpoints, keep=2),
        Checkpoints(files.best, keep=1),
    )
    ramps_done = max(t.kl_start_epoch + t.kl_ramp_epochs, t.l2_start_epoch + t.l2_ramp_epochs)
    good, t0, stop_reason = state, time.perf_counter(), "max_epochs"
    with (
        CsvLog(files.log, COLUMNS) as log,
        tqdm(total=t.max_epochs, initial=prog.epoch, disable=not progress, desc="train") as bar,
    ):
        while prog.epoch < t.max_epochs:
            weights = (
                ramp(prog.epoch, t.kl_start_epoch, t.kl_ramp_epochs),
                ramp(prog.epoch, t.l2_start_epoch, t.l2_ramp_epochs),
            )
            state, good, means = _train_epoch(run, state, good, prog, weights)
            val = _validate(run, state[0], prog, warm=prog.epoch >= ramps_done)
            log.row(_log_row(t, prog, weights, means, val, time.perf_counter() - t0))
            bar.set_postfix(
                nll=f"{means.get('nll', math.nan):.4g}",
                kl=f"{means.get('kl_ic', 0) + means.get('kl_co', 0):.3g}",
                val=f"{val[0]:.4g}",
                rel=f"{val[1]:.3f}",
            )
            bar.update(1)
            stopping = prog.stopping.since_best >= t.patience and prog.epoch >= ramps_done
            if stopping or prog.epoch % t.checkpoint_every == 0 or prog.epoch == t.max_epochs:
                run.latest.save(prog.epoch, good, prog.meta())
            if stopping:
                stop_reason = (
                    f"early stopping: no better smoothed sample-validation NLL for {t.patience} "
                    "epochs"
                )
                break
    return {
        "epochs": prog.epoch,
        "steps": prog.step,
        "best_epoch": prog.stopping.best_epoch,
        "best_val_nll_sv_smoothed": prog.stopping.best,
        "skipped_steps": prog.guard.skipped,
        "rollbacks": prog.guard.rollbacks,
        "stop_reason": stop_reason,
        "train_seconds": time.perf_counter() - t0,
    }
