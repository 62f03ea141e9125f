"""Single-trial inference: posterior-averaged rates and the JSLDS quantities of every trial.

Rates are the mean of ``exp(log-rates)`` over ``infer.samples`` posterior samples of
``z`` and ``u`` (dropout off), or the rates of the posterior means alone
(``infer.posterior_mean``). States, factors, inputs and expansion points come from the
posterior-mean pass, so along them ``e*_t = E(a_{t-1})`` holds exactly and the dynamics
one reads are those of one self-consistent trajectory (an average of samples is not one).

Trials go through in batches of ``infer.batch_size`` (the last one padded, so one compiled
function serves all); samples are accumulated in a ``lax.scan``: memory is bounded by
one batch × one sample, whatever the number of trials.

``inference.h5`` (DESIGN §7): ``rates`` [trial, T_obs, neuron] and ``rates_forward``
[trial, T_fwd, neuron] in spikes per bin, neurons in NWB units-table order (``unit_ids``;
``heldout`` flags them; see ``unit_order``); ``trial_ids`` (NWB trials-table ids),
``split`` ("train", and "val" or "test" after the tensor file's phase); over the observed
window: ``factors``, ``gen_states``, ``jslds_states``,
``expansion_points``, ``fixed_point_residual`` (‖F(e*, 0) − e*‖, [trial, T_obs]),
``inferred_inputs``. ``rates``, ``rates_forward`` and ``factors`` are the generating
path's (``models.lfads.GENERATORS``: the JSLDS a path for ``slds``, the RNN g path
otherwise; attribute ``generating_path``, "rnn" or "jslds"); JSLDS generators also keep
the other path's rates as ``rates_<name>`` / ``rates_<name>_forward`` (``rates_jslds``
for ``jslds``, ``rates_rnn`` for ``slds``). Both state sequences keep their own keys.
Attributes: ``bin_ms``, ``align_field``, ``window_ms``, ``generator``,
``generating_path``, ``samples``.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from lfads_jslds.data import nlb
from lfads_jslds.data.nwb import DataError
from lfads_jslds.data.nwb_rates import write_nlb_submission, write_rates_nwb
from lfads_jslds.io.h5 import save_h5_dict
from lfads_jslds.models import lfads
from lfads_jslds.pipeline.run import RunFolder, RunFolderError, rate_keys
from lfads_jslds.training.run_config import RunConfig


def make_batch_fn(cfg: RunConfig, n_fwd: int) -> Any:
    """Jitted ``(params, x [batch, T_obs, n_in], key) -> dict`` of one batch's outputs."""
    model, samples = cfg.model, cfg.infer.samples
    mode = lfads.GENERATORS[model.generator]
    keys = rate_keys(mode)

    def path_rates(out: lfads.TrialOutput) -> dict[str, jax.Array]:
        return {k: jnp.exp(lfads.path_output(out, path).log_rates) for k, path in keys.items()}

    @jax.jit
    def batch_fn(params: Any, x: jax.Array, key: jax.Array) -> dict[str, jax.Array]:
        mean = lfads.forward(params, model, x, n_fwd, key, train=False, sample=False)
        if cfg.infer.posterior_mean:
            rates = path_rates(mean)
        else:

            def body(acc: dict, k: jax.Array) -> tuple[dict, None]:
                out = lfads.forward(params, model, x, n_fwd, k, train=False, sample=True)
                return jax.tree.map(jnp.add, acc, path_rates(out)), None

            zeros = jax.tree.map(jnp.zeros_like, path_rates(mean))
            acc, _ = jax.lax.scan(body, zeros, jax.random.split(key, samples))
            rates = jax.tree.map(lambda r: r / samples, acc)
        t_obs = x.shape[1]
        out = {
            **rates,
            "factors": lfads.generating_path(mean, model).factors[:, :t_obs],
            "gen_states": mean.gen_states[:, :t_obs],
            "inferred_inputs": mean.co_mean[:, :t_obs],
            "g0": mean.g0,
        }
        if mode.has_jslds:  # the forward pass's F(e*_t, 0): u* = 0
            e_star = mean.expansion_points[:, :t_obs]
            out.update(
                jslds_states=mean.jslds_states[:, :t_obs],
                expansion_points=e_star,
                fixed_point_residual=jnp.linalg.norm(mean.f_star[:, :t_obs] - e_star, axis=-1),
            )
        return out

    return batch_fn


