"""Issue 12, reliability catalogue item 5: one line, not a traceback.

Damaged HDF5 (tensor files, ``inference.h5``, NWB), a dataset missing from
``inference.h5``, a damaged or object-holding ``params.npz``, damaged checkpoints, ``--out``
as a symlink, a plain HDF5 file named ``.nwb``, and weights whose pickle holds a stub
where arrays belong: each refused by the CLI with exit code 1 and one ``error:`` line
naming the file, nothing written. Also: ``metrics.json`` and ``summary.json`` are strict
JSON when a value is NaN.
"""

import json
import math
import os
import pickle
import shutil

import h5py
import jax
import numpy as np
import pytest
from test_cli import TINY as TASK_TINY
from test_cli import assert_refused, invoke, snapshot
from test_lfads_pipeline import ATTRS, TINY, planted_tensors
from test_safe_npz import _object_npy, _Reduce, _write_npz

from lfads_jslds import config as config_lib
from lfads_jslds.data.prepare import write_tensors
from lfads_jslds.io import pytree_npz
from lfads_jslds.pipeline.run import RunFolder, RunFolderError, expected_datasets
from lfads_jslds.pipeline.train import prepare_run
from lfads_jslds.tasks import default_config, get_task
from lfads_jslds.tasks import model as task_model
from lfads_jslds.tasks.weights import load_task_weights
from lfads_jslds.training.run_config import RunConfig

pytestmark = pytest.mark.usefixtures("compile_cache")

SETS = [a for s in TINY for a in ("--set", s)]


def strict_json(text: str):
    """``json.loads`` that refuses the bare NaN / Infinity Python's json writes by default."""

    def refuse(name: str):
        raise ValueError(f"not JSON: {name}")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module")
def tensors_file(tmp_path_factory):
    """Planted tensors with 32 train trials: ``train_spikes_heldin`` has 1536 > 1024 entries,
    so it is stored gzip-compressed (``io.h5``), which ``damage(..., "overwritten")`` needs."""
    path = tmp_path_factory.mktemp("data") / "tiny.h5"
    write_tensors(path, planted_tensors(n_train=32), ATTRS)
    return path


def damage(src, dst, how: str):
    """Write a damaged copy of ``src`` to ``dst``: ``random`` bytes in its place, ``truncated``
    to half its size, or the first compressed chunk ``overwritten`` (the file still opens;
    the read inside fails)."""
    data = bytearray(src.read_bytes())
    rng = np.random.default_rng(0)
    if how == "random":
        data = rng.bytes(len(data))
    elif how == "truncated":
        data = data[: len(data) // 2]
    else:
        with h5py.File(src) as f:
            chunked = [d for d in f.values() if isinstance(d, h5py.Dataset) and d.compression]
            info = chunked[0].id.get_chunk_info(0)
        data[info.byte_offset : info.byte_offset + info.size] = rng.bytes(info.size)
    dst.write_bytes(bytes(data))
    return dst


# --- corrupted HDF5 --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("how", "said"),
    [
        ("random", "not an HDF5 file"),
        ("truncated", "a damaged HDF5 file"),
        ("overwritten", "a damaged HDF5 file"),
    ],
)
def test_a_damaged_tensor_file_is_one_line(tmp_path, tensors_file, how, said):
    bad = damage(tensors_file, tmp_path / "bad.h5", how)
    run = tmp_path / "run"
    result = invoke("train", bad, "--out", run, "--no-progress")
    assert_refused(result, str(bad), said)
    assert not run.exists()


@pytest.fixture
def nwb_file(tmp_path, monkeypatch):
    from test_data_nwb import TRIALS, write_nwb

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # pynwb's cache, not $HOME
    return write_nwb(tmp_path / "session.nwb", trial_columns=TRIALS)


@pytest.mark.parametrize(
    ("how", "said"), [("random", "not an HDF5 file"), ("truncated", "a damaged HDF5 file")]
)
@pytest.mark.parametrize("command", ["train", "prepare"])
def test_a_damaged_nwb_file_is_one_line(tmp_path, nwb_file, how, said, command):
    bad = damage(nwb_file, tmp_path / "bad.nwb", how)
    out = tmp_path / "out"
    args = ["--no-progress"] if command == "train" else []
    assert_refused(invoke(command, bad, "--out", out, *args), str(bad), said)
    assert not out.exists()


