"""Ray Train: one TorchTrainer per category, its ``train_func`` running skrd4ad.train.fit.

Each epoch's metrics go to ``ray.train.report``; every skrd4ad checkpoint (last.pt) is
reported as a Ray checkpoint too, so a restarted worker (``FailureConfig``) resumes from
the latest one instead of epoch 0. After training, the worker evaluates the final model on
the test split and reports the final metrics with a checkpoint holding model.pt, the
evaluation folder and the training history.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

from skrd4ad.callbacks import Callback
from skrd4ad.results import METRIC_KEYS

# In a category's final checkpoint: its reported metrics, so that a re-run after a lost
# driver (the same deterministic run name) reuses the result instead of training again.
FINAL_METRICS = "final_metrics.json"
# In a category's final checkpoint: where its rank-0 worker ran (Ray node id and host).
PLACEMENT = "placement.json"


def joins_cluster(address: str | None) -> bool:
    """Whether start_ray connects to a cluster rather than starting an own Ray."""
    return bool(address or os.environ.get("RAY_ADDRESS"))


def start_ray(address: str | None, runtime_env: dict | None = None, **local: Any) -> bool:
    """Connect to the cluster at ``address``; inside ``ray job submit`` (whose entrypoint
    Ray gives RAY_ADDRESS) to the job's cluster; otherwise start a Ray of this driver's
    own (``address="local"``), never one that another process started on this machine.
    ``local`` are ray.init's settings for that own instance. Returns whether it is own."""
    import ray

    if ray.is_initialized():
        return False
    if joins_cluster(address):
        ray.init(address=address, runtime_env=runtime_env)
        return False
    ray.init(address="local", runtime_env=runtime_env, **local)
    return True


def scalar_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in metrics.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }


def train_func(config: dict[str, Any]) -> None:
    """Per-worker training loop (Ray Train's ``train_loop_per_worker``). Its work folder
    goes when it ends, on failure too (a retried worker gets a new one)."""
    from skrd4ad.atomic import temporary_dir

    threads = _set_torch_threads(config.get("threads"))
    with temporary_dir(prefix=f"skrd4ad-{config['train']['data']['category']}-") as work:
        _train_in(work, config, threads)


def worker_config(train_config: dict[str, Any], work: Path) -> Any:
    """The Config a worker trains with: the category's, into the worker's work folder,
    without a progress bar (the driver's console shows Ray's reports)."""
    from skrd4ad.config import Config

    return Config.from_dict(train_config).with_values(
        {"train.out": str(work), "train.progress": False}
    )


def _train_in(work: Path, config: dict[str, Any], threads: int) -> None:
    import ray.train

    from skrd4ad.checkpoint import read_checkpoint
    from skrd4ad.train import fit

    cfg = worker_config(config["train"], work)
    checkpoint = ray.train.get_checkpoint()
    start_epoch = 0
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            if (Path(d) / FINAL_METRICS).is_file():
                _report_finished(Path(d))
                return
            if (Path(d) / "last.pt").is_file():
                shutil.copy(Path(d) / "last.pt", work / "last.pt")
                cfg = cfg.with_values({"train.resume": True})
                start_epoch = int(read_checkpoint(work / "last.pt")["epoch"])
    result = fit(cfg, callbacks=[RayReport(work, config.get("fault") or {})])
    if ray.train.get_context().get_world_rank() != 0:
        # Only rank 0 holds model.pt; every worker must report the same number of times.
        ray.train.report({"final": 1.0})
        return
    extra = {"resumed_from_epoch": float(start_epoch), "torch_threads": float(threads)}
    _report_final(work, cfg, result, config.get("overlays", 0), extra)


class RayReport(Callback):
    """Each epoch's metrics to ``ray.train.report``, with last.pt as a Ray checkpoint
    when one was written that epoch (on rank 0), so a restarted worker resumes there."""

    def __init__(self, work: Path, fault: dict[str, Any]) -> None:
        self.work, self.fault = work, fault
        self.checkpoint: Path | None = None

    def on_checkpoint(self, path: Path, epoch: int) -> None:
        self.checkpoint = path

    def on_epoch_end(self, metrics: dict[str, Any]) -> None:
        import ray.train

        from skrd4ad.atomic import temporary_dir

        scalars, path, self.checkpoint = scalar_metrics(metrics), self.checkpoint, None
        if path is None:
            ray.train.report(scalars)
            return
        with temporary_dir(self.work, ".report-") as d:
            link(path, d / "last.pt")
            ray.train.report(scalars, checkpoint=ray.train.Checkpoint.from_directory(str(d)))
        _maybe_crash(self.fault, int(metrics["epoch"]))


