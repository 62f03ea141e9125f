"""What both trainers share: random streams, the optimiser, the NaN-guarded update and
its rollback bookkeeping, early stopping, the CSV log, resuming from the newest intact
checkpoint (``Checkpoints``, the one format), and the run-folder checks."""

from __future__ import annotations

import csv
import os
import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import optax

from lfads_jslds import config as config_lib
from lfads_jslds.io import atomic
from lfads_jslds.training.checkpoints import Checkpoints, DamagedCheckpoint


class RunFolderError(RuntimeError):
    """A run folder that cannot be used as asked (exists without --resume, no checkpoint)."""


def check_out_folder(run: Path) -> None:
    """Refuse an ``--out`` that cannot hold a run: a file, or a symlink to nothing (making
    the folder would fail on it). A symlink to a folder is used as that folder."""
    if run.is_symlink() and not run.exists():
        raise RunFolderError(
            f"--out {run} is a symlink to {os.readlink(run)}, which does not exist; create "
            "that folder, or choose another --out"
        )
    if run.exists() and not run.is_dir():
        raise RunFolderError(f"run folder {run} exists and is not a folder")


def all_finite(*trees: Any) -> jax.Array:
    """True when every entry of every leaf is finite; traceable (the guarded update's test:
    an update can turn finite params non-finite even when loss and gradients are finite)."""
    leaves = [x for tree in trees for x in jax.tree_util.tree_leaves(tree)]
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def trim_log(path: Path, last_step: int) -> None:
    """Drop CSV log rows (first column: step or epoch) after the checkpoint a resume starts from."""
    if not path.exists():
        return
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    kept = rows[:1] + [r for r in rows[1:] if int(r[0]) <= last_step]

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            csv.writer(f).writerows(kept)

    atomic.atomic_write(path, write)


def _flat(cfg: Any) -> dict[str, Any]:
    """A config as ``{"section.field": value}`` (top-level plain values under their name)."""
    out: dict[str, Any] = {}
    for section, value in config_lib.to_dict(cfg).items():
        if isinstance(value, dict):
            out.update({f"{section}.{k}": v for k, v in value.items()})
        else:
            out[section] = value
    return out


def check_resume(
    path: Path, saved: Any, cfg: Any, resumable: dict[str, tuple[str, ...] | None]
) -> None:
    """Refuse to resume with a config that differs from the saved one (``path``) outside
    ``resumable``: section name → the fields that may change (None: all of them)."""

    def fixed(key: str) -> bool:
        section, _, name = key.partition(".")
        fields = resumable.get(section, ())
        return section not in resumable or (fields is not None and name not in fields)

    a, b = _flat(saved), _flat(cfg)
    diff = [k for k in sorted(a.keys() | b.keys()) if fixed(k) and a.get(k) != b.get(k)]
    if diff:
        allowed = [
            f"{s}.*" if f is None else f"{s}.{n}" for s, f in resumable.items() for n in (f or [""])
        ]
        raise RunFolderError(
            f"{path} differs from the requested config in {', '.join(diff)}; resume with the "
            f"saved config (only {', '.join(allowed)} may change)"
        )


class Keys(NamedTuple):
    """The independent random streams of a run, all from one seed."""

    init: jax.Array  # initial weights
    data: jax.Array  # batches: which trials (LFADS: the epoch's order), or a task's trials
    step: jax.Array  # a step's noise (LFADS: coordinated dropout, dropout, posterior samples)


def seed_keys(seed: int) -> Keys:
    """Three keys split from ``seed`` (a two-way split gives the same first two: threefry is
    partitionable, so key i does not depend on how many are split)."""
    return Keys(*jax.random.split(jax.random.PRNGKey(seed), 3))


def make_optimizer(
    lr: float,
    lr_decay: float,
    clip_norm: float,
    *,
    decay_every: int = 1,
    staircase: bool = False,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float | None = None,
) -> optax.GradientTransformation:
    """Clip the gradients' global norm to ``clip_norm``, then Adam at the learning rate
    ``lr · lr_decay^(k / decay_every)`` at step k (``staircase``: the exponent floored, so
    the rate drops once every ``decay_every`` steps). ``weight_decay``: None for Adam, a
    float for AdamW's decoupled decay (0.0 is still AdamW, the same updates and state)."""
    schedule = optax.exponential_decay(
        lr, transition_steps=decay_every, decay_rate=lr_decay, staircase=staircase
    )
    if weight_decay is None:
        adam = optax.adam(schedule, b1=b1, b2=b2, eps=eps)
    else:
        adam = optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)
    return optax.chain(optax.clip_by_global_norm(clip_norm), adam)


class Update(NamedTuple):
    """One guarded step: the new state (the old one where ``ok`` is False)."""

    params: Any
    opt_state: Any
    loss: jax.Array
    aux: Any  # what the loss function returned beside the loss
    ok: jax.Array  # False: the step was not finite and nothing changed


