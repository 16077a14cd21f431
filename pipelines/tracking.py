"""MLflow tracking of a benchmark: a parent run, a nested run per category.

Tracking never decides whether a benchmark succeeds: when the tracking server cannot be
reached, a warning is printed and every result stays on disk.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import time
import urllib.request
import warnings
from pathlib import Path
from typing import Any

from skrd4ad.results import MODEL

from .mlflow_model import log_model
from .params import experiment_url, tracking_uri
from .ray_train import scalar_metrics


def _chunks(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


# MLflow's experiment tag for what an experiment holds, and its value for model training.
EXPERIMENT_KIND, TRAINING = "mlflow.experimentKind", "custom_model_development"


def quiet_mlflow(verbose: bool) -> None:
    """MLflow's INFO lines (creating tables, experiments) and SQLAlchemy's deprecation
    warnings from inside MLflow's store only with ``verbose``; MLflow's real warnings
    stay."""
    if verbose:
        return
    # Artifact progress bars (MLflow's documented switch): a line per logged model.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import mlflow  # noqa: F401 - it sets its loggers' levels when imported; then these win

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"mlflow\.store")


def _git(*args: str) -> str | None:
    try:
        return subprocess.run(
            ["git", *args], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def source_tags() -> dict[str, str]:
    """Where a run's code came from: the git commit, whether tracked files differed from
    it (``git_dirty``; "unknown" outside a git checkout), and under ``dvc exp run`` the
    experiment's name and baseline commit (DVC's documented ``DVC_EXP_NAME`` and
    ``DVC_EXP_BASELINE_REV``)."""
    commit = _git("rev-parse", "HEAD")
    changes = _git("status", "--porcelain", "--untracked-files=no")
    dirty = "unknown" if changes is None else str(bool(changes)).lower()
    tags = {"git_commit": commit or "unknown", "git_dirty": dirty}
    for tag, variable in (("dvc_experiment", "DVC_EXP_NAME"),
                          ("dvc_baseline_rev", "DVC_EXP_BASELINE_REV")):  # fmt: skip
        if os.environ.get(variable):
            tags[tag] = os.environ[variable]
    return tags


def _flat(prefix: str, value: Any, out: dict[str, str]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flat(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        out[prefix] = json.dumps(value) if isinstance(value, list) else str(value)


def _metrics(values: dict[str, Any], step: int) -> list:
    """MLflow Metric entities of one report, stamped now: the UI's wall-time axis is real."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    return [Metric(k, v, now, step) for k, v in scalar_metrics(values).items() if v == v]


