"""Typed configs: ``--set`` parsing, YAML values checked against fields, resolve order."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

import pytest
import yaml

from lfads_jslds import config as C
from lfads_jslds.config import ConfigError
from lfads_jslds.tasks import TASKS, ModelConfig, OptimConfig, TaskTrainConfig, default_config

# --- parse_overrides ---------------------------------------------------------------------


def test_flat_keys():
    keys = C.flat_keys(TaskTrainConfig)
    assert {"task", "model.n_hidden", "model.u_star_keep", "loss.l2", "optim.lr"} <= set(keys)
    assert "model" not in keys and "optim" not in keys


def test_parse_overrides_nested_mapping():
    nested = C.parse_overrides(
        [
            "optim.lr=0.01",
            "model.n_hidden=64",
            "model.u_star_keep=[2, 3]",
            "task=context",
            "optim.lr = 0.5",  # spaces around '=' allowed; later wins
        ],
        TaskTrainConfig,
    )
    assert nested == {
        "optim": {"lr": 0.5},
        "model": {"n_hidden": 64, "u_star_keep": [2, 3]},
        "task": "context",
    }


@pytest.mark.parametrize(
    ("raw", "value"),
    [("1e-3", 0.001), ("-2E5", -2e5), ("1.5e-3", 1.5e-3), (".5", 0.5), ("2", 2), ("abc", "abc")],
)
def test_override_values_are_yaml(raw, value):
    nested = C.parse_overrides([f"optim.lr={raw}"], TaskTrainConfig)
    assert nested["optim"]["lr"] == value
    assert type(nested["optim"]["lr"]) is type(value)


def test_override_value_keeps_equals_sign():
    assert C.parse_overrides(["task=a=b"], TaskTrainConfig) == {"task": "a=b"}


@pytest.mark.parametrize("item", ["optim.lr", "=3", " =3"])
def test_override_needs_key_and_value(item):
    with pytest.raises(ConfigError, match="key=value"):
        C.parse_overrides([item], TaskTrainConfig)


def test_override_unknown_key_names_close_match():
    with pytest.raises(ConfigError) as err:
        C.parse_overrides(["optim.lrr=0.1"], TaskTrainConfig)
    assert "--set" in str(err.value) and "'optim.lrr'" in str(err.value)
    assert "did you mean 'optim.lr'" in str(err.value)


def test_override_unknown_key_without_close_match():
    with pytest.raises(ConfigError) as err:
        C.parse_overrides(["zzzzzz=1"], TaskTrainConfig)
    assert "'zzzzzz'" in str(err.value) and "did you mean" not in str(err.value)


def test_override_section_is_not_a_key():
    with pytest.raises(ConfigError, match="unknown config key 'optim'"):
        C.parse_overrides(["optim=3"], TaskTrainConfig)


def test_override_invalid_yaml_is_one_line():
    with pytest.raises(ConfigError) as err:
        C.parse_overrides(["model.u_star_keep=[2, 3"], TaskTrainConfig)
    message = str(err.value)
    assert "model.u_star_keep" in message and "not valid YAML" in message
    assert "\n" not in message


# --- update: values checked against the fields' types ------------------------------------


def test_update_nested_and_immutable():
    cfg = TaskTrainConfig()
    new = C.update(cfg, {"model": {"n_hidden": 8}, "optim": {"lr": 0.1}})
    assert new.model.n_hidden == 8 and new.optim.lr == 0.1
    assert new.model.cell == cfg.model.cell and new.loss == cfg.loss
    assert cfg == TaskTrainConfig()  # the input is not changed


def test_lists_become_tuples():
    cfg = C.update(TaskTrainConfig(), {"model": {"u_star_keep": [2, 3]}})
    assert cfg.model.u_star_keep == (2, 3)
    assert C.update(TaskTrainConfig(), {"model": {"u_star_keep": []}}).model.u_star_keep == ()


@pytest.mark.parametrize("value", [2, "2, 3", [2, "a"], [2, 3.5], {"a": 1}])
def test_tuple_field_refuses(value):
    with pytest.raises(ConfigError, match="model.u_star_keep"):
        C.update(TaskTrainConfig(), {"model": {"u_star_keep": value}})


def test_ints_accepted_for_floats():
    cfg = C.update(TaskTrainConfig(), {"optim": {"lr": 1, "clip_norm": 5}})
    assert cfg.optim.lr == 1.0 and type(cfg.optim.lr) is float
    assert type(cfg.optim.clip_norm) is float


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("optim.steps", 3.5),  # float for int
        ("optim.steps", 3.0),
        ("optim.steps", True),  # bool is not an int here
        ("optim.steps", "abc"),
        ("optim.steps", None),
        ("optim.lr", True),  # bool is not a float either
        ("optim.lr", "abc"),
        ("optim.lr", None),
        ("optim.lr", [0.1]),
        ("model.u_star_learned", 1),  # int for bool
        ("model.u_star_learned", "maybe"),
        ("task", 3),
    ],
)
def test_wrong_type_refused(key, value):
    section, _, leaf = key.rpartition(".")
    values = {section: {leaf: value}} if section else {leaf: value}
    with pytest.raises(ConfigError) as err:
        C.update(TaskTrainConfig(), values, source="run.yaml")
    assert str(err.value).startswith("run.yaml: ") and key in str(err.value)


@pytest.mark.parametrize(("raw", "value"), [("true", True), ("false", False), ("yes", True)])
def test_bools_follow_yaml(raw, value):
    # PyYAML reads YAML 1.1, where yes/no/on/off are booleans too.
    cfg = C.resolve(TaskTrainConfig(), overrides=[f"model.u_star_learned={raw}"])
    assert cfg.model.u_star_learned is value


def test_quoted_bool_refused():
    with pytest.raises(ConfigError, match="model.u_star_learned"):
        C.resolve(TaskTrainConfig(), overrides=["model.u_star_learned='true'"])


def test_wrong_type_from_override_message():
    with pytest.raises(ConfigError) as err:
        C.resolve(TaskTrainConfig(), overrides=["optim.steps=abc"])
    assert str(err.value) == "--set: optim.steps must be of type int, got 'abc'"


def test_unknown_top_level_key_names_close_match():
    with pytest.raises(ConfigError) as err:
        C.update(TaskTrainConfig(), {"modle": {"n_hidden": 8}}, source="my.yaml")
    assert "my.yaml" in str(err.value) and "'modle'" in str(err.value)
    assert "'model." in str(err.value)


def test_unknown_nested_key_message():
    with pytest.raises(ConfigError) as err:
        C.update(TaskTrainConfig(), {"optim": {"lrr": 0.1}}, source="my.yaml")
    message = str(err.value)
    assert message.startswith("my.yaml: unknown config key 'optim.lrr'")
    assert "lr_decay" in message and ", lr," in message  # the section's fields


def test_section_must_be_a_mapping():
    with pytest.raises(ConfigError, match="expected a mapping at model"):
        C.update(TaskTrainConfig(), {"model": 3})
    with pytest.raises(ConfigError, match="top level"):
        C.update(TaskTrainConfig(), [1, 2])  # type: ignore[arg-type]


# Literal and Optional/Union fields (no task config uses them yet; the checker supports them).


@dataclass(frozen=True)
class _Inner:
    mode: Literal["fast", "slow"] = "fast"
    limit: int | None = None


@dataclass(frozen=True)
class _Outer:
    scale: float | None = 1.0
    name: str | int = "x"
    inner: _Inner = field(default_factory=_Inner)


def test_literal_field():
    assert C.update(_Outer(), {"inner": {"mode": "slow"}}).inner.mode == "slow"
    with pytest.raises(ConfigError) as err:
        C.update(_Outer(), {"inner": {"mode": "medium"}})
    assert "inner.mode" in str(err.value) and "'fast', 'slow'" in str(err.value)


def test_optional_and_union_fields():
    cfg = C.update(_Outer(), {"scale": None, "inner": {"limit": 5}})
    assert cfg.scale is None and cfg.inner.limit == 5
    assert C.update(cfg, {"inner": {"limit": None}}).inner.limit is None
    scaled = C.update(_Outer(), {"scale": 2})
    assert scaled.scale == 2.0 and type(scaled.scale) is float
    assert C.update(_Outer(), {"name": 3}).name == 3
    with pytest.raises(ConfigError, match="inner.limit"):
        C.update(_Outer(), {"inner": {"limit": "many"}})
    with pytest.raises(ConfigError, match="name"):
        C.update(_Outer(), {"name": [1]})
    assert C.flat_keys(_Outer) == ["scale", "name", "inner.mode", "inner.limit"]


# --- files and resolve order --------------------------------------------------------------


def test_resolve_order(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("optim:\n  lr: 0.5\n  steps: 10\nmodel:\n  n_hidden: 16\n")
    defaults = default_config("context")
    cfg = C.resolve(defaults, path, ["optim.lr=1e-3", "model.cell=gru"])
    assert cfg.optim.lr == 1e-3  # --set beats the file
    assert cfg.optim.steps == 10 and cfg.model.n_hidden == 16  # the file beats the defaults
    assert cfg.model.cell == "gru"
    assert cfg.model.u_star_keep == (2, 3) and cfg.loss.l2 == 1e-5  # defaults kept
    assert cfg.task == "context"
    assert C.resolve(defaults) == defaults
    assert defaults == TASKS["context"].defaults  # nothing mutated


def test_empty_file_changes_nothing(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("# only a comment\n")
    assert C.resolve(TaskTrainConfig(), path) == TaskTrainConfig()


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("optim: {lr: [1, 2\n", "not valid YAML"),
        ("a: b: c\n", "not valid YAML"),
        ("- 1\n- 2\n", "must hold a mapping"),
        ("optim:\n  lrr: 0.1\n", "'optim.lrr'"),
        ("modle: {}\n", "'modle'"),
        ("optim:\n  steps: abc\n", "optim.steps"),
    ],
)
def test_bad_file_names_the_file(tmp_path, text, needle):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        C.resolve(TaskTrainConfig(), path)
    message = str(err.value)
    assert str(path) in message and needle in message
    assert "\n" not in message


def test_bad_file_bytes(tmp_path):
    path = tmp_path / "bin.yaml"
    path.write_bytes(b"optim: \xff\xfe\n")
    with pytest.raises(ConfigError, match="bin.yaml"):
        C.load_yaml(path)


def test_missing_file_or_folder(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        C.load_yaml(tmp_path / "none.yaml")
    with pytest.raises(ConfigError, match=str(tmp_path)):
        C.load_yaml(tmp_path)


# --- dump_yaml round trip -----------------------------------------------------------------


@pytest.mark.parametrize(
    "cfg",
    [
        TaskTrainConfig(),
        TASKS["flipflop"].defaults,
        TASKS["context"].defaults,
        TaskTrainConfig(
            task="context",
            model=ModelConfig(cell="tanh", n_hidden=7, u_star_keep=(0, 3), u_star_learned=True),
            optim=OptimConfig(lr=1e-7, lr_decay=1.0, steps=1, adam_eps=1e-30),
        ),
    ],
    ids=["default", "flipflop", "context", "custom"],
)
def test_dump_yaml_round_trip(cfg, tmp_path):
    text = C.dump_yaml(cfg)
    assert C.update(TaskTrainConfig(), yaml.safe_load(text)) == cfg
    path = tmp_path / "config.yaml"
    path.write_text(text)
    assert C.resolve(TaskTrainConfig(), path) == cfg


def test_to_dict_is_plain():
    cfg = TASKS["context"].defaults
    plain = C.to_dict(cfg)
    assert plain["model"]["u_star_keep"] == [2, 3]
    assert plain == yaml.safe_load(C.dump_yaml(cfg))
    assert list(plain) == [f.name for f in dataclasses.fields(TaskTrainConfig)]
