"""Command-line flags and ``--config`` files generated from the config schema
(:mod:`skrd4ad.config`), so that a new setting needs no CLI code.

Every generated flag defaults to ``argparse.SUPPRESS``: the namespace then holds only the
flags the user gave, which win over the ``--config`` file, which wins over the defaults.
"""

from __future__ import annotations

import argparse
import types
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from .config import SETTINGS, Config, Setting
from .errors import ConfigError, UserError


def _kind(s: Setting) -> Any:
    args = typing.get_args(s.kind)
    if typing.get_origin(s.kind) in (typing.Union, types.UnionType):
        (kind,) = [a for a in args if a is not type(None)]
        return kind
    return s.kind


def add_setting_flags(
    parser: argparse.ArgumentParser,
    names: Iterable[str] | None = None,
    defaults: dict[str, Any] | None = None,
) -> None:
    """One flag per setting in ``names`` (all by default); ``defaults`` are a command's own
    (the demo's preset), shown in the help instead of the schema's."""
    defaults = defaults or {}
    for name in SETTINGS if names is None else names:
        s = SETTINGS[name]
        default = defaults.get(name, s.default)
        kw: dict[str, Any] = {"dest": name, "default": argparse.SUPPRESS}
        kind = _kind(s)
        if kind is bool:  # the switch that is on by default
            default = s.flag if default else "--no-" + s.flag[2:]
        shown = "" if default is None else f"default: {default}; "
        kw["help"] = f"{s.help} ({shown}YAML: {name})"
        if kind is bool:
            kw["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(kind) is tuple:
            n = len(typing.get_args(kind))
            names = tuple(f"{s.field.name[:-1].upper()}{i + 1}" for i in range(n))
            kw.update(nargs=n, type=float, metavar=names)
        elif kind in (int, float):
            kw["type"] = kind
        if s.choices is not None:
            kw["choices"] = s.choices
        elif kind is not bool:
            kw.setdefault("metavar", s.field.name.upper())
        parser.add_argument(s.flag, **kw)


def given(args: argparse.Namespace) -> dict[str, Any]:
    """The settings given as flags, ``{"section.field": value}``."""
    return {name: value for name, value in vars(args).items() if name in SETTINGS}


def read_config_file(path: Path) -> dict[str, Any]:
    """A ``--config`` YAML file: the sections of :class:`Config`, as in params.yaml."""
    try:
        loaded = yaml.safe_load(Path(path).read_text()) or {}
    except OSError as exc:
        raise UserError(
            f"cannot read config {path} ({exc.strerror}); pass an existing YAML file"
        ) from exc
    except yaml.YAMLError as exc:
        raise UserError(f"config {path} is not valid YAML ({exc})") from exc
    if not isinstance(loaded, dict):
        raise UserError(f"config {path} must be a mapping of sections (model: ..., train: ...)")
    return loaded


def build_config(
    args: argparse.Namespace,
    config_file: str | None = None,
    preset: dict[str, Any] | None = None,
    required: Iterable[str] = (),
) -> Config:
    """Defaults, then ``preset``, then the ``--config`` file, then the flags given. An
    error names the setting where its value came from: the file's key or the flag."""
    flags = given(args)
    base = Config.from_dict({}).with_values(preset or {})
    where = f"config {config_file}"
    nested = base.to_dict()
    from_file: set[str] = set()
    if config_file:
        loaded = read_config_file(Path(config_file))
        nested = _merged(nested, loaded, where)
        from_file = {f"{s}.{k}" for s, v in loaded.items() if isinstance(v, dict) for k in v}
    for name, value in flags.items():
        section, key = name.split(".")
        nested[section][key] = value
    try:
        cfg = Config.from_dict(nested, where if config_file else "flags")
    except ConfigError as exc:
        if exc.field in from_file and exc.field not in flags:
            raise exc.named(f"{where}: {exc.field}") from None
        raise
    for name in required:
        if name not in flags and name not in from_file:
            raise UserError(f"{SETTINGS[name].flag} is required (or {name} in --config)")
    return cfg


def _merged(base: dict[str, Any], loaded: dict[str, Any], where: str) -> dict[str, Any]:
    """``loaded``'s sections over ``base``'s; a setting outside its section is an error
    that names the section it belongs to."""
    out = {k: dict(v) for k, v in base.items()}
    fields = {s.field.name.replace("_", "-"): s for s in SETTINGS.values()}
    fields.update({s.field.name: s for s in SETTINGS.values()})
    for section, values in loaded.items():
        if section not in out or not isinstance(values, dict):
            s = fields.get(str(section)) or (SETTINGS["data.root"] if section == "data" else None)
            if s is None:
                raise UserError(f"{where}: unknown section {section!r}; known: {list(out)}")
            raise UserError(
                f"{where}: {section} belongs in the {s.section} section, as in params.yaml: "
                f"{s.section}: {{{s.field.name}: {values}}}"
            )
        out[section].update(values)
    return out