class Tracker:
    """Thin wrapper over mlflow; every call is a no-op after the first failure."""

    def __init__(
        self, experiment: str, configured: str | None = None, artifact_location: str | None = None
    ) -> None:
        self.ok = True
        self.parent = None
        self.experiment = experiment
        self.pending: dict[str, list] = {}
        uri = tracking_uri(configured)
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
            # The UI opens an experiment of this kind on its training runs (not on GenAI
            # traces, MLflow 3's view of an experiment with no kind).
            mlflow.set_experiment_tag(EXPERIMENT_KIND, TRAINING)
        except Exception as exc:  # noqa: BLE001 - any tracking failure degrades the same way
            self.fail(exc)

    @classmethod
    def disabled(cls) -> Tracker:
        """A tracker that records nothing (a Train run's tests, tools without MLflow)."""
        tracker = cls.__new__(cls)
        tracker.ok, tracker.parent, tracker.experiment = False, None, ""
        tracker.pending = {}
        return tracker

    def where(self) -> dict[str, str] | None:
        """The parent run as the UI shows it: its URI, experiment, run and page."""
        if not self.ok or self.parent is None:
            return None
        uri, info = self.mlflow.get_tracking_uri(), self.parent.info
        return {"tracking_uri": uri, "experiment_id": info.experiment_id,
                "run_id": info.run_id, "url": experiment_url(uri, info.experiment_id)}  # fmt: skip

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

    def start_child(self, category: str, config: dict[str, Any], tags: dict[str, str]) -> Any:
        """A category's nested run, opened when it starts training; returns its run id
        (None when tracking is off). Several are open at once, so they are made with the
        client, under the parent by MLflow's parent-run tag, not the fluent run stack."""
        if not self.ok or self.parent is None:
            return None
        try:
            from mlflow.entities import Param

            client = self.mlflow.MlflowClient()
            run = client.create_run(
                self.parent.info.experiment_id,
                run_name=category,
                tags={**tags, "category": category,
                      "mlflow.parentRunId": self.parent.info.run_id},
            )  # fmt: skip
            flat: dict[str, str] = {}
            _flat("", config, flat)
            for items in _chunks(list(flat.items()), 100):  # MLflow's limit per call
                client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in items])
            return run.info.run_id
        except Exception as exc:  # noqa: BLE001
            self.fail(exc)
            return None

    def log_epoch(self, run_id: Any, metrics: dict[str, Any]) -> None:
        """One epoch's report, logged as it arrives (step: the epoch). MLflow's own
        asynchronous logging writes it: the Tune callback calling this returns at once
        instead of holding the driver's event loop for the store (a second and more on a
        busy machine); :meth:`_drain` waits for it before the run is closed."""
        if not self.ok or run_id is None:
            return
        try:
            values = {k: v for k, v in metrics.items() if k != "epoch"}
            batch = _metrics(values, int(metrics["epoch"]))
            client = self.mlflow.MlflowClient()
            operation = client.log_batch(run_id, metrics=batch, synchronous=False)
            self.pending.setdefault(run_id, []).append(operation)
        except Exception as exc:  # noqa: BLE001
            self.fail(exc)

    def _drain(self, run_id: Any = None) -> None:
        """Wait for the epochs logged asynchronously to ``run_id`` (all runs: None); an
        error of theirs is raised here."""
        for run in [run_id] if run_id is not None else list(self.pending):
            for operation in self.pending.pop(run, []):
                operation.wait()

    def finish_child(
        self, run_id: Any, final: dict[str, float], tags: dict, folder: Path,
        name: str = "model", step: int = 0,
    ) -> str | None:  # fmt: skip
        """A category's final metrics (their own keys, at ``step``: its last epoch), its
        evaluation folder and its model: ``folder/model.pt`` logged as an MLflow model
        named ``name``, which is then the one stored copy of its weights
        (:func:`~pipelines.mlflow_model.checkpoint_from_model` gives model.pt back). The
        run ends FINISHED.
        Returns the model's URI, or None when nothing was logged (tracking off or failed,
        or no model.pt: a reused category, whose model the run that trained it logged)."""
        if not self.ok or run_id is None:
            return None
        mlflow = self.mlflow
        try:
            self._drain(run_id)
            client = mlflow.MlflowClient()
            for k, v in tags.items():
                client.set_tag(run_id, k, json.dumps(v) if isinstance(v, list | dict) else str(v))
            client.log_batch(run_id, metrics=_metrics(final, step))
            client.log_artifacts(run_id, str(folder / "eval"), artifact_path="eval")
            if not (folder / MODEL).is_file():
                client.set_terminated(run_id)
                return None
            with mlflow.start_run(run_id=run_id, nested=True):
                return log_model(folder / MODEL, name)
        except Exception as exc:  # noqa: BLE001
            self.fail(exc)
            return None

    def fail_child(self, run_id: Any, error: str) -> None:
        """A category that failed: its error as a tag, the run ends FAILED."""
        if not self.ok or run_id is None:
            return
        try:
            self._drain(run_id)
            client = self.mlflow.MlflowClient()
            client.set_tag(run_id, "error", error[:5000])
            client.set_terminated(run_id, status="FAILED")
        except Exception as exc:  # noqa: BLE001
            self.fail(exc)

    def finish(self, metrics: dict[str, float | None], artifact: Path) -> None:
        """Close the parent run with its summary metrics (undefined ones left out) and its
        summary file (the benchmark's metrics.json, a search's best.yaml)."""
        if not self.ok or self.parent is None:
            return
        try:
            self._drain()
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
            self._drain()
            self.mlflow.end_run(status="KILLED")
        except Exception as exc:  # noqa: BLE001
            self.fail(exc)
