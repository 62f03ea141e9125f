"""Issue 12's reliability catalogue: bad hyperparameters, bad counts, hostile ``--weights``
files and awkward sessions for ``prepare``.

Each case: a clear one-line error naming the file (or ``--set``) and the field, a non-zero
exit from the CLI, nothing written, and the check made before any long work.
"""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from test_cli import assert_refused, invoke, snapshot
from test_lfads_pipeline import ATTRS, TINY, planted_tensors

from lfads_jslds import config as config_lib
from lfads_jslds.data.prepare import write_tensors
from lfads_jslds.io import atomic
from lfads_jslds.pipeline.run import RunFolder
from lfads_jslds.pipeline.train import prepare_run, train_run
from lfads_jslds.tasks import default_config
from lfads_jslds.training import lfads as lfads_trainer
from lfads_jslds.training import tasks as task_trainer
from lfads_jslds.training.run_config import RunConfig, validate

pytestmark = pytest.mark.usefixtures("compile_cache")


def strict_json(text: str):
    """``json.loads`` that refuses the bare NaN / Infinity Python's json writes by default."""

    def refuse(name: str):
        raise ValueError(f"not JSON: {name}")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture
def tensors_file(tmp_path):
    path = tmp_path / "data.h5"
    write_tensors(path, planted_tensors(), ATTRS)
    return path


@pytest.fixture
def no_training(monkeypatch):
    """Training must never start: a refused value is caught before it."""

    def refuse(*_, **__):
        raise AssertionError("training started")

    monkeypatch.setattr(lfads_trainer, "train", refuse)
    monkeypatch.setattr(task_trainer, "make_train_step", refuse)


# --- 1. hyperparameters -------------------------------------------------------------------

BAD_LFADS_VALUES = [
    ("train.lr", ".nan", "not a finite number", "a value with 0 < value"),
    ("train.lr", ".inf", "not a finite number", "a value with 0 < value"),
    ("train.lr", "0", "out of range", "a value with 0 < value"),
    ("train.lr_decay", "0", "out of range", "a value with 0 < value <= 1"),
    ("train.lr_decay", "1.5", "out of range", "a value with 0 < value <= 1"),
    ("train.lr_decay", "-.inf", "not a finite number", "a value with 0 < value <= 1"),
    ("train.clip_norm", ".nan", "not a finite number", "a value with 0 < value"),
    ("train.clip_norm", "0", "out of range", "a value with 0 < value"),
    ("train.adam_eps", "0", "out of range", "a value with 0 < value"),
    ("train.adam_eps", "-1e-8", "out of range", "a value with 0 < value"),
    ("train.weight_decay", "-0.1", "out of range", "a value with 0 <= value"),
    ("train.weight_decay", ".inf", "not a finite number", "a value with 0 <= value"),
    ("train.sv_rate", "1", "out of range", "a value with 0 < value < 1"),
    ("model.dropout", ".nan", "not a finite number", "a value with 0 <= value < 1"),
    ("loss.kl_ic", "-1", "out of range", "a value with 0 <= value"),
    ("data.val_fraction", "1.0", "out of range", "a value with 0 < value < 1"),
    ("evaluate.smooth_cv_sd_ms", "[20, .nan]", "not a finite number", "a value with 0 < value"),
    ("evaluate.smooth_alpha", "0", "out of range", "a value with 0 < value"),
]


@pytest.mark.parametrize(("key", "value", "what", "fix"), BAD_LFADS_VALUES)
def test_train_refuses_a_bad_hyperparameter_before_training(
    tmp_path, tensors_file, no_training, key, value, what, fix
):
    before = snapshot(tmp_path)
    result = invoke(
        "train", tensors_file, "--out", tmp_path / "run", "--set", f"{key}={value}", "--no-progress"
    )
    assert_refused(result, "--set", key, what, f"give {fix}")
    assert snapshot(tmp_path) == before  # no run folder, nothing else


def test_a_config_file_with_a_bad_value_is_named(tmp_path, tensors_file, no_training):
    config = tmp_path / "bad.yaml"
    config.write_text("train:\n  lr_decay: 1.5\n")
    before = snapshot(tmp_path)
    result = invoke("train", tensors_file, "--out", tmp_path / "run", "--config", config)
    assert_refused(result, str(config), "train.lr_decay = 1.5", "0 < value <= 1")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize(
    ("key", "value"),
    [("optim.lr", ".nan"), ("optim.lr_decay", "0"), ("optim.adam_eps", "0"), ("loss.l2", "-1")],
)
def test_task_train_refuses_a_bad_hyperparameter(tmp_path, no_training, key, value):
    before = snapshot(tmp_path)
    result = invoke(
        "task", "train", "flipflop", "--out", tmp_path / "run", "--set", f"{key}={value}"
    )
    assert_refused(result, "--set", key)
    assert snapshot(tmp_path) == before


