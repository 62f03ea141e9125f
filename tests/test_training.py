"""Task training: losses fall, λ = 0 is a standard RNN, exact resume (also from a damaged
checkpoint), the NaN guard."""

import shutil
from dataclasses import replace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lfads_jslds import config as config_lib
from lfads_jslds.io import pytree_npz
from lfads_jslds.tasks import default_config, get_task
from lfads_jslds.tasks import model as task_model
from lfads_jslds.tasks.spec import LossWeights
from lfads_jslds.training import tasks as task_trainer
from lfads_jslds.training.checkpoints import Checkpoints
from lfads_jslds.training.loop import seed_keys

SMALL = ["model.n_hidden=24", "optim.batch_size=32", "optim.eval_trials=32", "optim.log_every=5"]


def small_config(task: str, *extra: str):
    return config_lib.resolve(default_config(task), overrides=SMALL + list(extra))


@pytest.mark.parametrize("task", ["flipflop", "context"])
def test_short_training_lowers_every_loss_term(task, tmp_path):
    cfg = small_config(task, "optim.steps=150", "optim.batch_size=64")
    spec = get_task(task)
    batch = spec.sample(jax.random.PRNGKey(123), 256)  # held-out, fixed
    init = task_model.init_params(seed_keys(0).init, cfg.model, spec.n_in, spec.n_out)
    _, before = task_model.losses(init, batch, cfg.model, cfg.loss)
    task_trainer.train(cfg, tmp_path / "run", progress=False)
    trained = pytree_npz.unflatten(pytree_npz.load(tmp_path / "run" / task_trainer.PARAMS))
    _, after = task_model.losses(
        jax.tree_util.tree_map(jnp.asarray, trained), batch, cfg.model, cfg.loss
    )
    for term in ("rnn", "jslds", "fixed_point", "approx"):
        assert float(after[term]) < float(before[term]), (term, before[term], after[term])


def test_zero_jslds_weights_give_a_standard_rnn():
    """With λ_JSLDS = λ_e = λ_a = 0 the loss and every gradient are a plain RNN's."""
    cfg = small_config("flipflop")
    spec = get_task("flipflop")
    params = task_model.init_params(jax.random.PRNGKey(0), cfg.model, spec.n_in, spec.n_out)
    # A nonzero E, so that its gradient would show if any JSLDS term leaked in.
    params["expansion"] = [{"W": 0.1 * jnp.eye(24), "b": 0.1 * jnp.ones(24)}] * 2
    params = jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float64), params)
    batch = spec.sample(jax.random.PRNGKey(1), 16)
    standard = LossWeights(rnn=1.0, jslds=0.0, fixed_point=0.0, approx=0.0, l2=1e-4)
    assert not standard.uses_jslds

    def grad(with_jslds):
        return jax.value_and_grad(
            lambda p: task_model.losses(p, batch, cfg.model, standard, with_jslds)[0]
        )(params)

    (v_full, g_full), (v_rnn, g_rnn) = grad(True), grad(False)
    np.testing.assert_allclose(v_full, v_rnn, rtol=1e-12)
    for a, b in zip(
        jax.tree_util.tree_leaves(g_full), jax.tree_util.tree_leaves(g_rnn), strict=True
    ):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    # E only gets the L2 pull (2·l2·W), nothing from the task.
    for layer in g_full["expansion"]:
        np.testing.assert_allclose(layer["W"], 2e-4 * 0.1 * jnp.eye(24), atol=1e-12)


def test_resume_reproduces_uninterrupted_weights(tmp_path):
    cfg = small_config("flipflop", "optim.steps=12", "optim.checkpoint_every=4")
    task_trainer.train(cfg, tmp_path / "whole", progress=False)
    task_trainer.train(
        replace(cfg, optim=replace(cfg.optim, steps=8)), tmp_path / "split", progress=False
    )
    task_trainer.train(cfg, tmp_path / "split", resume=True, progress=False)
    whole = pytree_npz.load(tmp_path / "whole" / task_trainer.PARAMS)
    split = pytree_npz.load(tmp_path / "split" / task_trainer.PARAMS)
    assert whole.keys() == split.keys()
    for k in whole:
        np.testing.assert_array_equal(whole[k], split[k], err_msg=k)
    steps = np.loadtxt(tmp_path / "split" / task_trainer.LOG, delimiter=",", skiprows=1)[:, 0]
    assert list(steps) == sorted(set(steps)), "log rows are not repeated after resume"


