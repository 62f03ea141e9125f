"""Train a task network with the paper's optimiser; checkpoints, resume, CSV log.

Every step draws a fresh batch from ``fold_in(data_key, step)``, so a resumed run sees
the same batches, and ends with the same weights, as an uninterrupted one. The shared
pieces (keys, optimiser, NaN guard, checkpoints, resume) are ``training.loop``'s.

Run folder: ``config.yaml`` (resolved), ``checkpoints/`` (params and optimiser state of
the latest two checkpoints, step-numbered, ``Checkpoints``: a resume falls back from a
damaged one to the one before), ``log.csv`` (step and unweighted loss terms),
``params.npz`` (the final weights, what ``task eval --weights`` reads) and
``metrics.json`` (held-out evaluation).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import optax
from tqdm.auto import tqdm

from lfads_jslds import config as config_lib
from lfads_jslds.config import ConfigError
from lfads_jslds.io import atomic, pytree_npz
from lfads_jslds.models.cells import CELLS
from lfads_jslds.tasks import TaskTrainConfig, get_task
from lfads_jslds.tasks import model as task_model
from lfads_jslds.tasks.spec import OptimConfig
from lfads_jslds.training import loop
from lfads_jslds.training.checkpoints import Checkpoints
from lfads_jslds.training.loop import (
    CsvLog,
    NanGuard,
    RunFolderError,
    check_out_folder,
    check_resume,
    guarded_update,
    resume_from_checkpoint,
    seed_keys,
)

CONFIG, CHECKPOINTS, LOG, PARAMS, METRICS = (
    "config.yaml",
    "checkpoints",
    "log.csv",
    "params.npz",
    "metrics.json",
)

#: What a resumed run may change: the optimiser's settings (e.g. more steps).
RESUMABLE = {"optim": None}


def make_optimizer(optim: OptimConfig) -> optax.GradientTransformation:
    """``loop.make_optimizer`` with Adam and ``lr · lr_decay^step`` (the paper's settings)."""
    return loop.make_optimizer(
        optim.lr,
        optim.lr_decay,
        optim.clip_norm,
        b1=optim.adam_b1,
        b2=optim.adam_b2,
        eps=optim.adam_eps,
    )


def make_train_step(cfg: TaskTrainConfig, tx: optax.GradientTransformation) -> Any:
    """A jitted ``(params, opt_state, step) -> (params, opt_state, terms, ok)``.

    A step whose loss, gradients or updated params and optimiser state are not finite
    leaves params and optimiser state untouched (``ok = False``): NaN never reaches the
    weights.
    """
    spec = get_task(cfg.task)
    data_key = seed_keys(cfg.optim.seed).data

    def loss_fn(params: Any, batch: Any) -> Any:
        return task_model.losses(params, batch, cfg.model, cfg.loss)

    @jax.jit
    def step_fn(params: Any, opt_state: Any, step: jax.Array) -> Any:
        batch = spec.sample(jax.random.fold_in(data_key, step), cfg.optim.batch_size)
        new = guarded_update(loss_fn, tx, params, opt_state, 1.0, batch)
        return new.params, new.opt_state, dict(new.aux, total=new.loss), new.ok

    return step_fn


def validate_config(cfg: TaskTrainConfig) -> None:
    """Refuse values the trainer would only fail on after compiling (or mid-run): floats
    finite and in range (``config.check``), counts at least 1."""
    get_task(cfg.task)
    config_lib.check(cfg)
    if cfg.model.cell not in CELLS:
        raise ConfigError(f"model.cell must be one of {', '.join(CELLS)}, got {cfg.model.cell!r}")
    counts = {
        "model.n_hidden": cfg.model.n_hidden,
        "optim.steps": cfg.optim.steps,
        "optim.batch_size": cfg.optim.batch_size,
        "optim.eval_trials": cfg.optim.eval_trials,
        "optim.log_every": cfg.optim.log_every,
        "optim.checkpoint_every": cfg.optim.checkpoint_every,
    }
    bad = [f"{k} = {v}" for k, v in counts.items() if v < 1]
    if bad:
        raise ConfigError(f"must be at least 1: {', '.join(bad)}")


def prepare_run_folder(run: Path, cfg: TaskTrainConfig, resume: bool) -> None:
    """Check the folder before any work: refuse to overwrite, or check what to resume.

    Nothing is written before every check has passed. On resume only ``RESUMABLE`` may
    differ from the saved config; a run killed before its first checkpoint (it has its
    ``config.yaml``) restarts from step 0.
    """
    check_out_folder(run)
    if resume:
        if not (run / CONFIG).exists():
            raise RunFolderError(f"{run} has no checkpoint; nothing to resume")
        if (run / "checkpoint.npz").exists() and not (run / CHECKPOINTS).exists():
            raise RunFolderError(
                f"{run} holds a checkpoint.npz from an earlier version, which this one does "
                "not resume (its params.npz stays usable with `task eval`); train into a new --out"
            )
        saved = config_lib.update(
            TaskTrainConfig(), config_lib.load_yaml(run / CONFIG), str(run / CONFIG)
        )
        check_resume(run / CONFIG, saved, cfg, RESUMABLE)
        with Checkpoints(run / CHECKPOINTS) as checkpoints:
            latest = checkpoints.latest_step()
        if latest is not None and latest > cfg.optim.steps:
            raise RunFolderError(f"{run} is already at step {latest}; ask for more steps than that")
        return
    if run.exists() and any(run.iterdir()):
        raise RunFolderError(
            f"run folder {run} already exists; pass --resume to continue it, or choose a new --out"
        )
    run.mkdir(parents=True, exist_ok=True)
    atomic.write_text(run / CONFIG, config_lib.dump_yaml(cfg))


def _start(
    cfg: TaskTrainConfig, run: Path, tx: optax.GradientTransformation, resume: bool
) -> tuple[tuple[Any, Any], int, NanGuard]:
    """``((params, opt_state), step, guard)``: fresh, or (``resume``) the newest intact
    checkpoint's, the steps after it (checkpoints, log rows) dropped to be redone."""
    spec = get_task(cfg.task)
    params = task_model.init_params(
        seed_keys(cfg.optim.seed).init, cfg.model, spec.n_in, spec.n_out
    )
    state, step, guard = (params, tx.init(params)), 0, NanGuard(cfg.optim.max_bad_steps)
    if resume:
        with Checkpoints(run / CHECKPOINTS) as checkpoints:
            restored = resume_from_checkpoint(checkpoints, state, run / LOG)
        if restored is not None:
            step, state, meta = restored
            guard.skipped = meta["skipped"]
        atomic.write_text(run / CONFIG, config_lib.dump_yaml(cfg))
    return state, step, guard


def _save(latest: Checkpoints, step: int, state: Any, guard: NanGuard) -> None:
    """Checkpoint ``(params, opt_state)`` as ``step`` unless that step is saved already."""
    if latest.latest_step() != step:
        latest.save(step, tuple(state), {"step": step, "skipped": guard.skipped})


def train(
    cfg: TaskTrainConfig, run: Path, resume: bool = False, progress: bool = True
) -> dict[str, Any]:
    """Train (or resume) into ``run``; returns the held-out metrics written to ``metrics.json``."""
    run = Path(run)
    validate_config(cfg)
    prepare_run_folder(run, cfg, resume)
    tx = make_optimizer(cfg.optim)
    state, step, guard = _start(cfg, run, tx, resume)
    latest = Checkpoints(run / CHECKPOINTS, keep=2)
    step_fn = make_train_step(cfg, tx)
    columns = ("step", "total", *task_model.LOSS_TERMS, "skipped")
    o = cfg.optim
    t0 = time.perf_counter()
    with (
        CsvLog(run / LOG, columns) as log,
        tqdm(total=o.steps, initial=step, disable=not progress, desc=f"train {cfg.task}") as bar,
    ):
        while step < o.steps:
            *state, terms, ok = step_fn(*state, jnp.asarray(step))
            step += 1
            if guard.after(bool(ok)) == "stop":
                _save(latest, step, state, guard)
                raise guard.stop_error(step, latest.directory, "Lower optim.lr.")
            if step % o.log_every == 0 or step == o.steps:
                values = {k: float(v) for k, v in jax.device_get(terms).items()}
                log.row([step, *(values[c] for c in columns[1:-1]), guard.skipped])
                shown = ("total", "rnn", "jslds", "fixed_point", "approx")
                bar.set_postfix({k: f"{values[k]:.3g}" for k in shown})
            if step % o.checkpoint_every == 0:
                _save(latest, step, state, guard)
            bar.update(1)
    _save(latest, step, state, guard)
    pytree_npz.save(run / PARAMS, state[0])
    spec = get_task(cfg.task)
    metrics = task_model.evaluate(
        state[0], spec, cfg.model, n_trials=o.eval_trials, seed=o.seed + 1
    )
    metrics.update(steps=step, skipped_steps=guard.skipped, train_seconds=time.perf_counter() - t0)
    atomic.write_json(run / METRICS, metrics)
    return metrics
