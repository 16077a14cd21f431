"""Ray Tune search of the SK-RD4AD loss weights (α/β/γ, optionally lr, epochs, skip).

    python -m pipelines.tune --space tune_spaces/loss_weights.yaml [--write-params]

or, on a running cluster,

    ray job submit --address http://HOST:8265 --working-dir . -- \\
        python -m pipelines.tune --space tune_spaces/loss_weights.yaml

Each trial is a function trainable running :func:`skrd4ad.train.fit` with the trial's
weights and reporting every epoch's validation metrics (held-out normal images with
synthetic defects) to Tune, where ASHA prunes on them. The test split is never read
during the search. Afterwards the best completed trial of each category is evaluated once
on the test set, every trial is a nested MLflow run under one parent run per search, and
the best configs are written to ``<storage>/<name>/best.yaml`` (and, with
``--write-params``, into params.yaml for ``dvc repro``).

Scope ``per_category`` runs one search per category. Scope ``shared`` searches one config
for all categories: a trial trains them in lockstep, an epoch of each at a time (each
resuming from its checkpoint), and reports the mean validation metric.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from skrd4ad.atomic import atomic_write_text, make_dir, temporary_dir
from skrd4ad.config import Config
from skrd4ad.errors import UserError
from skrd4ad.results import LAST, METRIC_KEYS

from .data_source import locate
from .lockstep import Lockstep
from .orchestrate import (
    CHECKPOINT_PATH,
    ERROR,
    checkpoint_at,
    cluster_runtime_env,
    drive,
    fit,
    quiet_console,
    run_trials,
    trainer_settings,
    trial_trainable,
    write_to_storage,
)
from .params import load_params, stage_parser, train_config
from .progress import Progress
from .ray_train import joins_cluster, link, scalar_metrics, start_ray, storage_args
from .tracking import quiet_mlflow
from .tune_space import SearchSpec, load_space, param_space, scheduler, search_algorithm
from .validate import params_key, validated

# --------------------------------------------------------------------------- trial side
_OPEN_LOG: dict[str, Any] = {}


def _record_opens(roots: list[str], log: str) -> None:
    """Append every file this process opens under ``roots`` to ``log`` (an audit hook).

    This is the proof that a search never reads the test split: the hook sees every
    ``open`` of the process, PIL's included, not only the ones skrd4ad means to make.
    """
    if _OPEN_LOG.get(log):  # audit hooks cannot be removed: install once per process
        return
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    prefixes = tuple(os.path.realpath(root) + os.sep for root in roots)

    def hook(event: str, args: tuple) -> None:
        if event != "open" or not isinstance(args[0], str):
            return
        path = args[0] if args[0].startswith(prefixes) else os.path.realpath(args[0])
        if path.startswith(prefixes):
            os.write(fd, (path + "\n").encode())  # os.write raises no 'open' event

    sys.addaudithook(hook)
    _OPEN_LOG[log] = fd


def data_roots(base: dict[str, Any]) -> dict[str, str]:
    """Each category's dataset root on this node (pipelines/data_source.py: in place, the
    node cache, the DVC remote or, for the default dataset, made here)."""
    root, source = base["train"]["data"]["root"], base.get("source")
    if not source:  # prepared before sources were recorded: the root as it is
        return {cat: root for cat in base["categories"]}
    return {cat: locate(source, root, cat)[0] for cat in base["categories"]}


def trial_settings(config: dict[str, Any], base: dict[str, Any], root: str) -> Config:
    """A trial's Config: the base with the searched values, on this node's dataset,
    validated and checkpointed every epoch (the scheduler's time unit)."""
    fixed = {"data.root": root, "train.progress": False, "train.val_every": 1,
             "train.checkpoint_every": 1, "train.select": "last"}  # fmt: skip
    return Config.from_dict(base["train"]).with_values({**config, **fixed})


def search_trial(config: dict[str, Any], base: dict[str, Any]) -> None:
    """A Tune trial of the search: one Train run (its id names it, so a trial restarted by
    ``--resume`` resumes its run from storage) training with the searched settings."""
    from ray import tune

    run = tune.get_context().get_trial_id()
    drive(run, {"config": config, "base": base}, base["trainer"], trial_worker)


def trial_worker(loop: dict[str, Any]) -> None:
    """A trial's Train worker: the searched settings in ``loop["config"]``
    (``{"loss.alpha": ..}``), everything else in ``loop["base"]``; its work folder goes
    when it ends."""
    import ray.train

    config, base = loop["config"], loop["base"]
    started = time.perf_counter()  # trial_s: the trial's own time, to tell Tune's overhead
    # Finding the data hashes each category's files (the manifest check) before the hook
    # below records opens; nothing of that reaches training.
    roots = data_roots(base)
    if base.get("open_log"):
        _record_opens(sorted(set(roots.values())), base["open_log"])
    settings = trial_settings(config, base, next(iter(roots.values())))
    work = make_dir(prefix="skrd4ad-trial-")
    try:
        restored = ray.train.get_checkpoint()
        if restored is not None:
            with restored.as_directory() as d:
                for cat in base["categories"]:
                    if (Path(d) / cat / LAST).is_file():
                        (work / cat).mkdir(parents=True, exist_ok=True)
                        shutil.copy(Path(d) / cat / LAST, work / cat / LAST)
        Trial(settings, base, work, started, roots).run()
    finally:
        shutil.rmtree(work, ignore_errors=True)


class Trial:
    """A trial's categories trained in its work folder, each epoch reported (to Ray Train,
    and through it to Tune) with a checkpoint of every category's last.pt."""

    def __init__(
        self, settings: Any, base: dict[str, Any], work: Path, started: float,
        roots: dict[str, str],
    ) -> None:  # fmt: skip
        self.settings, self.base, self.work, self.started = settings, base, work, started
        self.categories, self.roots = base["categories"], roots

    def config_for(self, cat: str) -> Any:
        return self.settings.with_values({
            "data.category": cat, "data.root": self.roots[cat], "train.out": str(self.work / cat),
            "train.resume": (self.work / cat / LAST).is_file(),
        })  # fmt: skip

    def report(self, metrics: dict[str, float]) -> None:
        import ray.train

        metrics["trial_s"] = time.perf_counter() - self.started
        metrics = objective_first(metrics, self.base["metric"])
        with temporary_dir() as tmp:
            for cat in self.categories:
                if (self.work / cat / LAST).is_file():
                    (Path(tmp) / cat).mkdir()
                    link(self.work / cat / LAST, Path(tmp) / cat / LAST)  # linked, not copied
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))

    def run(self) -> None:
        from skrd4ad.train import OnEpochEnd, fit

        if len(self.categories) == 1:
            cfg = self.config_for(self.categories[0])
            if not (cfg.train.resume and _epoch_of(Path(cfg.train.out) / LAST) >= cfg.train.epochs):
                fit(cfg, [OnEpochEnd(lambda m: self.report(scalar_metrics(m)))])
            return

        # Shared config: categories advance in lockstep so that ASHA compares like with like;
        # each keeps its state for the whole trial (pipelines/lockstep.py).
        def every_epoch(cat: str, handback: Callable[[dict], None]) -> Any:
            return fit(self.config_for(cat), [OnEpochEnd(handback)])

        fits = {cat: functools.partial(every_epoch, cat) for cat in self.categories}
        for epoch_metrics in Lockstep(fits).run():
            per_cat = {cat: scalar_metrics(m) for cat, m in epoch_metrics.items()}
            first = per_cat[self.categories[0]]
            mean = {
                k: sum(m[k] for m in per_cat.values()) / len(per_cat)
                for k in first
                if all(k in m for m in per_cat.values())
            }
            mean.update({f"{c}/{k}": v for c, m in per_cat.items() for k, v in m.items()})
            self.report(mean)


