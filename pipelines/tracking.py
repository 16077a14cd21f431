"""MLflow tracking of a benchmark: a parent run, a nested run per category.

Tracking never decides whether a benchmark succeeds: when the tracking server cannot be
reached, a warning is printed and every result stays on disk.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request
import warnings
from pathlib import Path
from typing import Any

from .ray_train import scalar_metrics

DEFAULT_URI = "sqlite:///mlflow.db"


def git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _flat(prefix: str, value: Any, out: dict[str, str]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flat(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        out[prefix] = json.dumps(value) if isinstance(value, list) else str(value)


def _requirements() -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for name in ("torch", "torchvision", "numpy", "scikit-image", "pillow", "pyyaml", "tqdm"):
        try:
            out.append(f"{name}=={version(name).split('+')[0]}")
        except PackageNotFoundError:
            out.append(name)
    return out


def _log_history(mlflow: Any, run_id: str, history: list[dict[str, Any]]) -> None:
    """Every epoch's metrics in batches of MLflow's limit (1,000 per call) instead of a
    call per epoch: each call is a round trip to the tracking server (BENCHMARKS.md)."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics = [
        Metric(k, v, now, int(h["epoch"]))
        for h in history
        for k, v in scalar_metrics(h).items()
        if k != "epoch"
    ]
    client = mlflow.MlflowClient()
    for i in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[i : i + 1000])


class Tracker:
    """Thin wrapper over mlflow; every call is a no-op after the first failure."""

    def __init__(
        self, experiment: str, tracking_uri: str | None = None, artifact_location: str | None = None
    ) -> None:
        self.ok = True
        self.parent = None
        self.experiment = experiment
        uri = os.environ.get("MLFLOW_TRACKING_URI") or tracking_uri or DEFAULT_URI
        try:
            if uri.startswith(("http://", "https://")):
                # MLflow's client retries an unreachable server for minutes; ask once first.
                urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5).close()
            import mlflow

            self.mlflow = mlflow
            mlflow.set_tracking_uri(uri)
            # An artifact location (s3://bucket/prefix, say) applies when the experiment is
            # created; MLFLOW_S3_ENDPOINT_URL points boto3 at an S3-compatible store.
            if artifact_location and mlflow.get_experiment_by_name(experiment) is None:
                mlflow.create_experiment(experiment, artifact_location=artifact_location)
            mlflow.set_experiment(experiment)
        except Exception as exc:  # noqa: BLE001 - any tracking failure degrades the same way
            self.fail(exc)

    def fail(self, exc: BaseException) -> None:
        self.ok = False
        warnings.warn(
            f"MLflow tracking failed or is unreachable ({type(exc).__name__}: {str(exc)[:200]}); "
            "training goes on and results are kept in results/ and metrics.json only",
            RuntimeWarning,
            stacklevel=3,
        )

    def start(self, name: str, params: dict[str, Any], tags: dict[str, str]) -> None:
        if not self.ok:
            return
        try:
            self.parent = self.mlflow.start_run(run_name=name, tags=tags)
            flat: dict[str, str] = {}
            _flat("", params, flat)
            self.mlflow.log_params(flat)
        except Exception as exc:  # noqa: BLE001
            self.fail(exc)

    def log_category(
        self,
        category: str,
        config: dict[str, Any],
        history: list[dict[str, Any]],
        final: dict[str, float],
        tags: dict[str, str],
        folder: Path,
    ) -> None:
        if not self.ok:
            return
        mlflow = self.mlflow
        try:
            with mlflow.start_run(
                run_name=category, nested=True, tags={**tags, "category": category}
            ) as run:
                flat: dict[str, str] = {}
                _flat("", config, flat)
                mlflow.log_params(flat)
                _log_history(mlflow, run.info.run_id, history)
                mlflow.log_metrics({k: v for k, v in final.items() if v == v})  # drop NaN
                mlflow.log_artifacts(str(folder / "eval"), artifact_path="eval")
                mlflow.log_artifact(str(folder / "model.pt"), artifact_path="checkpoint")
                from skrd4ad.checkpoint import load_model

                model, _ = load_model(folder / "model.pt")
                import mlflow.pytorch

                # pickle, not pt2: the model returns feature lists, which torch.export
                # would need an input example and a fixed batch size for. Naming the
                # requirements skips MLflow's inference of them (seconds per model). Loading
                # it needs skrd4ad importable (code_paths would copy the package, but MLflow
                # then re-imports skrd4ad from the copy inside the running process).
                mlflow.pytorch.log_model(
                    model,
                    name="model",
                    serialization_format="pickle",
                    pip_requirements=_requirements(),
                )
        except Exception as exc:  # noqa: BLE001
            self.fail(exc)

    def finish(self, metrics: dict[str, float | None], artifact: Path) -> None:
        """Close the parent run with its summary metrics (undefined ones left out) and its
        summary file (the benchmark's metrics.json, a search's best.yaml)."""
        if not self.ok or self.parent is None:
            return
        try:
            self.mlflow.log_metrics({k: v for k, v in metrics.items() if v is not None and v == v})
            self.mlflow.log_artifact(str(artifact))
            self.mlflow.end_run()
        except Exception as exc:  # noqa: BLE001
            self.fail(exc)

    def abort(self) -> None:
        """End the parent run as KILLED (an interrupted search, to be resumed)."""
        if not self.ok or self.parent is None:
            return
        try:
            self.mlflow.end_run(status="KILLED")
        except Exception as exc:  # noqa: BLE001
            self.fail(exc)
