"""Ray Train's worker side: each category's ``train_func`` runs skrd4ad.train.fit (the
TorchTrainer that runs it is built by pipelines/orchestrate.py, inside a Tune trial).

Each epoch's metrics go to ``ray.train.report``; every skrd4ad checkpoint (last.pt) is
reported as a Ray checkpoint too, so a restarted worker (``FailureConfig``) resumes from
the latest one instead of epoch 0. After training, the worker evaluates the final model on
the test split and reports the final metrics with a checkpoint holding model.pt, the
evaluation folder and the training history: the run's only checkpoint from then on.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

from skrd4ad.callbacks import Callback
from skrd4ad.results import LAST, METRIC_KEYS, MODEL

from .data_source import locate

# In a category's final checkpoint: its reported metrics, so that a re-run after a lost
# driver (the same deterministic run name) reuses the result instead of training again.
FINAL_METRICS = "final_metrics.json"
# In a category's final checkpoint: where its rank-0 worker ran (Ray node id and host).
PLACEMENT = "placement.json"


def joins_cluster(address: str | None) -> bool:
    """Whether start_ray connects to a cluster rather than starting an own Ray."""
    return bool(address or os.environ.get("RAY_ADDRESS"))


def start_ray(
    address: str | None, runtime_env: dict | None = None, console: dict | None = None,
    **local: Any,
) -> bool:  # fmt: skip
    """Connect to the cluster at ``address``; inside ``ray job submit`` (whose entrypoint
    Ray gives RAY_ADDRESS) to the job's cluster; otherwise start a Ray of this driver's
    own (``address="local"``), never one that another process started on this machine.
    ``console``: ray.init's console settings (orchestrate.quiet_console); ``local`` are
    ray.init's settings for an own instance. Returns whether it is own."""
    import ray

    if ray.is_initialized():
        return False
    if joins_cluster(address):
        ray.init(address=address, runtime_env=runtime_env, **(console or {}))
        return False
    ray.init(address="local", runtime_env=runtime_env, **(console or {}), **local)
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

    started_at = time.time()  # wall clock: when categories ran side by side (placement)
    cfg = worker_config(config["train"], work)
    data_source = "local"
    if config.get("source"):  # the data on this node (pipelines/data_source.py)
        root, data_source = locate(config["source"], cfg.data.root, cfg.data.category)
        cfg = cfg.with_values({"data.root": root})
    checkpoint = ray.train.get_checkpoint()
    start_epoch = 0
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            if (Path(d) / FINAL_METRICS).is_file():
                _report_finished(Path(d))
                return
            if (Path(d) / LAST).is_file():
                shutil.copy(Path(d) / LAST, work / LAST)
                cfg = cfg.with_values({"train.resume": True})
                start_epoch = int(read_checkpoint(work / LAST)["epoch"])
    result = fit(cfg, callbacks=[RayReport(work)])
    if ray.train.get_context().get_world_rank() != 0:
        # Only rank 0 holds model.pt; every worker must report the same number of times.
        ray.train.report({"final": 1.0})
        return
    extra = {"resumed_from_epoch": float(start_epoch), "torch_threads": float(threads),
             "started_at": started_at}  # fmt: skip
    _report_final(work, cfg, result, config.get("overlays", 0), extra, data_source)


class RayReport(Callback):
    """Each epoch's metrics to ``ray.train.report``, with last.pt as a Ray checkpoint
    when one was written that epoch (on rank 0), so a restarted worker resumes there."""

    def __init__(self, work: Path) -> None:
        self.work = work
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
            link(path, d / LAST)
            ray.train.report(scalars, checkpoint=ray.train.Checkpoint.from_directory(str(d)))


def _report_finished(folder: Path) -> None:
    """A run restored after a lost driver that had already finished: its final checkpoint
    and metrics stand, reported again as they are (nothing is retrained or re-evaluated)."""
    import ray.train

    if ray.train.get_context().get_world_rank() != 0:
        ray.train.report({"final": 1.0})
        return
    metrics = {**json.loads((folder / FINAL_METRICS).read_text()), "reused": 1.0}
    ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(folder)))


def _report_final(
    work: Path, cfg: Any, result: Any, overlays: int, extra: dict, data_source: str
) -> None:
    """Evaluate the final model on the test split; report its metrics with a checkpoint of
    model.pt (the one stored copy of the final weights), the history and the evaluation
    folder. It replaces the run's last epoch checkpoint: a finished run resumes nothing."""
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
        for name in (MODEL, "train_history.json"):
            link(work / name, d / name)
        shutil.copytree(work / "eval", d / "eval", copy_function=link)
        metrics = {k: (math.nan if final[k] is None else final[k]) for k in METRIC_KEYS}
        metrics["train_s"] = sum(h["epoch_s"] for h in result.history)
        metrics["images_per_s"] = result.history[-1]["images_per_s"]
        metrics["final"] = 1.0
        metrics.update(extra)
        (d / FINAL_METRICS).write_text(json.dumps(metrics))
        # Where and when it ran, and where its data came from on that node.
        where = {**placement(), "data_source": data_source, "started_at": extra["started_at"],
                 "ended_at": time.time()}  # fmt: skip
        (d / PLACEMENT).write_text(json.dumps(where))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(d)))


def placement() -> dict[str, Any]:
    """Where this process (a category's rank-0 worker) runs: the Ray node id, the host name,
    the GPUs Ray gave it and its share of them and of the CPUs (a fraction of a GPU when
    several categories share one)."""
    import socket

    import ray

    context = ray.get_runtime_context()
    gpus = [str(g) for g in context.get_accelerator_ids().get("GPU", [])]
    return {"node_id": context.get_node_id(), "host": socket.gethostname(), "gpu_ids": gpus,
            "resources": context.get_assigned_resources()}  # fmt: skip


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