def objective_first(metrics: dict[str, float], objective: str) -> dict[str, float]:
    """The objective, then the loss, then the rest: Tune's status table shows the first
    four metrics of a report in their order."""
    first = [k for k in (objective, "loss") if k in metrics]
    return {**{k: metrics[k] for k in first}, **metrics}


def _epoch_of(path: Path) -> int:
    if not path.is_file():
        return 0
    from skrd4ad.checkpoint import read_checkpoint

    return int(read_checkpoint(path)["epoch"])


def evaluate_best_on_test(
    checkpoint: Any, categories: list[str], config: dict[str, Any], source: dict | None = None
) -> dict[str, Any]:
    """The one test-set evaluation of a search: the best trial's final models, on the
    data as this node finds it (``source``: the prepare stage's record)."""
    from skrd4ad.evaluate import evaluate

    base = {"train": config, "categories": categories, "source": source}
    roots = data_roots(base)
    out: dict[str, Any] = {}
    with checkpoint.as_directory() as d, tempfile.TemporaryDirectory() as tmp:
        for cat in categories:
            metrics = evaluate(
                Path(d) / cat / LAST,
                Path(roots[cat]),
                cat,
                Path(tmp) / cat,
                layout=config["data"]["layout"],
                device=config["runtime"]["device"],
            )
            out[cat] = {k: metrics.get(k) for k in METRIC_KEYS}
    return out


