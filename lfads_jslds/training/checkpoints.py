"""Training-state checkpoints: a thin, quiet, strict wrapper over an orbax ``CheckpointManager``.

One folder per manager (``checkpoints/`` keeps the latest N, ``best/`` the best one for
early stopping); inside it one folder per step, each holding

- ``state/``: the flat leaves ``jax.tree_util.tree_leaves(state)``, saved as ``{"0": leaf, ...}``
  (tensorstore, no pickle). The tree structure is not stored: ``restore`` takes it from a
  target (e.g. a freshly initialised state), so custom pytree nodes (``nnx.State``, optax
  NamedTuples) come back as the classes the current code defines.
- ``meta/``: JSON, ``{"format", "leaves": [{"shape", "dtype"}, ...], "meta": <caller's dict>}``;
  the leaf list lets ``restore`` refuse a mismatching target before reading any array.

Writes are atomic: orbax writes ``<step>.orbax-checkpoint-tmp``, puts ``commit_success.txt``
in it and renames it onto ``<step>``, so a killed save leaves only a tmp folder, which
``latest_step`` never lists (a new instance's first save deletes it). ``latest_step`` and
``restore`` also skip step folders without ``commit_success.txt`` (a copy cut short, orbax's
commit-file mode mid-save), which orbax on a local disk would count as complete.

Saves are synchronous, so a returned ``save`` is on disk. One instance per folder: orbax
caches the step list, so steps written by another process are not seen.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

FORMAT = 1
#: Orbax writes this into a step folder just before committing it.
COMMIT_MARKER = "commit_success.txt"
_STATE, _META = "state", "meta"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be saved or restored as asked (none, incomplete, mismatch)."""


_ORBAX_DIR = str(Path(ocp.__file__).parent.parent)


class _HideOrbaxInfo(logging.Filter):
    """Drop orbax's INFO records (dozens per save) so tqdm progress bars stay readable.

    A filter on absl's logger rather than a lower verbosity: it also covers orbax's worker
    threads, and lets every other absl user through. Orbax's warnings pass too, except
    the ones a read-only manager (how ``restore`` opens a folder) always logs.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.pathname.startswith(_ORBAX_DIR):
            return True
        text = record.getMessage()
        read_only_notice = "read_only=True" in text or "directory is read only" in text
        return record.levelno >= logging.WARNING and not read_only_notice


def _quiet_orbax() -> None:
    logger = logging.getLogger("absl")
    if not any(type(f).__name__ == _HideOrbaxInfo.__name__ for f in logger.filters):
        logger.addFilter(_HideOrbaxInfo())


_quiet_orbax()


def _is_key(x: Any) -> bool:
    return isinstance(x, jax.Array | jax.ShapeDtypeStruct) and jax.dtypes.issubdtype(
        x.dtype, jax.dtypes.prng_key
    )


def _describe(x: Any) -> dict[str, Any]:
    """Shape and dtype of a leaf as JSON (a typed PRNG key keeps its ``key<impl>`` dtype)."""
    if not isinstance(x, jax.Array | jax.ShapeDtypeStruct | np.ndarray):
        x = np.asarray(x)
    return {"shape": list(x.shape), "dtype": str(x.dtype)}


def _leaf_names(tree: Any) -> list[str]:
    """``keystr`` paths of the leaves, in ``tree_leaves`` order, for error messages."""
    paths = jax.tree_util.tree_flatten_with_path(tree)[0]
    return [jax.tree_util.keystr(path) or "<root>" for path, _ in paths]


def _to_saveable(i: int, name: str, leaf: Any) -> Any:
    if _is_key(leaf):
        return jax.random.key_data(leaf)
    if isinstance(leaf, jax.Array) or (isinstance(leaf, np.ndarray) and not leaf.dtype.hasobject):
        return leaf
    if isinstance(leaf, np.generic | bool | int | float | complex):
        return np.asarray(leaf)
    raise CheckpointError(
        f"leaf {i} ({name}) is a {type(leaf).__name__}, not an array; checkpoints hold "
        "arrays and Python/NumPy scalars only (put other values in meta)"
    )


def _restore_spec(leaf: Any) -> Any:
    """What orbax should rebuild: jax arrays on the target's sharding, else NumPy."""
    if _is_key(leaf):
        return np.zeros(jax.eval_shape(jax.random.key_data, leaf).shape, np.uint32)
    if isinstance(leaf, jax.Array | jax.ShapeDtypeStruct):
        sharding = getattr(leaf, "sharding", None) or jax.sharding.SingleDeviceSharding(
            jax.devices()[0]
        )
        return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding)
    return np.asarray(leaf)


