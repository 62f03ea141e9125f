"""The restricted .npz reader: the paper's reference files decode, crafted pickles stay inert.

No test here calls ``np.load(..., allow_pickle=True)`` or ``pickle.loads`` on the files:
values are checked against the raw bytes ``pickletools`` lists, which runs nothing.
"""

import builtins
import functools
import io
import os
import pickle
import pickletools
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import shared_file
from numpy.lib import format as npy_format

from lfads_jslds.io.safe_npz import Stub, WeightsFileError, load_npz_safely

# file -> (cell, n, u, o, settings (λ_RNN, λ_JSLDS, λ_e, λ_a, L2), module of arr_1's
# functions); from shared/reference/README.md. The paper-plot file has no settings members.
REFERENCE = {
    "flipflop3_jslds_paper.npz": ("gru", 100, 6, 3, None, None),
    "flipflop3_gru_standard.npz": ("gru", 100, 6, 3, (1, 0, 0, 0, 0), "__main__"),
    "context_jslds.npz": ("vrnn", 128, 4, 1, (1, 1, 100, 10, 1e-5), "__main__"),
    "context_vrnn_standard.npz": ("vrnn", 128, 4, 1, (1, 0, 0, 0, 1e-5), "model_and_training"),
}
CELL_FUNCTIONS = {"gru": ("gru", "gru_params"), "vrnn": ("vrnn_tanh", "vrnn_params")}


def _leaves(tree: object) -> list[np.ndarray]:
    """The arrays of a nested dict/list."""
    if isinstance(tree, dict):
        return [leaf for value in tree.values() for leaf in _leaves(value)]
    if isinstance(tree, list):
        return [leaf for value in tree for leaf in _leaves(value)]
    return [tree]


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_reference_files_decode_to_the_documented_parameters(name: str) -> None:
    cell, n, u, o, regs, fun_module = REFERENCE[name]
    loaded = load_npz_safely(shared_file(f"reference/{name}"))
    params = loaded["arr_0"]

    assert set(params) == {"rnn", "mlp", "out"}
    if cell == "gru":
        expected_rnn = {
            "wRUHX": (2 * n, n + u),
            "bRU": (2 * n,),
            "wCHX": (n, n + u),
            "bC": (n,),
            "h0": (n,),
        }
    else:
        expected_rnn = {"wR": (n, n), "wI": (n, u), "bR": (n,), "h0": (n,)}
    assert {k: v.shape for k, v in params["rnn"].items()} == expected_rnn
    assert isinstance(params["mlp"], list) and len(params["mlp"]) == 2
    for layer in params["mlp"]:
        assert {k: v.shape for k, v in layer.items()} == {"W": (n, n), "b": (n,)}
    assert {k: v.shape for k, v in params["out"].items()} == {"W": (o, n), "b": (o,)}
    for leaf in _leaves(params):
        assert isinstance(leaf, np.ndarray) and leaf.dtype == np.float32
        assert np.all(np.isfinite(leaf))
    for leaf in _leaves([params["rnn"], params["out"]]):
        assert np.any(leaf != 0)
    # Without JSLDS terms the expansion MLP gets no gradient and keeps its zero init.
    co_trained = regs is None or regs[1] > 0
    assert all(np.any(leaf != 0) == co_trained for leaf in _leaves(params["mlp"]))

    if regs is None:
        assert set(loaded) == {"arr_0"}
        return
    assert set(loaded) == {"arr_0", "arr_1", "arr_2"}
    model, opt = loaded["arr_1"], loaded["arr_2"]
    assert (model["rnn"]["n"], model["rnn"]["u"], model["out"]["o"]) == (n, u, o)
    assert model["mlp"] == {"nlayers": 2, "n": n}
    for key, fun_name in zip(("fun", "params_fun"), CELL_FUNCTIONS[cell], strict=True):
        stub = model["rnn"][key]
        assert isinstance(stub, Stub) and stub.args is None
        assert repr(stub) == f"<stub {fun_module}.{fun_name}>"
    keys = ("out_nl_reg", "out_staylor_reg", "fp_reg", "taylor_reg", "l2_reg")
    assert tuple(opt[k] for k in keys) == pytest.approx(regs)


