"""Single-process, device-agnostic training of one category.

Ray and MLflow attach through ``callbacks`` (a metrics dict per epoch) without this
module importing them.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .atomic import atomic_write_text, ensure_writable_dir, remove_stale_temporaries
from .checkpoint import read_checkpoint, save_checkpoint
from .data import LAYOUTS, category_tensors, load_category
from .errors import CheckpointError, ConfigError, TrainingDiverged, UserError
from .evaluate import best_f1_threshold, score_tensor_set
from .feature_cache import MODES as CACHE_MODES
from .feature_cache import build_cache, use_cache
from .inference import (
    DEVICES,
    PRECISIONS,
    THRESHOLD_PRECISION,
    autocast,
    float32_numerics,
    predict_maps,
    prepare_model,
    resolve_device,
    resolve_precision,
    to_input,
)
from .models import BACKBONES, SKIP_TOPOLOGIES, build_model
from .models.reverse_distillation.loss import SKRD4ADLoss
from .models.reverse_distillation.torch_model import Student
from .results import json_text
from .validation import check_choice, check_types

Callback = Callable[[dict[str, Any]], None]
LAST = "last.pt"
BEST = "best.pt"
MODEL = "model.pt"
SELECT = ("last", "best-val")
AUGMENT = ("none", "hflip")
# Settings that change what a checkpoint's weights mean; resuming with others is an error.
_FIXED_ON_RESUME = ("backbone", "skip", "image_size", "teacher_weights", "seed", "category")
# Settings that choose the training images; resuming with others would train on another set.
_FIXED_ON_RESUME += ("layout", "train_fraction", "val_fraction")
# Bookkeeping, not training: a resume may change these without a record (the shared-scope
# search resumes with one more epoch each time).
_UNRECORDED_ON_RESUME = ("epochs", "resume", "overwrite", "progress", "out", "data")


@dataclass
class TrainConfig:
    """Every training setting; defaults are the published ones where the paper has one."""

    data: str = "data/default"
    category: str | None = None
    out: str = "runs/train"
    layout: str = "auto"
    train_fraction: float = 0.5
    backbone: str = "wide_resnet50_2"
    teacher_weights: str = "imagenet"
    skip: str = "sk"
    image_size: int = 256
    epochs: int = 200
    batch_size: int = 16
    lr: float = 0.005
    betas: tuple[float, float] = (0.5, 0.999)
    alpha: float = 0.0
    beta: float = 1.0
    gamma: float = 0.05
    seed: int = 111
    device: str = "auto"
    precision: str = "auto"
    channels_last: bool = True
    checkpoint_every: int = 10
    val_fraction: float = 0.1
    val_every: int = 10
    select: str = "last"
    resume: bool = False
    overwrite: bool = False
    progress: bool = True
    eval_batch_size: int = 32
    # Teacher features once per image, reused every epoch (skrd4ad/feature_cache.py):
    # auto/on = cached unless augmenting, off = recomputed every step.
    cache_features: str = "auto"
    augment: str = "none"  # none | hflip (random horizontal flips; turns the cache off)
    # torch.compile of the student (bottleneck + decoder): off until measured to help on
    # the device at hand (benchmarks/bench_step.py --compile); the first step compiles.
    compile: bool = False

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise UserError(f"unknown training settings {unknown}; known: {sorted(names)}")
        d = dict(d)
        if "betas" in d:
            d["betas"] = tuple(d["betas"])
        return cls(**d)

    def validate(self) -> None:
        """Types, choices and ranges of every setting; a ConfigError names the first bad one.
        Every front end (flags, --config, params.yaml, a tune space) builds a TrainConfig,
        so this is where their values are checked, once, before any work starts."""
        check_types(self)
        self._check_ranges()
        self._check_choices()

    def _check_ranges(self) -> None:
        counts = ("epochs", "batch_size", "image_size", "checkpoint_every", "val_every")
        for name in (*counts, "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(name, f"must be at least 1, got {getattr(self, name)}")
        if self.image_size % 32:
            nearest = max(32, round(self.image_size / 32) * 32)
            raise ConfigError(
                "image_size",
                f"must be a multiple of 32 (the teacher's stride), got {self.image_size}; "
                f"e.g. {nearest}",
            )
        for name in ("alpha", "beta", "gamma"):
            if getattr(self, name) < 0:
                raise ConfigError(name, f"must be >= 0, got {getattr(self, name)}")
        if self.alpha == self.beta == self.gamma == 0:
            raise ConfigError(
                "alpha",
                "and --beta and --gamma are all 0: the loss would be 0 and nothing "
                "would train; set at least one above 0 (published: beta 1, gamma 0.05)",
            )
        if self.lr <= 0:
            raise ConfigError("lr", f"must be above 0, got {self.lr}")
        if not all(0 <= b < 1 for b in self.betas):
            raise ConfigError("betas", f"must both be in [0, 1), got {list(self.betas)}")
        if not 0 < self.train_fraction < 1:
            raise ConfigError("train_fraction", f"must be in (0, 1), got {self.train_fraction}")
        if not 0 <= self.val_fraction < 1:
            raise ConfigError("val_fraction", f"must be in [0, 1), got {self.val_fraction}")

    def _check_choices(self) -> None:
        for name, choices in (
            ("backbone", sorted(BACKBONES)),
            ("skip", SKIP_TOPOLOGIES),
            ("layout", LAYOUTS),
            ("device", DEVICES),
            ("precision", PRECISIONS),
            ("cache_features", CACHE_MODES),
            ("augment", AUGMENT),
            ("select", SELECT),
        ):
            check_choice(name, getattr(self, name), choices)
        weights = self.teacher_weights
        if weights not in ("imagenet", "none") and not Path(weights).is_file():
            raise ConfigError(
                "teacher_weights",
                f"{weights} is not a file; pass 'imagenet', 'none' (random weights) or the "
                "path of a torchvision state dict file",
            )
        if self.cache_features == "on" and self.augment != "none":
            raise UserError(
                "--cache-features on needs --augment none: augmented inputs change the "
                "teacher features every epoch (use auto to fall back to recomputing)"
            )
        if self.select == "best-val" and self.val_fraction <= 0:
            raise UserError("--select best-val needs a validation split: set --val-fraction > 0")


@dataclass
class TrainResult:
    out: Path
    model_path: Path
    epochs_run: int
    history: list[dict[str, Any]] = field(default_factory=list)
    threshold: float | None = None
    val_metrics: dict[str, Any] | None = None


def batch_bounds(n: int, batch: int) -> list[tuple[int, int]]:
    """(start, stop) of each batch over ``n`` images. A trailing batch of one image joins
    the one before: BatchNorm cannot train on one image whose features are 1x1 (the
    bottleneck's at 32 px)."""
    bounds = [(s, min(s + batch, n)) for s in range(0, n, batch)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] == 1:
        bounds[-2:] = [(bounds[-2][0], n)]
    return bounds


def _resume_changes(state: dict, cfg: TrainConfig) -> dict[str, list[Any]]:
    """The settings that differ from the checkpoint's, as {name: [old, new]}: each applies
    from the resumed epoch on, and the checkpoint records it, so its config stays true."""
    old, new = state.get("config", {}), cfg.to_dict()
    return {
        k: [old[k], new[k]]
        for k in new
        if k in old and old[k] != new[k] and k not in _UNRECORDED_ON_RESUME
    }


def _check_run_folder(out: Path, cfg: TrainConfig) -> None:
    """A run folder that holds a run is continued (--resume) or replaced (--overwrite),
    never overwritten silently."""
    existing = [n for n in (LAST, BEST, MODEL) if (out / n).exists()]
    if not existing or cfg.resume:
        return
    if not cfg.overwrite:
        raise UserError(
            f"{out} already holds a training run ({', '.join(existing)}); pass --resume to "
            "continue it, --overwrite to replace it, or a new --out"
        )
    for name in (*existing, "train_history.json"):
        (out / name).unlink(missing_ok=True)


def _check_resume(state: dict, cfg: TrainConfig, path: Path) -> None:
    old = state.get("config", {})
    for key in _FIXED_ON_RESUME:
        if key in old and old[key] != getattr(cfg, key):
            raise CheckpointError(
                f"cannot resume from {path}: it was trained with {key}={old[key]!r}, not "
                f"{getattr(cfg, key)!r}; use the same setting or a new --out"
            )


def fit(cfg: TrainConfig, callbacks: Iterable[Callback] = ()) -> TrainResult:
    """Train one category. Writes last.pt every ``checkpoint_every`` epochs and at the end,
    best.pt when selecting on validation, and model.pt (the final model).

    Each callback gets the epoch's metrics after that epoch's checkpoint is on disk; the
    key ``checkpoint`` (the path of last.pt) is present when one was written that epoch.
    ``precision`` fp32 on CUDA is true float32 (no TF32), forward and backward.
    """
    cfg.validate()
    with float32_numerics(resolve_device(cfg.device), cfg.precision):
        return _fit(cfg, list(callbacks))


def _fit(cfg: TrainConfig, callbacks: list[Callback]) -> TrainResult:
    _check_run_folder(Path(cfg.out), cfg)
    out = ensure_writable_dir(Path(cfg.out))
    remove_stale_temporaries(out)  # of a write a killed run never finished
    device = resolve_device(cfg.device)
    data = load_category(
        Path(cfg.data), cfg.category, cfg.layout, train_fraction=cfg.train_fraction, seed=cfg.seed
    )
    cfg.category = cfg.category or data.name
    train_set, val_set = category_tensors(data, cfg.image_size, cfg.val_fraction, cfg.seed)

    rank, world = _distributed()
    if world > 1 and device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.backbone, cfg.teacher_weights, cfg.skip)
    model = prepare_model(model, device, cfg.channels_last)
    student_net: torch.nn.Module = Student(model.bottleneck, model.decoder, model.skip)
    if world > 1:
        # Data-parallel: each rank takes its share of every global batch; DDP averages
        # the gradients. BatchNorm statistics follow rank 0 (DDP's buffer broadcast).
        student_net = torch.nn.parallel.DistributedDataParallel(
            student_net, device_ids=[device.index] if device.type == "cuda" else None
        )
    if cfg.compile:
        student_net = torch.compile(student_net)
    params = [*model.bottleneck.parameters(), *model.decoder.parameters()]
    optimizer = torch.optim.Adam(params, lr=cfg.lr, betas=cfg.betas)
    loss_fn = SKRD4ADLoss(cfg.alpha, cfg.beta, cfg.gamma)

    start_epoch, history, best = 0, [], {"value": -math.inf, "epoch": None}
    resumes: list[dict[str, Any]] = []
    last_path = out / LAST
    if cfg.resume:
        if not last_path.is_file():
            raise CheckpointError(
                f"--resume: no checkpoint {last_path} to resume from; drop --resume"
            )
        state = read_checkpoint(last_path)
        _check_resume(state, cfg, last_path)
        model.teacher.load_state_dict(state["teacher"])
        model.bottleneck.load_state_dict(state["bottleneck"])
        model.decoder.load_state_dict(state["decoder"])
        optimizer.load_state_dict(state["optimizer"])
        for group in optimizer.param_groups:  # the optimizer state holds the old ones
            group["lr"], group["betas"] = cfg.lr, cfg.betas
        start_epoch, history = state["epoch"], list(state.get("history", []))
        best = state.get("best", best)
        resumes = list(state.get("resumes", []))
        changed = _resume_changes(state, cfg)
        if changed:
            resumes.append({"epoch": start_epoch, "changed": changed})
            if cfg.progress:
                tqdm.write(
                    f"resuming after epoch {start_epoch} with "
                    + ", ".join(f"{k} {v[1]!r} (was {v[0]!r})" for k, v in changed.items())
                )

    def checkpoint(path: Path, epoch: int) -> None:
        if rank != 0:  # one writer; every rank holds the same weights
            return
        save_checkpoint(
            path,
            model,
            optimizer=optimizer.state_dict(),
            epoch=epoch,
            config=cfg.to_dict(),
            history=history,
            best=best,
            resumes=resumes,
        )

    n = len(train_set)
    cache = None
    if use_cache(cfg.cache_features, cfg.augment) and start_epoch < cfg.epochs:
        cache = build_cache(
            model,
            train_set.images,
            device=device,
            precision=cfg.precision,
            channels_last=cfg.channels_last,
            batch_size=cfg.eval_batch_size,
        )
        if cfg.progress and cache is not None:
            tqdm.write(
                f"teacher features cached ({cache.where}, {cache.nbytes / 2**20:.0f} MiB) "
                f"in {cache.build_s:.1f} s"
            )
    for epoch in range(start_epoch, cfg.epochs):
        model.bottleneck.train()
        model.decoder.train()
        # A per-epoch generator makes the shuffle a function of (seed, epoch), so a resumed
        # run sees the same batches as an uninterrupted one.
        order = torch.randperm(
            n, generator=torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
        )
        flips = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch + 7)
        if world > 1:  # equal shares, so every rank takes the same number of steps
            order = order[: n - n % world][rank::world]
        # Sums stay on the device: reading a loss every step would stall a GPU.
        sums = torch.zeros(4, dtype=torch.float64, device=device)
        t0 = time.perf_counter()
        batch = max(1, cfg.batch_size // world)
        seen = len(order)
        bar = tqdm(
            batch_bounds(seen, batch),
            desc=f"epoch {epoch + 1}/{cfg.epochs}",
            disable=not cfg.progress,
            leave=False,
        )
        for step, (start, stop) in enumerate(bar):
            idx = order[start:stop]
            if cache is not None:
                teacher = cache.batch(idx)
                with autocast(device, cfg.precision):
                    student = student_net(teacher)
            else:
                images = train_set.images[idx]
                if cfg.augment == "hflip":
                    flip = torch.rand(len(idx), generator=flips) < 0.5
                    images = torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)
                x = to_input(images, device, cfg.channels_last)
                with autocast(device, cfg.precision):
                    teacher = model.teacher(x)
                    student = student_net(teacher)
            loss, terms = loss_fn(teacher, student)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            values = torch.stack([loss, terms["l2"], terms["cosine"], terms["consistency"]])
            sums += values.detach().double() * len(idx)
            if cfg.progress and (step % 10 == 0 or stop >= seen):
                done = start + len(idx)
                bar.set_postfix(
                    loss=f"{float(sums[0]) / done:.4f}",
                    img_s=f"{done / (time.perf_counter() - t0):.1f}",
                )
        if world > 1:
            torch.distributed.all_reduce(sums)
            seen *= world
        totals = (sums / seen).tolist()
        seconds = time.perf_counter() - t0
        if not all(math.isfinite(v) for v in totals):
            raise TrainingDiverged(
                f"loss became {totals[0]} in epoch {epoch + 1}; stopped, and the last good "
                f"checkpoint {last_path if last_path.exists() else '(none yet)'} is kept. "
                "Lower --lr or check the input images"
            )
        metrics: dict[str, Any] = {
            "epoch": epoch + 1,
            **dict(zip(("loss", "l2", "cosine", "consistency"), totals, strict=True)),
            "epoch_s": seconds,
            "images_per_s": seen / seconds,
        }
        if cache is not None and epoch == start_epoch:
            metrics["teacher_cache_s"] = cache.build_s
        final = epoch + 1 == cfg.epochs
        if val_set is not None and ((epoch + 1) % cfg.val_every == 0 or final):
            val, _ = _validate(model, val_set, cfg, device)
            metrics.update({f"val_{k}": v for k, v in val.items() if isinstance(v, float)})
            objective = val.get("aupro")
            if objective is not None and not math.isnan(objective) and objective > best["value"]:
                best = {"value": objective, "epoch": epoch + 1}
                if cfg.select == "best-val":
                    checkpoint(out / BEST, epoch + 1)
        history.append(dict(metrics))
        if cfg.progress:
            tqdm.write(
                f"epoch {epoch + 1}/{cfg.epochs} loss {metrics['loss']:.4f} "
                f"({metrics['images_per_s']:.1f} img/s)"
                + (f" val AUPRO {metrics['val_aupro']:.4f}" if "val_aupro" in metrics else "")
            )
        if (epoch + 1) % cfg.checkpoint_every == 0 or final:
            checkpoint(last_path, epoch + 1)
            if rank == 0:
                metrics["checkpoint"] = str(last_path)
        for cb in callbacks:
            cb(dict(metrics))

    if world > 1:
        torch.distributed.barrier()  # rank 0's last.pt is on disk before anyone reads it
    return _finalise(cfg, out, model, val_set, history, best, device, rank, resumes)


