"""Read ``numpy.savez`` archives that hold pickles without running any code they name.

The JSLDS paper's released weights store their parameter dict (and settings dicts that
reference functions of the original scripts) as pickled 0-d object arrays.
``np.load(..., allow_pickle=True)`` would import and call whatever those pickles name,
so this module parses each ``.npy`` member itself and unpickles object arrays with an
unpickler that admits only plain containers and numpy's array/dtype/scalar
reconstructors; every other global becomes an inert :class:`Stub`.

Even numpy's own reconstructors are not handed to the pickle: ``dtype.__setstate__``
trusts the flags a pickle gives it, so a crafted dtype can make ``ndarray.__setstate__``
copy file bytes into an object array as raw pointers (memory corruption). Arrays, dtypes
and scalars are therefore rebuilt here from validated plain data with public numpy
constructors (numeric, bool, complex, bytes, str and object dtypes; no structured or
datetime dtypes).

Resources are bounded too: only regular files are opened (``/dev/zero`` never ends, a
FIFO blocks), and sizes are checked before anything is expanded: the members' declared
sizes against :data:`MAX_BYTES` (a zip bomb of zeros is refused from its directory), and
each ``.npy`` header's shape against the bytes its member holds.
"""

from __future__ import annotations

import _compat_pickle
import collections
import math
import operator
import os
import pickle
import stat
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np
from numpy.lib import format as npy_format

#: Most bytes the members of a weights archive may expand to, all together. The paper's
#: files hold under 1 MB; a task network of 1000 units with its Adam state about 60 MB.
MAX_BYTES = 256 << 20


class WeightsFileError(ValueError):
    """A weights file is missing, is not an ``.npz`` archive, or holds a bad member."""


class Stub:
    """Inert stand-in for a global that a pickle names but the loader refuses to import.

    Calling it (what a pickle's REDUCE does) only returns another stub recording the
    arguments, and BUILD state is stored, never applied, so nothing is imported or run.
    ``args``/``kwargs`` are ``None`` for the global itself and the call's arguments for
    the result of calling it.
    """

    def __init__(
        self,
        module: str,
        name: str,
        args: tuple[object, ...] | None = None,
        kwargs: dict[str, object] | None = None,
    ) -> None:
        self.module = module
        self.name = name
        self.args = args
        self.kwargs = kwargs
        self.state: object = None

    def __call__(self, *args: object, **kwargs: object) -> Stub:
        return Stub(self.module, self.name, args, kwargs)

    def __setstate__(self, state: object) -> None:
        self.state = state

    def __repr__(self) -> str:
        called = "" if self.args is None else "(...)"
        return f"<stub {self.module}.{self.name}{called}>"


class _DtypeSpec:
    """What a pickle's ``numpy.dtype(spec, align, copy)`` call and BUILD state say.

    Unhashable like the arrays that hold it, so it never hides in a set or a dict key.
    """

    __hash__ = None

    def __init__(self, spec: object, align: object = False, copy: object = False) -> None:
        self.spec = spec
        self.state: Any = None

    def __setstate__(self, state: object) -> None:
        self.state = state

    def build(self) -> np.dtype:
        """A fresh dtype from the type string, byte order and (for S/U) item size only."""
        if not isinstance(self.spec, str):
            raise pickle.UnpicklingError(f"dtype spec {self.spec!r} is not a string")
        dtype = np.dtype(self.spec)
        endian, elsize = "|", dtype.itemsize
        if self.state is not None:
            _, endian, subarray, names, fields, elsize, *_ = self.state
            if (subarray, names, fields) != (None, None, None):
                raise pickle.UnpicklingError("structured or subarray dtypes are not supported")
        if dtype.kind not in "biufcOSU" or endian not in ("<", ">", "|", "="):
            raise pickle.UnpicklingError(f"dtype {self.spec!r} ({endian!r}) is not supported")
        if dtype.kind in "SU":
            chars = operator.index(elsize) // (4 if dtype.kind == "U" else 1)
            dtype = np.dtype(f"{dtype.kind}{chars}")
        return dtype.newbyteorder(endian) if endian in "<>" else dtype


