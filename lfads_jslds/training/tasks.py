"""Train a task network with the paper's optimiser; checkpoints, resume, CSV log.

Every step draws a fresh batch from ``fold_in(seed, step)``, so a resumed run sees the
same batches, and ends with the same weights, as an uninterrupted one.

Run folder: ``config.yaml`` (resolved), ``checkpoint.npz`` (params, optimiser state,
step; rewritten atomically), ``log.csv`` (step and unweighted loss terms),
``params.npz`` (final weights) and ``metrics.json`` (held-out evaluation).
"""

from __future__ import annotations

import csv
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from lfads_jslds import config as config_lib
from lfads_jslds.config import ConfigError
from lfads_jslds.io import atomic, pytree_npz
from lfads_jslds.io.safe_npz import WeightsFileError
from lfads_jslds.models.cells import CELLS
from lfads_jslds.tasks import TaskTrainConfig, get_task
from lfads_jslds.tasks import model as task_model
from lfads_jslds.tasks.spec import OptimConfig
from lfads_jslds.training.loop import RunFolderError, all_finite, check_out_folder, trim_log

CONFIG, CHECKPOINT, LOG, PARAMS, METRICS = (
    "config.yaml",
    "checkpoint.npz",
    "log.csv",
    "params.npz",
    "metrics.json",
)


def make_optimizer(optim: OptimConfig) -> optax.GradientTransformation:
    """Global-norm clip, then Adam with ``lr · lr_decay^step`` (the paper's settings)."""
    schedule = optax.exponential_decay(optim.lr, transition_steps=1, decay_rate=optim.lr_decay)
    return optax.chain(
        optax.clip_by_global_norm(optim.clip_norm),
        optax.adam(schedule, b1=optim.adam_b1, b2=optim.adam_b2, eps=optim.adam_eps),
    )


def make_train_step(cfg: TaskTrainConfig, tx: optax.GradientTransformation) -> Any:
    """A jitted ``(params, opt_state, step) -> (params, opt_state, terms, ok)``.

    A step whose loss, gradients or updated params and optimiser state are not finite
    leaves params and optimiser state untouched (``ok = False``): NaN never reaches the
    weights.
    """
    spec = get_task(cfg.task)
    base_key = seed_keys(cfg.optim.seed)[1]

    def loss_fn(params: Any, batch: Any) -> Any:
        return task_model.losses(params, batch, cfg.model, cfg.loss)

    @jax.jit
    def step_fn(params: Any, opt_state: Any, step: jax.Array) -> Any:
        batch = spec.sample(jax.random.fold_in(base_key, step), cfg.optim.batch_size)
        (total, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch)
        updates, new_opt = tx.update(grads, opt_state, params)
        new_params = optax.apply_updates(params, updates)
        ok = all_finite(total, grads, new_params, new_opt)
        keep = lambda new, old: jax.tree_util.tree_map(  # noqa: E731
            lambda n, o: jnp.where(ok, n, o), new, old
        )
        return keep(new_params, params), keep(new_opt, opt_state), dict(terms, total=total), ok

    return step_fn


def seed_keys(seed: int) -> tuple[jax.Array, jax.Array]:
    """``(init_key, data_key)``: weights and batches draw from separate streams."""
    init_key, data_key = jax.random.split(jax.random.PRNGKey(seed))
    return init_key, data_key


@dataclass
class TrainState:
    params: Any
    opt_state: Any
    step: int


def save_checkpoint(run: Path, state: TrainState) -> None:
    tree = {
        "params": state.params,
        "opt": jax.tree_util.tree_leaves(state.opt_state),
        "step": np.asarray(state.step),
    }
    pytree_npz.save(run / CHECKPOINT, tree)


