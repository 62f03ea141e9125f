"""``metrics.json`` of a run: NLB metrics on the eval trials (val; test files hide the
held-out targets, so only what they allow is scored), with references.

Keys (DESIGN §7): ``co-bps``, ``fp-bps``, ``vel R2``, ``psth R2`` (NLB's spellings) of the
generating path's rates (``inference.h5``'s ``rates``: the JSLDS a path for ``slds``, the
RNN g path otherwise), ``split`` ("val" or "test"), ``skipped`` (metrics whose inputs are
absent); ``smoothing_baseline``: the same metrics for NLB's spike-smoothing baseline, with
the ``kern_sd_ms`` and ``alpha`` it used and ``cv`` (see ``smoothing_reference``);
the same for the other path's rates under ``jslds_path`` (``jslds``: the JSLDS path) or
``rnn_path`` (``slds``: the RNN path), with its ``rates_r2_vs_truth``; ``jslds``:
``mean_relative_error`` (‖a − g‖/‖g‖ over eval trials and bins) and
``fixed_point_residual_median`` (‖F(e*, 0) − e*‖). Where the data carry ground truth
(synthetic sessions): ``rates_r2_vs_truth`` (R² of the inferred rates against the true
rates, pooled over eval trials, bins and neurons) and ``truth`` (the metrics of the true
rates themselves: the ceiling).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from lfads_jslds import metrics
from lfads_jslds.data import nlb
from lfads_jslds.io import atomic
from lfads_jslds.models import lfads
from lfads_jslds.models.jslds import relative_error
from lfads_jslds.pipeline.infer import submission_from_inference
from lfads_jslds.pipeline.run import RunFolder, RunFolderError, rate_keys
from lfads_jslds.training.run_config import EvaluateConfig


def pooled_r2(pred: np.ndarray, true: np.ndarray) -> float:
    """``1 − Σ(pred − true)² / Σ(true − mean(true))²`` over all entries."""
    pred, true = np.asarray(pred, float).ravel(), np.asarray(true, float).ravel()
    return float(1.0 - np.sum((pred - true) ** 2) / np.sum((true - true.mean()) ** 2))


def _nlb(sub: dict[str, np.ndarray], tensors: dict[str, Any]) -> dict[str, Any]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zero-rate and ridge warnings: reported in the values
        return metrics.evaluate(sub, tensors)


def _truth_rates(source: Path, inf: dict[str, Any], attrs: dict[str, Any]) -> dict | None:
    """True rates (spikes per bin) aligned to ``inf``'s trials and units, or None."""
    from lfads_jslds.data.nwb import DataError
    from lfads_jslds.data.synth import read_ground_truth, true_rates_per_bin

    try:
        truth = read_ground_truth(source)
    except DataError:
        return None
    w0, w1 = (int(v) for v in attrs["window_ms"])
    bin_ms = int(attrs["bin_ms"])
    fwd_bins = inf["rates_forward"].shape[1] if "rates_forward" in inf else 0
    rows = {int(t): i for i, t in enumerate(truth.trial_ids)}
    take = np.array([rows[int(t)] for t in inf["trial_ids"]])
    obs = true_rates_per_bin(truth, bin_ms, (w0, w1))[take]
    out = {"rates": obs}
    if fwd_bins:
        out["rates_forward"] = true_rates_per_bin(truth, bin_ms, (w1, w1 + fwd_bins * bin_ms))[take]
    return out  # neurons: the units table's order, which unit ids follow in synthetic files