def _empty(spec: Any) -> Any:
    """A zero-size leaf (orbax does not store those)."""
    if isinstance(spec, jax.ShapeDtypeStruct):
        return jax.device_put(np.zeros(spec.shape, spec.dtype), spec.sharding)
    return np.zeros(spec.shape, spec.dtype)


def _from_restored(target: Any, value: Any) -> Any:
    if _is_key(target):
        key = jax.random.wrap_key_data(value, impl=jax.random.key_impl(target))
        return jax.device_put(key, target.sharding)
    if isinstance(target, bool | int | float | complex):
        return type(target)(value.item())
    if isinstance(target, np.generic):
        return value[()]
    return value


class DamagedCheckpoint(CheckpointError):
    """A step folder whose files orbax cannot read back (an older step may still be whole)."""


def _damaged(folder: Path, part: str, err: Exception) -> CheckpointError:
    """A step folder orbax cannot read: its first 200 characters of detail (tensorstore's
    run to pages), and the fix."""
    detail = " ".join(str(err).split())
    detail = detail if len(detail) <= 200 else detail[:200] + "..."
    return DamagedCheckpoint(
        f"cannot read the {part} of {folder}: the checkpoint is damaged ({detail}); restore "
        "it from a copy, or remove that folder to use an older checkpoint"
    )