def test_a_plain_hdf5_file_named_nwb_is_not_an_nwb_file(tmp_path):
    """Before: read as a tensor file, refused for lacking ``train_spikes_heldin``."""
    path = tmp_path / "plain.nwb"
    with h5py.File(path, "w") as f:
        f["units/spike_times"] = [0.1, 0.2]
    run = tmp_path / "run"
    assert_refused(invoke("train", path, "--out", run), str(path), "not an NWB file")
    assert not run.exists()


@pytest.fixture(scope="module")
def untrained_run(tmp_path_factory, tensors_file):
    """A run folder as ``train`` leaves it before its first epoch: config and data, no weights."""
    run = tmp_path_factory.mktemp("untrained") / "run"
    cfg = config_lib.resolve(RunConfig(), None, TINY)
    prepare_run(run, cfg, tensors_file, resume=False)
    return run


@pytest.mark.parametrize(
    ("how", "said"),
    [
        ("random", "not an HDF5 file"),
        ("truncated", "a damaged HDF5 file"),
        ("overwritten", "a damaged HDF5 file"),
    ],
)
@pytest.mark.parametrize("stage", ["evaluate", "analyze"])
def test_a_damaged_inference_file_is_one_line(
    tmp_path, untrained_run, tensors_file, how, said, stage
):
    run = tmp_path / "run"
    shutil.copytree(untrained_run, run)
    damage(tensors_file, run / "inference.h5", how)  # any compressed HDF5 serves
    before = snapshot(run)
    assert_refused(invoke(stage, run), str(run / "inference.h5"), said)
    assert snapshot(run) == before


# --- a dataset missing from inference.h5; metrics.json and summary.json strict JSON ---------


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, tensors_file):
    """Two epochs of a tiny LFADS-JSLDS run, inferred."""
    run = tmp_path_factory.mktemp("trained") / "run"
    sets = SETS + ["--set", "train.max_epochs=2"]
    result = invoke("train", tensors_file, "--out", run, "--no-progress", *sets)
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    result = invoke("infer", run, "--no-progress")
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    return run


def test_infer_writes_the_datasets_later_stages_check_for(trained_run):
    with h5py.File(trained_run / "inference.h5") as f:
        written = {k for k in f if not k.endswith("_forward")}
    assert written == set(expected_datasets("jslds"))


@pytest.mark.parametrize("stage", ["evaluate", "analyze"])
def test_a_dataset_missing_from_inference_is_one_line(tmp_path, trained_run, stage):
    """Before: ``KeyError: 'rates'`` from deep inside the stage."""
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    with h5py.File(run / "inference.h5", "a") as f:
        del f["rates"]
    before = snapshot(run)
    err = assert_refused(invoke(stage, run), str(run / "inference.h5"), "no dataset rates")
    assert "lfads-jslds infer" in err
    assert snapshot(run) == before


def _nan_residual(tmp_path, trained_run):
    """A copy of the run whose ‖F(e*)−e*‖ are NaN: its median, reported by both stages, is NaN."""
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    with h5py.File(run / "inference.h5", "a") as f:
        f["fixed_point_residual"][...] = np.nan
    return run


def test_metrics_json_is_strict_json_when_a_metric_is_nan(tmp_path, trained_run):
    run = _nan_residual(tmp_path, trained_run)
    result = invoke("evaluate", run)
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    metrics = strict_json((run / "metrics.json").read_text())
    assert metrics["jslds"]["fixed_point_residual_median"] is None
    assert math.isfinite(metrics["co-bps"])


def test_summary_json_is_strict_json_when_a_value_is_nan(tmp_path, trained_run):
    run = _nan_residual(tmp_path, trained_run)
    result = invoke("analyze", run)
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    summary = strict_json((run / "analysis" / "summary.json").read_text())
    assert summary["fixed_point_residual_median"] is None
    assert summary["n_trials"] == 40


