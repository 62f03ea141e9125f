"""The ``tune`` stage: population-based training (PBT) as AutoLFADS does it, on Ray.

A search folder ``DIR`` holds ``tune.json`` (the search's settings, every member's
hyperparameters, how far it got), ``members/<id>/`` (each member an ordinary run folder),
``results.csv`` (member, generation, epoch, score, hyperparameters), ``figures/``,
``jax_cache/`` (compiled steps the members share) and, at the end, ``best/``: a copy of the
winning member's folder, on which ``infer``, ``evaluate`` and ``analyze`` work as on any
run.

Generation ``g`` trains every member, each a Ray task, up to epoch ``burn_in + g·interval``
(``training.lfads.train`` resuming from the member's own latest checkpoint: exact). The
score is the member's smoothed sample-validation NLL at that epoch (``log.csv`` column
``val_nll_sv_smoothed``), lower better. Between generations the exploit: the bottom
``quantile`` of the members (truncation selection, at least one) each take a random member
of the top ``quantile``'s latest checkpoint, weights *and* optimiser state (and its
progress: epoch, step, smoothed score; and its early-stopping weights), copied into the
loser's folder, and the winner's hyperparameters explored (``tune_space.Dimension.explore``).
The loser's ``config.yaml`` is rewritten with them: the members are this command's own
folders, so their configs change between intervals as a plain ``train --resume`` would
refuse. Every member keeps ``train.seed``: the same sample-validation entries, so the
scores compare, and no early stopping (``train.patience`` raised past the last epoch).

``tune.json`` is written atomically after each step; a search killed at any point resumes
with ``resume=True``: an interrupted generation continues from each member's latest
checkpoint, an interrupted exploit is replayed from its recorded plan.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import shutil
import socket
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from lfads_jslds import config as config_lib
from lfads_jslds.config import ConfigError
from lfads_jslds.io import atomic
from lfads_jslds.pipeline import tune_space
from lfads_jslds.pipeline.run import RunFolder, RunFolderError
from lfads_jslds.pipeline.train import prepare_run
from lfads_jslds.pipeline.tune_space import Dimension
from lfads_jslds.training import lfads as lfads_training
from lfads_jslds.training.run_config import RunConfig, validate

STATE = "tune.json"
MEMBERS = "members"
RESULTS = "results.csv"
FIGURES = "figures"
BEST = "best"
JAX_CACHE = "jax_cache"
#: Members' folder names (sorted as numbered).
MEMBER_NAME = "m{:02d}"
#: Seconds an ``--address`` gets to answer before the search is refused.
CONNECT_TIMEOUT_S = 3.0
INSTALL = "pip install 'lfads-jslds[tune]'"


@dataclass(frozen=True)
class TuneOptions:
    """The search's shape. Epochs count passes over the training trials."""

    members: int = 8
    generations: int = 20
    interval: int = 25  # epochs between exploits
    burn_in: int = 0  # epochs before the first interval counts
    quantile: float = 0.25  # bottom fraction replaced by the top fraction's members
    resample: float = 0.25  # probability that explore redraws a value instead of scaling it
    cpus_per_member: float = 1.0
    gpus_per_member: float = 0.0
    seed: int = 0  # initial draws and exploit choices

    def epoch_at(self, generation: int) -> int:
        """The epoch generation ``generation`` (from 1) trains to."""
        return self.burn_in + generation * self.interval

    def check(self) -> None:
        bad = []
        if self.members < 2:
            bad.append(f"--members {self.members} (PBT needs at least 2)")
        for name in ("generations", "interval"):
            if getattr(self, name) < 1:
                bad.append(f"--{name} {getattr(self, name)} (needs at least 1)")
        if self.burn_in < 0:
            bad.append(f"--burn-in {self.burn_in} (needs at least 0)")
        if not 0 < self.quantile <= 0.5:
            bad.append(f"quantile {self.quantile} (needs 0 < quantile <= 0.5)")
        if not 0 <= self.resample <= 1:
            bad.append(f"resample {self.resample} (needs 0 <= resample <= 1)")
        if not self.cpus_per_member > 0 or not self.gpus_per_member >= 0:
            bad.append("--cpus-per-member must be > 0 and --gpus-per-member >= 0")
        if bad:
            raise ConfigError(f"tune: {'; '.join(bad)}")