class _ArraySpec:
    """An ``ndarray`` a pickle asks for; the state its BUILD gives is checked in :meth:`build`.

    ``numpy.ndarray`` resolves to this class, so a pickle can only reach it through
    ``_reconstruct`` (a direct call fails: it takes no arguments).
    """

    __hash__ = None

    def __init__(self) -> None:
        self.state: Any = None

    def __setstate__(self, state: object) -> None:
        self.state = state

    def build(self, finish: Callable[[object], object]) -> np.ndarray:
        """The array, elements of object arrays passed through ``finish``."""
        version, shape, dtype_spec, fortran, raw = self.state
        if version != 1:
            raise pickle.UnpicklingError(f"array state version {version!r} is not supported")
        dtype = _build_dtype(dtype_spec)
        shape = _shape(shape)
        order = "F" if fortran else "C"
        if dtype.kind != "O":
            return _array_from_bytes(raw, dtype, shape, order)
        # numpy pickles object arrays as a list in C (logical) order whatever the layout.
        if not isinstance(raw, list) or len(raw) != math.prod(shape):
            raise pickle.UnpicklingError(f"object array of shape {shape} without its items")
        flat = np.empty(len(raw), dtype=object)
        for i, item in enumerate(raw):
            flat[i] = finish(item)
        return np.asarray(flat.reshape(shape), order=order)


def _build_dtype(spec: object) -> np.dtype:
    if not isinstance(spec, _DtypeSpec):
        raise pickle.UnpicklingError(f"{spec!r} is not a dtype")
    return spec.build()


def _shape(shape: Any) -> tuple[int, ...]:
    dims = tuple(operator.index(d) for d in shape)
    if any(d < 0 for d in dims):
        raise pickle.UnpicklingError(f"negative dimension in shape {dims}")
    return dims


def _array_from_bytes(
    raw: object, dtype: np.dtype, shape: tuple[int, ...], order: str
) -> np.ndarray:
    """A copy of ``raw`` as an array, its length checked against shape and dtype."""
    if dtype.kind == "O" or order not in ("C", "F"):
        raise pickle.UnpicklingError(f"cannot read {dtype} ({order!r} order) from bytes")
    if not isinstance(raw, bytes | bytearray) or len(raw) != dtype.itemsize * math.prod(shape):
        raise pickle.UnpicklingError(f"data do not match a {dtype} array of shape {shape}")
    return np.frombuffer(raw, dtype=dtype).reshape(shape, order=order).copy(order="K")


def _reconstruct(subtype: object, shape: object, typecode: object) -> _ArraySpec:
    """``multiarray._reconstruct``: numpy passes a placeholder shape and dtype, ignored."""
    if subtype is not _ArraySpec:
        raise pickle.UnpicklingError(f"cannot reconstruct a {subtype!r}")
    return _ArraySpec()


def _frombuffer(buf: object, dtype: object, shape: object, order: object) -> np.ndarray:
    """``numeric._frombuffer`` (protocol 5)."""
    return _array_from_bytes(buf, _build_dtype(dtype), _shape(shape), order)


def _scalar(dtype: object, raw: object) -> np.generic:
    """``multiarray.scalar``: a numpy scalar from its bytes."""
    return _array_from_bytes(raw, _build_dtype(dtype), (), "C")[()]


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles use it for bytes; other codecs refused."""
    if encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"codec {encoding!r} not allowed")
    return text.encode("latin1")


class _Frozen:
    """An allowlisted function, wrapped so that a pickle's BUILD cannot set its attributes."""

    __slots__ = ("_func",)

    def __init__(self, func: Callable[..., object]) -> None:
        self._func = func

    def __call__(self, *args: Any) -> object:
        return self._func(*args)

    def __setstate__(self, state: object) -> None:
        raise pickle.UnpicklingError(f"BUILD on {self._func.__name__}")


