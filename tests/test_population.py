"""A population of LFADS members in one jitted step, against single-member training."""

import dataclasses
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_lfads_pipeline import tensors_file, tiny_config  # noqa: F401 (fixture)

from lfads_jslds.data import dataset
from lfads_jslds.training import lfads as lfads_training
from lfads_jslds.training import population as pop_lib
from lfads_jslds.training.loop import seed_keys

pytestmark = pytest.mark.usefixtures("compile_cache")

SEEDS = (3, 11, 7)
#: Three members that differ in every searched value (λ_a, λ_e matter: generator jslds).
SEARCHED = {
    "lr_scale": (1.0, 0.3, 2.5),
    "kl_ic": (1.0, 0.2, 3.0),
    "kl_co": (0.5, 2.0, 1.0),
    "l2_gen": (1.0, 0.1, 4.0),
    "l2_con": (0.3, 1.0, 2.0),
    "approx": (100.0, 1.0, 10.0),
    "fixed_point": (100.0, 5.0, 0.5),
}


@pytest.fixture
def x64(request):
    """``jax_enable_x64`` set to the test's parameter, restored afterwards."""
    saved = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", request.param)
    yield request.param
    jax.config.update("jax_enable_x64", saved)


def _cfg(*extra):
    return tiny_config("model.generator=jslds", "train.lr=0.01", *extra)


def _leaves_equal(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _member(tree, k):
    return jax.tree.map(lambda x: x[k], tree)


@pytest.mark.parametrize("x64", [True], indirect=True)
def test_a_population_step_equals_separate_member_steps(x64, tensors_file):  # noqa: F811
    """Two steps of 3 members (own seeds, lr scales, loss weights) vs the single trainer's
    jitted step with each member's seed and weights in its config, float64, to 1e-10."""
    cfg = _cfg()
    data = dataset.load(tensors_file)
    pop = pop_lib.population_data(cfg, data)
    tx = pop_lib.make_optimizer(cfg, pop)
    h = pop_lib.hyperparams(cfg, len(SEEDS), **SEARCHED)
    fresh = pop_lib.init_population(cfg, data, h, SEEDS)
    state = fresh._replace(params=jax.tree.map(lambda x: x.astype(jnp.float64), fresh.params))
    state = state._replace(opt_state=jax.vmap(tx.init)(state.params))
    inputs, targets = pop.inputs.astype(jnp.float64), pop.targets.astype(jnp.float64)
    n, b = pop.n_trials, cfg.train.batch_size
    order = pop_lib.batch_order(state.data_key, 0, n)
    step_fn = pop_lib.make_population_step(cfg, tx, pop.n_fwd)
    pop_state = state
    for s in range(2):
        idx = order[:, s * b : (s + 1) * b]
        pop_state, pop_terms, ok = step_fn(pop_state, inputs, targets, idx, s, 0.5, 0.75)
        assert np.all(np.asarray(ok))

    for k, seed in enumerate(SEEDS):
        # The single trainer's recipe, written out: its seed's keys and batch order.
        weights = {f: SEARCHED[f][k] for f in SEARCHED if f != "lr_scale"}
        cfg_k = dataclasses.replace(
            cfg,
            train=dataclasses.replace(cfg.train, seed=seed),
            loss=dataclasses.replace(cfg.loss, **weights),
        )
        init = lfads_training.init_state(cfg_k, data, tx)[0]
        _leaves_equal(_member(fresh.params, k), init)
        single_order = jax.random.permutation(jax.random.fold_in(seed_keys(seed).data, 0), n)
        np.testing.assert_array_equal(order[k], single_order)
        single = lfads_training.make_train_step(cfg_k, tx, pop.n_fwd)
        p, o = _member(state.params, k), _member(state.opt_state, k)
        for s in range(2):
            idx = single_order[s * b : (s + 1) * b]
            p, o, terms, ok = single(
                p, o, inputs, targets, idx, s, SEARCHED["lr_scale"][k], 0.5, 0.75
            )
            assert bool(ok)
        for got, want in [(_member(pop_state.params, k), p), (_member(pop_state.opt_state, k), o)]:
            for x, y in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
                assert x.dtype == y.dtype
                np.testing.assert_allclose(x, y, rtol=1e-10, atol=1e-12)
        for name, value in terms.items():
            np.testing.assert_allclose(pop_terms[name][k], value, rtol=1e-10, atol=1e-12)
    # The members really differ: the step is not K copies of one member.
    assert not np.allclose(pop_state.params["gen"]["W_h"][0], pop_state.params["gen"]["W_h"][1])


def test_exploit_copies_winners_weights_optimiser_state_and_hyperparameters(tensors_file):  # noqa: F811
    cfg = _cfg()
    data = dataset.load(tensors_file)
    state = pop_lib.init_population(cfg, data, pop_lib.hyperparams(cfg, 3, **SEARCHED), SEEDS)
    # Adam moments and step counts that differ by member, as after some training.
    moved = jax.tree.map(
        lambda x: x + jnp.arange(3).reshape(-1, *[1] * (x.ndim - 1)), state.opt_state
    )
    state = state._replace(opt_state=moved)
    winners = np.array([2, 1, 2])  # member 0 loses to 2; 1 and 2 keep their own
    new = pop_lib.exploit(state, jnp.asarray(winners))
    for i, w in enumerate(winners):
        for part in ("params", "opt_state", "hparams"):
            _leaves_equal(_member(getattr(new, part), i), _member(getattr(state, part), w))
        np.testing.assert_array_equal(new.data_key[i], state.data_key[i])  # own noise kept
        np.testing.assert_array_equal(new.step_key[i], state.step_key[i])
    assert float(new.hparams.lr_scale[0]) == SEARCHED["lr_scale"][2]
    assert int(jax.tree.leaves(new.opt_state)[0][0]) == 2  # a count: member 2's


@pytest.mark.parametrize("x64", [False], indirect=True)
def test_a_resumed_population_ends_bit_for_bit_as_an_uninterrupted_one(
    x64,
    tmp_path,
    tensors_file,  # noqa: F811
):
    """float32: 4 epochs with checkpoints after 2 and 4; killed after 2 (the checkpoint of
    epoch 4 removed) and resumed, it ends bit for bit where the uninterrupted run ended."""
    cfg = _cfg("train.checkpoint_every=2")
    data = dataset.load(tensors_file)
    h = pop_lib.hyperparams(cfg, 3, **SEARCHED)
    full = pop_lib.train_population(cfg, data, h, SEEDS, 4, tmp_path / "full")
    assert jax.tree.leaves(full.state.params)[0].dtype == jnp.float32
    shutil.copytree(tmp_path / "full", tmp_path / "cut")
    shutil.rmtree(tmp_path / "cut" / "4")
    # hyperparameters come from the checkpoint (exploit may have changed them), not these
    other = pop_lib.hyperparams(cfg, 3)
    resumed = pop_lib.train_population(cfg, data, other, SEEDS, 4, tmp_path / "cut", resume=True)
    assert resumed.epochs == 4 and resumed.val_nll.shape == (2, 3)
    _leaves_equal(resumed.state, full.state)
    np.testing.assert_array_equal(resumed.val_nll, full.val_nll[2:])
    np.testing.assert_array_equal(resumed.skipped, full.skipped)