def test_a_config_built_in_python_meets_the_same_rules(tmp_path, tensors_file):
    import dataclasses

    cfg = RunConfig()
    nan_lr = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, lr=math.nan))
    with pytest.raises(config_lib.ConfigError, match=r"config: train\.lr = nan is not a finite"):
        validate(nan_lr)
    with pytest.raises(config_lib.ConfigError, match="train.lr = nan"):
        prepare_run(tmp_path / "run", nan_lr, tensors_file, resume=False)
    assert not (tmp_path / "run").exists()
    task = default_config("flipflop")
    bad = dataclasses.replace(task, optim=dataclasses.replace(task.optim, clip_norm=-1.0))
    with pytest.raises(config_lib.ConfigError, match="optim.clip_norm = -1.0 is out of range"):
        task_trainer.validate_config(bad)
    validate(cfg)  # the defaults pass
    task_trainer.validate_config(task)


def _poison() -> optax.GradientTransformation:
    """An optimiser whose update is +Inf for every finite gradient: loss and gradients stay
    finite, only the updated parameters are not."""
    return optax.GradientTransformation(
        lambda params: optax.EmptyState(),
        lambda grads, state, params=None: (jax.tree.map(lambda g: g + jnp.inf, grads), state),
    )


def _finite(tree) -> bool:
    return all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(tree))


def test_lfads_guard_refuses_an_update_that_makes_the_weights_non_finite(tensors_file):
    from lfads_jslds.data import dataset

    # the smallest model that compiles fast: the guard does not depend on the generator
    cfg = config_lib.resolve(RunConfig(), None, [*TINY, "model.generator=gru", "model.co_dim=0"])
    data = dataset.load(tensors_file)
    tx = _poison()
    params, opt_state = lfads_trainer.init_state(cfg, data, tx)
    step = lfads_trainer.make_train_step(cfg, tx, data.n_fwd)
    x, y = jnp.asarray(data.train_input), jnp.asarray(data.train_target)
    new_params, _, terms, ok = step(params, opt_state, x, y, jnp.arange(8), 0, 1.0, 1.0, 1.0)
    assert math.isfinite(float(terms["total"]))  # the loss was fine, the update was not
    assert not bool(ok)
    assert _finite(new_params)
    for a, b in zip(jax.tree.leaves(new_params), jax.tree.leaves(params), strict=True):
        np.testing.assert_array_equal(a, b)


def test_task_guard_refuses_an_update_that_makes_the_weights_non_finite():
    from lfads_jslds.tasks import get_task
    from lfads_jslds.tasks import model as task_model

    cfg = config_lib.resolve(
        default_config("flipflop"), None, ["model.n_hidden=8", "optim.batch_size=4"]
    )
    spec = get_task("flipflop")
    params = task_model.init_params(jax.random.PRNGKey(0), cfg.model, spec.n_in, spec.n_out)
    tx = _poison()
    step = task_trainer.make_train_step(cfg, tx)
    new_params, _, terms, ok = step(params, tx.init(params), jnp.asarray(0))
    assert math.isfinite(float(terms["total"]))
    assert not bool(ok)
    for a, b in zip(jax.tree.leaves(new_params), jax.tree.leaves(params), strict=True):
        np.testing.assert_array_equal(a, b)


def test_finite_json_writes_null_for_non_finite_values(tmp_path):
    summary = {"best": math.nan, "rates": [1.0, math.inf, -math.inf], "n": 3, "s": "x"}
    atomic.write_json(tmp_path / "s.json", summary)
    got = strict_json((tmp_path / "s.json").read_text())
    assert got == {"best": None, "rates": [1.0, None, None], "n": 3, "s": "x"}