_SAFE_GLOBALS: dict[tuple[str, str], object] = {
    ("numpy", "ndarray"): _ArraySpec,
    ("numpy", "dtype"): _DtypeSpec,
    ("_codecs", "encode"): _Frozen(_latin1_encode),
    ("collections", "OrderedDict"): collections.OrderedDict,
    **{("builtins", t.__name__): t for t in (dict, list, tuple, set, frozenset, complex)},
    # numpy 2 renamed numpy.core to numpy._core; pickles name either.
    **{
        (f"{core}.{module}", name): _Frozen(func)
        for core in ("numpy.core", "numpy._core")
        for module, name, func in (
            ("multiarray", "_reconstruct", _reconstruct),
            ("multiarray", "scalar", _scalar),
            ("numeric", "_frombuffer", _frombuffer),
        )
    },
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler resolving only :data:`_SAFE_GLOBALS`; any other global is a :class:`Stub`.

    Python 2 names, which protocol-2 pickles write (``__builtin__.set``), are first mapped
    to Python 3 names as :mod:`pickle` does, so that they match the allowlist.
    """

    def find_class(self, module: str, name: str) -> object:
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        else:
            module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        found = _SAFE_GLOBALS.get((module, name))
        return Stub(module, name) if found is None else found


def _finish(obj: object, done: dict[int, tuple[object, object]]) -> object:
    """Replace the pending arrays and dtypes of an unpickled graph by real ones.

    Lists, dicts and stubs are updated in place, so shared references stay shared and
    cycles through them end; ``done`` maps ``id`` to (original, result), keeping the
    originals alive so that ids are not reused.
    """
    if id(obj) in done:
        return done[id(obj)][1]
    if isinstance(obj, _ArraySpec):
        result: object = obj.build(lambda item: _finish(item, done))
    elif isinstance(obj, _DtypeSpec):
        result = obj.build()
    elif isinstance(obj, tuple):
        result = tuple(_finish(item, done) for item in obj)
    else:
        result = obj
        done[id(obj)] = (obj, obj)
        if isinstance(obj, list):
            obj[:] = [_finish(item, done) for item in obj]
        elif isinstance(obj, dict):
            for key in list(obj):
                _finish(key, done)  # keys are hashable: only stubs in them change, in place
                obj[key] = _finish(obj[key], done)
        elif isinstance(obj, set | frozenset):
            for item in obj:
                _finish(item, done)
        elif isinstance(obj, Stub):
            obj.args, obj.kwargs, obj.state = _finish((obj.args, obj.kwargs, obj.state), done)
    done[id(obj)] = (obj, result)
    return result


def load_npz_safely(path: str | os.PathLike[str], max_bytes: int = MAX_BYTES) -> dict[str, object]:
    """Load every member of an ``.npz`` archive without executing pickled code.

    Keys are member names without ``.npy``. Plain arrays are returned as arrays; object
    arrays are unpickled with the restricted unpickler, and a 0-d object array is
    returned as the object it holds (for the paper's files: nested dicts/lists of
    arrays, with :class:`Stub` where a pickle names a function or class).

    Raises :class:`WeightsFileError` (naming the file) if it does not exist, is not a
    regular file or not a zip archive, its members would expand past ``max_bytes``, or it
    holds a member that is not a readable ``.npy`` array.
    """
    path = Path(path)
    with _open_regular(path) as handle:
        try:
            archive = zipfile.ZipFile(handle)
        except zipfile.BadZipFile as exc:
            raise WeightsFileError(f"{path} is not an .npz archive (not a zip file)") from exc
        with archive:
            members = archive.infolist()
            total = sum(m.file_size for m in members)
            if total > max_bytes:
                raise WeightsFileError(
                    f"{path}: its members expand to {total} bytes, over the {max_bytes} bytes "
                    "a weights file may hold (safe_npz.MAX_BYTES); not read"
                )
            return {
                m.filename.removesuffix(".npy"): _read_member(archive, m, path) for m in members
            }


def require_numeric(tree: object, path: Path, where: str = "") -> None:
    """Refuse (WeightsFileError naming ``path`` and the entry) a leaf of nested dicts, lists
    and tuples that is not a numeric array: a :class:`Stub`, a pickled object array, text.

    ``where`` names ``tree`` in the message (``"arr_0"``); a top-level key is named as the
    archive's member. Weights and checkpoints hold numbers only, and a stray object would
    otherwise fail deep inside the model with a bare ``TypeError``.
    """
    if isinstance(tree, dict | list | tuple):
        items = tree.items() if isinstance(tree, dict) else enumerate(tree)
        for key, value in items:
            name = f"{where}[{key!r}]" if where else f"member {key!r}"
            require_numeric(value, path, name)
        return
    if isinstance(tree, np.ndarray) and tree.dtype.kind in "biuf":
        return
    if isinstance(tree, np.ndarray):
        what = "a pickled object array" if tree.dtype.hasobject else f"a {tree.dtype} array"
    else:
        what = repr(tree) if isinstance(tree, Stub) else f"a {type(tree).__name__}"
    raise WeightsFileError(
        f"{path}: {where} is {what}, not a numeric array (weights and checkpoints hold "
        "numbers only; save them as numeric arrays)"
    )


def _open_regular(path: Path) -> IO[bytes]:
    """``path`` opened for reading, refused unless it is a regular file (symlinks followed).

    Opened non-blocking so that a FIFO is refused at once instead of waiting for a writer.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise WeightsFileError(f"{path} does not exist") from None
    except OSError as exc:
        raise WeightsFileError(f"{path} cannot be opened ({exc.strerror})") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        kind = {stat.S_IFCHR: "a device", stat.S_IFIFO: "a FIFO", stat.S_IFDIR: "a folder"}
        raise WeightsFileError(
            f"{path} is {kind.get(stat.S_IFMT(mode), 'not a regular file')}, not a weights "
            "file; give an .npz file or a run folder"
        )
    return os.fdopen(fd, "rb")


def _read_member(archive: zipfile.ZipFile, member: zipfile.ZipInfo, path: Path) -> object:
    """One ``.npy`` member: header parsed and its size checked here, pickles restricted."""
    where = f"{path}: member {member.filename!r}"
    try:
        with archive.open(member) as f:
            shape, dtype = _read_header(f, where)
            # each element takes its itemsize, or (pickled objects) at least a byte
            declared = math.prod(shape) * (1 if dtype.hasobject else dtype.itemsize)
            if declared > member.file_size:
                raise WeightsFileError(
                    f"{where}: its header declares a {dtype} array of shape {shape} "
                    f"({declared} bytes or more), but the member holds {member.file_size} bytes"
                )
            if not dtype.hasobject:
                f.seek(0)
                return npy_format.read_array(f, allow_pickle=False)
            array = _finish(_RestrictedUnpickler(f).load(), {})
    except WeightsFileError:
        raise
    except Exception as exc:  # any failure on untrusted bytes means a bad file
        raise WeightsFileError(f"{where} could not be decoded: {exc}") from exc
    if not isinstance(array, np.ndarray) or (array.shape, array.dtype) != (shape, dtype):
        raise WeightsFileError(
            f"{where}: its pickle gives {array!r}, not the {dtype} array of shape {shape} "
            "its header declares"
        )
    return array[()] if array.ndim == 0 and array.dtype == object else array


def _read_header(f: IO[bytes], where: str) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype from a ``.npy`` header (format versions 1.0 and 2.0)."""
    try:
        version = npy_format.read_magic(f)
    except ValueError as exc:
        raise WeightsFileError(f"{where} is not a .npy array ({exc})") from exc
    readers = {(1, 0): npy_format.read_array_header_1_0, (2, 0): npy_format.read_array_header_2_0}
    if version not in readers:
        raise WeightsFileError(f"{where}: unsupported .npy format version {version}")
    try:
        shape, _, dtype = readers[version](f)
    except ValueError as exc:
        raise WeightsFileError(f"{where} has a malformed .npy header ({exc})") from exc
    return shape, dtype
