"""Search-space files (``tune_spaces/*.yaml``): reading, validation, and Tune objects.

Validation is pure Python and runs before Ray starts, so a bad file fails in a second with
an error naming the key, never after trials were scheduled. Only :func:`param_space`,
:func:`search_algorithm` and :func:`scheduler` import Ray.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from skrd4ad.config import SETTINGS, Config
from skrd4ad.errors import ConfigError, UserError

DISTRIBUTIONS = ("uniform", "loguniform", "choice", "grid")
ALGORITHMS = ("optuna", "basic")
SCHEDULERS = ("asha", "fifo")
SCOPES = ("per_category", "shared")
# Validation metrics fit() reports every epoch (the test split is never read in a search).
METRICS = ("val_aupro", "val_image_auroc", "val_pixel_auroc")
# What a trial may change: any setting of these sections with a single value (the loss
# weights are the paper's question), named and typed as in skrd4ad.config.
SEARCH_SECTIONS = ("model", "loss", "optim", "train")
_BOOKKEEPING = ("train.out", "train.resume", "train.overwrite", "train.progress")
SEARCHABLE = {
    name: s.kind
    for name, s in SETTINGS.items()
    if s.section in SEARCH_SECTIONS
    and name not in _BOOKKEEPING
    and s.kind in (int, float, str, bool)
}
REQUIRED = ("categories", "metric", "mode", "epochs", "search", "scheduler", "params")


@dataclass
class SearchSpec:
    """A validated search-space file."""

    path: Path
    name: str
    scope: str
    categories: str | list[str]
    metric: str
    mode: str
    epochs: int
    algorithm: str
    num_samples: int
    max_concurrent: int
    seed: int | None
    scheduler: str
    grace_period: int
    reduction_factor: float
    cpu: float
    gpu: float | str
    params: dict[str, dict[str, Any] | Any]
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def expected_trials(self) -> int:
        """Trials in a complete search: every grid point ``num_samples`` times."""
        n = self.num_samples
        for spec in self.params.values():
            if isinstance(spec, dict) and "grid" in spec:
                n *= len(spec["grid"])
        return n

    @property
    def max_epochs(self) -> int:
        spec = self.params.get("train.epochs")
        if isinstance(spec, dict):
            return max(int(v) for v in next(iter(spec.values())))
        return int(spec) if spec is not None else self.epochs


def _err(path: Path, key: str, message: str) -> UserError:
    return UserError(f"{path}: {key}: {message}")


def _number(path: Path, key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _err(path, key, f"must be a finite number, got {value!r}")
    return float(value)


def _check_value(path: Path, key: str, name: str, value: Any) -> None:
    """The value's type and choice, as the schema has them; ranges are checked when the
    trials' configs are built (pipelines.tune._validate_search)."""
    setting, kind = SETTINGS[name], SEARCHABLE[name]
    if setting.choices is not None:
        if value not in setting.choices:
            raise _err(path, key, f"must be one of {list(setting.choices)}, got {value!r}")
        return
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise _err(path, key, f"must be a whole number, got {value!r}")
    if kind is float:
        _number(path, key, value)
    if kind in (str, bool) and not isinstance(value, kind):
        raise _err(path, key, f"must be {'true or false' if kind is bool else 'a string'}")


