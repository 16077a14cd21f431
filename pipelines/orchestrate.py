"""The one orchestration path of the benchmark and the search: a Ray Tune run whose trials
each drive one Ray Train run (a ``TorchTrainer``), Ray's "Train in Tune" pattern.

A benchmark is a grid over categories with a fixed config; a search samples configs. Either
way Tune runs the trials (how many at once, trial-level fault tolerance: a trial whose
node is lost starts again and its Train run resumes from storage), and every trial's model
is fitted by Ray Train workers (DDP when ``num_workers > 1``), whose reports reach Tune
(and its callbacks: the live progress table, MLflow) through the trial's thread
(pipelines/trial_reports.py).
"""

from __future__ import annotations

import contextlib
import io
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .data_source import CACHE_ENV

# A trial only drives its Train run; the Train workers hold the CPUs and GPUs. Tune refuses
# an empty request, so a trial asks for one byte of memory and no CPU (a CPU share would
# leave a worker that asks for all of a node's CPUs unschedulable).
TRIAL_RESOURCES = {"CPU": 0, "memory": 1}
# A report's metrics name the checkpoint it stored (in the Train run's storage) under this
# key, the one Ray's TuneReportCallback uses.
CHECKPOINT_PATH = "checkpoint_path"
# A trial whose Train run failed for good reports its error under this key and ends; a
# raised error would make Tune retry a run that Ray Train already retried.
ERROR = "error"


# Environment a driver hands on to a cluster's workers: S3 and MLflow access, skrd4ad's
# settings. A node's own data cache (data_source.CACHE_ENV) stays the node's.
FORWARDED_ENV = ("MLFLOW_", "AWS_", "SKRD4AD_")
NODE_ENV = (CACHE_ENV,)
# What a cluster run's working directory leaves out (gitignore patterns, anchored at the
# project): data reaches the workers through DVC, outputs stay with the driver.
EXCLUDES = ["/.git", "/.venv", "/.dvc/cache", "/.dvc/tmp", "/data", "/prepared", "/results",
            "/runs", "/mlruns", "/mlflow.db", "*.pt", "*.onnx", "__pycache__"]  # fmt: skip


def cluster_runtime_env(project: Path | None) -> dict[str, Any] | None:
    """What a driver that joins a cluster gives every worker: the project as the working
    directory (the code, .dvc/config and data.dvc, so no node needs a checkout) and the
    forwarded environment. None inside ``ray job submit`` (Ray gives its entrypoint
    RAY_ADDRESS), whose runtime env reaches every worker already (and Ray refuses a
    second one that repeats its keys)."""
    if os.environ.get("RAY_ADDRESS"):
        return None
    env = {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV) and k not in NODE_ENV}
    runtime_env: dict[str, Any] = {"env_vars": env} if env else {}
    if project is not None:
        runtime_env.update(working_dir=str(project), excludes=EXCLUDES)
    return runtime_env or None


def gpus_per_worker(value: Any, cluster: dict[str, float]) -> float:
    """``auto``: one whole GPU per worker when the cluster has GPUs, else none."""
    if value in (None, "auto"):
        return 1.0 if cluster.get("GPU", 0) > 0 else 0.0
    return float(value)


def cpus_per_worker(value: Any, cluster: dict[str, float], workers: int, gpus: float) -> float:
    """``auto``: on a CPU-only cluster, an equal share of its CPUs for every worker of every
    category, so all categories run at once and none waits for a free CPU while others
    leave cores idle at the end (at least 0.5 CPU, i.e. at most two workers per core); with
    GPUs, 1 CPU per worker (the data is decoded once and evaluation runs on the GPU)."""
    if value not in (None, "auto"):
        return float(value)
    if gpus > 0:
        return 1.0
    # Ray counts resources in steps of 1e-4: round down, or 3 x 0.6667 CPUs exceed 2.
    share = math.floor(cluster.get("CPU", 1.0) / max(workers, 1) * 1e4) / 1e4
    return max(0.5, min(share, 8.0))


