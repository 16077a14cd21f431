"""DVC stage 'benchmark': one SK-RD4AD model per category, fitted by Ray Train workers
spread over the cluster, every result tracked in MLflow.

All categories are launched at once (one TorchTrainer each, driven from a thread of this
driver), so Ray packs them onto the cluster's resources; DVC itself would run per-category
stages one after another. A category that fails (a data error, say) is reported with its error, the
others finish, and the stage exits non-zero naming the failed categories.
"""

from __future__ import annotations

import csv
import hashlib
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

import skrd4ad
from skrd4ad.atomic import atomic_write_text
from skrd4ad.errors import UserError
from skrd4ad.results import METRIC_KEYS, json_text

from .params import load_params, stage_parser, train_config
from .ray_train import PLACEMENT, fit_category, start_ray
from .tracking import Tracker, git_commit
from .validate import params_key, validated


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
    (BENCHMARKS.md). Daemon threads let Ctrl-C end the driver (and with
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


def _read_dataset(prepared: Path) -> dict[str, Any]:
    try:
        return json.loads((prepared / "dataset.json").read_text())
    except FileNotFoundError as exc:
        raise UserError(
            f"{prepared / 'dataset.json'} is missing: run the prepare stage first "
            "(`dvc repro prepare` or `python -m pipelines.prepare`)"
        ) from exc


def code_version() -> str:
    """A digest of the code that trains and evaluates (skrd4ad/ and pipelines/)."""
    digest = hashlib.sha256()
    for package in (Path(skrd4ad.__file__).parent, Path(__file__).parent):
        for path in sorted(package.rglob("*.py")):
            digest.update(path.relative_to(package.parent).as_posix().encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def run_name(category: str, config: dict[str, Any], dataset: dict, **settings: Any) -> str:
    """The category's Ray Train run: a function of its config, the data version, the code
    and the other settings that change its result. A re-run after a lost driver finds the
    same run in storage, which Ray Train resumes from its latest checkpoint (or, finished,
    reuses); a changed setting, dataset or code gives a new run, so nothing stale is used."""
    key = {"config": config, "data": dataset.get("data_version", ""), "code": code_version()}
    text = json.dumps({**key, **settings}, sort_keys=True, default=str)
    return f"{category}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def _fits(params: dict[str, Any], configs: dict[str, dict], out: Path, dataset: dict) -> dict:
    """Every category's fit_category arguments, resources shared out over the cluster."""
    import ray

    ray_params, res = params["ray"], params["resources"]
    gpus = _gpus_per_worker(res.get("gpus_per_worker", "auto"), ray.cluster_resources())
    num_workers = int(res.get("num_workers", 1))
    cpus = _cpus_per_worker(
        res.get("cpus_per_worker", "auto"), ray.cluster_resources(), num_workers * len(configs),
        gpus,
    )  # fmt: skip
    storage = ray_params.get("storage_path", "results/ray")
    common = dict(
        num_workers=num_workers,
        cpus_per_worker=cpus,
        gpus_per_worker=gpus,
        storage_path=storage if "://" in storage else str(Path(storage).resolve()),
        max_failures=int(res.get("max_failures", 2)),
        overlays=int(params["evaluate"]["overlays"]),
        fault=_fault_injection(),
        storage_endpoint=ray_params.get("storage_endpoint"),
        threads=_threads_per_worker(res.get("threads_per_worker", "auto"), cpus, gpus),
    )
    result = {"overlays": common["overlays"], "num_workers": num_workers}
    return {
        cat: dict(
            train_config=cfg,
            run_name=run_name(cat, cfg, dataset, **result),
            dest=out / cat,
            **common,
        )  # fmt: skip
        for cat, cfg in configs.items()
    }


def _collect(done: queue.Queue, configs: dict, tracker: Any, tags: dict) -> dict[str, dict]:
    """Each category's outcome as it finishes, logged to MLflow at once, so that MLflow's
    work overlaps the training of the others."""
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
        outcome["placement"] = json.loads((folder / PLACEMENT).read_text())
        final = {k: _nan_if_none(outcome["evaluation"][k]) for k in METRIC_KEYS}
        final.update(
            train_s=outcome["metrics"].get("train_s") or 0.0,
            images_per_s=outcome["metrics"].get("images_per_s") or 0.0,
        )
        run_tags = {**tags, **outcome["placement"]}
        tracker.log_category(cat, configs[cat], outcome["history"], final, run_tags, folder)
    return outcomes


def _nan_if_none(value: float | None) -> float:
    return math.nan if value is None else value


def _summary(dataset: dict, configs: dict, outcomes: dict, wall: float) -> tuple[dict, list, list]:
    """metrics.json in params order (not finishing order), and the plots' rows."""
    per_category: dict[str, Any] = {}
    failed: dict[str, str] = {}
    loss_rows, bar_rows = [], []
    for cat in configs:
        outcome = outcomes[cat]
        if "error" in outcome:
            failed[cat] = outcome["error"]
            per_category[cat] = {"error": outcome["error"]}
            continue
        evaluation, history, reported = (
            outcome["evaluation"],
            outcome["history"],
            outcome["metrics"],
        )
        entry = {k: evaluation[k] for k in METRIC_KEYS}
        if evaluation.get("absent"):
            entry["absent"] = evaluation["absent"]
        entry["test_images"] = evaluation["counts"]["test"]
        for key in ("train_s", "images_per_s", "resumed_from_epoch", "torch_threads"):
            entry[key] = reported.get(key)
        entry["reused"] = bool(reported.get("reused"))  # finished before, by the same run
        entry.update(outcome["placement"])  # where its rank-0 worker ran
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
    return metrics, bar_rows, loss_rows


def run(params: dict[str, Any], prepared: Path, out: Path, metrics_file: Path) -> dict[str, Any]:
    """Train and evaluate every prepared category; writes ``metrics_file``,
    ``out/benchmark/<category>`` and ``out/plots``."""
    import ray

    dataset = _read_dataset(prepared)
    # Every category's settings are checked here, before Ray starts: a typo costs a second.
    where, root = params_key(params), str(Path(dataset["root"]).resolve())
    configs = {
        cat: validated(train_config(params, root, cat, dataset["layout"]), where)
        for cat in dataset["categories"]
    }
    address = params["ray"].get("address") or None
    _train_env(local=address is None)
    # An own local instance ends with this driver. Its dashboard serves Ray Train's
    # placement-group cleaner (the State API) and the user, on this machine only.
    local_cluster = start_ray(
        address, include_dashboard=True, dashboard_host="127.0.0.1",
        num_cpus=params["ray"].get("num_cpus"),
    )  # fmt: skip
    name = f"benchmark-{time.strftime('%Y%m%d-%H%M%S')}"
    t0 = time.perf_counter()
    done = _launch(_fits(params, configs, (out / "benchmark").resolve(), dataset))
    tags = {
        "dataset": dataset["name"],
        "git_commit": git_commit(),
        "dvc_data_hash": dataset.get("data_version", ""),
    }
    mlflow = params["mlflow"]
    tracker = Tracker(
        mlflow.get("experiment", "skrd4ad"), mlflow.get("tracking_uri"),
        mlflow.get("artifact_location"),
    )  # fmt: skip
    tracker.start(name, params, tags)
    outcomes = _collect(done, configs, tracker, tags)
    metrics, bar_rows, loss_rows = _summary(dataset, configs, outcomes, time.perf_counter() - t0)
    atomic_write_text(metrics_file, json_text(metrics))
    plots = out / "plots"
    atomic_write_text(plots / "per_category.csv", _csv(bar_rows, ["category", *METRIC_KEYS]))
    atomic_write_text(plots / "loss.csv", _csv(loss_rows, ["category", "epoch", "loss"]))
    tracker.finish({f"mean_{k}": v for k, v in metrics["mean"].items()}, metrics_file)
    if local_cluster:
        ray.shutdown()  # an own local instance: end it now, not at interpreter exit
    return metrics


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser("benchmark", __doc__)
    parser.add_argument("--prepared", type=Path, required=True, help="the prepare stage's output")
    parser.add_argument("--out", type=Path, required=True, help="models, evaluations, plots")
    parser.add_argument("--metrics", type=Path, required=True, help="metrics.json to write")
    args = parser.parse_args(argv)
    warnings.simplefilter("default")
    # Ray Train copies Ray Data's context into every trainer, which reads deprecated fields.
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"ray\.data")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    try:
        metrics = run(load_params(args.params), args.prepared, args.out, args.metrics)
    except UserError as exc:
        print(f"benchmark: error: {exc}", file=sys.stderr)
        return 2
    print(json_text({"mean": metrics["mean"], "failed": metrics["failed"]}), end="")
    if metrics["failed"]:
        names = ", ".join(sorted(metrics["failed"]))
        print(f"benchmark: error: categories failed: {names} (see {args.metrics})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
