"""The pieces both trainers share (``training.loop``), each against a hand-written reference."""

import math
from dataclasses import replace

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lfads_jslds.tasks import default_config
from lfads_jslds.training.checkpoints import Checkpoints
from lfads_jslds.training.loop import (
    CsvLog,
    EarlyStopping,
    NanGuard,
    RunFolderError,
    check_resume,
    guarded_update,
    make_optimizer,
    resume_from_checkpoint,
    seed_keys,
)
from lfads_jslds.training.run_config import RunConfig

# --- keys -----------------------------------------------------------------------------------


def test_seed_keys_are_three_streams_and_the_first_two_are_a_two_way_splits():
    """The task trainer split two keys before the merge; its runs keep their streams."""
    keys = seed_keys(7)
    two = jax.random.split(jax.random.PRNGKey(7), 2)
    three = jax.random.split(jax.random.PRNGKey(7), 3)
    for got, want in zip(keys, three, strict=True):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(keys.init, two[0])
    np.testing.assert_array_equal(keys.data, two[1])
    assert len({tuple(np.asarray(k)) for k in keys}) == 3


# --- optimiser ------------------------------------------------------------------------------


def _adam_by_hand(p, grads, lrs, *, clip, b1, b2, eps, wd):
    """Clip to global norm ``clip``, Adam with bias correction, decoupled decay ``wd``."""
    m = v = np.zeros_like(p)
    out = []
    for t, (g, lr) in enumerate(zip(grads, lrs, strict=True), start=1):
        g = g * min(1.0, clip / np.sqrt(np.sum(g**2)))
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g**2
        u = (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps) + wd * p
        p = p - lr * u
        out.append(p)
    return out


