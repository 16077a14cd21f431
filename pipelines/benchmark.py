"""DVC stage 'benchmark': one SK-RD4AD model per category, fitted by Ray Train workers
spread over the cluster, every result tracked in MLflow.

All categories are launched at once (one TorchTrainer each, driven from a thread of this
driver), so Ray packs them onto the cluster's resources; DVC itself would run per-category
stages one after another. A category that fails (a data error, say) is reported with its error, the
others finish, and the stage exits non-zero naming the failed categories.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import queue
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any

from skrd4ad.atomic import atomic_write_text
from skrd4ad.errors import UserError
from skrd4ad.results import METRIC_KEYS, json_text

from .params import load_params, train_config
from .ray_train import fit_category, start_ray
from .tracking import Tracker, git_commit
from .validate import params_key, validated

RESULTS = Path("results")
METRICS = Path("metrics.json")


def _gpus_per_worker(value: Any, cluster: dict[str, float]) -> float:
    if value in (None, "auto"):
        return 1.0 if cluster.get("GPU", 0) > 0 else 0.0
    return float(value)


def _cpus_per_worker(value: Any, cluster: dict[str, float], workers: int, gpus: float) -> float:
    """``auto``: on a CPU-only cluster, an equal share of its CPUs for every worker of every
    category, so all categories run at once and none waits for a free CPU while others
    leave cores idle at the end (at least 0.5 CPU, i.e. at most two workers per core);
    with GPUs, 1 CPU per worker (the data is decoded once and evaluation runs on the GPU).
    """
    if value not in (None, "auto"):
        return float(value)
    if gpus > 0:
        return 1.0
    # Ray counts resources in steps of 1e-4: round down, or 3 x 0.6667 CPUs exceed 2.
    share = math.floor(cluster.get("CPU", 1.0) / max(workers, 1) * 1e4) / 1e4
    return max(0.5, min(share, 8.0))


def _threads_per_worker(value: Any, cpus: float, gpus: float) -> int | None:
    """torch intra-op threads per worker. ``auto``: on CPU workers, twice the worker's CPU
    share rounded up, so that a category still running takes over the cores of those that
    finished (3 categories on 2 cores: 2 threads each); with OpenMP waiting passively the
    extra threads cost nothing while all categories run (measured, BENCHMARKS.md). With
    GPUs, Ray's default (its CPU share)."""
    if value not in (None, "auto"):
        return int(value)
    if gpus > 0:
        return None
    return max(1, math.ceil(2 * cpus - 1e-9))


