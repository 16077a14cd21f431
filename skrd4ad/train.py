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

from .atomic import atomic_write_text, ensure_writable_dir
from .checkpoint import read_checkpoint, save_checkpoint
from .data import category_tensors, load_category
from .errors import CheckpointError, TrainingDiverged, UserError
from .evaluate import best_f1_threshold, score_tensor_set
from .feature_cache import MODES as CACHE_MODES
from .feature_cache import build_cache, use_cache
from .inference import (
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
from .losses import SKRD4ADLoss
from .models import build_model
from .models.skrd4ad import Student
from .results import json_text

Callback = Callable[[dict[str, Any]], None]
LAST = "last.pt"
BEST = "best.pt"
MODEL = "model.pt"
SELECT = ("last", "best-val")
AUGMENT = ("none", "hflip")
# Settings that change what a checkpoint's weights mean; resuming with others is an error.
_FIXED_ON_RESUME = ("backbone", "skip", "image_size", "teacher_weights", "seed", "category")


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
        for name in ("epochs", "batch_size", "image_size", "checkpoint_every", "val_every"):
            if getattr(self, name) < 1:
                raise UserError(
                    f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}"
                )
        if self.image_size % 32:
            raise UserError(
                f"--image-size must be a multiple of 32 (teacher stride), got {self.image_size}"
            )
        for name in ("alpha", "beta", "gamma", "lr"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise UserError(f"--{name} must be a finite number >= 0, got {value}")
        if self.precision not in PRECISIONS:
            raise UserError(f"--precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.cache_features not in CACHE_MODES:
            raise UserError(
                f"--cache-features must be one of {CACHE_MODES}, got {self.cache_features!r}"
            )
        if self.augment not in AUGMENT:
            raise UserError(f"--augment must be one of {AUGMENT}, got {self.augment!r}")
        if self.cache_features == "on" and self.augment != "none":
            raise UserError(
                "--cache-features on needs --augment none: augmented inputs change the "
                "teacher features every epoch (use auto to fall back to recomputing)"
            )
        if self.select not in SELECT:
            raise UserError(f"--select must be one of {SELECT}, got {self.select!r}")
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
    out = ensure_writable_dir(Path(cfg.out))
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
        start_epoch, history = state["epoch"], list(state.get("history", []))
        best = state.get("best", best)

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
        if cfg.progress:
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
        batches = range(0, seen, batch)
        bar = tqdm(
            batches, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not cfg.progress, leave=False
        )
        for step, start in enumerate(bar):
            idx = order[start : start + batch]
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
            if cfg.progress and (step % 10 == 0 or start + batch >= seen):
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
    return _finalise(cfg, out, model, val_set, history, best, device, rank)


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


def _finalise(cfg, out, model, val_set, history, best, device, rank=0) -> TrainResult:
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
    )
    atomic_write_text(out / "train_history.json", _json(history))
    return TrainResult(out, model_path, len(history), history, threshold, val_metrics)


def _json(obj: Any) -> str:
    return json_text(obj, indent=1)