def max_concurrent(cluster: dict[str, float], workers: int, cpus: float, gpus: float) -> int:
    """How many Train runs of ``workers`` workers fit on the cluster at once: more trials
    would only hold idle Train controllers waiting for resources."""
    fits = [cluster.get("CPU", 0.0) / (cpus * workers)] if cpus > 0 else []
    if gpus > 0:
        fits.append(cluster.get("GPU", 0.0) / (gpus * workers))
    return max(1, int(min(fits) + 1e-9)) if fits else 1


def trainer_settings(
    *, num_workers: int, cpus: float, gpus: float, storage_path: str,
    storage_endpoint: str | None, max_failures: int, device: str = "auto",
) -> dict[str, Any]:  # fmt: skip
    """What every Train run of one orchestration shares (plain data, sent to each trial).
    ``device``: the runtime.device setting; ``cpu`` on GPU workers (fake GPUs in tests, or
    a GPU left to something else) makes DDP use gloo, not NCCL."""
    return {
        "num_workers": num_workers, "cpus": cpus, "gpus": gpus, "storage_path": storage_path,
        "storage_endpoint": storage_endpoint, "max_failures": max_failures,
        "backend": "nccl" if gpus > 0 and device != "cpu" else "gloo",
    }  # fmt: skip


def drive(
    run_name: str,
    loop_config: dict[str, Any],
    settings: dict[str, Any],
    train_func: Callable[[dict], None],
) -> None:
    """Inside a Tune trial: fit one Train run and end; its reports reach Tune as they are
    made, through this thread (trial_reports). A run that failed for good is reported with
    its error, after its last report, instead of raised."""
    from ray import tune
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from .ray_train import storage_args
    from .trial_reports import ForwardReports, fit_and_forward, report_queue

    reports = report_queue()
    resources = {"CPU": settings["cpus"]}
    if settings["gpus"]:
        resources["GPU"] = settings["gpus"]
    trainer = TorchTrainer(
        train_func,
        torch_config=TorchConfig(backend=settings["backend"]),
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(
            num_workers=settings["num_workers"],
            use_gpu=settings["gpus"] > 0,
            resources_per_worker=resources,
        ),  # fmt: skip
        run_config=RunConfig(
            name=run_name,
            **storage_args(settings["storage_path"], settings["storage_endpoint"]),
            failure_config=FailureConfig(max_failures=settings["max_failures"]),
            # Resume needs only the latest (each last.pt holds the optimizer state too); a
            # finished run keeps only its final checkpoint.
            checkpoint_config=CheckpointConfig(num_to_keep=1),
            callbacks=[ForwardReports(reports)],
        ),
    )
    try:
        result = fit_and_forward(trainer, reports)
    except Exception as exc:  # noqa: BLE001 - reported as the trial's outcome
        tune.report({ERROR: root_cause(exc)})
        return
    drop_epoch_checkpoints(result)


def drop_epoch_checkpoints(result: Any) -> None:
    """A finished run's epoch checkpoints (folders of its run storage holding last.pt) go:
    its final checkpoint holds all it is read for. Ray removed those it had registered
    (num_to_keep); this removes one a lost driver left uploaded but never registered."""
    import pyarrow.fs

    from skrd4ad.results import LAST

    fs = result.filesystem
    for info in fs.get_file_info(pyarrow.fs.FileSelector(result.path)):
        if info.type != pyarrow.fs.FileType.Directory:
            continue
        if fs.get_file_info(f"{info.path}/{LAST}").type == pyarrow.fs.FileType.File:
            fs.delete_dir(info.path)


def run_trials(
    trainable: Callable[[dict], None],
    param_space: dict[str, Any],
    *,
    name: str,
    storage_path: str,
    storage_endpoint: str | None,
    tune_config: Any,
    callbacks: Sequence[Any] = (),
    trial_retries: int = 1,
    verbose: bool = False,
) -> Any:
    """Run the trials with Tune; returns its ResultGrid. ``trial_retries``: how often a
    trial whose own process was lost (its node, say) starts again."""
    from ray import tune

    from .ray_train import storage_args

    tuner = tune.Tuner(
        trial_trainable(trainable),
        param_space=param_space,
        tune_config=tune_config,
        run_config=tune.RunConfig(
            name=name,
            **storage_args(storage_path, storage_endpoint),
            failure_config=tune.FailureConfig(max_failures=trial_retries),
            callbacks=list(callbacks),
            # The callbacks show progress; Tune's own tables only with --verbose.
            verbose=2 if verbose else 0,
        ),
    )
    return fit(tuner, verbose)