# --------------------------------------------------------------------------- driver side
def _dataset(params: dict[str, Any], prepared: Path) -> dict[str, Any]:
    """The prepared dataset (DVC's prepare stage), prepared here when it is missing."""
    info_file = prepared / "dataset.json"
    if not info_file.is_file():
        from .prepare import prepare

        print(f"tune: {info_file} missing; preparing the dataset from params.yaml")
        return prepare(params, prepared)
    return json.loads(info_file.read_text())


def _categories(spec: SearchSpec, available: list[str]) -> list[str]:
    if spec.categories == "all":
        return list(available)
    unknown = sorted(set(spec.categories) - set(available))
    if unknown:
        raise UserError(f"{spec.path}: categories: {unknown} not in the dataset {available}")
    return list(spec.categories)


def _train_base(spec: SearchSpec, params: dict[str, Any], root: str, layout: str) -> dict:
    """Every trial's config but the searched settings and the category: params.yaml's
    sections, the space's ``config`` sections over them, and the trial length."""
    base = train_config(params, root, "", layout)
    for section, values in spec.config.items():
        base.setdefault(section, {}).update(values)
    base["data"].pop("category")
    base["train"]["epochs"] = spec.epochs
    return base


def _validate_search(
    spec: SearchSpec, params: dict[str, Any], base: dict[str, Any], categories: list[str]
) -> None:
    """Every trial's settings are valid Configs, checked once before Ray starts: the base
    (params.yaml and the space's config sections) for each category, and each value the
    space can give a parameter (fixed values, choices, grid points, bounds)."""
    in_params = params_key(params)

    def where(name: str) -> str:
        if name in spec.params:
            return f"{spec.path}: params.{name}"
        section, key = name.split(".")
        if key in (spec.config.get(section) or {}):
            return f"{spec.path}: config.{name}"
        return in_params(name)

    def check(values: dict[str, Any]) -> None:
        cfg = {s: dict(v) for s, v in base.items()}
        for name, value in values.items():
            section, key = name.split(".")
            cfg[section][key] = value
        validated(cfg, where, spec.path)

    for cat in categories:
        check({"data.category": cat})
    for name, dist in spec.params.items():
        values = next(iter(dist.values())) if isinstance(dist, dict) else [dist]
        for value in values:
            check({"data.category": categories[0], name: value})


def _relative(location: str) -> bool:
    """A local path (or sqlite/file URI) that is relative to the working folder."""
    for scheme in ("sqlite:///", "file://"):
        if location.startswith(scheme):
            return not location[len(scheme) :].startswith("/")
    return "://" not in location and not Path(location).is_absolute()


def _check_cluster_outputs(storage: str, tracking_uri: str | None) -> None:
    """On a cluster (``ray job submit``, ``ray.address``) the working folder is Ray's
    temporary copy of it: relative outputs would vanish with the job, silently."""
    problems = []
    if _relative(storage):
        problems.append(
            f"the search storage {storage} is relative: pass --storage-path s3://bucket/prefix "
            "(or an absolute path on a shared mount)"
        )
    uri = os.environ.get("MLFLOW_TRACKING_URI") or tracking_uri
    if uri and _relative(uri):
        problems.append(
            f"the MLflow tracking URI {uri} is relative: set MLFLOW_TRACKING_URI to a tracking "
            "server (http://HOST:5000) or an absolute path"
        )
    if problems:
        raise UserError(
            "on a Ray cluster, results written under the job's working folder are lost with "
            "it: " + "; ".join(problems)
        )


def _ray_init(address: str | None, verbose: bool = False) -> None:
    # On a cluster reached through ray.address / --address, the workers get this
    # project and environment (a submitted job has its own runtime env); an own local
    # Ray serves its dashboard (Ray Train's placement-group cleaner asks its State API)
    # on this machine only.
    env = cluster_runtime_env(Path.cwd()) if joins_cluster(address) else None
    start_ray(
        address, env, console=quiet_console(verbose), include_dashboard=True,
        dashboard_host="127.0.0.1",
    )  # fmt: skip


