"""The run folder: one owner for its file names and for what every stage reads from it.

``train`` creates a run folder; ``infer``, ``evaluate`` and ``analyze`` add to it. Each of
them (and the notebooks) starts with ``RunFolder.open(path)``, which removes the temp
files a killed stage left, reads the config, and from there gives the data the run was
trained on (refused if the file changed since: its sha256 is recorded in ``data.json``),
the trained weights and the inference outputs::

    run = RunFolder.open("runs/demo")
    params = run.params()                 # early-stopping weights, a dict of arrays
    arrays, attrs = run.inference()       # inference.h5

Layout (DESIGN §7): ``config.yaml`` (resolved config), ``data.json`` (where the tensors
are: ``data.h5`` inside the run when DATA was an NWB file; their provenance: path,
sha256, shapes, bin width), ``checkpoints/`` (latest two), ``best/`` (early-stopping
weights), ``log.csv`` (one row per epoch), ``train.json`` (summary), ``inference.h5``,
``submission.h5``, ``rates.nwb``, ``metrics.json``, ``analysis/``.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import jax
import numpy as np

from lfads_jslds import config as config_lib
from lfads_jslds.data import dataset
from lfads_jslds.data.dataset import LFADSData
from lfads_jslds.data.nwb import open_hdf5
from lfads_jslds.io import atomic
from lfads_jslds.io.h5 import read_group
from lfads_jslds.models import lfads
from lfads_jslds.training import lfads as lfads_training
from lfads_jslds.training.checkpoints import Checkpoints
from lfads_jslds.training.loop import RunFolderError
from lfads_jslds.training.run_config import RunConfig

__all__ = ["RunFolder", "RunFolderError"]

#: Attributes of every ``inference.h5`` (later stages read them).
INFERENCE_ATTRS = ("bin_ms", "align_field", "window_ms", "generator", "generating_path", "samples")


def rate_keys(mode: lfads.GeneratorMode) -> dict[str, lfads.PathName]:
    """``inference.h5`` rate keys and the path each holds: ``rates`` the generating path's,
    ``rates_<name>`` the other path's (``rates_jslds``, ``rates_rnn``)."""
    keys: dict[str, lfads.PathName] = {"rates": mode.path}
    if mode.secondary is not None:
        keys[f"rates_{lfads.PATHS[mode.secondary].name}"] = mode.secondary
    return keys


def expected_datasets(generator: str) -> tuple[str, ...]:
    """The datasets ``infer`` writes for ``generator``, the forward-window rates aside
    (``rates_forward`` etc. exist only when the data has forward bins)."""
    mode = lfads.GENERATORS[generator]
    jslds = ("jslds_states", "expansion_points", "fixed_point_residual") if mode.has_jslds else ()
    ids = ("trial_ids", "split", "unit_ids", "heldout")
    return (*ids, *rate_keys(mode), "factors", "gen_states", "inferred_inputs", "g0", *jslds)


def sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks (memory stays flat)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class RunFolder:
    """A run folder at ``path``: its files by name, and the reading every stage shares."""

    path: Path

    CONFIG = "config.yaml"
    DATA_INFO = "data.json"
    DATA_FILE = "data.h5"
    CHECKPOINTS = "checkpoints"
    BEST = "best"
    LOG = "log.csv"
    SUMMARY = "train.json"
    INFERENCE = "inference.h5"
    SUBMISSION = "submission.h5"
    RATES_NWB = "rates.nwb"
    METRICS = "metrics.json"
    ANALYSIS = "analysis"

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def __str__(self) -> str:
        return str(self.path)

    @classmethod
    def open(cls, path: Path | str) -> RunFolder:
        """A stage starting on an existing run: the temp files a killed stage left are
        removed (named in a warning), and the config must read back."""
        run = cls(Path(path))
        run.config  # noqa: B018 (read now: a folder without config.yaml is refused here)
        orphans = atomic.remove_orphans(run.path)
        if orphans:
            names = ", ".join(str(p.relative_to(run.path)) for p in orphans)
            warnings.warn(
                f"{run}: removed temporary files a killed run left: {names}", stacklevel=2
            )
        return run

    @property
    def train_files(self) -> lfads_training.TrainFiles:
        """Where training writes: latest and best checkpoints, the epoch log."""
        return lfads_training.TrainFiles(self / self.CHECKPOINTS, self / self.BEST, self / self.LOG)

    @cached_property
    def config(self) -> RunConfig:
        path = self / self.CONFIG
        if not path.exists():
            raise RunFolderError(f"{self} has no {self.CONFIG}: not a run folder made by `train`")
        return config_lib.update(RunConfig(), config_lib.load_yaml(path), str(path))

    @cached_property
    def data_info(self) -> dict[str, Any]:
        path = self / self.DATA_INFO
        if not path.exists():
            raise RunFolderError(
                f"{self} has no {self.DATA_INFO}: not a run folder made by `train`"
            )
        return json.loads(path.read_text())

    @property
    def source(self) -> Path | None:
        """The NWB session the tensors were cut from, where recorded (ground truth, NWB out)."""
        source = self.data_info.get("source")
        return Path(source) if source else None

    @cached_property
    def data(self) -> LFADSData:
        """The data the run was trained on, refused if the file has changed since.

        The tensors file's sha256 must match the one ``train`` recorded: a file swapped or
        rewritten since (another bin width, other trials) would silently feed a model
        trained on something else. Run folders from before provenance was recorded are
        read unchecked.
        """
        info = self.data_info
        tensors = Path(info["tensors"])  # relative: inside the run folder, which may move
        tensors = tensors if tensors.is_absolute() else self / tensors
        recorded = info.get("provenance", {}).get("tensors_sha256")
        where = self / self.DATA_INFO
        if recorded is not None:
            if not tensors.exists():
                raise RunFolderError(
                    f"{tensors}: the data file this run was trained on is gone ({where}); "
                    "put it back, or retrain"
                )
            if sha256(tensors) != recorded:
                raise RunFolderError(
                    f"{tensors} changed since this run was trained (sha256 differs from "
                    f"{where}); restore the original file, or train a new run on this one"
                )
        return dataset.load(tensors, self.config.data.bin_ms)  # bin width as train resolved it

    def params(self) -> Any:
        """The early-stopping weights (the latest ones if no validation ran), restored into
        shapes from ``jax.eval_shape``: nothing is initialised or computed to read them."""
        cfg, data = self.config, self.data
        shapes = jax.eval_shape(
            lambda: lfads.init_params(
                jax.random.PRNGKey(0), cfg.model, data.n_heldin, data.n_neurons
            )
        )
        files = self.train_files
        best = Checkpoints(files.best, keep=1)
        if best.latest_step() is not None:
            return best.restore(shapes)[0]
        latest = Checkpoints(files.checkpoints, keep=2)
        if latest.latest_step() is None:
            raise RunFolderError(f"{self} has no checkpoint: run `lfads-jslds train` first")
        tx = lfads_training.make_optimizer(cfg, 1)
        return latest.restore((shapes, jax.eval_shape(tx.init, shapes)))[0][0]

    def inference(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """(arrays, attrs) of ``inference.h5``, or a message naming the missing stage.

        A file lacking a dataset or attribute ``infer`` writes is refused here, naming what
        is missing, rather than failing later on a bare key."""
        path = self / self.INFERENCE
        if not path.exists():
            raise RunFolderError(
                f"{self} has no {self.INFERENCE}: run `lfads-jslds infer {self}` first"
            )
        with open_hdf5(path, "an inference file") as f:
            arrays, attrs = read_group(f), dict(f.attrs)
        generator = attrs.get("generator")
        lacking = [f"attribute {a}" for a in INFERENCE_ATTRS if a not in attrs]
        if generator in lfads.GENERATORS:
            lacking += [f"dataset {k}" for k in expected_datasets(generator) if k not in arrays]
        elif generator is not None:
            lacking.append(f"known generator (attribute generator = {generator!r})")
        if lacking:
            raise RunFolderError(
                f"{path}: not as `infer` writes it: no {', no '.join(lacking)}; remove it and "
                f"run `lfads-jslds infer {self}` again"
            )
        arrays["split"] = np.asarray(arrays["split"]).astype(str)
        return arrays, attrs
