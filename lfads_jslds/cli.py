"""The ``lfads-jslds`` command line (also ``python -m lfads_jslds``)."""

from __future__ import annotations

import enum
import json
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

app = typer.Typer(
    help="LFADS with a JSLDS generator: train, infer, and read the learned dynamics.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
task_app = typer.Typer(
    help="The JSLDS paper's synthetic tasks: 3-bit flip-flop and context integration.",
    no_args_is_help=True,
)
app.add_typer(task_app, name="task")

TaskName = Annotated[str, typer.Argument(help="flipflop or context", metavar="{flipflop,context}")]
SetOption = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        help="Config override key=value (e.g. train.lr=0.003; tasks: optim.lr=0.01); repeatable.",
    ),
]
ValFractionOption = Annotated[
    float | None,
    typer.Option(
        help="NWB input: draw this fraction of the trials as validation trials, in place of "
        "the file's split (data.val_fraction).",
    ),
]
HeldoutFractionOption = Annotated[
    float | None,
    typer.Option(
        help="NWB input: hold out this fraction of the units at random, in place of the "
        "file's heldout column (data.heldout_fraction).",
    ),
]
HeldoutUnitsOption = Annotated[
    str | None,
    typer.Option(
        metavar="ID,ID,...",
        help="NWB input: hold out these unit ids instead (data.heldout_units).",
    ),
]
SplitSeedOption = Annotated[
    int | None,
    typer.Option(help="Seed of the drawn trial and unit splits (data.split_seed; default 0)."),
]


def _unit_ids(text: str | None) -> list[int] | None:
    """``--heldout-units 3,17,42`` as a list of ids."""
    if text is None:
        return None
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        from lfads_jslds.config import ConfigError

        raise ConfigError(
            f"--heldout-units {text!r}: expected unit ids separated by commas, e.g. 3,17,42"
        ) from None


@app.command("download")
def download(
    dataset: Annotated[
        str,
        typer.Argument(
            help="mc_maze, mc_maze_large, mc_maze_medium, mc_maze_small, or a dandiset id."
        ),
    ],
    dest: Annotated[
        Path | None,
        typer.Option(
            help="Root folder (default: $LFADS_JSLDS_DATA or ~/.cache/lfads-jslds/dandi)."
        ),
    ] = None,
) -> None:
    """Download a dandiset's NWB files (resumable, checksum-verified, idempotent)."""

    def go() -> None:
        from lfads_jslds.data.download import download as fetch

        for path in fetch(dataset, dest):
            typer.echo(str(path))

    _run(go)


@app.command("synth")
def synth(
    out: Annotated[Path, typer.Argument(help="NWB file to write.")],
    preset: Annotated[str, typer.Option(help="small (≈ MC_Maze_Small) or mc_maze.")] = "small",
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
) -> None:
    """Write a synthetic session in the MC_Maze NWB layout, with planted dynamics and truth."""

    def go() -> None:
        from lfads_jslds.config import ConfigError
        from lfads_jslds.data.synth import PRESETS, write_synthetic_nwb

        if preset not in PRESETS:
            raise ConfigError(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}")
        if out.exists():
            raise ConfigError(f"{out} already exists; choose another path (nothing overwritten)")
        write_synthetic_nwb(out, preset, seed)
        typer.echo(f"wrote {out.resolve()}")

    _run(go)