def _gpu(value: Any) -> float:
    import ray

    if value == "auto":
        return 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
    return float(value)


class SearchInterrupted(UserError):
    """The search was stopped (Ctrl+C, SIGUSR1) before every trial ended."""


def _unfinished(grid: Any, spec: SearchSpec) -> int:
    """Trials not yet ended: Tune returns normally from an interrupted fit(), with trials
    still pending or running, and trials a lazy searcher had not created yet."""
    open_ = len(grid) - grid.num_terminated - grid.num_errors
    return max(open_, spec.expected_trials - len(grid))


def _trial_name(label: str, trial: Any) -> str:
    return f"{label}_{trial.trial_id}"


def _completed(result: Any, epochs: int) -> bool:
    metrics = result.metrics or {}
    return (
        result.error is None
        and ERROR not in metrics
        and CHECKPOINT_PATH in metrics
        and int(metrics.get("epoch", 0)) >= epochs
    )


def _best(grid: Any, spec: SearchSpec, epochs: int) -> Any | None:
    """Best trial by its last validation metric among trials that trained to the end (an
    ASHA-stopped trial's model is a partial one)."""
    sign = 1 if spec.mode == "max" else -1
    best, best_value = None, -math.inf
    for result in grid:
        trial_epochs = int((result.config or {}).get("train.epochs", epochs))
        if not _completed(result, trial_epochs):
            continue
        value = (result.metrics or {}).get(spec.metric)
        if value is None or not math.isfinite(value):
            continue
        if sign * value > best_value:
            best, best_value = result, sign * value
    return best


def _tune_one(
    spec: SearchSpec,
    base: dict[str, Any],
    *,
    name: str,
    storage: str,
    resume: bool,
    callbacks: list[Any],
    label: str,
    endpoint: str | None = None,
) -> Any:
    from ray import tune

    trainable = tune.with_parameters(search_trial, base=base)
    where = storage_args(storage, endpoint)
    fs = where.get("storage_filesystem")
    path = f"{where['storage_path'].rstrip('/')}/{name}"
    if resume and tune.Tuner.can_restore(path, storage_filesystem=fs):
        # Finished trials keep their results; unfinished ones go on from their checkpoint.
        tuner = tune.Tuner.restore(
            path, trainable=trial_trainable(trainable), resume_errored=True,
            storage_filesystem=fs,
        )  # fmt: skip
        return fit(tuner, verbose=False)
    if resume:
        print(f"tune: nothing to resume at {path}; starting the search")
    tune_config = tune.TuneConfig(
        metric=spec.metric,
        mode=spec.mode,
        search_alg=search_algorithm(spec),
        scheduler=scheduler(spec),
        num_samples=spec.num_samples,
        # search_algorithm limits the concurrency already; a second limit here makes Ray
        # warn that it "will be ignored".
        max_concurrent_trials=None,
        trial_name_creator=functools.partial(_trial_name, label),
    )
    return run_trials(
        trainable, param_space(spec), name=name, storage_path=storage,
        storage_endpoint=endpoint, tune_config=tune_config, callbacks=callbacks,
        trial_retries=0,
    )  # fmt: skip


def _mlflow_callbacks(spec: SearchSpec, tracker: Any, category: str) -> list[Any]:
    if not tracker.ok or tracker.parent is None:
        return []
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    return [
        MLflowLoggerCallback(
            tracking_uri=tracker.mlflow.get_tracking_uri(),
            experiment_name=tracker.experiment,
            tags={
                "mlflow.parentRunId": tracker.parent.info.run_id,
                "category": category,
                "search": spec.name,
            },
        )
    ]