def load_checkpoint(run: Path, tx: optax.GradientTransformation) -> TrainState:
    path = run / CHECKPOINT
    if not path.exists():
        raise RunFolderError(f"{run} has no checkpoint ({CHECKPOINT}); nothing to resume")
    try:
        tree = pytree_npz.unflatten(pytree_npz.load(path))
    except WeightsFileError as err:
        raise RunFolderError(
            f"{err}; the run cannot resume from it: train into a new --out"
        ) from err
    params = jax.tree_util.tree_map(jnp.asarray, tree["params"])
    treedef = jax.tree_util.tree_structure(tx.init(params))
    opt_state = jax.tree_util.tree_unflatten(treedef, [jnp.asarray(x) for x in tree["opt"]])
    return TrainState(params, opt_state, int(tree["step"]))


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

    Nothing is written before every check has passed. On resume only ``optim`` may
    differ from the saved config (e.g. more steps).
    """
    check_out_folder(run)
    if resume:
        if not (run / CHECKPOINT).exists():
            raise RunFolderError(f"{run} has no checkpoint ({CHECKPOINT}); nothing to resume")
        saved = config_lib.update(
            TaskTrainConfig(), config_lib.load_yaml(run / CONFIG), str(run / CONFIG)
        )
        if config_lib.to_dict(saved) | {"optim": None} != config_lib.to_dict(cfg) | {"optim": None}:
            raise RunFolderError(
                f"{run}/{CONFIG} differs from the requested config; resume with the saved one"
            )
        return
    if run.exists() and any(run.iterdir()):
        raise RunFolderError(
            f"run folder {run} already exists; pass --resume to continue it, or choose a new --out"
        )
    run.mkdir(parents=True, exist_ok=True)
    atomic.write_text(run / CONFIG, config_lib.dump_yaml(cfg))


def train(
    cfg: TaskTrainConfig, run: Path, resume: bool = False, progress: bool = True
) -> dict[str, Any]:
    """Train (or resume) into ``run``; returns the held-out metrics written to ``metrics.json``."""
    run = Path(run)
    validate_config(cfg)
    spec = get_task(cfg.task)
    prepare_run_folder(run, cfg, resume)
    tx = make_optimizer(cfg.optim)
    if resume:
        state = load_checkpoint(run, tx)
        if state.step > cfg.optim.steps:
            raise RunFolderError(
                f"{run} is already at step {state.step}; ask for more steps than that"
            )
        atomic.write_text(run / CONFIG, config_lib.dump_yaml(cfg))
        trim_log(run / LOG, state.step)
    else:
        params = task_model.init_params(
            seed_keys(cfg.optim.seed)[0], cfg.model, spec.n_in, spec.n_out
        )
        state = TrainState(params, tx.init(params), 0)
    step_fn = make_train_step(cfg, tx)

    log_path = run / LOG
    new_log = not log_path.exists()
    columns = ["step", "total", *task_model.LOSS_TERMS, "skipped"]
    bad_in_a_row = skipped = 0
    t0 = time.perf_counter()
    with (
        open(log_path, "a", newline="") as log_file,
        tqdm(
            total=cfg.optim.steps,
            initial=state.step,
            disable=not progress,
            desc=f"train {cfg.task}",
        ) as bar,
    ):
        writer = csv.writer(log_file)
        if new_log:
            writer.writerow(columns)
        while state.step < cfg.optim.steps:
            params, opt_state, terms, ok = step_fn(
                state.params, state.opt_state, jnp.asarray(state.step)
            )
            state = TrainState(params, opt_state, state.step + 1)
            if not bool(ok):
                skipped += 1
                bad_in_a_row += 1
                if bad_in_a_row >= cfg.optim.max_bad_steps:
                    save_checkpoint(run, state)
                    raise FloatingPointError(
                        f"{bad_in_a_row} non-finite steps in a row at step {state.step}; the "
                        f"last finite weights are in {run / CHECKPOINT}. Lower optim.lr."
                    )
            else:
                bad_in_a_row = 0
            if state.step % cfg.optim.log_every == 0 or state.step == cfg.optim.steps:
                values = {k: float(v) for k, v in jax.device_get(terms).items()}
                writer.writerow(
                    [state.step] + [f"{values[c]:.6g}" for c in columns[1:-1]] + [skipped]
                )
                log_file.flush()
                bar.set_postfix(
                    {
                        k: f"{values[k]:.3g}"
                        for k in ("total", "rnn", "jslds", "fixed_point", "approx")
                    }
                )
            if state.step % cfg.optim.checkpoint_every == 0:
                save_checkpoint(run, state)
            bar.update(1)
    save_checkpoint(run, state)
    pytree_npz.save(run / PARAMS, state.params)
    metrics = task_model.evaluate(
        state.params, spec, cfg.model, n_trials=cfg.optim.eval_trials, seed=cfg.optim.seed + 1
    )
    metrics.update(steps=state.step, skipped_steps=skipped, train_seconds=time.perf_counter() - t0)
    atomic.write_json(run / METRICS, metrics)
    return metrics