def halve_checkpoint(step, part):
    """Cut an orbax step folder's array files (``arrays``) or its metadata to half."""
    if part == "arrays":
        cut = [p for p in (step / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
    else:
        cut = [step / "meta" / "metadata"]
    assert cut
    for path in cut:
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize("part", ["arrays", "metadata"])
def test_a_damaged_lfads_checkpoint_is_one_line(tmp_path, trained_run, part):
    """Orbax's files of the early-stopping weights cut to half: ``analyze`` names the step
    folder and the fix; tensorstore's page-long detail is cut short."""
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    (step,) = (run / "best").iterdir()
    halve_checkpoint(step, part)
    before = snapshot(run)
    err = assert_refused(invoke("analyze", run), f"cannot read the {part} of {step}")
    assert "remove that folder to use an older checkpoint" in err and len(err) < 600
    assert snapshot(run) == before


# --- params.npz and checkpoints of a task run folder ---------------------------------------------


def _task_params() -> dict[str, np.ndarray]:
    """A flip-flop network's weights as ``params.npz`` holds them: they fit the task."""
    spec = get_task("flipflop")
    params = task_model.init_params(
        jax.random.PRNGKey(0), spec.defaults.model, spec.n_in, spec.n_out
    )
    return pytree_npz.flatten(params)


def _with_object_member(flat: dict[str, np.ndarray], key: str) -> dict[str, np.ndarray]:
    """``flat`` with member ``key`` a pickled object array (``np.savez`` pickles it)."""
    obj = np.empty(2, dtype=object)
    obj[:] = [np.zeros(3), "not a weight"]
    return {**flat, key: obj}


def _task_run(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(config_lib.dump_yaml(default_config("flipflop")))
    return run


@pytest.mark.parametrize(
    ("how", "said"),
    [
        ("truncated", "params.npz is not an .npz archive"),
        ("object", "member 'cell/wRUHX' is a pickled object array, not a numeric array"),
    ],
)
def test_a_damaged_or_object_holding_params_npz_is_one_line(tmp_path, how, said):
    """Before (object): ``KeyError`` or ``TypeError`` from inside the model."""
    run = _task_run(tmp_path)
    flat = _task_params()
    if how == "object":
        flat = _with_object_member(flat, "cell/wRUHX")
    np.savez(run / "params.npz", **flat)
    if how == "truncated":
        damage(run / "params.npz", run / "params.npz", how)
    before = snapshot(run)
    result = invoke("task", "eval", "flipflop", "--weights", run, "--trials", 8)
    assert_refused(result, str(run / "params.npz"), said)
    assert snapshot(run) == before


def test_the_same_params_npz_intact_loads(tmp_path):
    """The control of the two tests around it: the refusal comes from the damage alone."""
    run = _task_run(tmp_path)
    np.savez(run / "params.npz", **_task_params())
    params, model = load_task_weights(run, get_task("flipflop"))
    np.testing.assert_array_equal(params["cell"]["wRUHX"], _task_params()["cell/wRUHX"])
    assert model.cell == "gru"


def test_a_params_npz_lacking_a_parameter_is_one_line(tmp_path):
    """Before: ``KeyError: 'cell'`` from the shape check."""
    run = _task_run(tmp_path)
    np.savez(run / "params.npz", **{k: v for k, v in _task_params().items() if k == "h0"})
    result = invoke("task", "eval", "flipflop", "--weights", run, "--trials", 8)
    assert_refused(result, str(run), "not a gru task network's weights: no 'cell'")


@pytest.fixture(scope="module")
def task_run(tmp_path_factory, compile_cache):
    """A tiny flip-flop run with checkpoints at steps 2 and 4."""
    run = tmp_path_factory.mktemp("task") / "run"
    args = [*TASK_TINY, "--set", "optim.checkpoint_every=2"]
    result = invoke("task", "train", "flipflop", "--out", run, "--steps", 4, *args)
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    return run


@pytest.mark.parametrize("part", ["arrays", "metadata"])
def test_a_damaged_task_checkpoint_is_one_line(tmp_path, task_run, part):
    """``task train --resume`` with every checkpoint's orbax files cut to half. Before (its
    ``checkpoint.npz``): ``BadZipFile`` / ``ValueError`` tracebacks, neither naming the file."""
    run = tmp_path / "run"
    shutil.copytree(task_run, run)
    steps = sorted((run / "checkpoints").iterdir())
    assert [s.name for s in steps] == ["2", "4"]
    for step in steps:
        halve_checkpoint(step, part)
    before = snapshot(run)
    result = invoke("task", "train", "flipflop", "--out", run, "--resume", "--steps", 6, *TASK_TINY)
    err = assert_refused(result, f"no intact checkpoint in {run / 'checkpoints'}")
    assert "train into a new --out" in err
    assert snapshot(run) == before


# --- a reference .npz whose pickle holds a stub where arrays belong -----------------------------


def _reference(path, rnn):
    """The paper's layout (``arr_0``: a pickled dict ``rnn``/``mlp``/``out``) with ``rnn`` given."""
    n = 4
    holder = np.empty((), dtype=object)
    holder[()] = {
        "rnn": rnn,
        "mlp": [{"W": np.zeros((n, n)), "b": np.zeros(n)}],
        "out": {"W": np.zeros((3, n)), "b": np.zeros(3)},
    }
    return _write_npz(path, {"arr_0.npy": _object_npy(pickle.dumps(holder, protocol=3))})


@pytest.mark.parametrize(
    ("where", "said"),
    [
        ("rnn", "arr_0['rnn'] is <stub math.sqrt(...)>, not a numeric array"),
        ("leaf", "arr_0['rnn']['wRUHX'] is <stub math.sqrt(...)>, not a numeric array"),
    ],
)
def test_a_reference_npz_with_a_stub_where_arrays_belong_is_one_line(tmp_path, where, said):
    """Before: ``TypeError: 'Stub' object is not iterable`` (rnn) or ``IndexError`` (leaf)."""
    stub = _Reduce(math.sqrt, (4.0,))  # any callable the safe loader will not import
    rnn = stub if where == "rnn" else {"h0": np.zeros(4), "wRUHX": stub, "bRUH": np.zeros(12)}
    path = _reference(tmp_path / "ref.npz", rnn)
    result = invoke("task", "eval", "flipflop", "--weights", path, "--trials", 8)
    assert_refused(result, str(path), said)


def test_our_npz_with_an_object_member_is_one_line(tmp_path):
    path = tmp_path / "weights.npz"
    np.savez(path, **_with_object_member(_task_params(), "readout/W"))
    result = invoke("task", "eval", "flipflop", "--weights", path, "--trials", 8)
    assert_refused(result, str(path), "member 'readout/W' is a pickled object array")


# --- --out as a symlink ------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["train", "task"])
def test_out_as_a_dangling_symlink_is_one_line(tmp_path, tensors_file, command):
    """Before: ``FileExistsError`` from ``mkdir``."""
    out = tmp_path / "out"
    out.symlink_to(tmp_path / "nowhere")
    if command == "train":
        result = invoke("train", tensors_file, "--out", out, "--no-progress")
    else:
        result = invoke("task", "train", "flipflop", "--out", out, "--steps", 1, "--no-progress")
    assert_refused(result, f"--out {out} is a symlink to {tmp_path / 'nowhere'}")
    assert out.is_symlink() and not (tmp_path / "nowhere").exists()


def test_out_as_a_symlink_to_an_empty_folder_is_used_as_that_folder(tmp_path, tensors_file):
    folder, out = tmp_path / "mine", tmp_path / "out"
    folder.mkdir()
    out.symlink_to(folder)
    cfg = config_lib.resolve(RunConfig(), None, TINY)
    prepare_run(out, cfg, tensors_file, resume=False)
    assert (
        out.is_symlink() and (folder / "config.yaml").exists() and (folder / "data.json").exists()
    )


@pytest.mark.parametrize("link", [True, False])
def test_a_users_empty_out_folder_survives_a_refused_train(tmp_path, link):
    """Refused data after the folder check: the user's empty folder (or the symlink to it)
    stays. Before: deleted, and through a symlink ``NotADirectoryError`` hid the message."""
    folder = tmp_path / "mine"
    folder.mkdir()
    out = tmp_path / "out" if link else folder
    if link:
        out.symlink_to(folder)
    data = tmp_path / "empty.h5"
    write_tensors(data, {"heldin_unit_ids": np.arange(3)}, ATTRS)
    result = invoke("train", data, "--out", out, "--no-progress")
    assert_refused(result, str(data), "missing tensors")
    assert folder.is_dir() and not any(folder.iterdir())
    assert out.is_symlink() == link


# --- the CLI itself ------------------------------------------------------------------------------


def test_a_message_with_line_breaks_is_printed_on_one_line(tmp_path, monkeypatch):
    """Libraries (orbax, h5py) may put line breaks in what the project's errors quote."""

    def refuse(run):
        raise RunFolderError(f"{run}/best/2: cannot read\n  the arrays\n(detail)")

    monkeypatch.setattr(RunFolder, "open", classmethod(lambda cls, run: refuse(run)))
    err = assert_refused(invoke("evaluate", tmp_path), f"{tmp_path}/best/2: cannot read the arrays")
    assert err == f"error: {tmp_path}/best/2: cannot read the arrays (detail)\n"


def test_the_damage_helper_damages(tmp_path, tensors_file):
    """The ``overwritten`` copy still opens as HDF5 (so its refusal comes from the read)."""
    bad = damage(tensors_file, tmp_path / "bad.h5", "overwritten")
    assert h5py.is_hdf5(bad) and os.path.getsize(bad) == os.path.getsize(tensors_file)
    with h5py.File(bad) as f, pytest.raises(OSError):
        f["train_spikes_heldin"][()]