def smoothing_reference(
    tensors: dict[str, Any], settings: EvaluateConfig, bin_ms: int, dataset: nlb.DatasetFacts
) -> dict[str, Any]:
    """NLB's smoothing baseline, scored as the model is, and the settings it used.

    ``settings.smooth_cv``: the kernel s.d. and GLM alpha are chosen by ``metrics.smoothing_cv``
    on the train trials alone; ``cv`` records ``folds``, the grid (``kern_sd_ms``,
    ``alpha``) and ``co-bps`` [kernel][alpha] (mean over folds). Otherwise ``smooth_sd_ms``
    and ``smooth_alpha`` (None: ``dataset``'s NLB values), and ``cv`` is None. The eval
    trials' held-in spikes only feed the final predictions.
    """
    train_in, train_out = tensors["train_spikes_heldin"], tensors["train_spikes_heldout"]
    cv = None
    if settings.smooth_cv:
        grid = [sd / bin_ms for sd in settings.smooth_cv_sd_ms]
        chosen = metrics.smoothing_cv(
            train_in, train_out, grid, settings.smooth_cv_alphas, settings.smooth_cv_folds
        )
        sd_ms, alpha = chosen["kern_sd_bins"] * bin_ms, chosen["alpha"]
        cv = {
            "folds": settings.smooth_cv_folds,
            "kern_sd_ms": list(settings.smooth_cv_sd_ms),
            "alpha": list(settings.smooth_cv_alphas),
            "co-bps": chosen["co_bps"].tolist(),
        }
    else:
        sd_ms = settings.smooth_sd_ms if settings.smooth_sd_ms is not None else dataset.smooth_sd_ms
        alpha = settings.smooth_alpha if settings.smooth_alpha is not None else dataset.smooth_alpha
    rates = metrics.smoothing_baseline(
        train_in, train_out, tensors["eval_spikes_heldin"], sd_ms / bin_ms, alpha
    )
    return {**_nlb(rates, tensors), "kern_sd_ms": float(sd_ms), "alpha": float(alpha), "cv": cv}


def evaluate_run(run: Path) -> dict[str, Any]:
    """Score a run's inference on its eval trials; writes ``metrics.json``."""
    run = RunFolder.open(run)
    if (run / run.METRICS).exists():
        raise RunFolderError(f"{run / run.METRICS} already exists; remove it to evaluate again")
    cfg, data, source = run.config, run.data, run.source
    inf, attrs = run.inference()
    tensors = data.tensors
    result = _nlb(submission_from_inference(inf), tensors)
    result["split"] = "test" if data.attrs.get("phase") == "test" else "val"
    bin_ms = int(attrs["bin_ms"])
    dataset = data.attrs.get("dataset")
    row = nlb.facts(str(dataset)) if dataset is not None else nlb.identify(source or data.path)
    result["smoothing_baseline"] = smoothing_reference(tensors, cfg.evaluate, bin_ms, row)
    mode = lfads.GENERATORS[cfg.model.generator]
    val = inf["split"] != "train"
    others = {}  # "<name>_path" → the other path's rates, under the generating path's keys
    for key, path in rate_keys(mode).items():
        if path != mode.path:
            fwd = {"rates_forward": inf[f"{key}_forward"]} if f"{key}_forward" in inf else {}
            others[f"{lfads.PATHS[path].name}_path"] = {"rates": inf[key], **fwd}
    for label, rates in others.items():
        result[label] = _nlb(submission_from_inference({**inf, **rates}), tensors)
    if mode.has_jslds:
        rel = relative_error(inf["jslds_states"][val], inf["gen_states"][val])
        result["jslds"] = {
            "mean_relative_error": float(rel.mean()),
            "fixed_point_residual_median": float(np.median(inf["fixed_point_residual"][val])),
        }
    truth = _truth_rates(source, inf, attrs) if source is not None and source.exists() else None
    if truth is not None:
        result["rates_r2_vs_truth"] = pooled_r2(inf["rates"][val], truth["rates"][val])
        for label, rates in others.items():
            result[label]["rates_r2_vs_truth"] = pooled_r2(rates["rates"][val], truth["rates"][val])
        result["truth"] = _nlb(submission_from_inference({**inf, **truth}), tensors)
    atomic.write_json(run / run.METRICS, result)  # strict JSON: a NaN metric becomes null
    return result
