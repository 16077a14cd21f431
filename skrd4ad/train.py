"""Single-process, device-agnostic training of one category: a short generic loop
(:class:`Trainer`) that calls the model's hooks
(:mod:`skrd4ad.models.reverse_distillation.hooks`) and the callbacks.

Ray, Tune and MLflow attach through :class:`skrd4ad.callbacks.Callback` without this
module importing them.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .atomic import atomic_write_text, ensure_writable_dir, remove_stale_temporaries
from .callbacks import Callback, OnEpochEnd
from .checkpoint import read_checkpoint, save_checkpoint, stored_config
from .config import Config
from .data import category_tensors, load_category
from .errors import CheckpointError, TrainingDiverged, UserError
from .feature_cache import build_cache, use_cache
from .models.reverse_distillation.hooks import ReverseDistillation
from .results import BEST, LAST, MODEL, json_text
from .runtime import THRESHOLD_PRECISION, Runtime
from .scoring import best_f1_threshold

__all__ = ["Callback", "OnEpochEnd", "TrainResult", "Trainer", "fit"]

LOSS_TERMS = ("loss", "l2", "cosine", "consistency")
# Settings that change what a checkpoint's weights mean, or choose the training images:
# resuming with others is an error.
FIXED_ON_RESUME = (
    "model.backbone",
    "model.skip",
    "model.teacher_weights",
    "train.image_size",
    "train.seed",
    "data.category",
    "data.layout",
    "data.train_fraction",
    "train.val_fraction",
)
# Bookkeeping, not training: a resume may change these without a record (the shared-scope
# search resumes with one more epoch each time).
UNRECORDED_ON_RESUME = (
    "train.epochs",
    "train.resume",
    "train.overwrite",
    "train.progress",
    "train.out",
    "data.root",
)


@dataclass
class TrainResult:
    out: Path
    model_path: Path
    epochs_run: int
    history: list[dict[str, Any]] = field(default_factory=list)
    threshold: float | None = None
    val_metrics: dict[str, Any] | None = None


@dataclass
class RunState:
    """What a checkpoint carries besides the weights, and a resume restores."""

    epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] = field(default_factory=lambda: {"value": -math.inf, "epoch": None})
    resumes: list[dict[str, Any]] = field(default_factory=list)


def batch_bounds(n: int, batch: int) -> list[tuple[int, int]]:
    """(start, stop) of each batch over ``n`` images. A trailing batch of one image joins
    the one before: BatchNorm cannot train on one image whose features are 1x1 (the
    bottleneck's at 32 px)."""
    bounds = [(s, min(s + batch, n)) for s in range(0, n, batch)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] == 1:
        bounds[-2:] = [(bounds[-2][0], n)]
    return bounds


def epoch_order(n: int, seed: int, epoch: int) -> tuple[torch.Tensor, torch.Generator]:
    """The epoch's shuffle and its flip generator, functions of (seed, epoch) only, so that
    a resumed run sees the same batches as an uninterrupted one."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
    return order, torch.Generator().manual_seed(seed * 100_003 + epoch + 7)


def resume_changes(old: Config, new: Config) -> dict[str, list[Any]]:
    """The settings that differ from the checkpoint's, as {name: [old, new]}: each applies
    from the resumed epoch on, and the checkpoint records it, so its config stays true."""
    before, after = old.flat(), new.flat()
    return {
        k: [before[k], v]
        for k, v in after.items()
        if before[k] != v and k not in UNRECORDED_ON_RESUME
    }


def prepare_run_folder(out: Path, cfg: Config) -> Path:
    """A run folder that holds a run is continued (--resume) or replaced (--overwrite),
    never overwritten silently. Returns it, created and writable."""
    existing = [n for n in (LAST, BEST, MODEL) if (out / n).exists()]
    if existing and not cfg.train.resume:
        if not cfg.train.overwrite:
            raise UserError(
                f"{out} already holds a training run ({', '.join(existing)}); pass --resume "
                "to continue it, --overwrite to replace it, or a new --out"
            )
        for name in (*existing, "train_history.json"):
            (out / name).unlink(missing_ok=True)
    out = ensure_writable_dir(out)
    remove_stale_temporaries(out)  # of a write a killed run never finished
    return out


def fit(cfg: Config, callbacks: Iterable[Callback] = ()) -> TrainResult:
    """Train one category. Writes last.pt every ``train.checkpoint_every`` epochs and at
    the end, best.pt when selecting on validation, and model.pt (the final model).
    ``precision`` fp32 on CUDA is true float32 (no TF32), forward and backward."""
    cfg.validate()
    cfg.check_files()
    runtime = Runtime.create(cfg.runtime.device, cfg.runtime.precision, cfg.runtime.channels_last)
    with runtime.float32_numerics():
        return Trainer(cfg, runtime, list(callbacks)).fit()


class Trainer:
    """The generic loop: ``fit`` runs ``train_epoch`` and ``end_epoch`` (validation,
    checkpoint, callbacks) per epoch, then ``finalise``; ``resume`` restores a run."""

    def __init__(self, cfg: Config, runtime: Runtime, callbacks: list[Callback]) -> None:
        self.out = prepare_run_folder(Path(cfg.train.out), cfg)
        d = cfg.data
        data = load_category(
            Path(d.root), d.category, d.layout, train_fraction=d.train_fraction,
            seed=cfg.train.seed,
        )  # fmt: skip
        d.category = d.category or data.name
        self.train_set, self.val_set = category_tensors(
            data, cfg.train.image_size, cfg.train.val_fraction, cfg.train.seed
        )
        self.cfg, self.runtime, self.callbacks = cfg, runtime, callbacks
        self.module = ReverseDistillation(cfg, runtime)
        self.optimizer = self.module.configure_optimizers(cfg)
        self.state = RunState()
        self.cache = None

    def log(self, line: str) -> None:
        """A line on stderr, for a terminal and a log file alike (tqdm keeps its bar);
        one process of a data-parallel run writes it."""
        if self.runtime.is_rank_zero:
            tqdm.write(line, file=sys.stderr)

    def fit(self) -> TrainResult:
        if self.cfg.train.resume:
            self.resume(self.out / LAST)
        epochs = self.cfg.train.epochs
        if self.state.epoch < epochs:
            self.cache = self.build_cache()
        for epoch in range(self.state.epoch, epochs):
            metrics = self.train_epoch(epoch)
            self.end_epoch(epoch, metrics)
        self.runtime.barrier()  # rank 0's last.pt is on disk before anyone reads it
        return self.finalise()

    def build_cache(self) -> Any:
        rt = self.cfg.runtime
        if not use_cache(rt.cache_features, self.cfg.train.augment):
            return None
        cache = build_cache(
            self.module.model, self.train_set.images, self.runtime, rt.eval_batch_size
        )
        if cache is not None:
            self.log(
                f"teacher features cached ({cache.where}, {cache.nbytes / 2**20:.0f} MiB) "
                f"in {cache.build_s:.1f} s"
            )
        return cache

    def train_epoch(self, epoch: int) -> dict[str, Any]:
        """One pass over this rank's share of the training images; the epoch's mean loss
        terms over the world, and throughput."""
        cfg, rt = self.cfg.train, self.runtime
        self.module.train()
        order, flips = epoch_order(len(self.train_set), cfg.seed, epoch)
        order = rt.shard(order)
        # Sums stay on the device: reading a loss every step would stall a GPU.
        sums = torch.zeros(len(LOSS_TERMS), dtype=torch.float64, device=rt.device)
        t0, seen = time.perf_counter(), len(order)
        bounds = batch_bounds(seen, max(1, cfg.batch_size // rt.world))
        # disable=None: no bar when stderr is no terminal, where its \r frames would
        # litter a log; the epoch's line is printed either way.
        bar = tqdm(bounds, desc=f"epoch {epoch + 1}/{cfg.epochs}",
                   disable=None if cfg.progress else True, leave=False)  # fmt: skip
        for step, (start, stop) in enumerate(bar):
            idx = order[start:stop]
            loss, terms = self.step(idx, flips)
            values = torch.stack([loss, *(terms[k] for k in LOSS_TERMS[1:])])
            sums += values.detach().double() * len(idx)
            if not bar.disable and (step % 10 == 0 or stop >= seen):
                done = start + len(idx)
                bar.set_postfix(loss=f"{float(sums[0]) / done:.4f}",
                                img_s=f"{done / (time.perf_counter() - t0):.1f}")  # fmt: skip
        totals = (rt.all_reduce(sums) / (seen * rt.world)).tolist()
        seconds = time.perf_counter() - t0
        if not all(math.isfinite(v) for v in totals):
            last = self.out / LAST
            raise TrainingDiverged(
                f"loss became {totals[0]} in epoch {epoch + 1}; stopped, and the last good "
                f"checkpoint {last if last.exists() else '(none yet)'} is kept. "
                "Lower --lr or check the input images"
            )
        metrics = {"epoch": epoch + 1, **dict(zip(LOSS_TERMS, totals, strict=True))}
        metrics.update(epoch_s=seconds, images_per_s=seen * rt.world / seconds)
        if self.cache is not None and epoch == self.state.epoch:
            metrics["teacher_cache_s"] = self.cache.build_s
        return metrics

    def step(self, idx: torch.Tensor, flips: torch.Generator) -> tuple[torch.Tensor, dict]:
        """The training step on the images ``idx``: from the cached teacher features, or
        from the images (flipped at random when augmenting)."""
        if self.cache is not None:
            return self.module.optimizer_step(self.optimizer, features=self.cache.batch(idx))
        images = self.train_set.images[idx]
        if self.cfg.train.augment == "hflip":
            flip = torch.rand(len(idx), generator=flips) < 0.5
            images = torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)
        return self.module.optimizer_step(self.optimizer, images=images)

    def end_epoch(self, epoch: int, metrics: dict[str, Any]) -> None:
        """Validate when due, record the epoch, write last.pt when due, call back."""
        cfg = self.cfg.train
        final = epoch + 1 == cfg.epochs
        if self.val_set is not None and ((epoch + 1) % cfg.val_every == 0 or final):
            self.validate(epoch + 1, metrics)
        self.state.history.append(dict(metrics))
        val = f" val AUPRO {metrics['val_aupro']:.4f}" if "val_aupro" in metrics else ""
        self.log(
            f"epoch {epoch + 1}/{cfg.epochs} loss {metrics['loss']:.4f} "
            f"({metrics['images_per_s']:.1f} img/s){val}"
        )
        if (epoch + 1) % cfg.checkpoint_every == 0 or final:
            self.save(self.out / LAST, epoch + 1)
            if self.runtime.is_rank_zero:
                for cb in self.callbacks:
                    cb.on_checkpoint(self.out / LAST, epoch + 1)
        for cb in self.callbacks:
            cb.on_epoch_end(dict(metrics))

    def validate(self, epoch: int, metrics: dict[str, Any]) -> None:
        """Validation metrics into ``metrics``; a new best AUPRO is remembered (and saved
        as best.pt when selecting on validation)."""
        val, _ = self.module.validation_step(self.val_set)
        metrics.update({f"val_{k}": v for k, v in val.items() if isinstance(v, float)})
        objective = val.get("aupro")
        if objective is not None and not math.isnan(objective):
            if objective > self.state.best["value"]:
                self.state.best = {"value": objective, "epoch": epoch}
                if self.cfg.train.select == "best-val":
                    self.save(self.out / BEST, epoch)

    def save(self, path: Path, epoch: int, **extra: Any) -> None:
        """A checkpoint of the model and run state; a resumable one (no ``extra``) holds
        the optimizer state too."""
        if not self.runtime.is_rank_zero:  # one writer; every rank holds the same weights
            return
        if not extra:
            extra["optimizer"] = self.optimizer.state_dict()
        s = self.state
        save_checkpoint(
            path, self.module.model, epoch=epoch, config=self.cfg.to_dict(),
            history=s.history, best=s.best, resumes=s.resumes, **extra,
        )  # fmt: skip

    def resume(self, path: Path) -> None:
        """Weights, optimizer and run state from ``path``; settings changed since are
        recorded in ``resumes`` and apply from here on."""
        if not path.is_file():
            raise CheckpointError(f"--resume: no checkpoint {path} to resume from; drop --resume")
        state = read_checkpoint(path)
        changed = resume_changes(stored_config(state), self.cfg)
        for key, (was, now) in changed.items():
            if key in FIXED_ON_RESUME:
                raise CheckpointError(
                    f"cannot resume from {path}: it was trained with {key}={was!r}, not "
                    f"{now!r}; use the same setting or a new --out"
                )
        self.module.load(state)
        self.optimizer.load_state_dict(state["optimizer"])
        # The loaded groups hold the settings they were saved with (lr, betas, fused ...);
        # this run's own settings replace them.
        for group in self.optimizer.param_groups:
            group.update(self.optimizer.defaults)
        self.state = RunState(
            state["epoch"], list(state.get("history", [])), state.get("best", RunState().best),
            list(state.get("resumes", [])),
        )  # fmt: skip
        if changed:
            self.state.resumes.append({"epoch": self.state.epoch, "changed": changed})
            self.log(
                f"resuming after epoch {self.state.epoch} with "
                + ", ".join(f"{k} {v[1]!r} (was {v[0]!r})" for k, v in changed.items())
            )

    def finalise(self) -> TrainResult:
        """model.pt: the last epoch's model, or best.pt's, with the validation threshold
        (chosen on float32 scores, as predict and the exports compute them)."""
        out, history = self.out, self.state.history
        if not self.runtime.is_rank_zero:
            return TrainResult(out, out / MODEL, len(history), history)
        best_val = self.cfg.train.select == "best-val" and (out / BEST).exists()
        source = out / (BEST if best_val else LAST)
        epoch = history[-1]["epoch"] if history else 0
        if best_val:  # the model in memory is last.pt's; best.pt's is read back
            state = read_checkpoint(source)
            self.module.load(state)
            epoch = state["epoch"]
        threshold, val_metrics = None, None
        if self.val_set is not None:
            val_metrics, scores = self.module.validation_step(self.val_set)
            fp32 = self.runtime.with_precision(THRESHOLD_PRECISION)
            if fp32 != self.runtime:
                _, scores = self.module.predict(self.val_set.images, fp32)
            threshold = best_f1_threshold(scores, self.val_set.labels)
        self.save(
            out / MODEL, epoch, threshold=threshold,
            threshold_precision=THRESHOLD_PRECISION if threshold is not None else None,
            val_metrics=val_metrics, selected_from=source.name,
        )  # fmt: skip
        atomic_write_text(out / "train_history.json", json_text(history, indent=1))
        return TrainResult(out, out / MODEL, len(history), history, threshold, val_metrics)