def _val_maps(
    model, val_set, cfg: TrainConfig, device, precision: str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    return predict_maps(
        model,
        val_set.images,
        device=device,
        batch_size=cfg.eval_batch_size,
        precision=precision or cfg.precision,
        channels_last=cfg.channels_last,
    )


def _validate(model, val_set, cfg: TrainConfig, device) -> tuple[dict[str, Any], torch.Tensor]:
    """Metrics on the synthetic validation split, and its image scores."""
    maps, scores = _val_maps(model, val_set, cfg, device)
    return score_tensor_set(maps, scores, val_set), scores


def _distributed() -> tuple[int, int]:
    """(rank, world size) of an initialised torch.distributed group, else (0, 1)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _finalise(cfg, out, model, val_set, history, best, device, rank=0, resumes=()) -> TrainResult:
    if rank != 0:
        return TrainResult(out, out / MODEL, len(history), history)
    source = out / (BEST if cfg.select == "best-val" and (out / BEST).exists() else LAST)
    # The model in memory is the one last.pt holds; only a best.pt needs reading back.
    epoch = history[-1]["epoch"] if history else 0
    if source.name == BEST:
        state = read_checkpoint(source)
        for part in ("teacher", "bottleneck", "decoder"):
            getattr(model, part).load_state_dict(state[part])
        epoch = state["epoch"]
    threshold, val_metrics = None, None
    if val_set is not None:
        val_metrics, scores = _validate(model, val_set, cfg, device)
        if resolve_precision(device, cfg.precision) != THRESHOLD_PRECISION:
            _, scores = _val_maps(model, val_set, cfg, device, precision=THRESHOLD_PRECISION)
        threshold = best_f1_threshold(scores, val_set.labels)
    model_path = out / MODEL
    save_checkpoint(
        model_path,
        model,
        epoch=epoch,
        config=cfg.to_dict(),
        history=history,
        best=best,
        threshold=threshold,
        threshold_precision=THRESHOLD_PRECISION if threshold is not None else None,
        val_metrics=val_metrics,
        selected_from=source.name,
        resumes=list(resumes),
    )
    atomic_write_text(out / "train_history.json", _json(history))
    return TrainResult(out, model_path, len(history), history, threshold, val_metrics)


def _json(obj: Any) -> str:
    return json_text(obj, indent=1)