def require_ray() -> Any:
    """The ``ray`` module, or a one-line error saying which extra installs it."""
    try:
        import ray
    except ImportError:
        raise ConfigError(f"`tune` needs Ray, which is not installed: {INSTALL}") from None
    return ray


def check_address(address: str | None) -> None:
    """Refuse an ``--address`` nothing answers at within ``CONNECT_TIMEOUT_S`` seconds
    (``ray.init`` itself would wait for minutes). ``auto`` is left to Ray."""
    if address is None or address == "auto":
        return
    hostport = address.removeprefix("ray://")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"--address {address!r}: expected HOST:PORT (e.g. 10.0.0.5:6379)")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as err:
        raise ConfigError(
            f"--address {address}: no Ray cluster answers there ({err}); start one with "
            "`ray start --head`, or leave --address out to run on this machine"
        ) from None


# --------------------------------------------------------------------------- the state


def _state_path(out: Path) -> Path:
    return out / STATE


def _save(out: Path, state: dict[str, Any]) -> None:
    atomic.write_text(_state_path(out), json.dumps(state, indent=1))


def _load(out: Path) -> dict[str, Any]:
    path = _state_path(out)
    if not path.exists():
        raise RunFolderError(
            f"{out} has no {STATE}: not a search made by `tune` (or one killed while its "
            "members were being made: remove it and start again); nothing to resume"
        )
    return json.loads(path.read_text())


def _member_config(state: dict[str, Any], member: str, epochs: int) -> RunConfig:
    """The member's config: the search's base, its hyperparameters, trained to ``epochs``."""
    base = config_lib.update(RunConfig(), state["config"], STATE)
    cfg = tune_space.apply(base, state["members"][member])
    t = replace(cfg.train, max_epochs=epochs, patience=max(cfg.train.patience, epochs))
    return replace(cfg, train=t)


def _write_config(out: Path, state: dict[str, Any], member: str, epochs: int) -> None:
    run = RunFolder(out / MEMBERS / member)
    cfg = _member_config(state, member, epochs)
    atomic.write_text(run / run.CONFIG, config_lib.dump_yaml(cfg))


# --------------------------------------------------------------------------- set-up


def start_search(
    out: Path, cfg: RunConfig, data: Path, space: tuple[Dimension, ...], opts: TuneOptions
) -> dict[str, Any]:
    """Make the search folder: members/<id> as run folders (the first through
    ``prepare_run``, the others copies of its config and data files), then ``tune.json``."""
    rng = np.random.default_rng([opts.seed, 0])
    names = [MEMBER_NAME.format(i) for i in range(opts.members)]
    first = out / MEMBERS / names[0]
    prepare_run(first, cfg, data, resume=False)
    resolved = RunFolder(first).config  # bin width as resolved from the data
    state = {
        "data": str(Path(data).resolve()),
        "options": asdict(opts),
        "space": tune_space.to_dict(space),
        "config": config_lib.to_dict(resolved),
        "members": {m: {d.key: d.start(rng) for d in space} for m in names},
        "done": 0,  # generations trained
        "exploited": 0,  # generations whose exploit was applied
        "plan": None,  # an exploit recorded but not yet applied
        "rows": [],  # results.csv
    }
    for name in names[1:]:
        folder = out / MEMBERS / name
        folder.mkdir(parents=True)
        for f in (RunFolder.DATA_INFO, RunFolder.DATA_FILE):
            if (first / f).exists():
                shutil.copy2(first / f, folder / f)
    for name in names:
        _write_config(out, state, name, opts.epoch_at(1))
    _save(out, state)
    return state


def check_new(
    out: Path, cfg: RunConfig, data: Path, space: tuple[Dimension, ...], opts: TuneOptions
) -> None:
    """A new search's checks, before anything is written; one-line errors."""
    opts.check()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise RunFolderError(
            f"search folder {out} already exists; pass --resume to continue it, or choose "
            "a new --out"
        )
    validate(cfg)
    for d in space:  # both bounds and the start value make valid configs
        for v in (d.low, d.high, d.init):
            if v is not None:
                validate(tune_space.apply(cfg, {d.key: v}))
    if not Path(data).exists():
        raise ConfigError(f"data file {data} does not exist")