def fit(tuner: Any, verbose: bool) -> Any:
    """``tuner.fit()``; Tune's experiment header (and a TensorBoard hint for logs this
    project does not write), which it prints on stdout whatever its verbosity, only with
    ``verbose``: the callbacks show the run instead."""
    if verbose:
        return tuner.fit()
    with contextlib.redirect_stdout(io.StringIO()):
        return tuner.fit()


def trial_trainable(trial: Callable[[dict], None]) -> Any:
    """A trial function as Tune runs it (also what ``Tuner.restore`` must be given)."""
    from ray import tune

    return tune.with_resources(trial, TRIAL_RESOURCES)


def storage_uri(path: str, storage_path: str) -> str:
    """A path in the run storage as a user names it (``s3://bucket/...`` for S3)."""
    return f"s3://{path}" if storage_path.startswith("s3://") else path


def checkpoint_at(path: str, storage_path: str, storage_endpoint: str | None) -> Any:
    """A Train checkpoint in storage, by the path a report named (CHECKPOINT_PATH)."""
    from ray.train import Checkpoint

    from .ray_train import storage_args

    fs = storage_args(storage_path, storage_endpoint).get("storage_filesystem")
    return Checkpoint(path, filesystem=fs)


def _in_storage(location: str, endpoint: str | None) -> tuple[Any, str]:
    """The pyarrow filesystem and path of an s3:// URI in the run storage."""
    import pyarrow.fs

    from .ray_train import storage_args

    where = storage_args(location, endpoint)
    fs, path = where.get("storage_filesystem"), where["storage_path"]
    if fs is None:
        fs, path = pyarrow.fs.FileSystem.from_uri(location)
    return fs, path


def write_to_storage(location: str, text: str, endpoint: str | None) -> None:
    """Write a small file (a search's best.yaml) where the run's storage is: a local or
    mounted path (atomically), or an s3:// URI, where a cluster user finds it."""
    if "://" not in location:
        from skrd4ad.atomic import atomic_write_text

        atomic_write_text(Path(location), text)
        return
    fs, path = _in_storage(location, endpoint)
    with fs.open_output_stream(path) as f:
        f.write(text.encode())


def open_in_storage(location: str, endpoint: str | None) -> Any:
    """A file in the run storage (a local or mounted path, or an s3:// URI), opened for
    reading; FileNotFoundError when it is not there."""
    if "://" not in location:
        return open(location, "rb")  # noqa: SIM115 - the caller's with-block closes it
    fs, path = _in_storage(location, endpoint)
    return fs.open_input_stream(path)


def remove_from_storage(location: str, endpoint: str | None) -> None:
    """Delete a file in the run storage (a local or mounted path, or an s3:// URI)."""
    if "://" not in location:
        Path(location).unlink(missing_ok=True)
        return
    fs, path = _in_storage(location, endpoint)
    fs.delete_file(path)


def root_cause(exc: BaseException) -> str:
    """The innermost error of a chain, in one line (the last line of its message)."""
    seen = exc
    while seen.__cause__ is not None:
        seen = seen.__cause__
    text = [line for line in str(seen).strip().splitlines() if line.strip()]
    return f"{type(seen).__name__}: {text[-1] if text else ''}"[:500]


def quiet_console(verbose: bool) -> dict[str, Any]:
    """ray.init settings for the driver's console: Ray's INFO lines and the workers' own
    output (Ray Train's ``TrainingReport(...)`` lines among them) only with ``verbose``;
    they stay in the Ray session's log folder either way."""
    import logging

    if verbose or os.environ.get("RAY_LOG"):
        return {"log_to_driver": True, "logging_level": logging.INFO}
    return {"log_to_driver": False, "logging_level": logging.WARNING}