def test_resume_falls_back_from_a_damaged_latest_checkpoint(tmp_path):
    """Step 12's arrays cut to half: resume warns, redoes steps 9-12 from step 8 and ends
    with the uninterrupted weights (each step's batch comes from its step number)."""
    cfg = small_config("flipflop", "optim.steps=12", "optim.checkpoint_every=4")
    run = tmp_path / "run"
    task_trainer.train(cfg, run, progress=False)
    whole = pytree_npz.load(run / task_trainer.PARAMS)
    assert Checkpoints(run / task_trainer.CHECKPOINTS).all_steps() == [8, 12]
    step12 = run / task_trainer.CHECKPOINTS / "12"
    for path in (p for p in (step12 / "state").rglob("*") if p.is_file() and p.parent.name == "d"):
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.warns(UserWarning, match=r"cannot read the arrays of .*checkpoints/12"):
        task_trainer.train(cfg, run, resume=True, progress=False)
    assert Checkpoints(run / task_trainer.CHECKPOINTS).all_steps() == [8, 12]
    redone = pytree_npz.load(run / task_trainer.PARAMS)
    for k in whole:
        np.testing.assert_array_equal(whole[k], redone[k], err_msg=k)
    steps = np.loadtxt(run / task_trainer.LOG, delimiter=",", skiprows=1)[:, 0]
    assert list(steps) == [5, 10, 12]  # log_every=5 and the last step, none twice


def test_a_run_killed_before_its_first_checkpoint_resumes_from_step_0(tmp_path):
    """Only config.yaml (and a log row) written: --resume restarts instead of refusing."""
    cfg = small_config("flipflop", "optim.steps=6", "optim.checkpoint_every=10")
    task_trainer.train(cfg, tmp_path / "whole", progress=False)
    run = tmp_path / "killed"
    task_trainer.prepare_run_folder(run, cfg, resume=False)
    (run / task_trainer.LOG).write_text("step,total\n5,1.0\n")
    task_trainer.train(cfg, run, resume=True, progress=False)
    whole = pytree_npz.load(tmp_path / "whole" / task_trainer.PARAMS)
    resumed = pytree_npz.load(run / task_trainer.PARAMS)
    for k in whole:
        np.testing.assert_array_equal(whole[k], resumed[k], err_msg=k)
    assert (run / task_trainer.LOG).read_text().splitlines()[1:] == (
        (tmp_path / "whole" / task_trainer.LOG).read_text().splitlines()[1:]
    )


def test_resume_with_another_model_names_the_field(tmp_path):
    cfg = small_config("flipflop", "optim.steps=2")
    task_trainer.train(cfg, tmp_path / "run", progress=False)
    other = small_config("flipflop", "optim.steps=4", "model.n_hidden=16")
    with pytest.raises(task_trainer.RunFolderError, match=r"differs .* in model\.n_hidden;"):
        task_trainer.train(other, tmp_path / "run", resume=True, progress=False)


def test_existing_run_folder_is_not_overwritten(tmp_path):
    cfg = small_config("flipflop", "optim.steps=2")
    task_trainer.train(cfg, tmp_path / "run", progress=False)
    before = (tmp_path / "run" / task_trainer.PARAMS).read_bytes()
    with pytest.raises(task_trainer.RunFolderError, match="--resume"):
        task_trainer.train(cfg, tmp_path / "run", progress=False)
    assert (tmp_path / "run" / task_trainer.PARAMS).read_bytes() == before


def test_non_finite_steps_are_skipped_and_weights_stay_finite(tmp_path):
    """An lr of 1e30 blows the loss up to inf/NaN: no such step is applied, the run
    stops after ``max_bad_steps`` and the checkpoint holds finite weights."""
    cfg = small_config("flipflop", "optim.steps=50", "optim.lr=1e30", "optim.max_bad_steps=3")
    with pytest.raises(FloatingPointError, match="3 non-finite steps in a row at step"):
        task_trainer.train(cfg, tmp_path / "run", progress=False)
    spec = get_task("flipflop")
    tx = task_trainer.make_optimizer(cfg.optim)
    params = task_model.init_params(seed_keys(0).init, cfg.model, spec.n_in, spec.n_out)
    state, meta = Checkpoints(tmp_path / "run" / task_trainer.CHECKPOINTS).restore(
        (params, tx.init(params))
    )
    assert meta["skipped"] >= 3
    assert all(bool(jnp.all(jnp.isfinite(v))) for v in jax.tree.leaves(state))


def test_a_task_folder_from_the_old_checkpoint_format_is_refused_not_retrained(tmp_path):
    """An earlier version's folder (checkpoint.npz, no checkpoints/): --resume would start
    from step 0 and overwrite its params.npz; it is refused with everything untouched."""
    cfg = small_config("flipflop", "optim.steps=2")
    run = tmp_path / "run"
    task_trainer.train(cfg, run, progress=False)
    shutil.rmtree(run / task_trainer.CHECKPOINTS)
    (run / "checkpoint.npz").write_bytes(b"an earlier version's checkpoint")
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    more = small_config("flipflop", "optim.steps=4")
    with pytest.raises(task_trainer.RunFolderError, match="checkpoint.npz from an earlier"):
        task_trainer.train(more, run, resume=True, progress=False)
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before