def _check_param(path: Path, name: str, spec: Any, algorithm: str) -> None:
    key = f"params.{name}"
    if name not in SEARCHABLE:
        raise _err(path, key, f"not a searchable setting; choose from {sorted(SEARCHABLE)}")
    if not isinstance(spec, dict):  # a fixed value
        _check_value(path, key, name, spec)
        return
    if len(spec) != 1:
        raise _err(
            path, key, f"give exactly one distribution of {DISTRIBUTIONS}, got {sorted(spec)}"
        )
    ((dist, arg),) = spec.items()
    key = f"{key}.{dist}"
    if dist not in DISTRIBUTIONS:
        raise _err(path, key, f"unknown distribution; use one of {DISTRIBUTIONS}")
    if dist in ("uniform", "loguniform"):
        if SEARCHABLE[name] is not float:
            raise _err(path, key, f"{name} takes choice or grid, not {dist}")
        if not isinstance(arg, list) or len(arg) != 2:
            raise _err(path, key, f"needs [low, high], got {arg!r}")
        low, high = (_number(path, key, v) for v in arg)
        if dist == "loguniform" and low <= 0:
            raise _err(path, key, f"loguniform bounds must be > 0, got [{low}, {high}]")
        if low < 0:
            raise _err(path, key, f"{name} cannot be negative, got [{low}, {high}]")
        if not low < high:
            raise _err(path, key, f"low must be below high, got [{low}, {high}]")
        return
    if not isinstance(arg, list) or not arg:
        raise _err(path, key, f"needs a non-empty list of values, got {arg!r}")
    if dist == "grid" and algorithm == "optuna":
        raise _err(
            path, key, "grid needs search.algorithm basic (Optuna samples, it does not grid)"
        )
    for v in arg:
        _check_value(path, key, name, v)


def _section(path: Path, raw: dict, key: str) -> dict[str, Any]:
    value = raw.get(key)
    if not isinstance(value, dict):
        raise _err(path, key, "missing, or not a mapping")
    return value


def _read(path: Path) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise UserError(f"cannot read search space {path} ({exc.strerror})") from exc
    except yaml.YAMLError as exc:
        raise UserError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise UserError(f"{path} must be a mapping with the keys {list(REQUIRED)}")
    for key in REQUIRED:
        if key not in raw:
            raise _err(path, key, "missing (see tune_spaces/loss_weights.yaml)")
    return raw


def _check_config(path: Path, config: Any) -> None:
    """The space's fixed settings: params.yaml's sections; ranges as the schema has them."""
    if not isinstance(config, dict):
        raise _err(path, "config", "must be a mapping of sections, as in params.yaml")
    try:
        Config.from_dict(config, f"{path}: config")
    except ConfigError as exc:
        raise exc.named(f"{path}: config.{exc.field}") from None


def _check_choices(path: Path, raw: dict, search: dict, sched: dict) -> tuple[str, str, str]:
    """The search algorithm, the scheduler and the scope, each one of its choices."""
    for key in ("algorithm", "num_samples", "max_concurrent"):
        if key not in search:
            raise _err(path, f"search.{key}", "missing")
    if "name" not in sched:
        raise _err(path, "scheduler.name", "missing")
    algorithm, scheduler_name = search["algorithm"], sched["name"]
    if algorithm not in ALGORITHMS:
        raise _err(path, "search.algorithm", f"{algorithm!r} is not one of {ALGORITHMS}")
    if scheduler_name not in SCHEDULERS:
        raise _err(path, "scheduler.name", f"{scheduler_name!r} is not one of {SCHEDULERS}")
    if raw["metric"] not in METRICS:
        raise _err(path, "metric", f"{raw['metric']!r} is not one of {METRICS}")
    if raw["mode"] not in ("max", "min"):
        raise _err(path, "mode", f"must be max or min, got {raw['mode']!r}")
    scope = raw.get("scope", "per_category")
    if scope not in SCOPES:
        raise _err(path, "scope", f"{scope!r} is not one of {SCOPES}")
    return algorithm, scheduler_name, scope


