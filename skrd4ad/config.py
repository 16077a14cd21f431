"""The training configuration: one schema, the single source of truth for every setting.

Sections mirror ``params.yaml`` (data, model, loss, optim, runtime, train). Each field
holds its default, its type (``Literal`` for a choice) and its help text, once. Every front
end derives from it: the ``skrd4ad train`` flags and its ``--config`` file
(:mod:`skrd4ad.config_cli`), the DVC stages (``params.yaml`` sections), Ray's
``train_loop_config`` (:meth:`Config.to_dict`), the Tune search space's types and the
config stored in a checkpoint (:meth:`Config.from_dict`).

A setting's name is ``section.field`` (``loss.alpha``) in YAML, in tune spaces and in
errors; a field's name is unique across sections, so its flag is ``--field`` (``--alpha``).
The config is validated when it is built.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .errors import ConfigError, UserError
from .validation import check_choice, check_types

Layout = Literal["auto", "mvtec", "vad", "folder"]
Device = Literal["auto", "cpu", "cuda"]
Precision = Literal["auto", "fp32", "bf16"]
# What predict and evaluate score with (skrd4ad.onnx_predictor).
Backend = Literal["auto", "torch", "onnxruntime"]
CacheMode = Literal["auto", "on", "off"]
Augment = Literal["none", "hflip"]
Select = Literal["last", "best-val"]


def setting(default: Any, help: str, **meta: Any) -> Any:  # noqa: A002 - argparse's word
    """A field with its help text; ``choices`` (a callable, for a table that imports
    torch) and ``flag`` (a flag name other than the field's) are optional."""
    kind = {"default_factory": default} if callable(default) else {"default": default}
    return field(**kind, metadata={"help": help, **meta})


def _backbones() -> list[str]:
    from .models import BACKBONES

    return sorted(BACKBONES)


def _skips() -> list[str]:
    from .models.reverse_distillation.components.skip import SKIP_TOPOLOGIES

    return list(SKIP_TOPOLOGIES)


@dataclass
class DataSettings:
    root: str = setting(
        "data/default",
        "dataset root (MVTec AD / VAD layout: ROOT/CATEGORY/train/good ...; folder layout: "
        "ROOT holds good/, defect folders and mask/)",
        flag="data",
    )
    category: str | None = setting(None, "category folder under ROOT (optional for folder)")
    layout: Layout = setting("auto", "dataset layout (auto: detect)")
    train_fraction: float = setting(
        0.5, "folder layout only: the fraction of good/ used for training"
    )


@dataclass
class ModelSettings:
    backbone: str = setting(
        "wide_resnet50_2",
        "teacher network (torchvision builder); the paper uses wide_resnet50_2",
        choices=_backbones,
    )
    teacher_weights: str = setting(
        "imagenet",
        "'imagenet' (torchvision weights API, hub cache under TORCH_HOME), 'none' (random, "
        "for tests) or a state dict file",
    )
    skip: str = setting(
        "sk",
        "skip topology: 'sk' = published SK-RD4AD, 'none' = RD4AD, 'sk_deep'/'sk_shallow' "
        "= one skip only (ablation)",
        choices=_skips,
    )


@dataclass
class LossSettings:
    alpha: float = setting(0.0, "weight of the feature L2 loss")
    beta: float = setting(1.0, "weight of the cosine loss")
    gamma: float = setting(0.05, "weight of the inter-scale consistency loss")


@dataclass
class OptimSettings:
    lr: float = setting(0.005, "Adam learning rate")
    betas: tuple[float, float] = setting((0.5, 0.999), "Adam betas")


@dataclass
class RuntimeSettings:
    device: Device = setting("auto", "where to run (auto: CUDA when available)")
    precision: Precision = setting(
        "auto",
        "auto = bf16 autocast on CUDA and float32 on CPU; bf16 runs on a CPU only when named",
    )
    channels_last: bool = setting(
        True,
        "channels_last memory layout (CPU training in float32 keeps the bottleneck in NCHW, "
        "which is faster there)",
    )
    compile: bool = setting(
        False, "torch.compile the bottleneck and decoder (compiles on the first step)"
    )
    cache_features: CacheMode = setting(
        "auto",
        "compute the frozen teacher's features once per image and reuse them every epoch "
        "(auto: unless augmenting); off recomputes them every step",
    )
    eval_batch_size: int = setting(32, "images per batch when scoring (validation, cache)")


@dataclass
class TrainSettings:
    out: str = setting("runs/train", "run folder: checkpoints, model.pt, history")
    epochs: int = setting(200, "training epochs")
    batch_size: int = setting(16, "images per batch")
    image_size: int = setting(256, "model input size, px (multiple of 32)")
    seed: int = setting(111, "random seed (the published one is 111)")
    val_fraction: float = setting(
        0.1, "fraction of train/good held out (with synthetic defects) for validation; 0 = none"
    )
    val_every: int = setting(10, "validate every N epochs")
    checkpoint_every: int = setting(10, "write last.pt every N epochs")
    select: Select = setting(
        "last", "final model: the last epoch, or the best validation AUPRO (never test metrics)"
    )
    augment: Augment = setting(
        "none", "training augmentation (hflip: random horizontal flips; turns the cache off)"
    )
    resume: bool = setting(
        False, "resume from OUT/last.pt; changed settings apply from there on and are recorded"
    )
    overwrite: bool = setting(False, "replace the training run already in OUT")
    progress: bool = setting(
        True, "a progress bar, on a terminal only (the per-epoch lines are always printed)"
    )


SECTIONS: dict[str, type] = {
    "data": DataSettings,
    "model": ModelSettings,
    "loss": LossSettings,
    "optim": OptimSettings,
    "runtime": RuntimeSettings,
    "train": TrainSettings,
}


@dataclass(frozen=True)
class Setting:
    """One field of the schema: ``name`` is ``section.field``."""

    name: str
    section: str
    field: dataclasses.Field
    kind: Any

    @property
    def flag(self) -> str:
        return "--" + self.field.metadata.get("flag", self.field.name).replace("_", "-")

    @property
    def default(self) -> Any:
        return getattr(SECTIONS[self.section](), self.field.name)

    @property
    def help(self) -> str:
        return self.field.metadata["help"]

    @property
    def choices(self) -> tuple[Any, ...] | None:
        if typing.get_origin(self.kind) is Literal:
            return typing.get_args(self.kind)
        choices: Callable[[], Any] | None = self.field.metadata.get("choices")
        return tuple(choices()) if choices else None


def settings() -> Iterator[Setting]:
    """Every setting of the schema, in section order."""
    for section, cls in SECTIONS.items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            yield Setting(f"{section}.{f.name}", section, f, hints[f.name])


SETTINGS: dict[str, Setting] = {s.name: s for s in settings()}
assert len({s.field.name for s in SETTINGS.values()}) == len(SETTINGS), "field names repeat"


@dataclass
class Config:
    """Every training setting; defaults are the published ones where the paper has one."""

    data: DataSettings = field(default_factory=DataSettings)
    model: ModelSettings = field(default_factory=ModelSettings)
    loss: LossSettings = field(default_factory=LossSettings)
    optim: OptimSettings = field(default_factory=OptimSettings)
    runtime: RuntimeSettings = field(default_factory=RuntimeSettings)
    train: TrainSettings = field(default_factory=TrainSettings)

    def __post_init__(self) -> None:
        self.validate()

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Plain nested data (YAML, JSON, Ray's train_loop_config, a checkpoint)."""
        d = dataclasses.asdict(self)
        d["optim"]["betas"] = list(self.optim.betas)
        return d

    def flat(self) -> dict[str, Any]:
        """``{"section.field": value}`` of every setting."""
        return {f"{s}.{k}": v for s, values in self.to_dict().items() for k, v in values.items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "config") -> Config:
        """Build from nested sections (missing ones and fields take their defaults); an
        unknown section or key is an error naming it."""
        if not isinstance(d, dict):
            raise UserError(f"{where} must be a mapping of the sections {list(SECTIONS)}")
        unknown = sorted(set(d) - set(SECTIONS))
        if unknown:
            raise UserError(f"{where}: unknown sections {unknown}; known: {list(SECTIONS)}")
        sections = {}
        for name, cls_ in SECTIONS.items():
            values = d.get(name) or {}
            if not isinstance(values, dict):
                raise UserError(f"{where}: {name} must be a mapping, got {values!r}")
            known = {f.name for f in dataclasses.fields(cls_)}
            bad = sorted(set(values) - known)
            if bad:
                raise UserError(
                    f"{where}: unknown keys {[f'{name}.{k}' for k in bad]}; known: {sorted(known)}"
                )
            sections[name] = cls_(**values)
        return cls(**sections)

    def with_values(self, values: dict[str, Any], where: str = "config") -> Config:
        """A copy with ``{"section.field": value}`` applied (a tune trial, a preset)."""
        d = self.to_dict()
        for name, value in values.items():
            if name not in SETTINGS:
                raise UserError(f"{where}: {name} is not a setting; known: {sorted(SETTINGS)}")
            section, key = name.split(".")
            d[section][key] = value
        return Config.from_dict(d, where)

    def validate(self) -> None:
        """Types, choices and ranges of every setting; a ConfigError names the first bad
        one (``section.field``). Files named by settings are checked by
        :meth:`check_files`, where they are used."""
        try:
            self._validate()
        except ConfigError as exc:  # the message names the setting's own flag
            raise ConfigError(exc.field, exc.problem, SETTINGS[exc.field].flag) from None

    def _validate(self) -> None:
        for section in SECTIONS:
            check_types(getattr(self, section), prefix=f"{section}.")
        for s in SETTINGS.values():
            if s.choices is not None:
                check_choice(s.name, getattr(getattr(self, s.section), s.field.name), s.choices)
        _check_ranges(self)
        _check_combinations(self)

    def check_files(self) -> None:
        weights = self.model.teacher_weights
        if weights not in ("imagenet", "none") and not Path(weights).is_file():
            raise ConfigError(
                "model.teacher_weights",
                f"{weights} is not a file; pass 'imagenet', 'none' (random weights) or the "
                "path of a torchvision state dict file",
            )


def _check_ranges(cfg: Config) -> None:
    t, loss = cfg.train, cfg.loss
    counts = ("epochs", "batch_size", "image_size", "checkpoint_every", "val_every")
    for name in counts:
        if getattr(t, name) < 1:
            raise ConfigError(f"train.{name}", f"must be at least 1, got {getattr(t, name)}")
    if cfg.runtime.eval_batch_size < 1:
        raise ConfigError(
            "runtime.eval_batch_size", f"must be at least 1, got {cfg.runtime.eval_batch_size}"
        )
    if t.image_size % 32:
        nearest = max(32, round(t.image_size / 32) * 32)
        raise ConfigError(
            "train.image_size",
            f"must be a multiple of 32 (the teacher's stride), got {t.image_size}; e.g. {nearest}",
        )
    for name in ("alpha", "beta", "gamma"):
        if getattr(loss, name) < 0:
            raise ConfigError(f"loss.{name}", f"must be >= 0, got {getattr(loss, name)}")
    if loss.alpha == loss.beta == loss.gamma == 0:
        raise ConfigError(
            "loss.alpha",
            "and --beta and --gamma are all 0: the loss would be 0 and nothing would train; "
            "set at least one above 0 (published: beta 1, gamma 0.05)",
        )
    if cfg.optim.lr <= 0:
        raise ConfigError("optim.lr", f"must be above 0, got {cfg.optim.lr}")
    if not all(0 <= b < 1 for b in cfg.optim.betas):
        raise ConfigError("optim.betas", f"must both be in [0, 1), got {list(cfg.optim.betas)}")
    if not 0 < cfg.data.train_fraction < 1:
        raise ConfigError(
            "data.train_fraction", f"must be in (0, 1), got {cfg.data.train_fraction}"
        )
    if not 0 <= t.val_fraction < 1:
        raise ConfigError("train.val_fraction", f"must be in [0, 1), got {t.val_fraction}")


def _check_combinations(cfg: Config) -> None:
    if cfg.runtime.cache_features == "on" and cfg.train.augment != "none":
        raise UserError(
            "--cache-features on needs --augment none: augmented inputs change the "
            "teacher features every epoch (use auto to fall back to recomputing)"
        )
    if cfg.train.select == "best-val" and cfg.train.val_fraction <= 0:
        raise UserError("--select best-val needs a validation split: set --val-fraction > 0")


def from_flat_v1(flat: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A version-1 checkpoint's flat config (``{"epochs": ..}``, ``data`` the root) as
    sections: the field names did not change, only their grouping."""
    leaf = {s.field.name: s for s in SETTINGS.values()}
    nested: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
    for key, value in flat.items():
        s = SETTINGS["data.root"] if key == "data" else leaf.get(key)
        if s is not None:
            nested[s.section][s.field.name] = value
    return nested
