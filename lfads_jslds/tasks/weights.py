"""Load task-network weights: the paper's released ``.npz`` files, our ``params.npz``, run folders.

Every file is read with ``io.safe_npz``: no pickled code runs, and only regular files of
bounded expanded size are read. The paper's files hold pickles, mapped onto our parameter
pytree::

    rnn (minus h0) -> cell,  rnn.h0 -> h0,  mlp -> expansion,  out -> readout
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lfads_jslds import config as config_lib
from lfads_jslds.io import pytree_npz
from lfads_jslds.io.safe_npz import WeightsFileError, load_npz_safely, require_numeric
from lfads_jslds.models.cells import Params
from lfads_jslds.tasks.model import infer_model_config
from lfads_jslds.tasks.spec import ModelConfig, TaskSpec, TaskTrainConfig


def from_reference(archive: dict[str, Any], path: Path) -> Params:
    """Map the paper's parameter dict (``arr_0``) onto our pytree."""
    ref = archive.get("arr_0")
    if not isinstance(ref, dict) or not {"rnn", "mlp", "out"} <= set(ref):
        found = sorted(ref) if isinstance(ref, dict) else type(ref).__name__
        raise WeightsFileError(
            f"{path}: arr_0 is not a JSLDS parameter dict with 'rnn', 'mlp', 'out' (found {found})"
        )
    for part in ("rnn", "mlp", "out"):  # a stub or object where arrays belong: named here
        require_numeric(ref[part], path, f"arr_0[{part!r}]")
    if not isinstance(ref["rnn"], dict):
        raise WeightsFileError(f"{path}: arr_0['rnn'] is not a dict of arrays")
    rnn = dict(ref["rnn"])
    try:
        h0 = rnn.pop("h0")
        return {
            "cell": rnn,
            "h0": h0,
            "expansion": [{"W": layer["W"], "b": layer["b"]} for layer in ref["mlp"]],
            "readout": {"W": ref["out"]["W"], "b": ref["out"]["b"]},
        }
    except (KeyError, TypeError) as err:
        raise WeightsFileError(f"{path}: parameter dict is missing {err}") from err


def _check_fits(params: Params, model: ModelConfig, spec: TaskSpec, path: Path) -> None:
    """Refuse weights of another task, saying which shapes were expected and found."""
    n = model.n_hidden
    cell = params["cell"]
    n_in = {
        "gru": lambda: np.shape(cell["wRUHX"])[1] - n,
        "tanh": lambda: np.shape(cell["wI"])[1],
        "lfads_gru": lambda: np.shape(cell["W_x"])[1],
    }[model.cell]()
    n_out = np.shape(params["readout"]["W"])[0]
    if (n_in, n_out) != (spec.n_in, spec.n_out):
        raise WeightsFileError(
            f"{path}: weights do not fit task {spec.name!r}: expected {spec.n_in} inputs and "
            f"{spec.n_out} outputs, found a {model.cell} network (n={n}) with {n_in} inputs "
            f"and {n_out} outputs"
        )


def load_task_weights(path: Path, spec: TaskSpec) -> tuple[Params, ModelConfig]:
    """Weights and model settings from a run folder, our ``.npz`` or the paper's ``.npz``.

    For the paper's files ``u*`` follows the task's default (context kept for the
    context task); for run folders it follows the run's saved config.
    """
    path = Path(path)
    if not path.exists():
        raise WeightsFileError(f"weights {path} do not exist")
    if path.is_dir():
        cfg_file = path / "config.yaml"
        weights = path / "params.npz"  # written when training ends
        if not cfg_file.exists() or not weights.exists():
            raise WeightsFileError(
                f"{path} is not a finished task run folder (needs config.yaml and params.npz; "
                "an unfinished run gets them from task train --resume)"
            )
        run_cfg = config_lib.update(
            TaskTrainConfig(), config_lib.load_yaml(cfg_file), str(cfg_file)
        )
        if run_cfg.task != spec.name:
            raise WeightsFileError(
                f"{path} was trained on task {run_cfg.task!r}, not {spec.name!r}"
            )
        tree = pytree_npz.unflatten(pytree_npz.load(weights))  # regular, size-capped
        params = tree.get("params", tree)
        model = run_cfg.model
    else:
        archive = load_npz_safely(path)
        if "arr_0" in archive:
            params = from_reference(archive, path)
        else:
            require_numeric(archive, path)
            params = pytree_npz.unflatten(archive)
        try:
            model = infer_model_config(params, base=spec.defaults.model)
        except (KeyError, ValueError, TypeError) as err:
            raise WeightsFileError(f"{path}: not a task network's weights ({err})") from err
    try:
        _check_fits(params, model, spec, path)
    except (KeyError, IndexError) as err:  # a parameter the saved config's network has
        raise WeightsFileError(
            f"{path}: not a {model.cell} task network's weights: no {err}"
        ) from err
    return jax.tree_util.tree_map(jnp.asarray, params), model