def run(
    spec: SearchSpec,
    params: dict[str, Any],
    *,
    prepared: Path = Path("prepared"),
    storage: str | None = None,
    name: str | None = None,
    resume: bool = False,
    address: str | None = None,
    open_log: str | None = None,
    verbose: bool = False,
) -> dict[str, Any]:
    """Run the search; returns the summary written to ``<storage>/<name>/best.yaml``."""
    dataset = _dataset(params, prepared)
    categories = _categories(spec, dataset["categories"])
    root = str(Path(dataset["root"]).resolve())
    address = address or params["ray"].get("address")
    storage = _storage(storage, params, address)
    name = name or spec.name
    train_base = _train_base(spec, params, root, dataset["layout"])
    _validate_search(spec, params, train_base, categories)
    _ray_init(address, verbose)

    base_common = dict(train=train_base, open_log=open_log, metric=spec.metric)
    base_common["source"] = dataset.get("source")  # how a node finds the data
    tracker = _start_tracker(params, spec, dataset, name)
    groups = [[c] for c in categories] if spec.scope == "per_category" else [categories]
    summary: dict[str, Any] = {"search": spec.name, "space": str(spec.path)}
    summary.update(metric=spec.metric, mode=spec.mode, scope=spec.scope)
    summary.update(dataset=dataset["name"], best={}, trials={})
    endpoint = params["ray"].get("storage_endpoint")
    t0 = time.perf_counter()
    for group in groups:
        label = group[0] if len(group) == 1 else "shared"
        trainer = trainer_settings(
            num_workers=1, cpus=spec.cpu, gpus=_gpu(spec.gpu), max_failures=0,
            storage_path=f"{storage.rstrip('/')}/{name}-{label}-runs", storage_endpoint=endpoint,
            device=train_base.get("runtime", {}).get("device", "auto"),
        )  # fmt: skip
        base = {**base_common, "categories": group, "trainer": trainer}
        entry, trials = _search_group(spec, base, label, name, storage, resume, tracker, root)
        for cat in group:
            summary["best"][cat] = {k: v for k, v in entry.items() if k != "test"}
            summary["best"][cat].update({"test": entry["test"][cat]} if "test" in entry else {})
        summary["trials"][label] = trials
        registered = tracker_log_best(tracker, label, entry, spec, name, trainer, dataset["name"])
        for cat, uri in registered.items():
            summary["best"][cat]["registered_model"] = uri
    summary["wall_s"] = time.perf_counter() - t0
    text = yaml.safe_dump(summary, sort_keys=False)
    summary["file"] = f"{storage.rstrip('/')}/{name}/best.yaml"
    write_to_storage(summary["file"], text, endpoint)
    with temporary_dir() as tmp:  # MLflow logs a local copy, wherever the storage is
        (Path(tmp) / "best.yaml").write_text(text)
        tracker.finish({"search_wall_s": float(summary["wall_s"])}, Path(tmp) / "best.yaml")
    return summary


