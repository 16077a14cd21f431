"""Training settings checked in the driver, before Ray starts: every category's and every
trial's Config, with errors that name the params.yaml (or space file) key."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from .params import PARAMS

# Config settings that params.yaml sets in its `dataset` section (or the prepare stage).
_DATASET_KEYS = {
    "data.root": "dataset.root",
    "data.category": "dataset.categories",
    "data.layout": "dataset.layout",
}


def params_key(params: dict[str, Any], path: Path = PARAMS) -> Callable[[str], str]:
    """Where in params.yaml a training setting (``section.field``) lives, for errors."""

    def where(name: str) -> str:
        return f"{path}: {_DATASET_KEYS.get(name, name)}"

    return where


def validated(
    config: dict[str, Any], where: Callable[[str], str], source: Path = PARAMS
) -> dict[str, Any]:
    """``config`` checked as a skrd4ad Config (types, choices, ranges, the teacher weights
    file), in the driver, before Ray starts; an error names the setting as ``where`` does."""
    from skrd4ad.config import Config
    from skrd4ad.errors import ConfigError

    try:
        cfg = Config.from_dict(config, str(source))
        cfg.check_files()
    except ConfigError as exc:
        raise exc.named(where(exc.field)) from None
    return cfg.to_dict()
