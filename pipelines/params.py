"""params.yaml: loading, defaults and validation (errors name the key)."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import yaml

from skrd4ad.errors import UserError

PARAMS = Path(os.environ.get("SKRD4AD_PARAMS", "params.yaml"))
DATASETS = ("default", "mvtec", "visa", "vad", "folder")


def load_params(path: Path | None = None) -> dict[str, Any]:
    path = Path(path or PARAMS)
    try:
        params = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise UserError(
            f"cannot read {path} ({exc.strerror}); run from the repository root"
        ) from exc
    if not isinstance(params, dict):
        raise UserError(f"{path} must be a mapping")
    for key in ("dataset", "model", "loss", "train", "resources", "ray", "mlflow"):
        if not isinstance(params.get(key), dict):
            raise UserError(f"{path}: section '{key}' is missing or not a mapping")
    if params["dataset"].get("name") not in DATASETS:
        raise UserError(f"{path}: dataset.name must be one of {DATASETS}")
    return copy.deepcopy(params)


def train_config(params: dict[str, Any], root: str, category: str, layout: str) -> dict[str, Any]:
    """The skrd4ad.train.TrainConfig fields for one category (plain dict, for Ray).

    ``loss.per_category.<category>`` (what ``pipelines.tune --write-params`` writes for a
    per-category search) overrides ``loss`` for that category.
    """
    loss = {k: v for k, v in params["loss"].items() if k != "per_category"}
    override = (params["loss"].get("per_category") or {}).get(category) or {}
    if not isinstance(override, dict):
        raise UserError(f"loss.per_category.{category} must be a mapping of alpha/beta/gamma")
    unknown = sorted(set(override) - {"alpha", "beta", "gamma"})
    if unknown:
        raise UserError(f"loss.per_category.{category}: unknown keys {unknown}")
    loss.update(override)
    return {
        "data": root,
        "category": category,
        "layout": layout,
        **params["model"],
        **loss,
        **params["train"],
    }