def guarded_update(
    loss_fn: Callable[..., tuple[jax.Array, Any]],
    tx: optax.GradientTransformation,
    params: Any,
    opt_state: Any,
    lr_scale: float | jax.Array,
    *args: Any,
) -> Update:
    """``loss_fn(params, *args) -> (loss, aux)``'s gradient step through ``tx``, its updates
    scaled by ``lr_scale``; traceable. Params and optimiser state stay as they were unless
    the loss, the gradients, the new params and the new optimiser state are all finite."""
    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, *args)
    updates, new_opt = tx.update(grads, opt_state, params)
    updates = jax.tree.map(lambda u: u * lr_scale, updates)
    new_params = optax.apply_updates(params, updates)
    ok = all_finite(loss, grads, new_params, new_opt)
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)  # noqa: E731
    return Update(keep(new_params, params), keep(new_opt, opt_state), loss, aux, ok)


@dataclass
class NanGuard:
    """Counts the steps ``guarded_update`` refused. ``max_bad_steps`` of them in a row ask
    for a rollback to the last good state, after ``max_rollbacks`` rollbacks for a stop."""

    max_bad_steps: int
    max_rollbacks: int = 0
    skipped: int = 0  # refused steps in all
    rollbacks: int = 0
    in_a_row: int = 0

    def after(self, ok: bool) -> Literal["ok", "skipped", "roll back", "stop"]:
        """Record one step; what the trainer must do next."""
        if ok:
            self.in_a_row = 0
            return "ok"
        self.skipped += 1
        self.in_a_row += 1
        if self.in_a_row < self.max_bad_steps:
            return "skipped"
        if self.rollbacks >= self.max_rollbacks:
            return "stop"
        self.rollbacks += 1
        self.in_a_row = 0
        return "roll back"

    def stop_error(self, step: int, saved: Path, fix: str) -> FloatingPointError:
        rolled = f" after {self.rollbacks} rollbacks" if self.max_rollbacks else ""
        return FloatingPointError(
            f"{self.in_a_row} non-finite steps in a row at step {step}{rolled}; the last "
            f"finite weights are in {saved}. {fix}"
        )


@dataclass
class EarlyStopping:
    """An exponentially smoothed validation loss and the best value it has reached."""

    ema: float | None = None
    best: float | None = None
    best_epoch: int = -1
    since_best: int = 0  # epochs since the best

    def update(self, value: float, epoch: int, smoothing: float, waited: int, warm: bool) -> bool:
        """Smooth ``value`` (validated after ``epoch`` epochs, ``waited`` since the last
        validation) into the EMA; True when it is a new best. Until ``warm`` (e.g. loss
        weights still ramping) every value counts as the best."""
        self.ema = value if self.ema is None else smoothing * self.ema + (1 - smoothing) * value
        if not warm or self.best is None or self.ema < self.best:
            self.best, self.best_epoch, self.since_best = self.ema, epoch, 0
            return True
        self.since_best += waited
        return False


class CsvLog:
    """A CSV log opened for appending: the header only into a new file, floats as ``.6g``,
    each row flushed (a killed run keeps what it logged)."""

    def __init__(self, path: Path, columns: tuple[str, ...]):
        new = not path.exists()
        self._file = open(path, "a", newline="")  # closed by __exit__
        self._writer = csv.writer(self._file)
        if new:
            self._writer.writerow(columns)

    def row(self, values: list[Any]) -> None:
        self._writer.writerow([f"{v:.6g}" if isinstance(v, float) else v for v in values])
        self._file.flush()

    def __enter__(self) -> CsvLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self._file.close()


def restore_newest_intact(latest: Checkpoints, target: Any) -> tuple[int, Any, dict[str, Any]]:
    """``(step, state, meta)`` of the newest step of ``latest`` that reads back whole; each
    damaged newer step is named in a warning (training from the older one redoes it)."""
    steps = latest.all_steps()
    for step in reversed(steps):
        try:
            state, meta = latest.restore(target, step)
        except DamagedCheckpoint as e:
            warnings.warn(f"{e}; trying the checkpoint before it", stacklevel=3)
            continue
        if step != steps[-1]:
            warnings.warn(f"resuming from {latest.directory / str(step)}", stacklevel=3)
        return step, state, meta
    raise RunFolderError(
        f"no intact checkpoint in {latest.directory} (steps {steps} are all damaged); "
        "restore one from a copy, or train into a new --out"
    )


def drop_later_steps(folder: Path, step: int) -> None:
    """Remove the checkpoint step folders after ``step`` (a resume from ``step`` redoes them)."""
    if folder.is_dir():
        for saved in folder.iterdir():
            if saved.name.isdigit() and int(saved.name) > step:
                shutil.rmtree(saved)


def resume_from_checkpoint(
    latest: Checkpoints, target: Any, log: Path
) -> tuple[int, Any, dict[str, Any]] | None:
    """Where a resumed run starts: ``restore_newest_intact`` (later steps dropped, since
    they are redone), or None when no checkpoint was written yet (killed before the first:
    the run starts afresh). The log keeps only the rows up to that step."""
    if latest.latest_step() is None:
        trim_log(log, 0)
        return None
    step, state, meta = restore_newest_intact(latest, target)
    drop_later_steps(latest.directory, step)
    trim_log(log, step)
    return step, state, meta