def test_reference_arrays_equal_the_raw_pickled_bytes() -> None:
    """Independent decoding: every array's bytes appear verbatim among the pickle's bytes."""
    path = shared_file("reference/context_jslds.npz")
    with zipfile.ZipFile(path) as archive, archive.open("arr_0.npy") as f:
        version = npy_format.read_magic(f)
        assert version == (1, 0)
        npy_format.read_array_header_1_0(f)
        payload = f.read()
    raw = {arg for op, arg, _ in pickletools.genops(payload) if isinstance(arg, bytes)}

    leaves = _leaves(load_npz_safely(path)["arr_0"])
    assert len(leaves) == 10
    for leaf in leaves:
        assert leaf.flags.c_contiguous
        assert leaf.tobytes() in raw


def _object_npy(payload: bytes, shape: tuple[int, ...] = ()) -> bytes:
    """An .npy member whose header declares an object array and whose body is ``payload``."""
    buf = io.BytesIO()
    npy_format.write_array_header_1_0(buf, {"descr": "|O", "fortran_order": False, "shape": shape})
    return buf.getvalue() + payload


def _write_npz(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for member, data in members.items():
            archive.writestr(member, data)
    return path


class _Reduce:
    """Pickles as ``func(*args)``: what a malicious pickle asks the loader to call."""

    def __init__(self, func: object, args: tuple[object, ...]) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return self.func, self.args


def _attacks(marker: Path) -> dict[str, _Reduce]:
    touch = f"touch {marker}"
    code = f"__import__('os').system({touch!r})"
    return {
        "os.system": _Reduce(os.system, (touch,)),
        "subprocess.call": _Reduce(subprocess.call, (["touch", str(marker)],)),
        "builtins.eval": _Reduce(builtins.eval, (code,)),
        "builtins.exec": _Reduce(builtins.exec, (code,)),
        "builtins.open": _Reduce(builtins.open, (str(marker), "w")),
    }


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
@pytest.mark.parametrize("attack", sorted(_attacks(Path("x"))))
def test_malicious_reduce_returns_inert_stubs(tmp_path: Path, attack: str, protocol: int) -> None:
    """Documented behaviour: a refused callable comes back as a called Stub, nothing runs."""
    marker = tmp_path / "pwned"
    evil = _attacks(marker)[attack]
    holder = np.empty((), dtype=object)
    holder[()] = {"params": evil}
    # Pickling only records (func, args) via __reduce__; nothing is called here.
    npz = _write_npz(
        tmp_path / "evil.npz", {"arr_0.npy": _object_npy(pickle.dumps(holder, protocol=protocol))}
    )

    stub = load_npz_safely(npz)["arr_0"]["params"]

    assert not marker.exists()
    assert isinstance(stub, Stub)
    func = evil.func
    assert (stub.module, stub.name) == (func.__module__, func.__qualname__)
    assert stub.args == evil.args and stub.kwargs == {}
    assert repr(stub) == f"<stub {func.__module__}.{func.__qualname__}(...)>"


def test_handwritten_getattr_import_chain_is_inert(tmp_path: Path) -> None:
    """``getattr(__import__('os'), 'system')('touch ...')`` as a bare pickle (no array)."""
    marker = tmp_path / "pwned"
    payload = (
        b"cbuiltins\ngetattr\n(cbuiltins\n__import__\n(Vos\ntRVsystem\ntR"
        b"(Vtouch " + str(marker).encode() + b"\ntR."
    )
    assert [op.name for op, _, _ in pickletools.genops(payload)][-3:] == ["TUPLE", "REDUCE", "STOP"]
    npz = _write_npz(tmp_path / "evil.npz", {"arr_0.npy": _object_npy(payload)})

    with pytest.raises(WeightsFileError, match="not the object array of shape \\(\\)") as info:
        load_npz_safely(npz)

    assert not marker.exists()
    assert str(npz) in str(info.value) and "<stub builtins.getattr(...)>" in str(info.value)


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_benign_object_arrays_round_trip(tmp_path: Path, protocol: int) -> None:
    """Protocol 2 needs ``_codecs.encode``, 5 ``_frombuffer``, 3 is what ``np.savez`` writes."""
    shared = np.arange(3, dtype=np.int64)
    nested = np.empty(2, dtype=object)
    nested[0], nested[1] = {"k": shared}, [1, 2]
    tree = {
        "w": np.arange(12, dtype=np.float64).reshape(3, 4),
        "wf": np.asfortranarray(np.arange(6, dtype=">f4").reshape(2, 3)),
        "objf": np.asfortranarray(np.array([["a", 1, None], [2.5, (3,), "b"]], dtype=object)),
        "nested": nested,
        "again": shared,
        "text": np.array(["ab", "cde"]),
        "raw": np.array([b"xy"]),
        "mask": np.array([True, False]),
        "c": np.array([1 - 1j], dtype=np.complex64),
        "layers": [{"b": np.ones(2, np.float32)}, (1, 2.5, "s", None)],
        "lr": np.float32(0.02),
        "dtype": np.dtype("<i2"),
        "flags": {True, False},
        "z": 1 + 2j,
    }
    holder = np.empty((), dtype=object)
    holder[()] = tree
    npz = _write_npz(
        tmp_path / "ok.npz", {"arr_0.npy": _object_npy(pickle.dumps(holder, protocol=protocol))}
    )

    got = load_npz_safely(npz)["arr_0"]

    for key in ("w", "wf", "objf", "text", "raw", "mask", "c"):
        np.testing.assert_array_equal(got[key], tree[key])
        assert got[key].dtype == tree[key].dtype, key
        assert got[key].flags.f_contiguous == tree[key].flags.f_contiguous, key
    assert got["wf"].dtype.byteorder == ">"
    assert got["nested"].shape == (2,) and got["nested"][1] == [1, 2]
    np.testing.assert_array_equal(got["nested"][0]["k"], shared)
    assert got["nested"][0]["k"] is got["again"]  # shared references stay shared
    np.testing.assert_array_equal(got["layers"][0]["b"], tree["layers"][0]["b"])
    assert got["layers"][1] == (1, 2.5, "s", None)
    assert got["lr"] == tree["lr"] and got["lr"].dtype == np.float32
    assert got["dtype"] == np.dtype("<i2")
    assert got["flags"] == {True, False} and got["z"] == 1 + 2j


_RECONSTRUCT = np.empty(0).__reduce__()[0]  # numpy's own multiarray._reconstruct


class _ForgedDtype:
    """Pickles as ``numpy.dtype(spec)`` whose BUILD state claims flags 0 (no objects)."""

    def __init__(self, spec: str, fields: dict[str, object] | None = None) -> None:
        self.spec, self.fields = spec, fields

    def __reduce__(self) -> tuple[object, ...]:
        names = None if self.fields is None else tuple(self.fields)
        return np.dtype, (self.spec, False, True), (3, "|", None, names, self.fields, 8, 1, 0)


class _ForgedArray:
    """Pickles as an array of a forged dtype whose data are raw bytes (pointers if trusted)."""

    def __init__(self, dtype: _ForgedDtype) -> None:
        self.dtype = dtype

    def __reduce__(self) -> tuple[object, ...]:
        state = (1, (1,), self.dtype, False, b"\x41" * 8)
        return _RECONSTRUCT, (np.ndarray, (0,), b"b"), state


_LOAD_AND_TOUCH = """
import sys
from lfads_jslds.io.safe_npz import WeightsFileError, load_npz_safely
try:
    print(repr(load_npz_safely(sys.argv[1])))
except WeightsFileError as exc:
    print("WeightsFileError", exc)
"""


@pytest.mark.parametrize(
    "dtype",
    [_ForgedDtype("O8"), _ForgedDtype("V8", {"a": (np.dtype("O"), 0)})],
    ids=["object", "structured-with-object-field"],
)
def test_forged_dtype_flags_cannot_smuggle_pointers(tmp_path: Path, dtype: _ForgedDtype) -> None:
    """numpy trusts a pickled dtype's flags; with flags 0 an object array would take raw
    file bytes as pointers and crash (or worse) when touched. The loader rebuilds dtypes
    itself, so it refuses the file. Run in a subprocess so a regression cannot kill pytest.
    """
    holder = np.empty((), dtype=object)
    holder[()] = {"w": _ForgedArray(dtype)}
    npz = _write_npz(tmp_path / "forged.npz", {"arr_0.npy": _object_npy(pickle.dumps(holder))})

    done = subprocess.run(
        [sys.executable, "-c", _LOAD_AND_TOUCH, str(npz)],
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("WeightsFileError") and str(npz) in done.stdout


@pytest.mark.parametrize(
    "value",
    [np.array(["2020-01-01"], dtype="M8[D]"), np.zeros(2, dtype=[("a", "f4"), ("b", "i2")])],
    ids=["datetime", "structured"],
)
def test_unsupported_dtypes_inside_pickles_are_refused(tmp_path: Path, value: np.ndarray) -> None:
    holder = np.empty((), dtype=object)
    holder[()] = {"v": value}
    npz = _write_npz(tmp_path / "odd.npz", {"arr_0.npy": _object_npy(pickle.dumps(holder))})
    with pytest.raises(WeightsFileError, match="not supported"):
        load_npz_safely(npz)


def test_direct_ndarray_call_is_refused(tmp_path: Path) -> None:
    """``numpy.ndarray(shape)`` would hand back uninitialised memory; only pickled data count."""
    holder = np.empty((), dtype=object)
    holder[()] = _Reduce(np.ndarray, ((4,),))
    npz = _write_npz(tmp_path / "direct.npz", {"arr_0.npy": _object_npy(pickle.dumps(holder))})
    with pytest.raises(WeightsFileError, match="could not be decoded"):
        load_npz_safely(npz)


def test_plain_and_nonscalar_object_arrays_from_savez(tmp_path: Path) -> None:
    path = tmp_path / "plain.npz"
    plain = np.asfortranarray(np.arange(6, dtype=np.int16).reshape(2, 3))
    objects = np.array([{"a": 1}, [2]], dtype=object)
    np.savez(path, plain=plain, objects=objects, settings={"n": 3})

    got = load_npz_safely(path)

    np.testing.assert_array_equal(got["plain"], plain)
    assert got["plain"].dtype == np.int16
    assert got["objects"].shape == (2,) and list(got["objects"]) == [{"a": 1}, [2]]
    assert got["settings"] == {"n": 3}


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.npz"
    with pytest.raises(WeightsFileError, match="does not exist") as info:
        load_npz_safely(path)
    assert str(path) in str(info.value)


def test_text_file_is_not_an_npz(tmp_path: Path) -> None:
    path = tmp_path / "weights.npz"
    path.write_text("just some text\n")
    with pytest.raises(WeightsFileError, match="is not an .npz archive") as info:
        load_npz_safely(path)
    assert str(path) in str(info.value)


def test_member_that_is_not_npy(tmp_path: Path) -> None:
    path = _write_npz(tmp_path / "mixed.npz", {"notes.txt": b"hello, not an array"})
    with pytest.raises(WeightsFileError, match="'notes.txt' is not a .npy array") as info:
        load_npz_safely(path)
    assert str(path) in str(info.value)


def test_truncated_pickle(tmp_path: Path) -> None:
    holder = np.empty((), dtype=object)
    holder[()] = {"w": np.zeros(3)}
    payload = pickle.dumps(holder, protocol=3)[:-20]
    path = _write_npz(tmp_path / "cut.npz", {"arr_0.npy": _object_npy(payload)})
    with pytest.raises(WeightsFileError, match="could not be decoded") as info:
        load_npz_safely(path)
    assert str(path) in str(info.value)


def test_build_cannot_alter_allowlisted_functions(tmp_path: Path) -> None:
    """BUILD on an admitted global (here numpy's ``scalar``) would set its attributes."""
    payload = b"cnumpy._core.multiarray\nscalar\n(dV__kwdefaults__\n(dsb."
    assert [op.name for op, _, _ in pickletools.genops(payload)][-2:] == ["BUILD", "STOP"]
    npz = _write_npz(tmp_path / "build.npz", {"arr_0.npy": _object_npy(payload)})
    with pytest.raises(WeightsFileError, match="BUILD on _scalar"):
        load_npz_safely(npz)


def test_arrays_inside_stubs_are_real_arrays(tmp_path: Path) -> None:
    """A refused class (``functools.partial``) keeps its arguments and BUILD state as data."""
    holder = np.empty((), dtype=object)
    holder[()] = {
        "value": functools.partial(max, np.ones(2)),
        "by_key": {functools.partial(min, np.arange(3)): "k"},
    }
    npz = _write_npz(tmp_path / "stubs.npz", {"arr_0.npy": _object_npy(pickle.dumps(holder))})

    got = load_npz_safely(npz)["arr_0"]

    (key,) = got["by_key"]
    for stub, expected in ((got["value"], np.ones(2)), (key, np.arange(3))):
        assert isinstance(stub, Stub) and repr(stub) == "<stub functools.partial(...)>"
        func, args, _, _ = stub.state
        assert isinstance(func, Stub) and func.module == "builtins"
        assert isinstance(args[0], np.ndarray)
        np.testing.assert_array_equal(args[0], expected)
