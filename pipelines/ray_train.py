"""Ray Train: one TorchTrainer per category, its ``train_func`` running skrd4ad.train.fit.

Each epoch's metrics go to ``ray.train.report``; every skrd4ad checkpoint (last.pt) is
reported as a Ray checkpoint too, so a restarted worker (``FailureConfig``) resumes from
the latest one instead of epoch 0. After training, the worker evaluates the final model on
the test split and reports the final metrics with a checkpoint holding model.pt, the
evaluation folder and the training history.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

FINAL_KEYS = ("image_auroc", "pixel_auroc", "aupro")


def scalar_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in metrics.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }


def train_func(config: dict[str, Any]) -> None:
    """Per-worker training loop (Ray Train's ``train_loop_per_worker``)."""
    import ray.train

    from skrd4ad.checkpoint import read_checkpoint
    from skrd4ad.evaluate import evaluate
    from skrd4ad.train import TrainConfig, fit

    work = Path(tempfile.mkdtemp(prefix=f"skrd4ad-{config['train']['category']}-"))
    cfg = TrainConfig.from_dict({**config["train"], "out": str(work), "progress": False})
    checkpoint = ray.train.get_checkpoint()
    start_epoch = 0
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            if (Path(d) / "last.pt").is_file():
                shutil.copy(Path(d) / "last.pt", work / "last.pt")
                cfg.resume = True
                start_epoch = int(read_checkpoint(work / "last.pt")["epoch"])
    fault = config.get("fault") or {}

    def report(metrics: dict[str, Any]) -> None:
        scalars = scalar_metrics(metrics)
        if "checkpoint" not in metrics:
            ray.train.report(scalars)
            return
        with tempfile.TemporaryDirectory(dir=work) as d:
            _link(Path(metrics["checkpoint"]), Path(d) / "last.pt")
            ray.train.report(scalars, checkpoint=ray.train.Checkpoint.from_directory(d))
        _maybe_crash(fault, int(metrics["epoch"]))

    result = fit(cfg, callbacks=[report])
    if ray.train.get_context().get_world_rank() != 0:
        # Only rank 0 holds model.pt; every worker must report the same number of times.
        ray.train.report({"final": 1.0})
        shutil.rmtree(work, ignore_errors=True)
        return
    final = evaluate(
        result.model_path,
        Path(cfg.data),
        cfg.category,
        work / "eval",
        layout=cfg.layout,
        device=cfg.device,
        overlays=config.get("overlays", 0),
        curves=True,
    )
    with tempfile.TemporaryDirectory(dir=work) as d:
        for name in ("model.pt", "last.pt", "train_history.json"):
            _link(work / name, Path(d) / name)
        shutil.copytree(work / "eval", Path(d) / "eval", copy_function=_link)
        metrics = {k: (math.nan if final[k] is None else final[k]) for k in FINAL_KEYS}
        metrics["train_s"] = sum(h["epoch_s"] for h in result.history)
        metrics["images_per_s"] = result.history[-1]["images_per_s"]
        metrics["final"] = 1.0
        metrics["resumed_from_epoch"] = float(start_epoch)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))
    shutil.rmtree(work, ignore_errors=True)


def _link(src: Path, dst: Path) -> None:
    """Hard-link (a checkpoint is ~200 MB; Ray copies it to storage anyway), else copy.
    The source is replaced by rename, never rewritten in place, so the link stays valid."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _maybe_crash(fault: dict[str, Any], epoch: int) -> None:
    """Fault injection for the recovery test: the worker process dies hard (as an OOM kill
    would) once, after the checkpoint of epoch ``fault['after_epoch']`` was reported.
    ``fault['marker']`` is a file that makes it happen only once."""
    if not fault or epoch != int(fault["after_epoch"]):
        return
    marker = Path(fault["marker"])
    if marker.exists():
        return
    marker.write_text(f"worker killed after epoch {epoch}\n")
    os._exit(1)


def fit_category(
    category: str,
    train_config: dict[str, Any],
    *,
    num_workers: int,
    cpus_per_worker: float,
    gpus_per_worker: float,
    storage_path: str,
    run_name: str,
    max_failures: int,
    overlays: int,
    dest: Path,
    fault: dict[str, Any] | None = None,
    storage_endpoint: str | None = None,
) -> dict[str, Any]:
    """Run one category's TorchTrainer; copy its final checkpoint to ``dest``."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    resources = {"CPU": cpus_per_worker}
    if gpus_per_worker:
        resources["GPU"] = gpus_per_worker
    trainer = TorchTrainer(
        train_func,
        train_loop_config={"train": train_config, "overlays": overlays, "fault": fault},
        scaling_config=ScalingConfig(
            num_workers=num_workers, use_gpu=gpus_per_worker > 0, resources_per_worker=resources
        ),
        run_config=RunConfig(
            name=run_name,
            **storage_args(storage_path, storage_endpoint),
            failure_config=FailureConfig(max_failures=max_failures),
            # Resume needs only the latest; each last.pt holds the optimizer state too.
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
    )
    try:
        result = trainer.fit()
    except Exception as exc:  # noqa: BLE001 - a failed category is reported, not raised
        return {"category": category, "error": _root_cause(exc)}
    if result.checkpoint is None:
        return {"category": category, "error": "training finished without a final checkpoint"}
    if dest.exists():
        shutil.rmtree(dest)
    result.checkpoint.to_directory(str(dest))
    return {"category": category, "metrics": dict(result.metrics or {}), "dir": str(dest)}


def storage_args(path: str, endpoint: str | None) -> dict[str, Any]:
    """RunConfig storage arguments; an S3-compatible endpoint gets its own filesystem."""
    if not (endpoint and path.startswith("s3://")):
        return {"storage_path": path}
    from urllib.parse import urlparse

    import pyarrow.fs

    url = urlparse(endpoint)
    fs = pyarrow.fs.S3FileSystem(
        endpoint_override=url.netloc or url.path,
        scheme=url.scheme or "https",
        region=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
    )
    return {"storage_path": path[len("s3://") :], "storage_filesystem": fs}


def _root_cause(exc: BaseException) -> str:
    seen = exc
    while seen.__cause__ is not None:
        seen = seen.__cause__
    text = str(seen).strip().splitlines()
    return f"{type(seen).__name__}: {text[-1] if text else ''}"[:500]
