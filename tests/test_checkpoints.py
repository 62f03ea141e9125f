"""Orbax training checkpoints: bit-exact round trips, keep-N, strict targets, killed saves."""

import logging
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from lfads_jslds.training.checkpoints import COMMIT_MARKER, CheckpointError, Checkpoints


class Tiny(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.w = nnx.Param(jax.random.normal(rngs.params(), (3, 4), jnp.float32))
        self.b = nnx.Param(jnp.full((4,), 0.1, jnp.float32))


def make_state(seed: int = 0):
    params = nnx.split(Tiny(nnx.Rngs(seed)), nnx.Param)[1]
    opt = optax.adam(1e-3).init(params)
    # One real update, so mu/nu/count are not just zeros.
    grads = jax.tree_util.tree_map(lambda p: p * 0.5 + seed, params)
    _, opt = optax.adam(1e-3).update(grads, opt, params)
    return {
        "params": params,
        "opt": opt,
        "extra": [
            np.array([np.nan, -0.0, np.inf, -np.inf, 1e-310], np.float64),
            jnp.linspace(0, 1, 7, dtype=jnp.float64),
            jnp.arange(5, dtype=jnp.int32),
            jnp.ones((2, 2), jnp.bfloat16) / 3,
            jax.random.split(jax.random.key(seed), 3),
            np.zeros((0, 3), np.float32),
        ],
        "step": 17,
        "lr": np.float32(3e-4),
    }


def leaf_bytes(x):
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    return np.asarray(x).tobytes()


def assert_bit_equal(a, b):
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        assert type(x) is type(y)
        assert np.shape(x) == np.shape(y) and getattr(x, "dtype", None) == getattr(y, "dtype", None)
        assert leaf_bytes(x) == leaf_bytes(y)


def test_round_trip_is_bit_exact_with_the_targets_structure(tmp_path):
    state, meta = make_state(0), {"epoch": 3, "best_val_nll": float("inf"), "seeds": [1, 2]}
    ckpt = Checkpoints(tmp_path / "checkpoints", keep=2)
    ckpt.save(10, state, meta)
    ckpt.wait()
    # A fresh process: new manager, target is a differently initialised state.
    restored, got_meta = Checkpoints(tmp_path / "checkpoints").restore(make_state(1))
    assert got_meta == meta
    assert_bit_equal(state, restored)
    assert isinstance(restored["params"], nnx.State)
    assert isinstance(restored["opt"][0], optax.ScaleByAdamState)
    assert isinstance(restored["extra"][0], np.ndarray)  # NumPy stays NumPy ...
    w = restored["params"]["w"].get_value()
    assert isinstance(w, jax.Array) and w.dtype == jnp.float32  # jax stays jax; x64 is on


def test_keep_deletes_older_steps(tmp_path):
    ckpt = Checkpoints(tmp_path / "ck", keep=2)
    assert ckpt.latest_step() is None
    for step in (1, 2, 3):
        ckpt.save(step, make_state(step), {"step": step})
    assert ckpt.all_steps() == [2, 3]
    assert not (tmp_path / "ck" / "1").exists()
    again = Checkpoints(tmp_path / "ck", keep=2)
    assert again.latest_step() == 3
    restored, meta = again.restore(make_state(0), step=2)
    assert meta == {"step": 2}
    assert_bit_equal(make_state(2), restored)


def test_latest_and_best_in_sibling_folders(tmp_path):
    latest = Checkpoints(tmp_path / "checkpoints", keep=2)
    best = Checkpoints(tmp_path / "best", keep=1)
    for step, val in [(1, 5.0), (2, 3.0), (3, 4.0), (4, 6.0)]:
        latest.save(step, make_state(step), {"val": val})
        if val < 4.5 and (
            best.latest_step() is None or val < best.restore(make_state(0))[1]["val"]
        ):
            best.save(step, make_state(step), {"val": val})
    assert latest.all_steps() == [3, 4] and best.all_steps() == [2]
    restored, meta = best.restore(make_state(0))
    assert meta == {"val": 3.0}
    assert_bit_equal(make_state(2), restored)
    assert_bit_equal(make_state(4), latest.restore(make_state(0))[0])


def test_no_checkpoint_is_a_clear_error_and_creates_nothing(tmp_path):
    missing = Checkpoints(tmp_path / "run" / "checkpoints")
    assert missing.latest_step() is None
    with pytest.raises(CheckpointError, match="does not exist"):
        missing.restore(make_state())
    assert not (tmp_path / "run").exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="has none"):
        Checkpoints(tmp_path / "empty").restore(make_state())
    ckpt = Checkpoints(tmp_path / "ck")
    ckpt.save(5, make_state(), {})
    with pytest.raises(CheckpointError, match=r"no complete checkpoint for step 4 .*\[5\]"):
        ckpt.restore(make_state(), step=4)


