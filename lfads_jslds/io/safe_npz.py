"""Read ``numpy.savez`` archives that hold pickles without running any code they name.

The JSLDS paper's released weights store their parameter dict (and settings dicts that
reference functions of the original scripts) as pickled 0-d object arrays.
``np.load(..., allow_pickle=True)`` would import and call whatever those pickles name,
so this module parses each ``.npy`` member itself and unpickles object arrays with an
unpickler that admits only the numpy reconstructors and plain containers; every other
global becomes an inert :class:`Stub`.

This guards against code execution, not against resource exhaustion (a crafted file can
still ask for a large allocation).
"""

from __future__ import annotations

import collections
import os
import pickle
import zipfile
from pathlib import Path
from typing import IO

import numpy as np
from numpy.lib import format as npy_format


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


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles use it for bytes; other codecs refused."""
    if encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"codec {encoding!r} not allowed")
    return text.encode("latin1")


# The functions numpy pickles arrays and scalars with, taken from numpy itself so that
# pickles naming either module path (numpy 2 renamed ``numpy.core`` to ``numpy._core``)
# resolve to this numpy's functions.
_RECONSTRUCT = np.empty(0).__reduce__()[0]  # multiarray._reconstruct (protocols < 5)
_FROMBUFFER = np.empty(1).__reduce_ex__(5)[0]  # numeric._frombuffer (protocol 5)
_SCALAR = np.float64(0).__reduce__()[0]  # multiarray.scalar

_SAFE_GLOBALS: dict[tuple[str, str], object] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_encode,
    ("collections", "OrderedDict"): collections.OrderedDict,
    **{("builtins", t.__name__): t for t in (dict, list, tuple, set, frozenset, complex)},
    **{
        (f"{core}.{module}", name): func
        for core in ("numpy.core", "numpy._core")
        for module, name, func in (
            ("multiarray", "_reconstruct", _RECONSTRUCT),
            ("multiarray", "scalar", _SCALAR),
            ("numeric", "_frombuffer", _FROMBUFFER),
        )
    },
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler resolving only :data:`_SAFE_GLOBALS`; any other global is a :class:`Stub`."""

    def find_class(self, module: str, name: str) -> object:
        found = _SAFE_GLOBALS.get((module, name))
        return Stub(module, name) if found is None else found


def load_npz_safely(path: str | os.PathLike[str]) -> dict[str, object]:
    """Load every member of an ``.npz`` archive without executing pickled code.

    Keys are member names without ``.npy``. Plain arrays are returned as arrays; object
    arrays are unpickled with the restricted unpickler, and a 0-d object array is
    returned as the object it holds (for the paper's files: nested dicts/lists of
    arrays, with :class:`Stub` where a pickle names a function or class).

    Raises :class:`WeightsFileError` (naming the file) if it does not exist, is not a
    zip archive, or holds a member that is not a readable ``.npy`` array.
    """
    path = Path(path)
    if not path.exists():
        raise WeightsFileError(f"{path} does not exist")
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile as exc:
        raise WeightsFileError(f"{path} is not an .npz archive (not a zip file)") from exc
    with archive:
        return {
            member.removesuffix(".npy"): _read_member(archive, member, path)
            for member in archive.namelist()
        }


def _read_member(archive: zipfile.ZipFile, member: str, path: Path) -> object:
    """One ``.npy`` member: header parsed here, pickled payloads restricted."""
    where = f"{path}: member {member!r}"
    try:
        with archive.open(member) as f:
            shape, dtype = _read_header(f, where)
            if not dtype.hasobject:
                f.seek(0)
                return npy_format.read_array(f, allow_pickle=False)
            array = _RestrictedUnpickler(f).load()
    except WeightsFileError:
        raise
    except Exception as exc:  # any failure on untrusted bytes means a bad file
        raise WeightsFileError(f"{where} could not be decoded: {exc}") from exc
    if not isinstance(array, np.ndarray) or array.shape != shape:
        raise WeightsFileError(
            f"{where}: its pickle gives {array!r}, not the {shape} array its header declares"
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
