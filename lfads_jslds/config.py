"""Typed configs: nested dataclasses, YAML files and ``--set key=value`` overrides.

One mechanism for every config in the project: a YAML mapping or a ``--set`` override
is checked against the dataclass fields (unknown keys name their close matches; values
of the wrong type are refused) before any work starts. Every float must be finite (a NaN
learning rate would train to the end and leave NaN weights), and a field annotated
``Annotated[float, Range(...)]`` (``Positive``, ``Rate``, ...) must lie in its range.
``check`` applies the same rules to a config built in Python.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override that does not fit the config's fields."""


class _Loader(yaml.SafeLoader):
    """Safe YAML that also reads ``1e-3`` as a float (YAML 1.2; PyYAML's 1.1 wants ``1.0e-3``)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


@dataclasses.dataclass(frozen=True)
class Range:
    """Where a float setting may lie, attached as ``Annotated[float, Range(...)]``.

    ``low < value < high``; ``low_closed`` / ``high_closed`` admit the end itself.
    """

    low: float = -math.inf
    high: float = math.inf
    low_closed: bool = False
    high_closed: bool = False

    def holds(self, value: float) -> bool:
        above = value >= self.low if self.low_closed else value > self.low
        below = value <= self.high if self.high_closed else value < self.high
        return above and below

    def __str__(self) -> str:
        low = f"{self.low:g} {'<=' if self.low_closed else '<'} " if self.low > -math.inf else ""
        high = f" {'<=' if self.high_closed else '<'} {self.high:g}" if self.high < math.inf else ""
        return f"{low}value{high}"


FINITE = Range()
Positive = Annotated[float, Range(0.0)]
NonNegative = Annotated[float, Range(0.0, low_closed=True)]
#: Rates of dropout-like masks: 0 (off) up to, not including, 1 (everything masked).
Rate = Annotated[float, Range(0.0, 1.0, low_closed=True)]
#: Fractions that must leave something on both sides.
Fraction = Annotated[float, Range(0.0, 1.0)]
#: Per-step or per-epoch decay factors: 1 keeps the value, 0 would zero it.
Decay = Annotated[float, Range(0.0, 1.0, high_closed=True)]


def flat_keys(cls: type) -> list[str]:
    """All dotted field names of a (nested) config dataclass."""
    keys = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        sub = hints[f.name]
        if dataclasses.is_dataclass(sub):
            keys += [f"{f.name}.{k}" for k in flat_keys(sub)]
        else:
            keys.append(f.name)
    return keys


def _unknown_key(key: str, cls: type, source: str) -> ConfigError:
    close = difflib.get_close_matches(key, flat_keys(cls), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return ConfigError(f"{source}: unknown config key {key!r}{hint}")


def _coerce(value: Any, hint: Any, key: str, source: str, allowed: Range = FINITE) -> Any:
    """Check ``value`` against the annotation ``hint``; ints are accepted for floats.

    Floats must be finite and lie in ``allowed``, the ``Range`` an ``Annotated`` hint carries.
    """
    origin = typing.get_origin(hint)
    if origin is typing.Annotated:
        inner, *extras = typing.get_args(hint)
        ranges = [r for r in extras if isinstance(r, Range)]
        return _coerce(value, inner, key, source, ranges[0] if ranges else allowed)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key, source, allowed)
            except ConfigError:
                if float in (option, *typing.get_args(option)) and isinstance(value, int | float):
                    raise  # a number out of range: say so, not "is not a float | None"
        raise ConfigError(f"{source}: {key} = {value!r} is not a {hint}")
    if origin is typing.Literal:
        if value not in typing.get_args(hint):
            raise ConfigError(
                f"{source}: {key} must be one of {typing.get_args(hint)}, got {value!r}"
            )
        return value
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{source}: {key} must be a list, got {value!r}")
        (item,) = typing.get_args(hint)[:1]
        return tuple(_coerce(v, item, f"{key}[]", source) for v in value)
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        if not (math.isfinite(value) and allowed.holds(value)):
            what = "is out of range" if math.isfinite(value) else "is not a finite number"
            fix = "a finite number" if allowed == FINITE else f"a value with {allowed}"
            raise ConfigError(f"{source}: {key} = {value!r} {what}; give {fix}")
        return float(value)
    if hint in (int, str, bool) and type(value) is hint:
        return value
    raise ConfigError(
        f"{source}: {key} must be of type {getattr(hint, '__name__', hint)}, got {value!r}"
    )


def update(cfg: T, values: dict[str, Any], source: str = "config", prefix: str = "") -> T:
    """Return ``cfg`` with the (nested) mapping ``values`` applied, every key checked."""
    if not isinstance(values, dict):
        raise ConfigError(
            f"{source}: expected a mapping at {prefix or 'top level'}, got {values!r}"
        )
    hints = typing.get_type_hints(type(cfg), include_extras=True)
    names = {f.name for f in dataclasses.fields(cfg)}
    changes = {}
    root = type(cfg)
    for key, value in values.items():
        dotted = f"{prefix}{key}"
        if key not in names:
            raise (
                _unknown_key(dotted, root, source)
                if not prefix
                else ConfigError(
                    f"{source}: unknown config key {dotted!r}; {prefix[:-1]} has "
                    f"{', '.join(sorted(names))}"
                )
            )
        current = getattr(cfg, key)
        if dataclasses.is_dataclass(current):
            changes[key] = update(current, value, source, f"{dotted}.")
        else:
            changes[key] = _coerce(value, hints[key], dotted, source)
    return dataclasses.replace(cfg, **changes)


def check(cfg: Any, source: str = "config", prefix: str = "") -> None:
    """Apply the rules a file's values meet (types, finite floats, ranges) to ``cfg`` as it
    stands, e.g. one built in Python; ConfigError naming ``source`` and the dotted key."""
    hints = typing.get_type_hints(type(cfg), include_extras=True)
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            check(value, source, f"{prefix}{f.name}.")
        else:
            _coerce(value, hints[f.name], f"{prefix}{f.name}", source)


def parse_overrides(overrides: list[str], cls: type) -> dict[str, Any]:
    """``["optim.lr=0.01", "model.n_hidden=64"]`` -> nested mapping (values parsed as YAML)."""
    nested: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected key=value")
        if key not in flat_keys(cls):
            raise _unknown_key(key, cls, "--set")
        try:
            value = yaml.load(raw, Loader=_Loader) if raw.strip() else None
        except yaml.YAMLError as err:
            raise ConfigError(f"--set {item!r}: value is not valid YAML ({_brief(err)})") from err
        node = nested
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return nested


def _brief(err: Exception) -> str:
    """One line for a YAML error: the problem and where (PyYAML's own text spans lines)."""
    mark, problem = getattr(err, "problem_mark", None), getattr(err, "problem", None)
    if mark is None or problem is None:
        return " ".join(str(err).split())
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}"


def load_yaml(path: Path) -> dict[str, Any]:
    """Read a YAML mapping, naming the file in any error."""
    try:
        data = yaml.load(Path(path).read_text(), Loader=_Loader)
    except FileNotFoundError as err:
        raise ConfigError(f"config file {path} does not exist") from err
    except OSError as err:
        raise ConfigError(f"config file {path} cannot be read: {err}") from err
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ConfigError(f"config file {path} is not valid YAML: {_brief(err)}") from err
    if data is None:  # empty, or comments only
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping, got {type(data).__name__}")
    return data


def resolve(cfg: T, config_file: Path | None = None, overrides: list[str] | None = None) -> T:
    """Defaults, then the YAML file, then ``--set`` overrides (later wins)."""
    if config_file is not None:
        cfg = update(cfg, load_yaml(config_file), source=str(config_file))
    if overrides:
        cfg = update(cfg, parse_overrides(overrides, type(cfg)), source="--set")
    return cfg


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain mapping (tuples as lists) for YAML/JSON output."""

    def plain(v: Any) -> Any:
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(cfg))


def dump_yaml(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