def check_resume(out: Path, data: Path | None, changes: dict[str, Any]) -> dict[str, Any]:
    """A resumed search's state with ``changes`` (generations, resources) applied, checked."""
    state = _load(out)
    if data is not None and str(Path(data).resolve()) != state["data"]:
        raise ConfigError(
            f"{out / STATE}: this search trains on {state['data']}, not {data}; give that file"
        )
    state["options"] |= {k: v for k, v in changes.items() if v is not None}
    TuneOptions(**state["options"]).check()
    return state


# --------------------------------------------------------------------------- one member


def train_interval(path: str) -> float:
    """Train one member (a run folder) to its config's ``train.max_epochs``, resuming from
    its latest checkpoint; returns its score (inf if it diverged). Runs in a Ray worker."""
    run = RunFolder.open(path)
    try:
        summary = lfads_training.train(run.config, run.train_files, run.data, True, False)
    except FloatingPointError:
        return math.inf
    atomic.write_json(run / run.SUMMARY, summary)
    return score(run)


def score(run: RunFolder) -> float:
    """The last smoothed sample-validation NLL in ``log.csv`` (inf if none or not finite)."""
    with open(run / run.LOG, newline="") as f:
        rows = list(csv.DictReader(f))
    value = float(rows[-1]["val_nll_sv_smoothed"]) if rows else math.nan
    return value if math.isfinite(value) else math.inf


# --------------------------------------------------------------------------- exploit


def plan_exploit(state: dict[str, Any], generation: int) -> list[dict[str, Any]]:
    """Truncation selection on generation ``generation``'s scores: each of the bottom
    ``quantile`` takes a random top-``quantile`` member's state and explored values."""
    opts = TuneOptions(**state["options"])
    space = tune_space.from_dict(state["space"], STATE)
    scores = {r["member"]: r["score"] for r in state["rows"] if r["generation"] == generation}
    order = sorted(scores, key=lambda m: (scores[m], m))
    n = max(1, int(opts.quantile * len(order)))
    rng = np.random.default_rng([opts.seed, generation])
    moves = []
    for loser in order[-n:]:
        winner = order[int(rng.integers(n))]
        values = state["members"][winner]
        new = {d.key: d.explore(values[d.key], rng, opts.resample) for d in space}
        moves.append({"loser": loser, "winner": winner, "values": new})
    return moves


def copy_state(winner: Path, loser: Path) -> None:
    """The winner's latest checkpoints (weights, optimiser state, progress) and its
    early-stopping weights replace the loser's. Repeatable: a killed copy is redone."""
    for name in (RunFolder.CHECKPOINTS, RunFolder.BEST):
        tmp = loser / f"{name}.exploit"
        shutil.rmtree(tmp, ignore_errors=True)
        if (winner / name).exists():
            shutil.copytree(winner / name, tmp)
        shutil.rmtree(loser / name, ignore_errors=True)
        if tmp.exists():
            tmp.rename(loser / name)


def exploit(out: Path, state: dict[str, Any], generation: int) -> None:
    """Record the plan, apply it (copies, new configs), then mark it applied."""
    if state["plan"] is None:
        state["plan"] = {"generation": generation, "moves": plan_exploit(state, generation)}
        _save(out, state)
    opts = TuneOptions(**state["options"])
    for move in state["plan"]["moves"]:
        copy_state(out / MEMBERS / move["winner"], out / MEMBERS / move["loser"])
        state["members"][move["loser"]] = move["values"]
        _write_config(out, state, move["loser"], opts.epoch_at(generation + 1))
    state["exploits"] = [*state.get("exploits", []), state["plan"]]
    state["plan"], state["exploited"] = None, generation
    _save(out, state)


# --------------------------------------------------------------------------- outputs


def write_results(out: Path, state: dict[str, Any]) -> None:
    keys = list(state["space"])
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["member", "generation", "epoch", "score", "copied_from", *keys])
    for r in state["rows"]:
        cells = [r["member"], r["generation"], r["epoch"], f"{r['score']:.6g}", r["copied_from"]]
        writer.writerow(cells + [f"{r['values'][k]:.6g}" for k in keys])
    atomic.write_text(out / RESULTS, buf.getvalue())


