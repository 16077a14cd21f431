"""DVC stage 'benchmark': one SK-RD4AD model per category, fitted by Ray Train workers
spread over the cluster, every result tracked in MLflow.

The categories are a Tune grid (pipelines/orchestrate.py): each trial drives one
category's TorchTrainer, as many at once as the cluster holds, so Ray packs them onto its
resources; DVC itself would run per-category stages one after another. The console shows
one live row per category; MLflow gets every epoch as it is reported. A category that
fails (a data error, say) is reported with its error, the others finish, and the stage
exits non-zero naming the failed categories.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

from ray import tune

import skrd4ad
from skrd4ad.atomic import atomic_write_text
from skrd4ad.errors import UserError
from skrd4ad.results import METRIC_KEYS, MODEL, json_text

from .mlflow_model import model_name
from .model_file import MODEL_POINTER
from .orchestrate import (
    CHECKPOINT_PATH,
    ERROR,
    checkpoint_at,
    cluster_runtime_env,
    cpus_per_worker,
    drive,
    gpus_per_worker,
    max_concurrent,
    quiet_console,
    remove_from_storage,
    run_trials,
    storage_uri,
    trainer_settings,
    write_to_storage,
)
from .params import load_params, stage_parser, train_config
from .progress import Progress
from .ray_train import PLACEMENT, start_ray, train_func
from .tracking import Tracker, quiet_mlflow, source_tags
from .validate import params_key, validated

# Beside the plots: how and where each category ran (times, counts, placement, reuse).
RUNS = "runs.json"
# The params.yaml sections that decide a benchmark's numbers (in runs.json and the report).
REPORTED_SETTINGS = ("dataset", "default_dataset", "data", "model", "loss", "optim", "runtime",
                     "train", "resources", "evaluate")  # fmt: skip


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


def _train_env(local: bool) -> None:
    """On a local cluster OpenMP threads wait passively (OMP_WAIT_POLICY=PASSIVE) instead
    of spinning, so that workers may run more torch threads than their CPU share
    (``_threads_per_worker``). Every Ray process this driver starts inherits it, and
    OpenMP reads it when torch loads, so it is set before any worker starts; a user's
    setting wins."""
    if local:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


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


def _jobs(params: dict[str, Any], configs: dict[str, dict], dataset: dict) -> tuple[list, dict]:
    """Every category's Train run (its name and its workers' config), and the Train
    settings they share, with resources shared out over the cluster."""
    import ray

    ray_params, res, cluster = params["ray"], params["resources"], ray.cluster_resources()
    gpus = gpus_per_worker(res.get("gpus_per_worker", "auto"), cluster)
    num_workers = int(res.get("num_workers", 1))
    cpus = cpus_per_worker(
        res.get("cpus_per_worker", "auto"), cluster, num_workers * len(configs), gpus
    )
    storage = ray_params.get("storage_path", "results/ray")
    settings = trainer_settings(
        num_workers=num_workers, cpus=cpus, gpus=gpus,
        storage_path=storage if "://" in storage else str(Path(storage).resolve()),
        storage_endpoint=ray_params.get("storage_endpoint"),
        max_failures=int(res.get("max_failures", 2)),
        device=next(iter(configs.values())).get("runtime", {}).get("device", "auto"),
    )  # fmt: skip
    overlays = int(params["evaluate"]["overlays"])
    loop = {
        "overlays": overlays,
        "source": dataset.get("source"),
        "threads": _threads_per_worker(res.get("threads_per_worker", "auto"), cpus, gpus),
    }
    result = {"overlays": overlays, "num_workers": num_workers}
    jobs = [
        job(cat, cfg, run_name(cat, cfg, dataset, **result), **loop) for cat, cfg in configs.items()
    ]
    return jobs, settings


def job(
    category: str, config: dict[str, Any], run_name: str, *, overlays: int,
    source: dict | None = None, threads: int | None = None,
) -> dict[str, Any]:  # fmt: skip
    """One category's Train run: its name and its workers' config (plain data).
    ``source``: where a node gets the data (the prepare stage's record)."""
    loop = {"train": config, "overlays": overlays, "source": source, "threads": threads}
    return {"category": category, "run_name": run_name,
            "epochs": int(config["train"]["epochs"]), "loop": loop}  # fmt: skip


def category_trial(config: dict[str, Any]) -> None:
    """A Tune trial of the benchmark: one category's Train run."""
    job = config["job"]
    drive(job["run_name"], job["loop"], config["settings"], train_func)


class Recorder(tune.Callback):
    """Each category in MLflow while it trains: its nested run opens when it starts and
    gets every epoch as it is reported. When it ends, its final checkpoint is copied from
    storage to ``out/<category>`` and its evaluation and model go to MLflow, so MLflow's
    work overlaps the training of the others."""

    def __init__(self, tracker: Any, tags: dict, out: Path, settings: dict) -> None:
        self.tracker, self.tags, self.out, self.settings = tracker, tags, out, settings
        self.runs: dict[str, Any] = {}
        self.final: dict[str, dict] = {}
        self.outcomes: dict[str, dict[str, Any]] = {}

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its callbacks into the experiment (tuner.pkl); MLflow stays here.
        return {**self.__dict__, "tracker": Tracker.disabled()}

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        cat = trial.config["job"]["category"]
        if cat not in self.runs:  # a restarted trial keeps its run
            config = trial.config["job"]["loop"]["train"]
            self.runs[cat] = self.tracker.start_child(cat, config, self.tags)

    def on_trial_result(
        self, iteration: int, trials: list, trial: Any, result: dict, **info: Any
    ) -> None:
        cat = trial.config["job"]["category"]
        if ERROR in result:
            self.outcomes[cat] = {"category": cat, "error": result[ERROR]}
        elif "final" in result:
            self.final[cat] = dict(result)
        elif "epoch" in result:
            self.tracker.log_epoch(self.runs.get(cat), result)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        cat = trial.config["job"]["category"]
        if cat in self.outcomes:
            self.tracker.fail_child(self.runs.get(cat), self.outcomes[cat]["error"])
            return
        if cat not in self.final or CHECKPOINT_PATH not in self.final[cat]:
            self._failed(cat, "the trial ended without a final checkpoint")
            return
        self.outcomes[cat] = self._collect(cat, self.final[cat], trial.config["job"]["loop"])

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._failed(trial.config["job"]["category"], "its trial failed (see the Ray logs)")

    def _failed(self, cat: str, error: str) -> None:
        self.outcomes[cat] = {"category": cat, "error": error}
        self.tracker.fail_child(self.runs.get(cat), error)

    def _collect(self, cat: str, result: dict, loop: dict) -> dict[str, Any]:
        """The final checkpoint but the weights into ``out/<category>``, with model.json
        naming where the weights are stored once: the MLflow model logged from a transient
        download (the run storage then keeps a pointer instead of model.pt), or, with
        tracking off, the run storage."""
        folder = self.out / cat
        stored = result[CHECKPOINT_PATH].rstrip("/")
        storage, endpoint = self.settings["storage_path"], self.settings["storage_endpoint"]
        self.out.mkdir(parents=True, exist_ok=True)  # the download is renamed into it
        with tempfile.TemporaryDirectory(dir=self.out, prefix=".download-") as tmp:
            download = Path(tmp) / cat
            checkpoint_at(stored, storage, endpoint).to_directory(str(download))
            outcome = {
                "category": cat, "metrics": result, "dir": str(folder),
                "evaluation": json.loads((download / "eval" / "metrics.json").read_text()),
                "history": json.loads((download / "train_history.json").read_text()),
                "placement": json.loads((download / PLACEMENT).read_text()),
            }  # fmt: skip
            # The test metrics and the training time: keys of their own, at the last epoch
            # (images/s and the losses are per-epoch series already).
            final = {k: _nan_if_none(outcome["evaluation"][k]) for k in METRIC_KEYS}
            final["train_s"] = result.get("train_s") or 0.0
            pointer = download / MODEL_POINTER
            tags = dict(outcome["placement"])
            if pointer.is_file():  # reused: its model was logged by the run that trained it
                tags["model_uri"] = json.loads(pointer.read_text())["model"]
            name = model_name(self.tags.get("dataset"), cat, loop["train"])
            logged = self.tracker.finish_child(
                self.runs.get(cat), final, tags, download, name, step=len(outcome["history"]),
            )  # fmt: skip
            if logged:
                text = json.dumps({"model": logged, "mlflow_run": self.runs.get(cat)}, indent=1)
                write_to_storage(storage_uri(f"{stored}/{MODEL_POINTER}", storage), text, endpoint)
                remove_from_storage(storage_uri(f"{stored}/{MODEL}", storage), endpoint)
                pointer.write_text(text + "\n")
            elif not pointer.is_file():
                model = storage_uri(f"{stored}/{MODEL}", storage)
                pointer.write_text(json.dumps({"model": model}, indent=1) + "\n")
            (download / MODEL).unlink(missing_ok=True)
            if folder.exists():
                shutil.rmtree(folder)
            folder.parent.mkdir(parents=True, exist_ok=True)
            download.rename(folder)
        return outcome


def _nan_if_none(value: float | None) -> float:
    return math.nan if value is None else value


def _summary(
    dataset: dict, configs: dict, outcomes: dict, wall: float
) -> tuple[dict, dict, list, list]:  # fmt: skip
    """metrics.json (accuracy only, so that `dvc metrics show` and `dvc exp show` read as a
    table) and runs.json (how and where each category ran), both in params order, not
    finishing order; and the plots' rows."""
    accuracy: dict[str, Any] = {}
    runs: dict[str, Any] = {}
    failed: dict[str, str] = {}
    loss_rows, bar_rows = [], []
    for cat in configs:
        outcome = outcomes[cat]
        if "error" in outcome:
            failed[cat] = outcome["error"]
            accuracy[cat] = {"error": outcome["error"]}
            continue
        evaluation, history, reported = (
            outcome["evaluation"],
            outcome["history"],
            outcome["metrics"],
        )
        accuracy[cat] = {k: evaluation[k] for k in METRIC_KEYS}
        if evaluation.get("absent"):
            accuracy[cat]["absent"] = evaluation["absent"]
        run = {"test_images": evaluation["counts"]["test"]}
        for key in ("train_s", "images_per_s", "resumed_from_epoch", "torch_threads"):
            run[key] = reported.get(key)
        run["reused"] = bool(reported.get("reused"))  # finished before, by the same run
        run.update(outcome["placement"])  # where its rank-0 worker ran
        runs[cat] = run
        bar_rows.append({"category": cat, **{k: evaluation[k] for k in METRIC_KEYS}})
        loss_rows += [{"category": cat, "epoch": h["epoch"], "loss": h["loss"]} for h in history]
    ok = [c for c in accuracy if c not in failed]
    metrics = {
        "dataset": dataset["name"],
        # The means first: `dvc exp show` lists the columns in this order.
        "mean": {k: _mean([accuracy[c][k] for c in ok]) for k in METRIC_KEYS},
        "categories": accuracy,
        "failed": failed,
    }
    record = {"data_version": dataset.get("data_version", ""), "wall_s": wall, "categories": runs}
    return metrics, record, bar_rows, loss_rows


def run(
    params: dict[str, Any], prepared: Path, out: Path, metrics_file: Path, verbose: bool = False
) -> dict[str, Any]:
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
    # On a cluster the workers get this project (code, .dvc/config) as their working
    # directory, with the S3 and MLflow environment.
    runtime_env = cluster_runtime_env(Path.cwd()) if address else None
    local_cluster = start_ray(
        address, runtime_env, console=quiet_console(verbose), include_dashboard=True,
        dashboard_host="127.0.0.1", num_cpus=params["ray"].get("num_cpus"),
    )  # fmt: skip
    t0 = time.perf_counter()
    jobs, settings = _jobs(params, configs, dataset)
    tags = {
        "dataset": dataset["name"],
        **source_tags(),
        "dvc_data_hash": dataset.get("data_version", ""),
    }
    mlflow = params["mlflow"]
    tracker = Tracker(
        mlflow.get("experiment", "skrd4ad"), mlflow.get("tracking_uri"),
        mlflow.get("artifact_location"),
    )  # fmt: skip
    # Under `dvc exp run` the parent run is named after the DVC experiment.
    label = tags.get("dvc_experiment") or time.strftime("%Y%m%d-%H%M%S")
    tracker.start(f"benchmark-{label}", params, tags)
    outcomes = fit_categories(jobs, settings, (out / "benchmark").resolve(), tracker, tags, verbose)
    metrics, runs, bar_rows, loss_rows = _summary(
        dataset, configs, outcomes, time.perf_counter() - t0
    )
    atomic_write_text(metrics_file, json_text(metrics))
    runs["settings"] = {k: params[k] for k in REPORTED_SETTINGS if k in params}
    runs["mlflow"] = tracker.where()  # the report links the UI's page of this run
    atomic_write_text(out / RUNS, json_text(runs))
    plots = out / "plots"
    atomic_write_text(plots / "per_category.csv", _csv(bar_rows, ["category", *METRIC_KEYS]))
    atomic_write_text(plots / "loss.csv", _csv(loss_rows, ["category", "epoch", "loss"]))
    from skrd4ad.plots import write_benchmark_plots

    write_benchmark_plots(plots, bar_rows, loss_rows)
    tracker.finish({f"mean_{k}": v for k, v in metrics["mean"].items()}, metrics_file)
    if local_cluster:
        ray.shutdown()  # an own local instance: end it now, not at interpreter exit
    return metrics


def _describe(trial: Any) -> tuple[str, int]:
    return trial.config["job"]["category"], int(trial.config["job"]["epochs"])


def fit_categories(
    jobs: list[dict], settings: dict, out: Path, tracker: Any = None,
    tags: dict | None = None, verbose: bool = False,
) -> dict[str, dict[str, Any]]:  # fmt: skip
    """Fit the categories as one Tune grid, as many at once as the cluster's resources
    hold; each one's outcome (its final metrics and folder under ``out``, or its error).
    The grid's name follows the categories' runs, so a re-run after a lost driver writes
    into the same Tune experiment."""
    import ray

    recorder = Recorder(tracker or Tracker.disabled(), tags or {}, out, settings)
    names = json.dumps(sorted(j["run_name"] for j in jobs))
    limit = max_concurrent(
        ray.cluster_resources(), settings["num_workers"], settings["cpus"], settings["gpus"]
    )
    run_trials(
        category_trial,
        {"job": tune.grid_search(jobs), "settings": settings},
        name=f"benchmark-{hashlib.sha256(names.encode()).hexdigest()[:12]}",
        storage_path=settings["storage_path"],
        storage_endpoint=settings["storage_endpoint"],
        tune_config=tune.TuneConfig(
            max_concurrent_trials=limit,
            trial_name_creator=lambda t: t.config["job"]["category"],
            trial_dirname_creator=lambda t: t.config["job"]["category"],
        ),
        callbacks=[Progress(_describe), recorder],
        verbose=verbose,
    )
    missing = "its trial did not run to the end"
    return {
        j["category"]: recorder.outcomes.get(j["category"])
        or {"category": j["category"], "error": missing}
        for j in jobs
    }


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser("benchmark", __doc__)
    parser.add_argument("--prepared", type=Path, required=True, help="the prepare stage's output")
    parser.add_argument("--out", type=Path, required=True, help="models, evaluations, plots")
    parser.add_argument("--metrics", type=Path, required=True, help="metrics.json to write")
    parser.add_argument(
        "--verbose", action="store_true",
        help="Ray's INFO lines, the workers' output and Tune's tables (also: RAY_LOG=1)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    warnings.simplefilter("default")
    quiet_mlflow(args.verbose)
    # Ray Train copies Ray Data's context into every trainer, which reads deprecated fields.
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"ray\.data")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    try:
        metrics = run(load_params(args.params), args.prepared, args.out, args.metrics, args.verbose)
    except UserError as exc:
        print(f"benchmark: error: {exc}", file=sys.stderr)
        return 2
    done = len(metrics["categories"]) - len(metrics["failed"])
    aupro = metrics["mean"]["aupro"]
    mean = "" if aupro is None else f", mean AUPRO {100 * aupro:.2f} %"
    print(f"benchmark: {done} categories evaluated{mean}: {args.metrics}, {args.out / RUNS}")
    if metrics["failed"]:
        names = ", ".join(sorted(metrics["failed"]))
        print(f"benchmark: error: categories failed: {names} (see {args.metrics})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