@app.command("prepare")
def prepare(
    nwb: Annotated[Path, typer.Argument(help="NWB file in the MC_Maze layout.")],
    out: Annotated[Path, typer.Option(help="HDF5 file of NLB-style trial tensors.")],
    bin_ms: Annotated[int, typer.Option(help="Bin width in ms (5, 10, 20...).")] = 5,
    lag_ms: Annotated[
        int | None, typer.Option(help="Behaviour lag in ms (NLB: 100 MC_Maze, 120 the others).")
    ] = None,
    phase: Annotated[str, typer.Option(help="val (train→val) or test (train+val→test).")] = "val",
    lfads_torch: Annotated[
        Path | None, typer.Option(help="Also export the lfads-torch HDF5 layout here.")
    ] = None,
    val_fraction: ValFractionOption = None,
    heldout_fraction: HeldoutFractionOption = None,
    heldout_units: HeldoutUnitsOption = None,
    split_seed: SplitSeedOption = None,
) -> None:
    """Bin spikes into NLB-style trial tensors aligned on movement onset."""

    def go() -> None:
        from lfads_jslds.config import ConfigError
        from lfads_jslds.data.dataset import tensors_from_nwb
        from lfads_jslds.data.prepare import export_lfads_torch

        for target in (out, lfads_torch):
            if target is not None and target.exists():
                raise ConfigError(f"{target} already exists; choose another path")
        if phase not in ("val", "test"):
            raise ConfigError(f"--phase must be val or test, got {phase!r}")
        tensors, _ = tensors_from_nwb(
            nwb,
            out,
            bin_ms,
            lag_ms,
            phase,
            val_fraction=val_fraction,
            heldout_fraction=heldout_fraction,
            heldout_units=_unit_ids(heldout_units),
            split_seed=split_seed or 0,
        )
        if lfads_torch is not None:
            export_lfads_torch(lfads_torch, tensors)
        shapes = ", ".join(
            f"{k} {tuple(tensors[k].shape)}"
            for k in ("train_spikes_heldin", "eval_spikes_heldout")
            if k in tensors  # phase test: no eval held-out spikes
        )
        typer.echo(f"wrote {out.resolve()} ({shapes})")

    _run(go)


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean bad input: reported in one line, exit code 1."""
    from lfads_jslds.config import ConfigError
    from lfads_jslds.data.download import DownloadError
    from lfads_jslds.data.nwb import DataError
    from lfads_jslds.io.safe_npz import WeightsFileError
    from lfads_jslds.tasks import UnknownTaskError
    from lfads_jslds.training.checkpoints import CheckpointError
    from lfads_jslds.training.loop import RunFolderError

    return (
        CheckpointError,
        ConfigError,
        DownloadError,
        DataError,
        WeightsFileError,
        UnknownTaskError,
        RunFolderError,
        FloatingPointError,
    )


def _run(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except _user_errors() as err:  # one line: a library's message may hold line breaks
        typer.echo(f"error: {' '.join(str(err).split())}", err=True)
        raise typer.Exit(1) from None


@task_app.command("train")
def task_train(
    task: TaskName,
    out: Annotated[Path, typer.Option(help="Run folder to create (or continue with --resume).")],
    steps: Annotated[int | None, typer.Option(help="Training steps (optim.steps).")] = None,
    config: Annotated[Path | None, typer.Option(help="YAML config file.")] = None,
    set_: SetOption = None,
    resume: Annotated[bool, typer.Option(help="Continue the run in --out.")] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Train a task network (JSLDS co-training by default) into a run folder."""

    def go() -> None:
        from lfads_jslds import config as config_lib
        from lfads_jslds.tasks import default_config
        from lfads_jslds.training import tasks as task_trainer

        overrides = list(set_ or []) + ([f"optim.steps={steps}"] if steps is not None else [])
        base = default_config(task)
        if resume and (out / task_trainer.CONFIG).exists():
            base = config_lib.resolve(base, out / task_trainer.CONFIG)
        cfg = config_lib.resolve(base, config, overrides)
        if cfg.task != task:
            raise config_lib.ConfigError(f"config is for task {cfg.task!r}, not {task!r}")
        metrics = task_trainer.train(cfg, out, resume=resume, progress=progress)
        typer.echo(_format_metrics(metrics))
        typer.echo(f"run folder: {out.resolve()}")

    _run(go)