def load_space(path: str | Path) -> SearchSpec:
    """Read and validate a space file; every error names the file and the key."""
    path = Path(path)
    raw = _read(path)
    search, sched = _section(path, raw, "search"), _section(path, raw, "scheduler")
    params = _section(path, raw, "params")
    resources = raw.get("resources_per_trial", {"cpu": 1, "gpu": "auto"})
    config = raw.get("config") or {}
    if not isinstance(resources, dict):
        raise _err(path, "resources_per_trial", "must be a mapping like {cpu: 1, gpu: auto}")
    algorithm, scheduler_name, scope = _check_choices(path, raw, search, sched)
    categories = raw["categories"]
    if categories != "all" and (
        not isinstance(categories, list) or not all(isinstance(c, str) for c in categories)
    ):
        raise _err(path, "categories", f"must be 'all' or a list of names, got {categories!r}")
    if not params:
        raise _err(path, "params", "names no setting to search")
    for name, spec in params.items():
        _check_param(path, str(name), spec, algorithm)
    ints = {
        "epochs": raw["epochs"],
        "search.num_samples": search["num_samples"],
        "search.max_concurrent": search["max_concurrent"],
        "scheduler.grace_period": sched.get("grace_period", 1),
    }
    for key, value in ints.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise _err(path, key, f"must be a whole number >= 1, got {value!r}")
    factor = _number(path, "scheduler.reduction_factor", sched.get("reduction_factor", 2))
    if factor <= 1:
        raise _err(path, "scheduler.reduction_factor", f"must be > 1, got {factor}")
    cpu = _number(path, "resources_per_trial.cpu", resources.get("cpu", 1))
    gpu = resources.get("gpu", "auto")
    if gpu != "auto" and _number(path, "resources_per_trial.gpu", gpu) < 0:
        raise _err(path, "resources_per_trial.gpu", f"must be 'auto' or >= 0, got {gpu!r}")
    seed = search.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise _err(path, "search.seed", f"must be a whole number, got {seed!r}")
    _check_config(path, config)
    return SearchSpec(
        path=path,
        name=str(raw.get("name", path.stem)),
        scope=scope,
        categories=categories,
        metric=raw["metric"],
        mode=raw["mode"],
        epochs=raw["epochs"],
        algorithm=algorithm,
        num_samples=search["num_samples"],
        max_concurrent=search["max_concurrent"],
        seed=seed,
        scheduler=scheduler_name,
        grace_period=ints["scheduler.grace_period"],
        reduction_factor=factor,
        cpu=cpu,
        gpu=gpu,
        params=dict(params),
        config=dict(config),
    )


def param_space(spec: SearchSpec) -> dict[str, Any]:
    """Tune's param_space: one Tune distribution (or constant) per searched setting."""
    from ray import tune

    out: dict[str, Any] = {}
    for name, dist in spec.params.items():
        if not isinstance(dist, dict):
            out[name] = dist
            continue
        ((kind, arg),) = dist.items()
        out[name] = {
            "uniform": lambda a: tune.uniform(*a),
            "loguniform": lambda a: tune.loguniform(*a),
            "choice": tune.choice,
            "grid": tune.grid_search,
        }[kind](arg)
    return out


def search_algorithm(spec: SearchSpec):
    """The searcher, limited to ``spec.max_concurrent`` trials at a time."""
    from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter

    if spec.algorithm == "basic":
        return BasicVariantGenerator(max_concurrent=spec.max_concurrent, random_state=spec.seed)
    from ray.tune.search.optuna import OptunaSearch

    try:
        import optuna
    except ImportError as exc:  # pragma: no cover - optuna is in the pipelines extra
        raise UserError(
            f"{spec.path}: search.algorithm optuna needs the optuna package: "
            "pip install -e '.[pipelines]'"
        ) from exc
    sampler = optuna.samplers.TPESampler(seed=spec.seed)
    return ConcurrencyLimiter(OptunaSearch(sampler=sampler), max_concurrent=spec.max_concurrent)


def scheduler(spec: SearchSpec):
    """ASHA prunes on the per-epoch validation metric; FIFO runs every trial to the end."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if spec.scheduler == "fifo":
        return FIFOScheduler()
    return ASHAScheduler(
        time_attr="epoch",
        max_t=spec.max_epochs,
        grace_period=min(spec.grace_period, spec.max_epochs),
        reduction_factor=spec.reduction_factor,
    )