def infer_trials(
    params: Any, cfg: RunConfig, x: np.ndarray, n_fwd: int, seed: int = 0, progress: bool = True
) -> dict[str, np.ndarray]:
    """Outputs for every trial of ``x [trial, T_obs, n_in]``, in batches; numpy arrays."""
    batch_fn = make_batch_fn(cfg, n_fwd)
    b = cfg.infer.batch_size
    n = x.shape[0]
    parts: list[dict[str, np.ndarray]] = []
    key = jax.random.PRNGKey(seed)
    for start in tqdm(range(0, n, b), disable=not progress, desc="infer", unit="batch"):
        chunk = x[start : start + b]
        pad = b - chunk.shape[0]
        if pad:
            chunk = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), chunk.dtype)])
        out = batch_fn(params, jnp.asarray(chunk), jax.random.fold_in(key, start))
        parts.append({k: np.asarray(v)[: b - pad] for k, v in out.items()})
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def unit_order(tensors: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(permutation, unit ids, held-out flags) taking the model's neurons to ``inference.h5``.

    The model's neurons are in tensor order: held-in then held-out, each group in
    units-table row order. ``inference.h5`` puts them in the NWB units-table order:
    ``rates[..., k] = model_rates[..., perm[k]]`` is unit ``unit_ids[k]``. The table order
    is the tensors' ``unit_ids`` (``prepare`` records it); without it, ascending ids (NWB's
    default) when each group's ids ascend, else the tensor order itself. Every choice keeps
    each group's own order, so ``submission_from_inference`` recovers the tensors' held-in
    and held-out order from the ``heldout`` flags alone, as the targets and PSTHs have it.
    """
    groups = [np.asarray(tensors[f"{g}_unit_ids"]) for g in ("heldin", "heldout")]
    ids = np.concatenate(groups)
    heldout = np.repeat([False, True], [g.size for g in groups])
    if "unit_ids" in tensors:
        table = np.asarray(tensors["unit_ids"])
    elif all(np.all(np.diff(g) > 0) for g in groups):
        table = np.sort(ids)
    else:
        table = ids
    where = {int(u): k for k, u in enumerate(ids)}
    if len(where) != ids.size or sorted(where) != sorted(table.tolist()):
        raise DataError(
            "tensors: unit_ids must list each of heldin_unit_ids and heldout_unit_ids once "
            f"({table.size} ids for {ids.size} units)"
        )
    perm = np.array([where[int(u)] for u in table], dtype=np.int64)
    for flag, group in zip((False, True), groups, strict=True):
        if not np.array_equal(ids[perm][heldout[perm] == flag], group):
            raise DataError(
                "tensors: unit_ids orders the units of a group differently from "
                "heldin_unit_ids / heldout_unit_ids"
            )
    return perm, ids[perm], heldout[perm]


def nlb_name(source: str | Path | None, bin_ms: int) -> str:
    """NLB's dataset group name when the source file is an NLB dataset's (``nlb.identify``:
    its NLB name, DANDI session tag or dandiset id) at a bin NLB uses, else ``custom``."""
    row = nlb.identify(source)
    if row is nlb.GENERIC or bin_ms not in nlb.BINS_MS:
        return f"custom_{bin_ms}ms"
    return row.nlb_name(bin_ms)


def submission_from_inference(inf: dict[str, Any]) -> dict[str, np.ndarray]:
    """NLB submission arrays (held-in / held-out, train / eval) from ``inference.h5``; each
    group's neurons come out in the tensors' order (``unit_order`` keeps it)."""
    heldout = np.asarray(inf["heldout"], bool)
    split = np.asarray(inf["split"]).astype(str)
    out = {}
    for part, rows in (("train", split == "train"), ("eval", split != "train")):
        for group, cols in (("heldin", ~heldout), ("heldout", heldout)):
            out[f"{part}_rates_{group}"] = inf["rates"][rows][:, :, cols]
            if part == "eval" and "rates_forward" in inf:
                out[f"eval_rates_{group}_forward"] = inf["rates_forward"][rows][:, :, cols]
    return out


def infer_run(run: Path, progress: bool = True, write_nwb: bool = True) -> dict[str, Path]:
    """Write ``inference.h5``, ``submission.h5`` and (with a source NWB) ``rates.nwb``.

    Each is written atomically, so a killed ``infer`` leaves some of them whole and the
    rest absent; a re-run writes only the absent ones (from ``inference.h5`` when it
    exists). Nothing is overwritten: with every output present, it refuses.
    """
    run = RunFolder.open(run)
    data, source = run.data, run.source
    nwb = write_nwb and source is not None and source.exists()
    outputs = (run.INFERENCE, run.SUBMISSION, *([run.RATES_NWB] if nwb else []))
    if all((run / name).exists() for name in outputs):
        raise RunFolderError(
            f"{run / outputs[-1]} already exists, as do the other outputs of infer; remove "
            "them to infer again (nothing overwritten)"
        )
    if (run / run.INFERENCE).exists():  # a killed infer: complete the rest from it
        result, attrs = run.inference()
        written = {}
    else:
        result, attrs = _infer_arrays(run, progress)
        save_h5_dict(run / run.INFERENCE, result, attrs)
        written = {"inference": run / run.INFERENCE}
    if not (run / run.SUBMISSION).exists():
        write_nlb_submission(
            run / run.SUBMISSION,
            nlb_name(data.attrs.get("dataset") or source, data.bin_ms),  # by file or source
            submission_from_inference(result),
        )
        written["submission"] = run / run.SUBMISSION
    if nwb and not (run / run.RATES_NWB).exists():
        written["nwb"] = _rates_into_nwb(run, source, result, attrs)
    elif write_nwb and not nwb:
        why = "the tensors name no source NWB" if source is None else f"{source} is missing"
        warnings.warn(f"no rates.nwb written: {why}", stacklevel=2)
    return written


def _infer_arrays(run: RunFolder, progress: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """(arrays, attrs) of ``inference.h5``: posterior-averaged outputs of every trial."""
    cfg, data, params = run.config, run.data, run.params()
    x = np.concatenate([data.train_input, data.eval_input])
    eval_label = "test" if data.attrs.get("phase") == "test" else "val"
    split = np.array(
        ["train"] * data.train_input.shape[0] + [eval_label] * data.eval_input.shape[0]
    )
    trial_ids = np.concatenate([data.tensors["train_trial_ids"], data.tensors["eval_trial_ids"]])
    out = infer_trials(params, cfg, x, data.n_fwd, cfg.train.seed, progress)
    order, unit_ids, heldout = unit_order(data.tensors)
    t_obs = data.n_obs
    result: dict[str, Any] = {
        "trial_ids": trial_ids,
        "split": split.astype("S"),
        "unit_ids": unit_ids,
        "heldout": heldout,
    }
    mode = lfads.GENERATORS[cfg.model.generator]
    for key in rate_keys(mode):
        result[key] = out[key][:, :t_obs][:, :, order].astype(np.float32)
        if data.n_fwd:
            result[f"{key}_forward"] = out[key][:, t_obs:][:, :, order].astype(np.float32)
    for key in (
        "factors",
        "gen_states",
        "jslds_states",
        "expansion_points",
        "fixed_point_residual",
        "inferred_inputs",
        "g0",
    ):
        if key in out:
            result[key] = out[key].astype(np.float32)
    attrs = {
        "bin_ms": data.bin_ms,
        "align_field": str(data.attrs.get("align_field", "move_onset_time")),
        "window_ms": np.asarray(data.attrs.get("window_ms", [-250, 450])),
        "generator": cfg.model.generator,
        "generating_path": lfads.PATHS[mode.path].name,
        "samples": 0 if cfg.infer.posterior_mean else cfg.infer.samples,
        "rates_unit": "spikes per bin",
    }
    return result, attrs


def _rates_into_nwb(run: RunFolder, source: Path, result: dict[str, Any], attrs: dict) -> Path:
    from lfads_jslds.data.nwb import read_session

    trials = read_session(source).trials
    align = dict(zip(trials["id"].tolist(), trials[attrs["align_field"]].tolist(), strict=True))
    write_rates_nwb(
        source,
        run / run.RATES_NWB,
        result["rates"],
        result["trial_ids"],
        result["unit_ids"],
        int(attrs["bin_ms"]),
        np.array([align[i] for i in result["trial_ids"].tolist()]),
        tuple(int(v) for v in attrs["window_ms"]),
        f"LFADS-JSLDS ({attrs['generator']} generator, {attrs['generating_path']} path) "
        "inferred rates, mean of "
        f"{attrs['samples']} posterior samples (0: posterior means)",
        extra={"factors": result["factors"]},
    )
    return run / run.RATES_NWB
