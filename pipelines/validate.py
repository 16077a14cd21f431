"""Training settings checked in the driver, before Ray starts: every category's and every
trial's TrainConfig, with errors that name the params.yaml (or space file) key."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from skrd4ad.errors import UserError

from .params import PARAMS

# TrainConfig fields that params.yaml sets outside model/loss/train.
_DATASET_KEYS = {
    "data": "dataset.root",
    "category": "dataset.categories",
    "layout": "dataset.layout",
}


def params_key(params: dict[str, Any], path: Path = PARAMS) -> Callable[[str], str]:
    """Where in params.yaml a training setting lives, for error messages."""

    def where(name: str) -> str:
        for section in ("model", "loss", "train"):
            if name in (params.get(section) or {}):
                return f"{path}: {section}.{name}"
        return f"{path}: {_DATASET_KEYS.get(name, name)}"

    return where


def validated(config: dict[str, Any], where: Callable[[str], str]) -> dict[str, Any]:
    """``config`` checked as a skrd4ad TrainConfig (types, choices, ranges), in the driver,
    before Ray starts; an error names the setting as ``where`` does."""
    from skrd4ad.errors import ConfigError
    from skrd4ad.train import TrainConfig

    known = {f.name for f in dataclasses.fields(TrainConfig)}
    for name in sorted(set(config) - known):
        raise UserError(f"{where(name)}: not a training setting; known: {sorted(known)}")
    try:
        TrainConfig.from_dict(config).validate()
    except ConfigError as exc:
        raise exc.named(where(exc.field)) from None
    return config