@pytest.mark.parametrize(
    ("kwargs", "lr_at"),
    [
        # the task trainer's: rate decayed every step, its own b1/b2, Adam
        (dict(b1=0.8, b2=0.99, eps=1e-6), lambda k: 0.1 * 0.9**k),
        # LFADS's: staircase, once per 3-step epoch, AdamW
        (
            dict(decay_every=3, staircase=True, eps=1e-8, weight_decay=0.05),
            lambda k: 0.1 * 0.9 ** (k // 3),
        ),
    ],
    ids=["per-step", "staircase"],
)
def test_optimizer_is_clip_then_adam_at_the_decayed_rate(kwargs, lr_at):
    """Gradients of norm ~10 against a clip of 1: the clip acts on every step."""
    rng = np.random.default_rng(0)
    p0 = rng.normal(size=4)
    grads = [rng.normal(scale=5.0, size=4) for _ in range(8)]
    tx = make_optimizer(0.1, 0.9, 1.0, **kwargs)
    p, state = jnp.asarray(p0), tx.init(jnp.asarray(p0))
    got = []
    for g in grads:
        updates, state = tx.update(jnp.asarray(g), state, p)
        p = optax.apply_updates(p, updates)
        got.append(np.asarray(p))
    want = _adam_by_hand(
        p0,
        grads,
        [lr_at(k) for k in range(len(grads))],  # step k counts from 0
        clip=1.0,
        b1=kwargs.get("b1", 0.9),
        b2=kwargs.get("b2", 0.999),
        eps=kwargs["eps"],
        wd=kwargs.get("weight_decay", 0.0),
    )
    # optax evaluates the rate in float32 (its step count is int32): ~1e-7 per step
    np.testing.assert_allclose(np.stack(got), np.stack(want), rtol=1e-6)


# --- the guarded update ---------------------------------------------------------------------


def _setup():
    params = {"w": jnp.array([1.0, -2.0, 0.5]), "b": jnp.array(0.3)}
    tx = make_optimizer(0.01, 1.0, 100.0)
    return params, tx, tx.init(params)


def _loss(params, x):
    y = params["w"] * x + params["b"]
    return jnp.sum(y**2), {"mean": jnp.mean(y)}


def test_a_finite_step_is_the_plain_optax_step_scaled_by_lr_scale():
    params, tx, opt = _setup()
    x = jnp.array([0.5, 1.0, -1.5])
    new = guarded_update(_loss, tx, params, opt, 0.5, x)

    grads = jax.grad(lambda p: _loss(p, x)[0])(params)  # written out
    updates, want_opt = tx.update(grads, opt, params)
    want = jax.tree.map(lambda p, u: p + 0.5 * u, params, updates)
    assert bool(new.ok)
    assert float(new.loss) == float(_loss(params, x)[0])
    assert float(new.aux["mean"]) == float(_loss(params, x)[1]["mean"])
    for got, ref in zip(
        jax.tree.leaves((new.params, new.opt_state)), jax.tree.leaves((want, want_opt)), strict=True
    ):
        np.testing.assert_allclose(got, ref, rtol=1e-15)


def _poisoned_tx(tx):
    """``tx`` whose updates are infinite: loss and gradients fine, new params not."""
    inf = optax.stateless(lambda u, p=None: jax.tree.map(lambda x: x * jnp.inf, u))
    return optax.chain(tx, inf)


@pytest.mark.parametrize(
    "case",
    ["nan gradient", "infinite loss, finite gradient", "infinite new params"],
)
def test_a_non_finite_step_leaves_params_and_optimiser_state_untouched(case):
    params, tx, _ = _setup()
    x, loss = jnp.array([0.5, 1.0, -1.5]), _loss
    if case == "nan gradient":
        x = jnp.array([0.5, jnp.nan, -1.5])
    elif case == "infinite loss, finite gradient":

        def loss(p, x):
            total, aux = _loss(p, x)
            return total + jnp.inf, aux  # d(inf)/dp = 0: only the loss shows it

    else:
        tx = _poisoned_tx(tx)
    opt = tx.init(params)
    new = guarded_update(loss, tx, params, opt, 1.0, x)
    assert not bool(new.ok)
    for got, old in zip(
        jax.tree.leaves((new.params, new.opt_state)), jax.tree.leaves((params, opt)), strict=True
    ):
        np.testing.assert_array_equal(got, old)  # the step count too: the decay does not advance


def test_nan_guard_skips_then_rolls_back_then_stops():
    guard = NanGuard(max_bad_steps=2, max_rollbacks=1)
    verdicts = [guard.after(ok) for ok in (True, False, True, False, False, False, False)]
    assert verdicts == ["ok", "skipped", "ok", "skipped", "roll back", "skipped", "stop"]
    assert (guard.skipped, guard.rollbacks, guard.in_a_row) == (5, 1, 2)
    err = guard.stop_error(41, "ckpts", "Lower x.")
    assert str(err) == (
        "2 non-finite steps in a row at step 41 after 1 rollbacks; the last finite weights "
        "are in ckpts. Lower x."
    )


def test_nan_guard_without_rollbacks_stops_at_the_first_run_of_bad_steps():
    guard = NanGuard(max_bad_steps=3)
    assert [guard.after(False) for _ in range(3)] == ["skipped", "skipped", "stop"]
    assert "rollbacks" not in str(guard.stop_error(3, "ckpts", "Lower optim.lr."))


# --- early stopping -------------------------------------------------------------------------


def test_early_stopping_smooths_and_counts_epochs_since_the_best():
    stop = EarlyStopping()
    # smoothing 0.5: EMA 10, 9, 9, 10.5 (by hand); 9 is not below 9
    got = [stop.update(v, e, 0.5, 2, warm=True) for e, v in ((2, 10.0), (4, 8.0), (6, 9.0))]
    assert got == [True, True, False]
    assert (stop.ema, stop.best, stop.best_epoch, stop.since_best) == (9.0, 9.0, 4, 2)
    assert not stop.update(12.0, 8, 0.5, 2, warm=True)
    assert (stop.ema, stop.since_best) == (10.5, 4)
    assert stop.update(13.0, 10, 0.5, 2, warm=False)  # ramps not done: always the best
    assert (stop.best, stop.best_epoch, stop.since_best) == (11.75, 10, 0)


# --- the CSV log ----------------------------------------------------------------------------


def test_csv_log_writes_the_header_once_and_floats_as_6g(tmp_path):
    path = tmp_path / "log.csv"
    with CsvLog(path, ("step", "loss")) as log:
        log.row([1, 1 / 3])
    with CsvLog(path, ("step", "loss")) as log:
        log.row([2, math.nan])
    assert path.read_text().splitlines() == ["step,loss", "1,0.333333", "2,nan"]


# --- resume ---------------------------------------------------------------------------------


def test_check_resume_names_the_field_and_allows_the_resumable_ones(tmp_path):
    saved = default_config("flipflop")
    more = replace(saved, optim=replace(saved.optim, steps=saved.optim.steps + 5, lr=1e-4))
    check_resume(tmp_path / "config.yaml", saved, more, {"optim": None})  # a whole section
    other = replace(more, model=replace(saved.model, n_hidden=3))
    with pytest.raises(RunFolderError) as err:
        check_resume(tmp_path / "config.yaml", saved, other, {"optim": None})
    assert str(err.value) == (
        f"{tmp_path / 'config.yaml'} differs from the requested config in model.n_hidden; "
        "resume with the saved config (only optim.* may change)"
    )
    lfads = RunConfig()
    fields = {"train": ("max_epochs", "patience")}
    longer = replace(lfads, train=replace(lfads.train, max_epochs=5000, patience=3))
    check_resume(tmp_path / "config.yaml", lfads, longer, fields)  # named fields
    faster = replace(longer, train=replace(longer.train, lr=1.0))
    with pytest.raises(RunFolderError, match=r"in train\.lr; .*only train\.max_epochs, train"):
        check_resume(tmp_path / "config.yaml", lfads, faster, fields)


def _saved_steps(folder, steps):
    ckpt = Checkpoints(folder, keep=None)
    for s in steps:
        ckpt.save(s, {"w": np.full(3, float(s))}, {"step": s})
    ckpt.close()


def _cut_arrays(step_folder):
    files = [p for p in (step_folder / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
    assert files
    for path in files:
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def test_resume_takes_the_newest_intact_checkpoint_and_drops_what_is_redone(tmp_path):
    folder, log = tmp_path / "checkpoints", tmp_path / "log.csv"
    _saved_steps(folder, [1, 2, 3])
    _cut_arrays(folder / "3")
    log.write_text("step,loss\n1,0.5\n2,0.4\n3,0.3\n")
    with pytest.warns(UserWarning) as warned:
        step, state, meta = resume_from_checkpoint(Checkpoints(folder), {"w": np.zeros(3)}, log)
    messages = [str(w.message) for w in warned]
    assert any(f"cannot read the arrays of {folder / '3'}" in m for m in messages)
    assert any(m == f"resuming from {folder / '2'}" for m in messages)
    assert (step, meta) == (2, {"step": 2})
    np.testing.assert_array_equal(state["w"], [2.0, 2.0, 2.0])
    assert sorted(p.name for p in folder.iterdir()) == ["1", "2"]  # 3 is redone
    assert log.read_text().splitlines() == ["step,loss", "1,0.5", "2,0.4"]


def test_resume_before_any_checkpoint_starts_afresh_and_all_damaged_is_refused(tmp_path):
    log = tmp_path / "log.csv"
    log.write_text("step,loss\n1,0.5\n")
    assert resume_from_checkpoint(Checkpoints(tmp_path / "none"), {"w": np.zeros(3)}, log) is None
    assert log.read_text().splitlines() == ["step,loss"]
    folder = tmp_path / "checkpoints"
    _saved_steps(folder, [1, 2])
    _cut_arrays(folder / "1")
    _cut_arrays(folder / "2")
    before = sorted(str(p) for p in folder.rglob("*"))
    with pytest.warns(UserWarning), pytest.raises(RunFolderError) as err:
        resume_from_checkpoint(Checkpoints(folder), {"w": np.zeros(3)}, log)
    assert str(err.value) == (
        f"no intact checkpoint in {folder} (steps [1, 2] are all damaged); restore one from a "
        "copy, or train into a new --out"
    )
    assert sorted(str(p) for p in folder.rglob("*")) == before
