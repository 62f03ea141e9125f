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

import csv
import math
import shutil
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
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
from lfads_jslds.training.checkpoints import Checkpoints, DamagedCheckpoint
from lfads_jslds.training.loop import RunFolderError, all_finite, trim_log
from lfads_jslds.training.run_config import RunConfig, TrainConfig


class TrainFiles(NamedTuple):
    """Where ``train`` writes (``pipeline.run.RunFolder.train_files`` names them)."""

    checkpoints: Path  # the latest two, for resume
    best: Path  # the early-stopping weights
    log: Path  # CSV, one row per epoch


def seed_keys(seed: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(init_key, data_key, step_key)``: weights, batch order and step noise apart."""
    k = jax.random.split(jax.random.PRNGKey(seed), 3)
    return k[0], k[1], k[2]


def ramp(epoch: int, start: int, length: int) -> float:
    """0 before ``start``, then linear to 1 over ``length`` epochs (1 at once if 0)."""
    if epoch < start:
        return 0.0
    return 1.0 if length == 0 else min(1.0, (epoch - start + 1) / length)


def make_optimizer(cfg: RunConfig, steps_per_epoch: int) -> optax.GradientTransformation:
    t = cfg.train
    schedule = optax.exponential_decay(
        t.lr, transition_steps=steps_per_epoch, decay_rate=t.lr_decay, staircase=True
    )
    return optax.chain(
        optax.clip_by_global_norm(t.clip_norm),
        optax.adamw(schedule, eps=t.adam_eps, weight_decay=t.weight_decay),
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


def make_train_step(
    cfg: RunConfig, tx: optax.GradientTransformation, n_fwd: int
) -> Callable[..., Any]:
    """Jitted ``(params, opt, inputs, targets, idx, step, lr_scale, kl_w, l2_w)``.

    Returns ``(params, opt, terms, ok)``; ``inputs``/``targets`` are the whole train set
    on device and ``idx [batch]`` picks the batch inside the jit.
    """
    step_key = seed_keys(cfg.train.seed)[2]

    def loss_fn(params: Any, x: jax.Array, target: jax.Array, key: jax.Array, kl_w, l2_w):
        k_cd, k_model = jax.random.split(key)
        x_in, grad_mask = coordinated_dropout(k_cd, x, *target.shape[1:], cfg.train.cd_rate)
        out = lfads.forward(params, cfg.model, x_in, n_fwd, k_model, train=True)
        terms = lfads.loss_terms(params, cfg.model, out, target, grad_mask)
        total = lfads.total_loss(terms, cfg.model, cfg.loss, kl_w, l2_w)
        return total, terms

    @jax.jit
    def step_fn(params, opt_state, inputs, targets, idx, step, lr_scale, kl_w, l2_w):
        key = jax.random.fold_in(step_key, step)
        (total, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            params, inputs[idx], targets[idx], key, kl_w, l2_w
        )
        updates, new_opt = tx.update(grads, opt_state, params)
        updates = jax.tree.map(lambda u: u * lr_scale, updates)
        new_params = optax.apply_updates(params, updates)
        ok = all_finite(total, grads, new_params, new_opt)
        keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)  # noqa: E731
        return keep(new_params, params), keep(new_opt, opt_state), dict(terms, total=total), ok

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

    epoch: int = 0  # epochs completed
    step: int = 0
    lr_scale: float = 1.0
    rollbacks: int = 0
    skipped: int = 0
    ema: float | None = None
    best: float | None = None
    best_epoch: int = -1
    since_best: int = 0


def restore_newest_intact(latest: Checkpoints, target: Any) -> tuple[Any, dict[str, Any]]:
    """``latest.restore`` of the newest step that reads back whole; each damaged newer step
    is named in a warning (training from the older one redoes it bit for bit)."""
    steps = latest.all_steps()
    for step in reversed(steps):
        try:
            restored = latest.restore(target, step)
        except DamagedCheckpoint as e:
            warnings.warn(f"{e}; trying the checkpoint before it", stacklevel=2)
            continue
        if step != steps[-1]:
            warnings.warn(f"resuming from {latest.directory / str(step)}", stacklevel=2)
        return restored
    raise RunFolderError(
        f"no intact checkpoint in {latest.directory} (steps {steps} are all damaged); "
        "restore one from a copy, or train into a new --out"
    )


def _drop_later_steps(folder: Path, epoch: int) -> None:
    """Remove step folders after ``epoch`` (saved after the checkpoint a resume starts from)."""
    if folder.is_dir():
        for step in folder.iterdir():
            if step.name.isdigit() and int(step.name) > epoch:
                shutil.rmtree(step)


def init_state(cfg: RunConfig, data: LFADSData, tx: optax.GradientTransformation) -> tuple:
    mean_counts = np.nanmean(data.train_target[:, : data.n_obs], axis=(0, 1))
    params = lfads.init_params(
        seed_keys(cfg.train.seed)[0], cfg.model, data.n_heldin, data.n_neurons, mean_counts
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
    n_train = train_in.shape[0]
    steps_per_epoch = n_train // t.batch_size
    tx = make_optimizer(cfg, steps_per_epoch)
    params, opt_state = init_state(cfg, data, tx)
    latest, best_ckpt = Checkpoints(files.checkpoints, keep=2), Checkpoints(files.best, keep=1)
    prog = Progress()
    if resume:
        if latest.latest_step() is not None:  # else killed before the first: start afresh
            (params, opt_state), meta = restore_newest_intact(latest, (params, opt_state))
            prog = Progress(**meta)
            _drop_later_steps(files.checkpoints, prog.epoch)  # damaged: redone identically
        trim_log(files.log, prog.epoch)
        _drop_later_steps(files.best, prog.epoch)  # redone identically from here on
        best_ckpt = Checkpoints(files.best, keep=1)
    step_fn = make_train_step(cfg, tx, data.n_fwd)
    val_fn = make_validation(cfg)
    inputs, targets = jnp.asarray(train_in), jnp.asarray(train_tgt)
    ev_in, ev_tgt = jnp.asarray(sv.input), jnp.asarray(sv.target)
    data_key = seed_keys(t.seed)[1]
    ramps_done = t.kl_start_epoch + t.kl_ramp_epochs, t.l2_start_epoch + t.l2_ramp_epochs
    good = (params, opt_state)
    bad_in_a_row = 0
    t0 = time.perf_counter()
    log_path = files.log
    new_log = not log_path.exists()
    stop_reason = "max_epochs"

    def validate_now() -> tuple[float, float]:
        chunks = [
            val_fn(params, ev_in[i : i + t.batch_size], ev_tgt[i : i + t.batch_size])
            for i in range(0, ev_in.shape[0], t.batch_size)
        ]
        nll, rel = (np.concatenate([np.asarray(c[j]) for c in chunks]) for j in range(2))
        return float(nll.mean()), float(rel.mean())

    with (
        open(log_path, "a", newline="") as log_file,
        tqdm(total=t.max_epochs, initial=prog.epoch, disable=not progress, desc="train") as bar,
    ):
        writer = csv.writer(log_file)
        if new_log:
            writer.writerow(COLUMNS)
        while prog.epoch < t.max_epochs:
            epoch = prog.epoch
            kl_w = ramp(epoch, t.kl_start_epoch, t.kl_ramp_epochs)
            l2_w = ramp(epoch, t.l2_start_epoch, t.l2_ramp_epochs)
            order = jax.random.permutation(jax.random.fold_in(data_key, epoch), n_train)
            sums: dict[str, float] = {}
            n_ok = 0
            for b in range(steps_per_epoch):
                idx = order[b * t.batch_size : (b + 1) * t.batch_size]
                params, opt_state, terms, ok = step_fn(
                    params, opt_state, inputs, targets, idx, prog.step, prog.lr_scale, kl_w, l2_w
                )
                prog.step += 1
                if bool(ok):
                    bad_in_a_row = 0
                    n_ok += 1
                    for k, v in terms.items():
                        sums[k] = sums.get(k, 0.0) + float(v)
                    continue
                prog.skipped += 1
                bad_in_a_row += 1
                if bad_in_a_row >= t.max_bad_steps:
                    if prog.rollbacks >= t.max_rollbacks:
                        if latest.latest_step() != epoch:
                            latest.save(epoch, good, vars(prog))
                        raise FloatingPointError(
                            f"{bad_in_a_row} non-finite steps in a row at step {prog.step} after "
                            f"{prog.rollbacks} rollbacks (lr scale {prog.lr_scale:g}); the last "
                            f"finite weights are in {files.checkpoints}. Check the data or "
                            "lower train.lr."
                        )
                    params, opt_state = good
                    prog.rollbacks += 1
                    prog.lr_scale *= 0.5
                    bad_in_a_row = 0
                    tqdm.write(
                        f"warning: {t.max_bad_steps} non-finite steps in a row at step "
                        f"{prog.step}: rolled back to epoch {epoch} start, lr scale now "
                        f"{prog.lr_scale:g}"
                    )
            prog.epoch += 1
            if n_ok == steps_per_epoch:
                good = (params, opt_state)
            means = {k: v / max(n_ok, 1) for k, v in sums.items()}
            val = (math.nan, math.nan)
            if prog.epoch % t.val_every == 0 or prog.epoch == t.max_epochs:
                val = validate_now()
                prog.ema = (
                    val[0]
                    if prog.ema is None
                    else t.smoothing * prog.ema + (1 - t.smoothing) * val[0]
                )
                if epoch + 1 < max(ramps_done) or prog.best is None or prog.ema < prog.best:
                    prog.best, prog.best_epoch, prog.since_best = prog.ema, prog.epoch, 0
                    if bool(all_finite(params)):
                        best_ckpt.save(prog.epoch, params, {"epoch": prog.epoch, "ema": prog.ema})
                else:
                    prog.since_best += t.val_every
            lr = t.lr * t.lr_decay**epoch * prog.lr_scale
            row = [prog.epoch, prog.step, lr, kl_w, l2_w]
            row += [means.get(k, math.nan) for k in ("total", *lfads.LOSS_TERMS)]
            row += [val[0], prog.ema if prog.ema is not None else math.nan, val[1]]
            row += [prog.skipped, time.perf_counter() - t0]
            writer.writerow([f"{v:.6g}" if isinstance(v, float) else v for v in row])
            log_file.flush()
            bar.set_postfix(
                nll=f"{means.get('nll', math.nan):.4g}",
                kl=f"{means.get('kl_ic', 0) + means.get('kl_co', 0):.3g}",
                val=f"{val[0]:.4g}",
                rel=f"{val[1]:.3f}",
            )
            bar.update(1)
            stopping = prog.since_best >= t.patience and prog.epoch >= max(ramps_done)
            if stopping or prog.epoch % t.checkpoint_every == 0 or prog.epoch == t.max_epochs:
                latest.save(prog.epoch, good, vars(prog))
            if stopping:
                stop_reason = (
                    f"early stopping: no better smoothed sample-validation NLL for {t.patience} "
                    "epochs"
                )
                break
    summary = {
        "epochs": prog.epoch,
        "steps": prog.step,
        "best_epoch": prog.best_epoch,
        "best_val_nll_sv_smoothed": prog.best,
        "skipped_steps": prog.skipped,
        "rollbacks": prog.rollbacks,
        "stop_reason": stop_reason,
        "train_seconds": time.perf_counter() - t0,
    }
    return summary