@task_app.command("eval")
def task_eval(
    task: TaskName,
    weights: Annotated[
        Path, typer.Option(help="Run folder, params.npz, or one of the paper's .npz files.")
    ],
    trials: Annotated[int, typer.Option(help="Held-out trials to sample.")] = 1024,
    seed: Annotated[int, typer.Option(help="Seed of the held-out trials.")] = 0,
    json_: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Evaluate weights on fresh trials: ‖a−h‖/‖h‖, output MSEs, R_e, R_a."""

    def go() -> None:
        from lfads_jslds.config import ConfigError
        from lfads_jslds.tasks import get_task
        from lfads_jslds.tasks.model import evaluate
        from lfads_jslds.tasks.weights import load_task_weights

        spec = get_task(task)
        if trials < 1:
            raise ConfigError(f"--trials must be at least 1, got {trials}")
        params, model = load_task_weights(weights, spec)
        metrics = evaluate(params, spec, model, n_trials=trials, seed=seed)
        metrics["task"] = task
        metrics["weights"] = str(weights)
        typer.echo(json.dumps(metrics) if json_ else _format_metrics(metrics))

    _run(go)


ConfigOption = Annotated[
    Path | None,
    typer.Option(help="YAML config (e.g. pipelines/configs/synthetic_demo.yaml)."),
]
RunArg = Annotated[Path, typer.Argument(help="Run folder made by `train`.")]
DataArg = Annotated[
    Path, typer.Argument(help="NWB session, or a tensor file from `prepare` or nlb_tools.")
]
OutOption = Annotated[Path, typer.Option(help="Run folder to create (or continue with --resume).")]
ResumeOption = Annotated[bool, typer.Option(help="Continue the run in --out.")]
ProgressOption = Annotated[bool, typer.Option(help="Show progress bars.")]
BinMsOption = Annotated[
    int | None,
    typer.Option(
        help="Bin width in ms (data.bin_ms). NWB input: cut at this width (default 20); "
        "tensor file: must agree with the file (needed where it does not say).",
    ),
]


def _data_overrides(
    bin_ms: int | None,
    val_fraction: float | None,
    heldout_fraction: float | None,
    heldout_units: str | None,
    split_seed: int | None,
) -> list[str]:
    """The data options as ``--set`` overrides (they win over --config and --set)."""
    values = {
        "bin_ms": bin_ms,
        "val_fraction": val_fraction,
        "heldout_fraction": heldout_fraction,
        "heldout_units": _unit_ids(heldout_units),
        "split_seed": split_seed,
    }
    return [f"data.{k}={v}" for k, v in values.items() if v is not None]


class DominantRule(enum.StrEnum):
    """``analysis.modes.RULES`` (kept literal here: the CLI imports no JAX until it runs)."""

    motion = "motion"
    deviation = "deviation"


def _train_stage(
    data: Path, out: Path, config: Path | None, overrides: list[str], resume: bool, progress: bool
) -> None:
    from lfads_jslds import config as config_lib
    from lfads_jslds.pipeline.run import RunFolder
    from lfads_jslds.pipeline.train import train_run
    from lfads_jslds.training.run_config import RunConfig

    base = RunConfig()
    if resume and (out / RunFolder.CONFIG).exists():
        base = RunFolder(out).config
    cfg = config_lib.resolve(base, config, overrides)
    summary = train_run(out, cfg, data, resume=resume, progress=progress)
    typer.echo(
        f"trained {summary['epochs']} epochs ({summary['steps']} steps, "
        f"{summary['train_seconds']:.0f} s; {summary['stop_reason']}); best epoch "
        f"{summary['best_epoch']}"
    )


def _infer_stage(run: Path, progress: bool) -> None:
    from lfads_jslds.pipeline.infer import infer_run

    for what, path in infer_run(run, progress=progress).items():
        typer.echo(f"wrote {what}: {path}")


def _evaluate_stage(run: Path) -> None:
    from lfads_jslds.pipeline.evaluate import evaluate_run
    from lfads_jslds.pipeline.run import RunFolder

    typer.echo(format_run_metrics(evaluate_run(run)))
    typer.echo(f"wrote {run / RunFolder.METRICS}")


@app.command("train")
def train(
    data: DataArg,
    out: OutOption,
    config: ConfigOption = None,
    set_: SetOption = None,
    resume: ResumeOption = False,
    progress: ProgressOption = True,
    bin_ms: BinMsOption = None,
    val_fraction: ValFractionOption = None,
    heldout_fraction: HeldoutFractionOption = None,
    heldout_units: HeldoutUnitsOption = None,
    split_seed: SplitSeedOption = None,
) -> None:
    """Train LFADS-JSLDS (or plain LFADS: --set model.generator=gru) on spiking data."""
    options = (bin_ms, val_fraction, heldout_fraction, heldout_units, split_seed)
    _run(
        lambda: _train_stage(
            data, out, config, [*(set_ or []), *_data_overrides(*options)], resume, progress
        )
    )


@app.command("infer")
def infer(run: RunArg, progress: ProgressOption = True) -> None:
    """Posterior-averaged rates and JSLDS states of every trial: inference.h5, submission, NWB."""
    _run(lambda: _infer_stage(run, progress))


@app.command("evaluate")
def evaluate(run: RunArg) -> None:
    """NLB metrics on the val trials (and vs ground truth, when the data has it): metrics.json."""
    _run(lambda: _evaluate_stage(run))


def _analyze_stage(
    run: Path,
    rule: str = "motion",
    jpca_window: tuple[float, float] | None = None,
    exact: bool = False,
) -> None:
    from lfads_jslds.pipeline.analyze import analyze_run
    from lfads_jslds.pipeline.run import RunFolder

    typer.echo(analysis_line(analyze_run(run, rule, jpca_window, exact)))
    typer.echo(f"wrote {run / RunFolder.ANALYSIS}")


def analysis_line(s: dict) -> str:
    """One line from ``summary.json``; holds where no bin rotates (its figures are None)."""
    jp = s["jpca"]
    jpca_text = (
        f"jPCA skipped ({jp['skipped']})"
        if "skipped" in jp
        else f"jPCA {jp['rotation_hz']:.3g} Hz over {jp['bins_ms'][0]:g} to "
        f"{jp['bins_ms'][1]:g} ms (R² skew {jp['r2_skew']:.2f})"
    )
    if s["rotation_hz_median"] is None:
        mode_text = "none (no bin has a rotating pair)"
    else:
        tau = s["tau_s_median"]  # None: |λ| ≥ 1, the mode does not decay
        mode_text = (
            f"{s['rotation_hz_median']:.3g} Hz median (IQR {s['rotation_hz_iqr']:.3g}), "
            f"tau {'inf' if tau is None else f'{tau:.3g} s'}"
        )
    residual = s["fixed_point_residual_median"]
    residual_text = "n/a" if residual is None else f"{residual:.3g}"
    return (
        f"dominant rotational mode ({s['dominant_rule']} rule): {mode_text}; {jpca_text}; "
        f"median ‖F(e*)−e*‖ {residual_text} ({s['expansion_points_source']})"
    )


@app.command("analyze")
def analyze(
    run: RunArg,
    dominant_rule: Annotated[
        DominantRule,
        typer.Option(
            help="How a bin's dominant rotating pair is chosen: the pair carrying the most "
            "of the state's motion (λ−1 weighted) or of the deviation a_{t−1} − e*_t that "
            "J_h acts on."
        ),
    ] = DominantRule.motion,
    jpca_window: Annotated[
        tuple[float, float] | None,
        typer.Option(
            metavar="START STOP",
            help="jPCA's window in ms from the alignment event (inference.h5's align_field, "
            "movement onset for MC_Maze); default -50 150 (Churchland et al. 2012). It must "
            "lie inside the data's window.",
        ),
    ] = None,
    exact: Annotated[
        bool,
        typer.Option(
            help="Eigendecompose J_h with LAPACK at every bin (slow) instead of perturbing "
            "one exactly decomposed bin per block, with exact fallback where its checks fail."
        ),
    ] = False,
) -> None:
    """Per-trial fixed points, Jacobian modes, rotations, jPCA and figures: RUN/analysis/."""
    _run(lambda: _analyze_stage(run, dominant_rule.value, jpca_window, exact))


@app.command("run")
def run_all(
    data: DataArg,
    out: OutOption,
    config: ConfigOption = None,
    set_: SetOption = None,
    resume: ResumeOption = False,
    progress: ProgressOption = True,
    bin_ms: BinMsOption = None,
    val_fraction: ValFractionOption = None,
    heldout_fraction: HeldoutFractionOption = None,
    heldout_units: HeldoutUnitsOption = None,
    split_seed: SplitSeedOption = None,
) -> None:
    """All stages: train, infer, evaluate, analyze; prints a summary and the run folder."""
    options = (bin_ms, val_fraction, heldout_fraction, heldout_units, split_seed)

    def go() -> None:
        overrides = [*(set_ or []), *_data_overrides(*options)]
        _train_stage(data, out, config, overrides, resume, progress)
        _infer_stage(out, progress)
        _evaluate_stage(out)
        _analyze_stage(out)
        typer.echo(f"run folder: {out.resolve()}")

    _run(go)


def _tune_stage(
    data: Path,
    out: Path,
    config: Path | None,
    overrides: list[str],
    space: Path | None,
    shape: dict[str, Any],
    resources: dict[str, Any],
    address: str | None,
    resume: bool,
) -> None:
    from dataclasses import replace

    from lfads_jslds import config as config_lib
    from lfads_jslds.pipeline import tune as tuning
    from lfads_jslds.pipeline.tune_space import load_space
    from lfads_jslds.training.run_config import RunConfig

    given = {k: v for k, v in shape.items() if v is not None}
    if resume:
        fixed = [f"--{k.replace('_', '-')}" for k in given if k != "generations"]
        fixed += [name for name, v in (("--config", config), ("--space", space)) if v]
        fixed += ["--set / data options"] if overrides else []
        if fixed:
            raise config_lib.ConfigError(
                f"--resume continues {out} as its tune.json records it; drop {', '.join(fixed)}"
            )
        result = tuning.resume_run(out, data, given | resources, address, say=typer.echo)
    else:
        cfg = config_lib.resolve(RunConfig(), config, overrides)
        opts = replace(tuning.TuneOptions(), **given, **resources)
        space_ = load_space(space or Path("pipelines/configs/pbt_space.yaml"))
        result = tuning.tune_run(out, cfg, data, space_, opts, address, say=typer.echo)
    typer.echo(
        f"best member {result['best_member']} (score {result['best_score']:.5g}), "
        f"exported as the run folder {result['best']}"
    )


@app.command("tune")
def tune(
    data: DataArg,
    out: Annotated[Path, typer.Option(help="Search folder to create (or continue, --resume).")],
    config: ConfigOption = None,
    set_: SetOption = None,
    space: Annotated[
        Path | None,
        typer.Option(help="Search-space YAML (default pipelines/configs/pbt_space.yaml)."),
    ] = None,
    members: Annotated[int | None, typer.Option(help="Population size (default 8).")] = None,
    generations: Annotated[
        int | None, typer.Option(help="Perturbation intervals to train (default 20).")
    ] = None,
    interval: Annotated[
        int | None, typer.Option(help="Epochs between exploits (default 25).")
    ] = None,
    burn_in: Annotated[
        int | None, typer.Option(help="Epochs before the first interval (default 0).")
    ] = None,
    address: Annotated[
        str | None,
        typer.Option(help="Ray cluster HOST:PORT to join (default: start a local Ray)."),
    ] = None,
    cpus_per_member: Annotated[float, typer.Option(help="CPUs per member.")] = 1.0,
    gpus_per_member: Annotated[float, typer.Option(help="GPUs (or a fraction) per member.")] = 0.0,
    resume: Annotated[bool, typer.Option(help="Continue the search in --out.")] = False,
    bin_ms: BinMsOption = None,
    val_fraction: ValFractionOption = None,
    heldout_fraction: HeldoutFractionOption = None,
    heldout_units: HeldoutUnitsOption = None,
    split_seed: SplitSeedOption = None,
) -> None:
    """Population-based training (AutoLFADS) of LFADS-JSLDS on Ray (needs the `tune` extra)."""
    options = (bin_ms, val_fraction, heldout_fraction, heldout_units, split_seed)
    shape = {"members": members, "generations": generations, "interval": interval}
    shape["burn_in"] = burn_in
    resources = {"cpus_per_member": cpus_per_member, "gpus_per_member": gpus_per_member}
    overrides = [*(set_ or []), *_data_overrides(*options)]
    _run(
        lambda: _tune_stage(data, out, config, overrides, space, shape, resources, address, resume)
    )


def format_run_metrics(m: dict[str, Any]) -> str:
    """A short table: the model (its generating path), its other path (JSLDS or RNN), the
    smoothing baseline and the truth."""
    cols = [("model", m)]
    cols += [(k.replace("_", " "), m[k]) for k in ("jslds_path", "rnn_path") if k in m]
    cols += [("smoothing", m["smoothing_baseline"])]
    cols += [("truth", m["truth"])] if "truth" in m else []
    keys = ["co-bps", "fp-bps", "vel R2", "psth R2"]
    if "rates_r2_vs_truth" in m:
        keys.append("rates_r2_vs_truth")
    lines = [f"{'':<18}" + "".join(f"{name:>12}" for name, _ in cols)]
    for key in keys:
        cells = "".join(
            f"{c[key]:>12.4f}" if isinstance(c.get(key), float) else f"{'-':>12}" for _, c in cols
        )
        lines.append(f"{key:<18}{cells}")
    if "jslds" in m:
        lines.append(f"{'‖a−g‖/‖g‖ (val)':<18}{m['jslds']['mean_relative_error']:>12.4f}")
        lines.append(f"{'median ‖F(e*)−e*‖':<18}{m['jslds']['fixed_point_residual_median']:>12.4g}")
    return "\n".join(lines)


def _format_metrics(metrics: dict[str, Any]) -> str:
    rows = [
        ("mean relative error ‖a−h‖/‖h‖", "mean_relative_error"),
        ("RNN output MSE", "mse_rnn"),
        ("JSLDS output MSE", "mse_jslds"),
        ("R_e fixed-point loss", "fp_loss"),
        ("R_a approximation loss", "approx_loss"),
    ]
    lines = [f"{label:<32} {metrics[key]:.4g}" for label, key in rows]
    lines.append(f"{'trials':<32} {metrics['n_trials']}")
    return "\n".join(lines)


def main() -> None:
    warnings.formatwarning = lambda message, *_, **__: f"warning: {message}\n"
    app(prog_name="lfads-jslds")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