def _report_finished(folder: Path) -> None:
    """A run restored after a lost driver that had already finished: its final checkpoint
    and metrics stand, reported again as they are (nothing is retrained or re-evaluated)."""
    import ray.train

    if ray.train.get_context().get_world_rank() != 0:
        ray.train.report({"final": 1.0})
        return
    metrics = {**json.loads((folder / FINAL_METRICS).read_text()), "reused": 1.0}
    ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(folder)))


def _report_final(work: Path, cfg: Any, result: Any, overlays: int, extra: dict) -> None:
    """Evaluate the final model on the test split; report its metrics with a checkpoint of
    model.pt, last.pt, the history and the evaluation folder."""
    import ray.train

    from skrd4ad.atomic import temporary_dir
    from skrd4ad.evaluate import evaluate

    final = evaluate(
        result.model_path,
        Path(cfg.data.root),
        cfg.data.category,
        work / "eval",
        layout=cfg.data.layout,
        device=cfg.runtime.device,
        overlays=overlays,
        curves=True,
    )
    with temporary_dir(work, ".final-") as d:
        for name in ("model.pt", "last.pt", "train_history.json"):
            link(work / name, d / name)
        shutil.copytree(work / "eval", d / "eval", copy_function=link)
        metrics = {k: (math.nan if final[k] is None else final[k]) for k in METRIC_KEYS}
        metrics["train_s"] = sum(h["epoch_s"] for h in result.history)
        metrics["images_per_s"] = result.history[-1]["images_per_s"]
        metrics["final"] = 1.0
        metrics.update(extra)
        (d / FINAL_METRICS).write_text(json.dumps(metrics))
        (d / PLACEMENT).write_text(json.dumps(placement()))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(d)))


def placement() -> dict[str, str]:
    """The Ray node id and host name of this process (a category's rank-0 worker)."""
    import socket

    import ray

    return {"node_id": ray.get_runtime_context().get_node_id(), "host": socket.gethostname()}


def link(src: Path, dst: Path) -> None:
    """Hard-link ``src`` to ``dst`` (a checkpoint holds the teacher too), else copy it. The source
    is replaced by rename, never rewritten in place, so the link stays valid."""
    try:
        os.link(src, dst)
    except FileExistsError:
        if os.path.samefile(src, dst):  # a retried upload: already linked
            return
        os.unlink(dst)  # copying onto it would rewrite whatever else links to it
        link(src, dst)
    except OSError:  # another filesystem, or one without hard links
        shutil.copy2(src, dst)


def _set_torch_threads(wanted: int | None) -> int:
    """Set torch's intra-op threads in this worker to ``wanted`` (at most the CPUs this
    process may run on), but only where OpenMP waits passively (OMP_WAIT_POLICY=PASSIVE,
    which the benchmark stage sets on a local Ray): with OpenMP's default spin-waiting,
    more threads than free cores make each epoch several times slower (BENCHMARKS.md)."""
    import torch

    if wanted and os.environ.get("OMP_WAIT_POLICY", "").upper() == "PASSIVE":
        torch.set_num_threads(max(1, min(int(wanted), len(os.sched_getaffinity(0)))))
    return torch.get_num_threads()


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
    threads: int | None = None,
) -> dict[str, Any]:
    """Run one category's TorchTrainer; copy its final checkpoint to ``dest``.
    ``threads``:
    torch intra-op threads per worker (None: Ray's default)."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    resources = {"CPU": cpus_per_worker}
    if gpus_per_worker:
        resources["GPU"] = gpus_per_worker
    trainer = TorchTrainer(
        train_func,
        torch_config=TorchConfig(),
        train_loop_config={
            "train": train_config,
            "overlays": overlays,
            "fault": fault,
            "threads": threads,
        },
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