def _search_group(
    spec: SearchSpec, base: dict[str, Any], label: str, name: str, storage: str,
    resume: bool, tracker: Any, root: str,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:  # fmt: skip
    """One Tune run: the trials of a category (or of all, for a shared search), then the
    best config's one test-set evaluation."""
    run_name, started = f"{name}-{label}", time.perf_counter()
    callbacks = [Progress(_describe(spec), spec.metric), *_mlflow_callbacks(spec, tracker, label)]
    trainer = base["trainer"]
    grid = _tune_one(
        spec, base, name=run_name, storage=storage, resume=resume, callbacks=callbacks,
        label=label, endpoint=trainer["storage_endpoint"],
    )  # fmt: skip
    unfinished = _unfinished(grid, spec)
    if unfinished:
        tracker.abort()
        raise SearchInterrupted(
            f"search {run_name} stopped with {unfinished} unfinished trial(s); its "
            f"state is saved under {storage}: run the same command with --resume"
        )
    test_config = Config.from_dict(base["train"]).with_values({"data.root": root}).to_dict()
    return _outcome(
        grid, spec, base["categories"], test_config, time.perf_counter() - started, trainer,
        base["source"],
    )  # fmt: skip


def _storage(storage: str | None, params: dict[str, Any], address: str | None) -> str:
    """Where the search keeps its state (--storage-path, else params tune.storage_path); on
    a cluster, outputs on a relative local path would land on the head node only."""
    storage = storage or (params.get("tune") or {}).get("storage_path", "results/tune")
    if joins_cluster(address):
        _check_cluster_outputs(storage, params["mlflow"].get("tracking_uri"))
    return storage if "://" in storage else str(Path(storage).resolve())


def _start_tracker(params: dict, spec: SearchSpec, dataset: dict, name: str) -> Any:
    """The search's MLflow parent run (trials and the best config nest under it)."""
    from .tracking import Tracker, source_tags

    tune_params = params.get("tune") or {}
    tracker = Tracker(
        tune_params.get("experiment", "skrd4ad-tune"),
        params["mlflow"].get("tracking_uri"),
        params["mlflow"].get("artifact_location"),
    )
    tags = {"search": spec.name, "dataset": dataset["name"], **source_tags()}
    tracker.start(f"tune-{name}", {"space": _space_params(spec), "scope": spec.scope}, tags)
    return tracker


def _outcome(
    grid: Any, spec: SearchSpec, group: list[str], test_config: dict[str, Any], search_s: float,
    trainer: dict[str, Any], source: dict | None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:  # fmt: skip
    """A finished search's trials, and its best config with that config's test metrics
    (the one test-set evaluation of the search)."""
    import ray

    trials = [
        {
            "config": {k: _plain(v) for k, v in (r.config or {}).items()},
            "epochs_run": int((r.metrics or {}).get("epoch", 0)),
            "trial_s": (r.metrics or {}).get("trial_s"),
            spec.metric: (r.metrics or {}).get(spec.metric),
            "error": _error(r),
        }
        for r in grid
    ]
    entry: dict[str, Any] = {
        "trials": len(trials),
        "search_s": search_s,
        "trial_s": sum(t["trial_s"] or 0.0 for t in trials),
        "epochs_trained": sum(t["epochs_run"] for t in trials),
        "errors": sum(t["error"] is not None for t in trials),
    }
    best = _best(grid, spec, spec.epochs)
    if best is None:
        entry["error"] = "no trial trained to the end with a finite validation metric"
        return entry, trials
    entry["config"] = {k: _plain(best.config[k]) for k in spec.params}
    entry[spec.metric] = float(best.metrics[spec.metric])
    entry["checkpoint"] = str(best.metrics[CHECKPOINT_PATH])
    remote = ray.remote(num_cpus=spec.cpu, num_gpus=_gpu(spec.gpu))(evaluate_best_on_test)
    checkpoint = checkpoint_at(
        best.metrics[CHECKPOINT_PATH], trainer["storage_path"], trainer["storage_endpoint"]
    )
    entry["test"] = ray.get(remote.remote(checkpoint, group, test_config, source))
    return entry, trials


def _error(result: Any) -> str | None:
    """A trial's error: raised in its process, or its Train run's (reported)."""
    if result.error is not None:
        return str(result.error)[:300]
    error = (result.metrics or {}).get(ERROR)
    return None if error is None else str(error)[:300]


def _describe(spec: SearchSpec) -> Callable[[Any], tuple[str, int]]:
    """A trial's row in the live view: its name and the search's epochs."""
    return functools.partial(_trial_row, spec.epochs)


def _trial_row(epochs: int, trial: Any) -> tuple[str, int]:
    return str(trial), epochs


def _plain(value: Any) -> Any:
    """numpy scalars (from some searchers) as plain Python values, for YAML and MLflow."""
    return value.item() if hasattr(value, "item") else value


def _space_params(spec: SearchSpec) -> dict[str, Any]:
    return {
        "params": {k: v for k, v in spec.params.items()},
        "algorithm": spec.algorithm,
        "scheduler": spec.scheduler,
        "num_samples": spec.num_samples,
        "epochs": spec.epochs,
    }


def tracker_log_best(
    tracker: Any, label: str, entry: dict[str, Any], spec: SearchSpec, name: str,
    trainer: dict[str, Any], dataset: str,
) -> dict[str, str]:  # fmt: skip
    """The best config of a search as its own nested run, tagged ``best``, holding the
    best trial's model of each category, registered (:func:`register_best`); returns
    each category's registered model URI (none when tracking is off)."""
    if not tracker.ok or "config" not in entry:
        return {}
    try:
        mlflow = tracker.mlflow
        with mlflow.start_run(
            run_name=f"best-{label}", nested=True, tags={"best": "true", "category": label}
        ):
            mlflow.log_params(entry["config"])
            metrics = {spec.metric: entry[spec.metric]}
            for cat, values in entry.get("test", {}).items():
                metrics.update(
                    {
                        f"test_{k}" if label != "shared" else f"{cat}/test_{k}": v
                        for k, v in values.items()
                        if v is not None and v == v
                    }
                )
            mlflow.log_metrics(metrics)
            return register_best(entry, spec, name, trainer, dataset)
    except Exception as exc:  # noqa: BLE001 - tracking never fails a search
        tracker.fail(exc)
        return {}


def register_best(
    entry: dict[str, Any], spec: SearchSpec, name: str, trainer: dict[str, Any], dataset: str
) -> dict[str, str]:
    """Each category's model of the best trial, logged in the active run and registered
    as a new version of ``<dataset>-<category>-<backbone>-<skip>`` (the benchmark's model
    name) with the alias ``best-<search>``; returns {category: models:/NAME@ALIAS}."""
    from skrd4ad.checkpoint import read_checkpoint

    from .mlflow_model import log_model, model_name, register

    alias = f"best-{name}"
    tags = {"search": name, spec.metric: str(entry[spec.metric])}
    stored = checkpoint_at(
        entry["checkpoint"], trainer["storage_path"], trainer["storage_endpoint"]
    )
    out = {}
    with stored.as_directory() as folder:
        for cat in entry["test"]:
            path = Path(folder) / cat / LAST
            state = read_checkpoint(path)
            model = model_name(dataset, cat, state["config"])
            register(log_model(path, model, state), model, alias, tags)
            out[cat] = f"models:/{model}@{alias}"
    return out


def write_params(summary: dict[str, Any], path: Path) -> None:
    """Put the best loss weights into params.yaml, keeping its comments and order.

    A shared search sets ``loss``; a per-category search sets ``loss.per_category``, which
    the benchmark applies on top of ``loss`` for those categories.
    """
    from ruamel.yaml import YAML

    ryaml = YAML()
    ryaml.preserve_quotes = True
    doc = ryaml.load(path.read_text())
    keys = ("alpha", "beta", "gamma")
    best = {
        c: {k.removeprefix("loss."): v for k, v in b["config"].items()}
        for c, b in summary["best"].items()
        if "config" in b
    }
    if not best:
        raise UserError("no best config to write: every search failed (see best.yaml)")
    if summary["scope"] == "shared":
        config = next(iter(best.values()))
        for k in keys:
            if k in config:
                doc["loss"][k] = float(config[k])
    else:
        per = doc["loss"].setdefault("per_category", {})
        for cat, config in best.items():
            per[cat] = {k: float(config[k]) for k in keys if k in config}
    import io

    buf = io.StringIO()
    ryaml.dump(doc, buf)
    atomic_write_text(path, buf.getvalue())


def _parser() -> argparse.ArgumentParser:
    parser = stage_parser("tune", __doc__)
    parser.add_argument(
        "--space", required=True, help="search-space file, e.g. tune_spaces/loss_weights.yaml"
    )
    parser.add_argument("--prepared", default="prepared", help="the prepare stage's output folder")
    parser.add_argument(
        "--storage-path",
        help="Tune storage: local, a shared mount or s3:// (default: params tune.storage_path)",
    )
    parser.add_argument(
        "--name", help="search name (its folder under the storage path); default the space's name"
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="resume a stopped search (Tuner.restore); finished trials are not re-run",
    )
    parser.add_argument(
        "--address", help="Ray cluster address; default params ray.address, or the job's cluster"
    )
    parser.add_argument(
        "--verbose", action="store_true",
        help="Ray's INFO lines, the workers' output and Tune's tables (also: RAY_LOG=1)",
    )  # fmt: skip
    parser.add_argument(
        "--write-params",
        action="store_true",
        help="write the best loss weights into --params for dvc repro",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    warnings.simplefilter("default")
    quiet_mlflow(args.verbose)
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    try:
        spec = load_space(args.space)  # before Ray starts: a bad file costs no trial
        params = load_params(Path(args.params))
        summary = run(
            spec,
            params,
            prepared=Path(args.prepared),
            storage=args.storage_path,
            name=args.name,
            resume=args.resume,
            address=args.address,
            open_log=os.environ.get("SKRD4AD_OPEN_LOG"),
            verbose=args.verbose,
        )
        if args.write_params:
            write_params(summary, Path(args.params))
            print(f"tune: best loss weights written to {args.params}")
    except SearchInterrupted as exc:
        print(f"tune: {exc}", file=sys.stderr)
        return 130
    except UserError as exc:
        print(f"tune: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary["best"], indent=1, default=str))
    print(f"tune: best configs in {summary['file']}")
    failed = [c for c, b in summary["best"].items() if "config" not in b]
    if failed:
        print(f"tune: error: no usable trial for {failed}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
