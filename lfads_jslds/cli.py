"""The ``lfads-jslds`` command line (also ``python -m lfads_jslds``)."""

from __future__ import annotations

import json
import sys
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
    typer.Option("--set", help="Config override key=value (e.g. optim.lr=0.01); repeatable."),
]


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


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean bad input: reported in one line, exit code 1."""
    from lfads_jslds.config import ConfigError
    from lfads_jslds.data.download import DownloadError
    from lfads_jslds.io.safe_npz import WeightsFileError
    from lfads_jslds.tasks import UnknownTaskError
    from lfads_jslds.training.task_trainer import RunFolderError

    return (
        ConfigError,
        DownloadError,
        WeightsFileError,
        UnknownTaskError,
        RunFolderError,
        FloatingPointError,
    )


def _run(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except _user_errors() as err:
        typer.echo(f"error: {err}", err=True)
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
        from lfads_jslds.training import task_trainer

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
    app(prog_name="lfads-jslds")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