def _mean(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    return sum(vals) / len(vals) if vals else None


def _csv(rows: list[dict[str, Any]], fields: list[str]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields)
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def _fault_injection() -> dict[str, Any] | None:
    """SKRD4AD_FAULT_AFTER_EPOCH=N and SKRD4AD_FAULT_MARKER=FILE kill each category's worker
    once after epoch N, to prove recovery from checkpoints (tests only)."""
    after = os.environ.get("SKRD4AD_FAULT_AFTER_EPOCH")
    if not after:
        return None
    return {"after_epoch": int(after), "marker": os.environ["SKRD4AD_FAULT_MARKER"]}


def _train_env(local: bool) -> None:
    """On a local cluster OpenMP threads wait passively (OMP_WAIT_POLICY=PASSIVE) instead
    of spinning, so that workers may run more torch threads than their CPU share
    (``_threads_per_worker``). Every Ray process this driver starts inherits it, and
    OpenMP reads it when torch loads, so it is set before any worker starts; a user's
    setting wins."""
    if local:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _launch(fits: dict[str, dict[str, Any]]) -> queue.Queue:
    """Run every category's ``fit_category`` at once, each in a daemon thread of this
    driver; outcomes arrive on the returned queue as categories finish.

    Threads, not Ray tasks: a TorchTrainer's ``fit`` only waits on its controller actor,
    and a task per category cost one more worker process importing Ray Train and torch
    (about 3 s of CPU each, measured). Daemon threads let Ctrl-C end the driver (and with
    it the job's actors) instead of waiting for the fits.
    """
    done: queue.Queue = queue.Queue()

    def one(cat: str, kwargs: dict[str, Any]) -> None:
        try:
            done.put(fit_category(cat, **kwargs))
        except Exception as exc:  # noqa: BLE001 - reported per category, never raised
            done.put({"category": cat, "error": f"{type(exc).__name__}: {exc}"[:500]})

    for cat, kwargs in fits.items():
        threading.Thread(target=one, args=(cat, kwargs), name=f"fit-{cat}", daemon=True).start()
    return done


def run(params: dict[str, Any]) -> dict[str, Any]:
    import ray

    prepared = Path(os.environ.get("SKRD4AD_PREPARED", "prepared"))
    try:
        dataset = json.loads((prepared / "dataset.json").read_text())
    except FileNotFoundError as exc:
        raise UserError(
            f"{prepared / 'dataset.json'} is missing: run the prepare stage first "
            "(`dvc repro prepare` or `python -m pipelines.prepare`)"
        ) from exc
    # Every category's settings are checked here, before Ray starts: a typo costs a second.
    where = params_key(params)
    configs = {
        cat: validated(
            train_config(params, str(Path(dataset["root"]).resolve()), cat, dataset["layout"]),
            where,
        )
        for cat in dataset["categories"]
    }
    ray_params, res = params["ray"], params["resources"]
    address = ray_params.get("address") or None
    _train_env(local=address is None)
    # An own local instance ends with this driver. Its dashboard serves Ray Train's
    # placement-group cleaner (the State API) and the user, on this machine only.
    local_cluster = start_ray(
        address,
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        num_cpus=ray_params.get("num_cpus"),
    )
    gpus = _gpus_per_worker(res.get("gpus_per_worker", "auto"), ray.cluster_resources())
    num_workers = int(res.get("num_workers", 1))
    cpus = _cpus_per_worker(
        res.get("cpus_per_worker", "auto"),
        ray.cluster_resources(),
        num_workers * len(dataset["categories"]),
        gpus,
    )
    threads = _threads_per_worker(res.get("threads_per_worker", "auto"), cpus, gpus)
    storage = ray_params.get("storage_path", "results/ray")
    storage = storage if "://" in storage else str(Path(storage).resolve())
    bench_name = f"benchmark-{time.strftime('%Y%m%d-%H%M%S')}"
    out_dir = (RESULTS / "benchmark").resolve()

    t0 = time.perf_counter()
    done = _launch(
        {
            cat: dict(
                train_config=cfg,
                num_workers=num_workers,
                cpus_per_worker=cpus,
                gpus_per_worker=gpus,
                storage_path=storage,
                run_name=f"{bench_name}-{cat}",
                max_failures=int(res.get("max_failures", 2)),
                overlays=int(params.get("report", {}).get("overlays", 2)),
                dest=out_dir / cat,
                fault=_fault_injection(),
                storage_endpoint=ray_params.get("storage_endpoint"),
                threads=threads,
            )
            for cat, cfg in configs.items()
        }
    )

    # The parent run opens while the categories train, and each category is logged as
    # soon as it finishes, so MLflow's work overlaps the training of the others.
    tags = {
        "dataset": dataset["name"],
        "git_commit": git_commit(),
        "dvc_data_hash": dataset.get("data_version", ""),
    }
    tracker = Tracker(
        params["mlflow"].get("experiment", "skrd4ad"),
        params["mlflow"].get("tracking_uri"),
        params["mlflow"].get("artifact_location"),
    )
    tracker.start(bench_name, params, tags)
    outcomes: dict[str, dict[str, Any]] = {}
    for _ in configs:
        outcome = done.get()
        cat = outcome["category"]
        outcomes[cat] = outcome
        if "error" in outcome:
            print(f"benchmark: {cat} failed: {outcome['error']}", file=sys.stderr)
            continue
        folder = Path(outcome["dir"])
        outcome["evaluation"] = json.loads((folder / "eval" / "metrics.json").read_text())
        outcome["history"] = json.loads((folder / "train_history.json").read_text())
        final = {
            k: (math.nan if outcome["evaluation"][k] is None else outcome["evaluation"][k])
            for k in METRIC_KEYS
        }
        final.update(
            train_s=outcome["metrics"].get("train_s") or 0.0,
            images_per_s=outcome["metrics"].get("images_per_s") or 0.0,
        )
        tracker.log_category(cat, configs[cat], outcome["history"], final, tags, folder)
    wall = time.perf_counter() - t0

    per_category: dict[str, Any] = {}
    failed: dict[str, str] = {}
    loss_rows, bar_rows = [], []
    for cat in configs:  # params order, not finishing order
        outcome = outcomes[cat]
        if "error" in outcome:
            failed[cat] = outcome["error"]
            per_category[cat] = {"error": outcome["error"]}
            continue
        evaluation, history = outcome["evaluation"], outcome["history"]
        entry = {k: evaluation[k] for k in METRIC_KEYS}
        if evaluation.get("absent"):
            entry["absent"] = evaluation["absent"]
        entry["train_s"] = outcome["metrics"].get("train_s")
        entry["images_per_s"] = outcome["metrics"].get("images_per_s")
        entry["test_images"] = evaluation["counts"]["test"]
        entry["resumed_from_epoch"] = outcome["metrics"].get("resumed_from_epoch")
        entry["torch_threads"] = outcome["metrics"].get("torch_threads")
        per_category[cat] = entry
        bar_rows.append({"category": cat, **{k: evaluation[k] for k in METRIC_KEYS}})
        loss_rows += [{"category": cat, "epoch": h["epoch"], "loss": h["loss"]} for h in history]

    ok = [c for c in per_category if c not in failed]
    metrics = {
        "dataset": dataset["name"],
        "categories": per_category,
        "mean": {k: _mean([per_category[c][k] for c in ok]) for k in METRIC_KEYS},
        "failed": failed,
        "wall_s": wall,
    }
    atomic_write_text(METRICS, json_text(metrics))
    plots = RESULTS / "plots"
    atomic_write_text(plots / "per_category.csv", _csv(bar_rows, ["category", *METRIC_KEYS]))
    atomic_write_text(plots / "loss.csv", _csv(loss_rows, ["category", "epoch", "loss"]))
    tracker.finish(metrics, METRICS)
    if local_cluster:
        ray.shutdown()  # an own local instance: end it now, not at interpreter exit
    return metrics


def main() -> int:
    warnings.simplefilter("default")
    # Ray Train copies Ray Data's context into every trainer, which reads deprecated fields.
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"ray\.data")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    try:
        metrics = run(load_params())
    except UserError as exc:
        print(f"benchmark: error: {exc}", file=sys.stderr)
        return 2
    print(json_text({"mean": metrics["mean"], "failed": metrics["failed"]}), end="")
    if metrics["failed"]:
        names = ", ".join(sorted(metrics["failed"]))
        print(f"benchmark: error: categories failed: {names} (see metrics.json)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
