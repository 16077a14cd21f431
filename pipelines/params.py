"""params.yaml: loading, defaults and validation (errors name the key)."""

from __future__ import annotations

import argparse
import copy
import os
from pathlib import Path
from typing import Any

import yaml

from skrd4ad.errors import UserError

# DVC's own default; every stage takes --params to read another.
PARAMS = Path("params.yaml")
DATASETS = ("default", "mvtec", "visa", "vad", "folder")
# MLflow's store when neither MLFLOW_TRACKING_URI nor params.yaml's mlflow.tracking_uri
# names one.
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
# The sections params.yaml shares with skrd4ad.config.Config (data comes from `dataset`).
CONFIG_SECTIONS = ("data", "model", "loss", "optim", "runtime", "train")


def stage_parser(stage: str, doc: str | None) -> argparse.ArgumentParser:
    """A DVC stage's command line: its paths are on the ``cmd:`` line of dvc.yaml."""
    parser = argparse.ArgumentParser(
        prog=f"python -m pipelines.{stage}", description=(doc or "").split("\n\n")[0]
    )
    parser.add_argument("--params", type=Path, default=PARAMS, help="the pipeline's settings")
    return parser


def tracking_uri(configured: str | None) -> str:
    """The tracking server: MLFLOW_TRACKING_URI, else params.yaml's mlflow.tracking_uri."""
    return os.environ.get("MLFLOW_TRACKING_URI") or configured or DEFAULT_TRACKING_URI


# Where `mlflow ui` serves when the store is a database or folder (the README's command).
LOCAL_UI = "http://127.0.0.1:5000"


def ui_base(tracking: str) -> str:
    """The MLflow UI's address: the tracking server itself, else `mlflow ui`'s."""
    return tracking.rstrip("/") if tracking.startswith(("http://", "https://")) else LOCAL_UI


def experiment_url(tracking: str, experiment_id: str) -> str:
    """An experiment's page in the MLflow UI, on its training runs: MLflow 3's UI opens in
    its GenAI view unless the page's address names the workflow (its experimentKind tag
    does not decide it)."""
    return f"{ui_base(tracking)}/#/experiments/{experiment_id}?workflowType=machine_learning"


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
    for key in ("dataset", "model", "loss", "train", "resources", "ray", "mlflow", "evaluate"):
        if not isinstance(params.get(key), dict):
            raise UserError(f"{path}: section '{key}' is missing or not a mapping")
    if params["dataset"].get("name") not in DATASETS:
        raise UserError(f"{path}: dataset.name must be one of {DATASETS}")
    return copy.deepcopy(params)


def train_config(params: dict[str, Any], root: str, category: str, layout: str) -> dict[str, Any]:
    """One category's :class:`skrd4ad.config.Config` as plain nested data (for Ray): the
    params.yaml sections of the same names, and the prepared dataset.

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
    data = dict(params.get("data") or {})
    for key in sorted(set(data) & {"root", "category", "layout"}):
        raise UserError(
            f"data.{key} comes from the prepare stage (dataset.{key}, or dataset.categories); "
            f"set it there and drop data.{key}"
        )
    data.update(root=root, category=category, layout=layout)
    sections = {s: dict(params.get(s) or {}) for s in CONFIG_SECTIONS if s not in ("data", "loss")}
    return {"data": data, "loss": loss, **sections}
