"""The config schema is the one source of every setting: each one reaches a training run
from every front end (a flag, a --config key, params.yaml, a tune space), under one name."""

from __future__ import annotations

import pytest
import yaml
from conftest import REPO

from skrd4ad.config import SETTINGS, Config, Setting
from skrd4ad.errors import ConfigError, UserError

# Settings whose value is a path or a name the run needs to exist.
SPECIAL = {
    "data.root": "/data/elsewhere",
    "data.category": "grass",
    "model.teacher_weights": "none",
    "train.out": "/runs/elsewhere",
    "train.image_size": 320,
    "optim.betas": (0.6, 0.99),
}


def other_value(s: Setting):
    """A valid value of ``s`` that is not its default."""
    if s.name in SPECIAL:
        return SPECIAL[s.name]
    if s.choices is not None:
        return next(c for c in s.choices if c != s.default)
    kind = s.kind
    if kind is bool:
        return not s.default
    if kind is int:
        return s.default + 1
    if kind is float:
        return round(s.default / 2 + 0.1, 4)
    raise AssertionError(f"no test value for {s.name} ({kind})")


def compatible(name: str, value) -> dict:
    """The value, with what it needs from other settings to be valid."""
    needs = {"runtime.cache_features": {"train.augment": "none"}}
    if name == "train.augment":
        return {name: value, "runtime.cache_features": "auto"}
    if name == "train.select":
        return {name: value, "train.val_fraction": 0.25}
    return {name: value, **needs.get(name, {})}


def test_every_setting_has_a_default_help_and_a_test_value():
    for s in SETTINGS.values():
        assert s.help and s.flag.startswith("--")
        assert other_value(s) != s.default, s.name
    assert Config().flat() == {name: _plain(s.default) for name, s in SETTINGS.items()}


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


def _argv(name: str, value) -> list[str]:
    flag = SETTINGS[name].flag
    if isinstance(value, bool):
        return [flag if value else "--no-" + flag[2:]]
    if isinstance(value, tuple):
        return [flag, *map(str, value)]
    return [flag, str(value)]


@pytest.fixture()
def captured(monkeypatch):
    """The Config that `skrd4ad train` hands to fit (fit itself does not run)."""
    seen = []

    def fake_fit(cfg, callbacks=()):
        seen.append(cfg)
        raise KeyboardInterrupt  # stop the command there; its message is not under test

    monkeypatch.setattr("skrd4ad.train.fit", fake_fit)
    monkeypatch.setattr("skrd4ad.cli._how_to_continue", lambda out, argv: "stopped")
    return seen


REQUIRED = ["--data", "/d", "--out", "/o"]


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_a_flag_reaches_training(name, captured):
    from skrd4ad.cli import main

    values = compatible(name, other_value(SETTINGS[name]))
    argv = [a for n, v in values.items() for a in _argv(n, v)]
    assert main(["train", *REQUIRED, *argv]) == 130
    assert {n: captured[-1].flat()[n] for n in values} == {n: _plain(v) for n, v in values.items()}


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_a_config_file_key_reaches_training(name, captured, tmp_path):
    from skrd4ad.cli import main

    values = compatible(name, other_value(SETTINGS[name]))
    doc: dict = {"data": {"root": "/d"}, "train": {"out": "/o"}}
    for n, v in values.items():
        section, key = n.split(".")
        doc.setdefault(section, {})[key] = _plain(v)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(doc))
    assert main(["train", "--config", str(tmp_path / "c.yaml")]) == 130
    assert {n: captured[-1].flat()[n] for n in values} == {n: _plain(v) for n, v in values.items()}


PREPARED = {"data.root", "data.category", "data.layout"}  # the prepare stage's, per category


@pytest.mark.parametrize("name", sorted(set(SETTINGS) - PREPARED))
def test_a_params_yaml_key_reaches_the_ray_worker(name, tmp_path):
    from pipelines.params import train_config
    from pipelines.ray_train import worker_config
    from pipelines.validate import params_key, validated

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    values = compatible(name, other_value(SETTINGS[name]))
    for n, v in values.items():
        section, key = n.split(".")
        params.setdefault(section, {})[key] = _plain(v)
    loop_config = validated(train_config(params, "/d", "brick", "mvtec"), params_key(params))
    cfg = worker_config(loop_config, tmp_path)  # what the Ray worker trains with
    fixed_by_worker = {"train.out", "train.progress"}
    for n, v in values.items():
        if n not in fixed_by_worker:
            assert cfg.flat()[n] == _plain(v), n


def test_the_prepared_dataset_settings_come_from_the_dataset_section():
    from pipelines.params import train_config

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"] = {"root": "/somewhere"}
    with pytest.raises(UserError, match="data.root comes from the prepare stage"):
        train_config(params, "/d", "brick", "mvtec")


# What a trial sets itself: its dataset and work folder, and validation and a checkpoint
# every epoch (the scheduler's time unit); the trial length is the space's `epochs`.
TRIAL_FIXED = PREPARED | {
    "train.out", "train.resume", "train.progress", "train.val_every",
    "train.checkpoint_every", "train.select",
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(set(SETTINGS) - TRIAL_FIXED))
def test_a_tune_space_setting_reaches_the_trial(name, tmp_path):
    """Searchable settings as `params:` (a fixed value here), the others in the space's
    `config:` sections."""
    from pipelines.tune import _train_base, trial_settings
    from pipelines.tune_space import SEARCHABLE, load_space

    values = compatible(name, other_value(SETTINGS[name]))
    space = yaml.safe_load((REPO / "tune_spaces" / "smoke.yaml").read_text())
    space["config"] = {}
    for n, v in values.items():
        section, key = n.split(".")
        if n in SEARCHABLE:
            space["params"][n] = v
        else:
            space["config"].setdefault(section, {})[key] = _plain(v)
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(space))
    spec = load_space(tmp_path / "s.yaml")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    base = {"train": _train_base(spec, params, "/d", "mvtec")}
    fixed = {k: v for k, v in spec.params.items() if not isinstance(v, dict)}
    cfg = trial_settings(fixed, base, "/d")
    if name == "train.epochs":
        assert name in SEARCHABLE  # the space's own `epochs` sets the trial length
    assert {n: cfg.flat()[n] for n in values} == {n: _plain(v) for n, v in values.items()}


def test_the_checkpoint_config_round_trips():
    cfg = Config().with_values(
        {n: other_value(s) for n, s in SETTINGS.items()} | {"runtime.cache_features": "off"}
    )
    assert Config.from_dict(cfg.to_dict()) == cfg


def test_a_version_1_checkpoint_config_is_read_in_sections():
    from skrd4ad.checkpoint import stored_config

    flat = {"data": "/d", "category": "grass", "backbone": "resnet18", "lr": 0.001, "epochs": 7}
    cfg = stored_config({"version": 1, "config": flat})
    assert (cfg.data.root, cfg.data.category, cfg.model.backbone) == ("/d", "grass", "resnet18")
    assert (cfg.optim.lr, cfg.train.epochs) == (0.001, 7)


def test_validation_runs_when_the_config_is_built():
    with pytest.raises(ConfigError, match="--epochs must be at least 1"):
        Config.from_dict({"train": {"epochs": 0}})
    with pytest.raises(UserError, match=r"unknown keys \['train.epochz'\]"):
        Config.from_dict({"train": {"epochz": 3}})