def write_figures(out: Path, state: dict[str, Any]) -> list[Path]:
    """``figures/scores.png`` (each member's smoothed validation NLL over epochs, from its
    log) and ``figures/hyperparameters.png`` (each searched value over epochs)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    (out / FIGURES).mkdir(exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 4))
    for member in state["members"]:
        with open(out / MEMBERS / member / RunFolder.LOG, newline="") as f:
            rows = [r for r in csv.DictReader(f) if r["val_nll_sv_smoothed"] not in ("", "nan")]
        epochs = [int(r["epoch"]) for r in rows]
        ax.plot(epochs, [float(r["val_nll_sv_smoothed"]) for r in rows], label=member)
    ax.set(xlabel="epoch", ylabel="smoothed sample-validation NLL per trial", title="members")
    ax.legend(fontsize=7, ncol=2)
    paths = [out / FIGURES / "scores.png", out / FIGURES / "hyperparameters.png"]
    fig.savefig(paths[0], dpi=100, bbox_inches="tight")
    plt.close(fig)
    keys = list(state["space"])
    fig, axes = plt.subplots(len(keys), 1, figsize=(7, 1.8 * len(keys)), sharex=True, squeeze=False)
    for ax, key in zip(axes[:, 0], keys, strict=True):
        for member in state["members"]:
            rows = [r for r in state["rows"] if r["member"] == member]
            starts = [r["epoch"] - state["options"]["interval"] for r in rows]  # held from
            values = [r["values"][key] for r in rows]
            ax.step([*starts, rows[-1]["epoch"]], [*values, values[-1]], where="post")
        ax.set_ylabel(key, fontsize=8)
        ax.set_yscale("log" if state["space"][key]["scale"] == "log" else "linear")
    axes[0, 0].legend(list(state["members"]), fontsize=7, ncol=4)
    axes[-1, 0].set_xlabel("epoch")
    fig.savefig(paths[1], dpi=100, bbox_inches="tight")
    plt.close(fig)
    return paths


def export_best(out: Path, state: dict[str, Any]) -> tuple[str, float]:
    """Copy the member with the best score in the last generation to ``DIR/best``."""
    last = max(r["generation"] for r in state["rows"])
    rows = [r for r in state["rows"] if r["generation"] == last]
    best = min(rows, key=lambda r: (r["score"], r["member"]))
    tmp = out / f"{BEST}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(out / MEMBERS / best["member"], tmp)
    shutil.rmtree(out / BEST, ignore_errors=True)
    tmp.rename(out / BEST)
    return best["member"], best["score"]


# --------------------------------------------------------------------------- the search


def _train_generation(ray: Any, out: Path, opts: TuneOptions, members: list[str]) -> list[float]:
    """Every member trained through one interval, each a Ray task; their scores.

    The members share JAX's persistent compilation cache (``DIR/jax_cache``, or
    ``$JAX_COMPILATION_CACHE_DIR``): the searched values are constants of the compiled
    step, so a member whose values did not change since its last interval reads its step
    from there instead of compiling it again (tens of seconds on a CPU). On a GPU, JAX
    allocates as it goes (not 75 % up front), so members can share one.
    """
    cache = os.environ.get("JAX_COMPILATION_CACHE_DIR") or str((out / JAX_CACHE).resolve())
    env = {"JAX_COMPILATION_CACHE_DIR": cache}
    if opts.gpus_per_member > 0:
        env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
    task = ray.remote(train_interval).options(
        num_cpus=opts.cpus_per_member,
        num_gpus=opts.gpus_per_member,
        max_retries=0,
        runtime_env={"env_vars": env},
    )
    refs = [task.remote(str((out / MEMBERS / m).resolve())) for m in members]
    return [float(s) for s in ray.get(refs)]


def _generation(ray: Any, out: Path, state: dict[str, Any], g: int) -> str:
    """Exploit after generation ``g − 1`` if not yet done, then train generation ``g``;
    records its rows and returns the progress line."""
    opts = TuneOptions(**state["options"])
    if g > 1 and state["exploited"] < g - 1:
        exploit(out, state, g - 1)
    members = list(state["members"])
    for member in members:  # more epochs; an exploited member's new hyperparameters
        _write_config(out, state, member, opts.epoch_at(g))
    scores = _train_generation(ray, out, opts, members)
    moves = [p["moves"] for p in state.get("exploits", []) if p["generation"] == g - 1]
    copied = {m["loser"]: m["winner"] for m in (moves[0] if moves else [])}
    for member, s in zip(members, scores, strict=True):
        row = {"member": member, "generation": g, "epoch": opts.epoch_at(g), "score": s}
        row |= {"copied_from": copied.get(member, ""), "values": state["members"][member]}
        state["rows"].append(row)
    state["done"] = g
    _save(out, state)
    write_results(out, state)
    best = min(range(len(members)), key=lambda i: (scores[i], members[i]))
    ever = min(state["rows"], key=lambda r: (r["score"], r["generation"], r["member"]))
    alive = sum(math.isfinite(s) for s in scores)
    return (
        f"generation {g}/{opts.generations} (epoch {opts.epoch_at(g)}): best "
        f"{scores[best]:.5g} ({members[best]}), best so far {ever['score']:.5g} "
        f"({ever['member']}, generation {ever['generation']}), {alive}/{len(members)} "
        "members alive"
    )


@contextlib.contextmanager
def ray_session(address: str | None, local_cpus: int | None) -> Iterator[Any]:
    """Ray joined at ``address`` or started here with ``local_cpus`` CPUs (None: all),
    shut down on leaving. A cluster that refuses the join (wrong address, an
    authentication token this machine lacks) is a one-line error."""
    ray = require_ray()
    common = {"include_dashboard": False, "log_to_driver": False, "logging_level": "ERROR"}
    try:
        if address is not None:
            ray.init(address=address, **common)
        else:
            ray.init(num_cpus=local_cpus, **common)
    except ConnectionError as err:
        cause = " ".join(str(err.__cause__ or err).split())[:300]
        raise ConfigError(f"--address {address}: could not join the Ray cluster: {cause}") from None
    try:
        yield ray
    finally:
        ray.shutdown()


def tune_run(
    out: Path,
    cfg: RunConfig,
    data: Path,
    space: tuple[Dimension, ...],
    opts: TuneOptions,
    address: str | None = None,
    local_cpus: int | None = None,
    say: Callable[[str], Any] = print,
) -> dict[str, Any]:
    """Run a new search into ``out``; returns the winner (``search``). Ray is joined before
    anything is written: a refused join leaves no folder behind."""
    out = Path(out)
    check_new(out, cfg, data, space, opts)
    require_ray()
    check_address(address)
    with ray_session(address, local_cpus) as ray:
        existed = out.exists()
        try:
            state = start_search(out, cfg, data, space, opts)
        except Exception:  # e.g. a damaged data file: nothing of the search stays behind
            shutil.rmtree(out / MEMBERS, ignore_errors=True)
            if not existed:
                shutil.rmtree(out, ignore_errors=True)
            raise
        search(ray, out, state, say)
    return finish(out, state)


def resume_run(
    out: Path,
    data: Path | None = None,
    changes: dict[str, Any] | None = None,
    address: str | None = None,
    local_cpus: int | None = None,
    say: Callable[[str], Any] = print,
) -> dict[str, Any]:
    """Continue a killed (or finished) search: its config, space and shape come from
    ``tune.json``; ``changes`` may raise ``generations`` or set ``cpus_per_member`` /
    ``gpus_per_member``. At most the interrupted interval is redone."""
    out = Path(out)
    state = check_resume(out, data, changes or {})
    require_ray()
    check_address(address)
    with ray_session(address, local_cpus) as ray:
        _save(out, state)
        search(ray, out, state, say)
    return finish(out, state)


def search(ray: Any, out: Path, state: dict[str, Any], say: Callable[[str], Any]) -> None:
    """The generations left, on the Ray ``ray`` is connected to (on a cluster every node
    must see ``out`` at the same path, e.g. a shared file system). ``say`` prints one line
    per generation."""
    for g in range(state["done"] + 1, state["options"]["generations"] + 1):
        say(_generation(ray, out, state, g))


def finish(out: Path, state: dict[str, Any]) -> dict[str, Any]:
    """Figures and ``best/``; the winner."""
    figures = write_figures(out, state)
    member, best = export_best(out, state)
    return {"best_member": member, "best_score": best, "best": out / BEST, "figures": figures}
