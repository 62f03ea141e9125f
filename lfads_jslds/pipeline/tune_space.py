"""The search space of ``tune``: which ``RunConfig`` floats population-based training
moves, within which bounds, sampled how (``pipelines/configs/pbt_space.yaml``).

A space file is a mapping from dotted ``RunConfig`` keys to ``{low, high, scale, init}``:
``scale`` is ``log`` (log-uniform) or ``linear`` (uniform); ``init``, where given, starts
every member at that value instead of a draw (AutoLFADS starts the learning rate so).
Every key must be a float field of ``RunConfig`` (a mistyped one names its close
matches) and both bounds must be values that field accepts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lfads_jslds import config as config_lib
from lfads_jslds.config import ConfigError
from lfads_jslds.training.run_config import RunConfig

#: Explore: each value is multiplied by one of these (AutoLFADS), then clipped to bounds.
FACTORS = (0.8, 1.2)


@dataclass(frozen=True)
class Dimension:
    """One searched value: ``key`` (dotted ``RunConfig`` field) in ``[low, high]``."""

    key: str
    low: float
    high: float
    log: bool
    init: float | None = None

    def sample(self, rng: np.random.Generator) -> float:
        """A draw, uniform in ``log(value)`` (``log``) or in the value."""
        if self.log:
            return float(math.exp(rng.uniform(math.log(self.low), math.log(self.high))))
        return float(rng.uniform(self.low, self.high))

    def start(self, rng: np.random.Generator) -> float:
        return self.init if self.init is not None else self.sample(rng)

    def explore(self, value: float, rng: np.random.Generator, resample: float) -> float:
        """A new draw with probability ``resample``, else ``value`` times 0.8 or 1.2,
        clipped to the bounds."""
        if rng.random() < resample:
            return self.sample(rng)
        return float(min(self.high, max(self.low, value * FACTORS[rng.integers(2)])))


def apply(cfg: RunConfig, values: dict[str, float], source: str = "search space") -> RunConfig:
    """``cfg`` with the dotted ``values`` set (through the config's own checks)."""
    nested: dict[str, Any] = {}
    for key, value in values.items():
        section, field = key.split(".", 1)
        nested.setdefault(section, {})[field] = float(value)
    return config_lib.update(cfg, nested, source)


def _dimension(key: str, spec: Any, source: str) -> Dimension:
    if key not in config_lib.flat_keys(RunConfig):
        config_lib.update(RunConfig(), {key: None}, source)  # raises, naming close matches
    section, field = key.split(".", 1)
    if not isinstance(getattr(getattr(RunConfig(), section), field), float):
        raise ConfigError(f"{source}: {key} is not a float setting; only floats can be searched")
    if not isinstance(spec, dict) or not {"low", "high"} <= spec.keys():
        raise ConfigError(f"{source}: {key} needs a mapping with low and high, got {spec!r}")
    unknown = set(spec) - {"low", "high", "scale", "init"}
    if unknown:
        raise ConfigError(
            f"{source}: {key}: unknown entries {sorted(unknown)} (low, high, scale, init)"
        )
    scale = spec.get("scale", "linear")
    if scale not in ("log", "linear"):
        raise ConfigError(f"{source}: {key}: scale must be log or linear, got {scale!r}")
    bounds = {k: spec[k] for k in ("low", "high", "init") if spec.get(k) is not None}
    for name, value in bounds.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{source}: {key}: {name} = {value!r} is not a number")
        apply(RunConfig(), {key: value}, f"{source} ({key}.{name})")  # the field's own range
    low, high = float(spec["low"]), float(spec["high"])
    if not low < high:
        raise ConfigError(
            f"{source}: {key}: empty range, low = {low:g} is not below high = {high:g}"
        )
    if scale == "log" and low <= 0:
        raise ConfigError(f"{source}: {key}: a log scale needs low > 0, got {low:g}")
    init = bounds.get("init")
    if init is not None and not low <= init <= high:
        raise ConfigError(f"{source}: {key}: init = {init:g} lies outside [{low:g}, {high:g}]")
    return Dimension(key, low, high, scale == "log", None if init is None else float(init))


def load_space(path: Path) -> tuple[Dimension, ...]:
    """Read and check a space file; ConfigError naming the file and the key."""
    raw = config_lib.load_yaml(Path(path))
    if not raw:
        raise ConfigError(f"{path}: the search space is empty; give at least one key")
    return tuple(_dimension(str(key), spec, str(path)) for key, spec in raw.items())


def to_dict(space: tuple[Dimension, ...]) -> dict[str, dict[str, Any]]:
    """The space as its file writes it (recorded in the search's state)."""
    return {
        d.key: {"low": d.low, "high": d.high, "scale": "log" if d.log else "linear", "init": d.init}
        for d in space
    }


def from_dict(raw: dict[str, dict[str, Any]], source: str) -> tuple[Dimension, ...]:
    return tuple(_dimension(key, spec, source) for key, spec in raw.items())