class Checkpoints:
    """Latest-``keep`` training-state checkpoints in ``directory`` (``keep=None``: keep all).

    Nothing is created until the first ``save``, so asking a run folder for its latest step
    does not leave an empty ``checkpoints/`` behind.
    """

    def __init__(self, directory: str | Path, keep: int | None = 2):
        if keep is not None and (isinstance(keep, bool) or not isinstance(keep, int) or keep < 1):
            raise ValueError(f"keep must be a positive int or None (keep all), got {keep!r}")
        self.directory = Path(directory).absolute()
        self.keep = keep
        self._manager: ocp.CheckpointManager | None = None
        self._writable = False

    def __repr__(self) -> str:
        return f"Checkpoints({str(self.directory)!r}, keep={self.keep})"

    def _open(self, write: bool) -> ocp.CheckpointManager | None:
        """The orbax manager; read-only until the first save.

        Only a writer deletes leftover tmp folders: a reader (a notebook looking at a live
        run) must not delete the folder a running save is writing.
        """
        if self._manager is not None and (self._writable or not write):
            return self._manager
        if not write and not self.directory.is_dir():
            return None
        if self.directory.exists() and not self.directory.is_dir():
            raise CheckpointError(f"checkpoint folder {self.directory} exists and is not a folder")
        self.close()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=self.keep,
            enable_async_checkpointing=False,
            create=write,
            read_only=not write,
            cleanup_tmp_directories=write,
        )
        self._manager = ocp.CheckpointManager(
            self.directory,
            item_names=(_STATE, _META),
            item_handlers={
                _STATE: ocp.StandardCheckpointHandler(),
                _META: ocp.JsonCheckpointHandler(),
            },
            options=options,
        )
        self._writable = write
        return self._manager

    def _complete(self, step: int) -> bool:
        return (self.directory / str(step) / COMMIT_MARKER).is_file()

    def all_steps(self) -> list[int]:
        """Steps with a complete checkpoint, oldest first."""
        manager = self._open(write=False)
        if manager is None:
            return []
        return sorted(s for s in manager.all_steps() if self._complete(s))

    def latest_step(self) -> int | None:
        """The newest complete step, or None when there is none (or no folder)."""
        steps = self.all_steps()
        return steps[-1] if steps else None

    def save(self, step: int, state: Any, meta: dict[str, Any] | None = None) -> None:
        """Write ``state`` (any pytree of arrays) and ``meta`` (a JSON-able dict) as ``step``.

        ``step`` must be after every step already in the folder (orbax would otherwise skip
        the save silently); older steps beyond ``keep`` are deleted once it is committed.
        """
        if isinstance(step, bool) or not isinstance(step, int | np.integer) or step < 0:
            raise CheckpointError(f"step must be a non-negative int, got {step!r}")
        step = int(step)
        meta = {} if meta is None else meta
        if not isinstance(meta, dict):
            raise CheckpointError(f"meta must be a dict, got {type(meta).__name__}")
        leaves = jax.tree_util.tree_leaves(state)
        names = _leaf_names(state)
        saveable = [
            _to_saveable(i, n, x) for i, (n, x) in enumerate(zip(names, leaves, strict=True))
        ]
        # Orbax refuses zero-size arrays; their shape and dtype (in meta) are all there is.
        arrays = {str(i): x for i, x in enumerate(saveable) if x.size}
        if not arrays:
            raise CheckpointError("state has no non-empty array leaves; nothing to checkpoint")
        record = {
            "format": FORMAT,
            "leaves": [_describe(x) for x in leaves],
            "meta": meta,
        }
        try:
            json.dumps(record)
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"meta for step {step} is not JSON-able: {e}") from e
        manager = self._open(write=True)
        assert manager is not None
        if step in manager.all_steps():
            raise CheckpointError(f"{self.directory} already has a checkpoint for step {step}")
        latest = manager.latest_step()
        if latest is not None and step < latest:
            raise CheckpointError(
                f"cannot save step {step} into {self.directory}: it already holds step {latest}"
                " (steps must increase)"
            )
        args = ocp.args.Composite(
            **{_STATE: ocp.args.StandardSave(arrays), _META: ocp.args.JsonSave(record)}
        )
        try:
            saved = manager.save(step, args=args, force=True)
            manager.wait_until_finished()
        except Exception as e:
            raise CheckpointError(f"saving step {step} into {self.directory} failed: {e}") from e
        if not saved or not self._complete(step):
            raise CheckpointError(f"orbax did not write step {step} into {self.directory}")

    def restore(self, target: Any, step: int | None = None) -> tuple[Any, dict[str, Any]]:
        """``(state, meta)`` of ``step`` (default: the latest), shaped like ``target``.

        ``target`` gives the tree structure and where arrays go: jax-array leaves come back
        as jax arrays on the same sharding, NumPy leaves as NumPy, scalars as scalars. Saved
        leaves must match it in number, shape and dtype; values are restored bit for bit.
        """
        steps = self.all_steps()
        if step is None:
            if not steps:
                where = "does not exist" if not self.directory.exists() else "has none"
                raise CheckpointError(
                    f"no complete checkpoint to restore: {self.directory} {where}"
                )
            step = steps[-1]
        elif step not in steps:
            raise CheckpointError(
                f"{self.directory} has no complete checkpoint for step {step} "
                f"(complete steps: {steps or 'none'})"
            )
        step = int(step)
        manager = self._open(write=False)
        assert manager is not None
        folder = self.directory / str(step)
        try:
            record = manager.restore(
                step, args=ocp.args.Composite(**{_META: ocp.args.JsonRestore()})
            )[_META]
        except Exception as e:
            raise _damaged(folder, "metadata", e) from e
        if not isinstance(record, dict) or record.get("format") != FORMAT:
            raise CheckpointError(f"{folder} is not a checkpoint of format {FORMAT}")

        leaves, treedef = jax.tree_util.tree_flatten(target)
        saved = record["leaves"]
        if len(saved) != len(leaves):
            raise CheckpointError(
                f"{folder} holds {len(saved)} leaves but the target has {len(leaves)}; "
                "was it saved from a different model or optimiser?"
            )
        names = _leaf_names(target)
        for i, (want, have, name) in enumerate(zip(saved, leaves, names, strict=True)):
            if _is_key(have) and not isinstance(have, jax.Array):
                raise CheckpointError(f"leaf {i} ({name}) of the target: give a concrete PRNG key")
            got = _describe(have)
            if got != want:
                raise CheckpointError(
                    f"{folder}: leaf {i} ({name}) was saved as {want['dtype']}{want['shape']} "
                    f"but the target has {got['dtype']}{got['shape']}"
                )

        specs = [_restore_spec(x) for x in leaves]
        to_read = {str(i): spec for i, spec in enumerate(specs) if np.prod(spec.shape)}
        try:
            arrays = manager.restore(
                step, args=ocp.args.Composite(**{_STATE: ocp.args.StandardRestore(to_read)})
            )[_STATE]
        except Exception as e:
            raise _damaged(folder, "arrays", e) from e
        values = [
            _from_restored(x, arrays[str(i)] if str(i) in arrays else _empty(spec))
            for i, (x, spec) in enumerate(zip(leaves, specs, strict=True))
        ]
        for i, (want, value, name) in enumerate(zip(saved, values, names, strict=True)):
            if _describe(value) != want:
                raise CheckpointError(
                    f"{folder}: leaf {i} ({name}) came back as {_describe(value)}, not {want}"
                )
        return jax.tree_util.tree_unflatten(treedef, values), record["meta"]

    def wait(self) -> None:
        """Block until writes finish (saves are synchronous; kept for callers that expect it)."""
        if self._manager is not None:
            self._manager.wait_until_finished()

    def close(self) -> None:
        """Release orbax's threads; the instance reopens itself if used again."""
        if self._manager is not None:
            self._manager.close()
            self._manager = None
            self._writable = False

    def __enter__(self) -> Checkpoints:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