def test_mismatching_target_names_the_folder_and_the_leaf(tmp_path):
    ckpt = Checkpoints(tmp_path / "ck")
    ckpt.save(1, make_state(), {})
    folder = str(tmp_path / "ck" / "1")

    wrong_dtype = make_state()
    w = wrong_dtype["params"]["w"]
    w.set_value(w.get_value().astype(jnp.float64))
    with pytest.raises(CheckpointError, match=r"leaf \d+ \(\['params'\]\['w'\]\.value\)") as e:
        ckpt.restore(wrong_dtype)
    assert folder in str(e.value) and "float32[3, 4]" in str(e.value)

    wrong_shape = make_state()
    wrong_shape["extra"][2] = jnp.arange(6, dtype=jnp.int32)
    with pytest.raises(CheckpointError, match=r"\['extra'\]\[2\].*int32\[5\].*int32\[6\]"):
        ckpt.restore(wrong_shape)

    fewer = make_state()
    del fewer["extra"]
    with pytest.raises(CheckpointError, match="holds 15 leaves but the target has 9"):
        ckpt.restore(fewer)


def test_interrupted_saves_are_ignored(tmp_path, monkeypatch):
    from orbax.checkpoint._src.path import atomicity

    ckpt = Checkpoints(tmp_path / "ck", keep=3)
    ckpt.save(1, make_state(1), {"step": 1})

    # A save killed after writing, before orbax's commit (the rename onto "2").
    async def killed(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(atomicity.AtomicRenameTemporaryPath, "finalize", killed)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save(2, make_state(2), {"step": 2})
    monkeypatch.undo()
    assert (tmp_path / "ck" / "2.orbax-checkpoint-tmp").is_dir()
    assert not (tmp_path / "ck" / "2").exists()

    # A step folder without the commit marker (e.g. a copy cut short).
    shutil.copytree(tmp_path / "ck" / "1", tmp_path / "ck" / "3")
    (tmp_path / "ck" / "3" / COMMIT_MARKER).unlink()

    restarted = Checkpoints(tmp_path / "ck", keep=3)
    assert restarted.latest_step() == 1
    restored, meta = restarted.restore(make_state(0))
    assert meta == {"step": 1}
    assert_bit_equal(make_state(1), restored)
    with pytest.raises(CheckpointError, match="no complete checkpoint for step 3"):
        restarted.restore(make_state(0), step=3)
    # Reading leaves the tmp folder alone (it may be a live run's); the first save clears it.
    assert (tmp_path / "ck" / "2.orbax-checkpoint-tmp").exists()
    restarted.save(4, make_state(4), {"step": 4})
    assert not (tmp_path / "ck" / "2.orbax-checkpoint-tmp").exists()
    assert restarted.latest_step() == 4


def test_bad_saves_are_refused(tmp_path):
    ckpt = Checkpoints(tmp_path / "ck")
    ckpt.save(5, make_state(), {})
    with pytest.raises(CheckpointError, match="already has a checkpoint for step 5"):
        ckpt.save(5, make_state(), {})
    with pytest.raises(CheckpointError, match="steps must increase"):
        ckpt.save(3, make_state(), {})
    with pytest.raises(CheckpointError, match="not JSON-able"):
        ckpt.save(6, make_state(), {"when": object()})
    with pytest.raises(CheckpointError, match=r"leaf 1 \(\['name'\]\) is a str"):
        ckpt.save(6, {"a": np.ones(2), "name": "lfads"}, {})
    with pytest.raises(CheckpointError, match="not an array"):
        ckpt.save(6, {"a": np.array([{}, 1], dtype=object)}, {})
    with pytest.raises(ValueError, match="keep"):
        Checkpoints(tmp_path / "x", keep=0)
    assert ckpt.all_steps() == [5]


def test_orbax_info_logs_are_hidden(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    ckpt = Checkpoints(tmp_path / "ck")
    ckpt.save(1, make_state(), {})
    ckpt.restore(make_state())
    orbax = [r for r in caplog.records if "orbax" in r.pathname and r.levelno < logging.WARNING]
    assert orbax == []