def test_train_json_is_strict_json_when_validation_gives_nan(tmp_path, tensors_file, monkeypatch):
    def still_step(cfg, tx, n_fwd):  # no compiling: the summary is what is tested here
        return lambda params, opt, *_: (params, opt, {"total": jnp.asarray(1.0)}, True)

    def nan_validation(cfg):
        return lambda params, x, target: (jnp.full(x.shape[0], jnp.nan), jnp.zeros(x.shape[0]))

    monkeypatch.setattr(lfads_trainer, "make_train_step", still_step)
    monkeypatch.setattr(lfads_trainer, "make_validation", nan_validation)
    cfg = config_lib.resolve(RunConfig(), None, [*TINY, "train.max_epochs=1"])
    summary = train_run(tmp_path / "run", cfg, tensors_file, progress=False)
    assert math.isnan(summary["best_val_nll_sv_smoothed"])
    written = strict_json((tmp_path / "run" / RunFolder.SUMMARY).read_text())
    assert written["best_val_nll_sv_smoothed"] is None
    assert written["epochs"] == 1


# --- 3. counts ----------------------------------------------------------------------------


def _tensors_with(key: str, value: float, at=(1, 0, 2)) -> dict:
    tensors = planted_tensors()
    x = tensors[key].copy()
    x[at] = value
    tensors[key] = x
    return tensors


@pytest.mark.parametrize(
    ("key", "value", "what"),
    [
        ("train_spikes_heldin", math.inf, "NaN/Inf counts"),
        ("eval_spikes_heldout", math.inf, "infinite counts"),
        ("train_spikes_heldin_forward", math.inf, "infinite counts"),
        ("eval_spikes_heldout_forward", -math.inf, "infinite counts"),
        ("train_spikes_heldout", -1.0, "negative counts"),
        ("eval_spikes_heldin_forward", -1.0, "negative counts"),
        ("eval_spikes_heldin", 0.5, "non-integer counts"),
        ("train_spikes_heldout_forward", 2.25, "non-integer counts"),
        ("train_spikes_heldin", 1e30, "impossible counts"),
        ("eval_spikes_heldout_forward", 21.0, "impossible counts"),
    ],
)
def test_train_refuses_bad_counts_in_any_window(tmp_path, no_training, key, value, what):
    data = tmp_path / "bad.h5"
    write_tensors(data, _tensors_with(key, value), ATTRS)
    before = snapshot(tmp_path)
    result = invoke("train", data, "--out", tmp_path / "run", "--no-progress")
    err = assert_refused(result, str(data), f"{key} has 1 {what}", "[trial, bin, neuron] [1, 0, 2]")
    assert f"{value:g}" in err
    if "impossible" in what:
        assert "above 20 in a 20 ms bin is over 1 spike per ms" in err
    assert snapshot(tmp_path) == before


def test_a_count_of_one_spike_per_ms_is_the_largest_accepted(tmp_path):
    from lfads_jslds.data import dataset

    at_limit = _tensors_with("train_spikes_heldin_forward", 20.0)  # 20 spikes in 20 ms
    data = dataset.from_tensors(tmp_path / "x.h5", at_limit, ATTRS)
    assert float(data.train_target[1, 8, 2]) == 20.0  # forward bin 0 follows the 8 observed
    with pytest.raises(dataset.DataError, match="impossible counts"):
        dataset.from_tensors(tmp_path / "x.h5", _tensors_with("train_spikes_heldin", 21.0), ATTRS)


def test_nan_counts_are_refused_where_needed_and_named_for_what_they_are(tmp_path):
    from lfads_jslds.data import dataset

    path = tmp_path / "x.h5"
    with pytest.raises(dataset.DataError) as info:
        dataset.from_tensors(path, _tensors_with("train_spikes_heldout", math.nan), ATTRS)
    message = str(info.value)
    assert "train_spikes_heldout has 1 NaN/Inf counts" in message
    assert "held-out neurons are learned from the train trials' counts" in message
    assert "held-in" not in message
    with pytest.raises(dataset.DataError, match="the encoder needs every held-in count"):
        dataset.from_tensors(path, _tensors_with("eval_spikes_heldin", math.nan), ATTRS)
    # a NaN target (not observed) is skipped by the Poisson NLL: accepted
    data = dataset.from_tensors(path, _tensors_with("eval_spikes_heldout_forward", math.nan), ATTRS)
    assert np.isnan(data.eval_target[1, 8, 6 + 2])


# --- 6. memory safety of --weights ----------------------------------------------------------

#: Loads in a child process, its address space capped at 1 GiB and its time at the caller's
#: timeout, so that a regression (reading /dev/zero for ever, blocking on a FIFO) fails the
#: test instead of taking the machine.
_LOAD_CAPPED = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
from lfads_jslds.io.safe_npz import WeightsFileError, load_npz_safely
try:
    load_npz_safely(sys.argv[1])
    print("loaded")
except WeightsFileError as exc:
    print("WeightsFileError", exc)
"""


def _load_in_child(path, script=_LOAD_CAPPED) -> str:
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", script, str(path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip()


@pytest.mark.parametrize("kind", ["device", "fifo"])
def test_weights_that_are_not_a_regular_file_are_refused_at_once(tmp_path, kind):
    import os

    if kind == "device":
        path = tmp_path / "zero.npz"
        path.symlink_to("/dev/zero")  # what a user's symlink may point at
    else:
        path = tmp_path / "pipe.npz"
        os.mkfifo(path)
    out = _load_in_child(path)
    assert out.startswith("WeightsFileError"), out
    assert str(path) in out and ("a device" if kind == "device" else "a FIFO") in out


_LOAD_RUN_FOLDER = """
import sys
from pathlib import Path
from lfads_jslds.io.safe_npz import WeightsFileError
from lfads_jslds.tasks import get_task
from lfads_jslds.tasks.weights import load_task_weights
try:
    load_task_weights(Path(sys.argv[1]), get_task("flipflop"))
    print("loaded")
except WeightsFileError as exc:
    print("WeightsFileError", exc)
"""


def test_a_run_folder_whose_params_are_a_fifo_is_refused(tmp_path):
    import os

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("task: flipflop\n")
    os.mkfifo(run / "params.npz")
    out = _load_in_child(run, _LOAD_RUN_FOLDER)
    assert out.startswith("WeightsFileError") and "params.npz is a FIFO" in out, out


def _zip_bomb(path, n_bytes: int):
    """An .npz whose one member is ``n_bytes`` of zeros (a float64 array), deflated: about
    1000 times smaller on disk than expanded."""
    import zipfile

    from numpy.lib import format as npy_format

    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        with z.open("w.npy", "w", force_zip64=True) as member:
            header = {"descr": "<f8", "fortran_order": False, "shape": (n_bytes // 8,)}
            npy_format.write_array_header_1_0(member, header)
            chunk = bytes(1 << 20)
            for _ in range(n_bytes >> 20):
                member.write(chunk)
    return path


def test_a_zip_bomb_is_refused_before_expanding(tmp_path):
    import tracemalloc

    from lfads_jslds.io.safe_npz import MAX_BYTES, WeightsFileError, load_npz_safely

    bomb = _zip_bomb(tmp_path / "bomb.npz", MAX_BYTES + (16 << 20))
    assert bomb.stat().st_size < 1 << 20  # under 1 MB on disk, 272 MiB expanded
    tracemalloc.start()
    try:
        with pytest.raises(WeightsFileError, match=f"over the {MAX_BYTES} bytes") as info:
            load_npz_safely(bomb)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(bomb) in str(info.value)
    assert peak < 4 << 20, peak  # the member was never expanded


def test_task_eval_refuses_a_zip_bomb(tmp_path):
    bomb = _zip_bomb(tmp_path / "bomb.npz", 300 << 20)
    before = snapshot(tmp_path)
    result = invoke("task", "eval", "flipflop", "--weights", bomb)
    assert_refused(result, str(bomb), "expand to 314572928 bytes", "MAX_BYTES")
    assert snapshot(tmp_path) == before


def test_an_npy_header_larger_than_its_member_is_refused(tmp_path):
    import io
    import zipfile

    from numpy.lib import format as npy_format

    from lfads_jslds.io.safe_npz import WeightsFileError, load_npz_safely

    member = io.BytesIO()
    npy_format.write_array_header_1_0(
        member, {"descr": "<f8", "fortran_order": False, "shape": (10**12,)}
    )
    member.write(bytes(16))  # two float64s where the header promises 10^12
    path = tmp_path / "liar.npz"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("w.npy", member.getvalue())
    with pytest.raises(WeightsFileError) as info:
        load_npz_safely(path)
    size = len(member.getvalue())
    assert str(info.value) == (
        f"{path}: member 'w.npy': its header declares a float64 array of shape (1000000000000,) "
        f"(8000000000000 bytes or more), but the member holds {size} bytes"
    )


# --- 7. prepare -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_session():
    """A small synthetic session in memory (12 + 4 units, 36 trials), to be broken and written."""
    from test_data_nwb import TINY as TINY_SESSION

    from lfads_jslds.data import synth

    return synth.make_synthetic(TINY_SESSION, seed=2)


def _write_session(tmp_path, monkeypatch, session):
    from lfads_jslds.data import synth

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # pynwb's cache, not $HOME
    path = tmp_path / "session.nwb"
    synth.write_nwb(path, session)
    return path


@pytest.fixture
def no_binning(monkeypatch):
    """Spikes must never be binned: a refused input is caught before that work."""
    from lfads_jslds.data import prepare as prep

    def refuse(*_, **__):
        raise AssertionError("spikes binned")

    monkeypatch.setattr(prep, "spike_tensor", refuse)


@pytest.mark.parametrize("lag_ms", [10**8, -(10**8)])
def test_prepare_refuses_a_lag_that_leaves_no_behaviour(
    tmp_path, monkeypatch, tiny_session, no_binning, lag_ms
):
    nwb = _write_session(tmp_path, monkeypatch, tiny_session)
    out = tmp_path / "t.h5"
    result = invoke("prepare", nwb, "--out", out, "--bin-ms", 20, "--lag-ms", lag_ms)
    assert_refused(
        result,
        str(nwb),
        f"behaviour lag of {lag_ms} ms",
        "no train trial has a finite processing/behavior/hand_vel sample",
        f"{-250 + lag_ms} to {450 + lag_ms} ms from move_onset_time",
        "--lag-ms",
    )
    assert not out.exists()


@pytest.mark.parametrize("column", ["start_time", "stop_time"])
def test_nan_trial_times_are_caught_with_the_trial(tmp_path, monkeypatch, tiny_session, column):
    import dataclasses

    trials = dict(tiny_session.trials)
    trials[column] = np.array(trials[column], dtype=np.float64)
    trials[column][[4, 7]] = np.nan
    nwb = _write_session(tmp_path, monkeypatch, dataclasses.replace(tiny_session, trials=trials))
    out = tmp_path / "t.h5"
    result = invoke("prepare", nwb, "--out", out, "--bin-ms", 20)
    assert_refused(  # the synthetic trials table numbers its ids by row
        result,
        f"{nwb}: /intervals/trials/{column} is NaN or infinite in 2 trial(s): rows 4, 7 (ids 4, 7)",
        "fix or remove those trials",
    )
    assert not out.exists()


def test_a_unit_without_spikes_is_dropped_named_and_recorded(tmp_path, monkeypatch, tiny_session):
    import dataclasses

    import h5py

    from lfads_jslds.data.nwb import read_session

    off = tiny_session.spike_offsets
    silent = 5  # a held-in or held-out unit alike: its spikes are removed
    spikes = np.delete(tiny_session.spike_times, np.arange(off[silent], off[silent + 1]))
    offsets = off.copy()
    offsets[silent + 1 :] -= off[silent + 1] - off[silent]
    quiet = dataclasses.replace(tiny_session, spike_times=spikes, spike_offsets=offsets)
    nwb = _write_session(tmp_path, monkeypatch, quiet)

    with pytest.warns(UserWarning, match=r"dropped 1 unit\(s\) without spikes .*ids 5$"):
        units = read_session(nwb).units
    kept = [u for u in range(16) if u != silent]
    assert units.dropped == (silent,)
    np.testing.assert_array_equal(units.ids, kept)
    np.testing.assert_array_equal(units.heldout, tiny_session.heldout[kept])
    obs, obs_off = tiny_session.obs_intervals, tiny_session.obs_offsets
    for k, u in enumerate(kept):  # every other unit keeps its own spikes and intervals
        np.testing.assert_array_equal(units.spikes(k), spikes[offsets[u] : offsets[u + 1]])
        np.testing.assert_array_equal(units.intervals(k), obs[obs_off[u] : obs_off[u + 1]])

    out = tmp_path / "t.h5"
    with pytest.warns(UserWarning, match=r"without spikes .*ids 5$"):  # the CLI prints it
        result = invoke("prepare", nwb, "--out", out, "--bin-ms", 20)
    assert result.exit_code == 0, (result.stdout, result.stderr)
    with h5py.File(out, "r") as f:
        assert list(f.attrs["dropped_unit_ids"]) == [silent]
        np.testing.assert_array_equal(f["unit_ids"][()], kept)
        n_units = f["train_spikes_heldin"].shape[2] + f["train_spikes_heldout"].shape[2]
    assert n_units == 15
