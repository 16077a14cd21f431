"""Batched inference: uint8 images to smoothed anomaly maps and image scores."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .data.images import normalize
from .models import SKRD4AD
from .models.reverse_distillation.anomaly_map import anomaly_map, image_score
from .models.reverse_distillation.components.fuse import fold_batchnorm

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        from .errors import UserError

        raise UserError(
            "--device cuda was asked for but no CUDA device is available; use --device cpu"
        )
    return torch.device(name)


PRECISIONS = ("auto", "fp32", "bf16")
# The validation threshold is computed in float32 whatever the training precision, so that
# it applies to what predict (by default) and the float32 exports compute.
THRESHOLD_PRECISION = "fp32"


def resolve_precision(device: torch.device, precision: str = "auto") -> str:
    """What ``precision`` means on ``device``: ``bf16`` for bf16, and for auto on CUDA;
    ``fp32`` otherwise. CPUs run float32 unless bf16 is asked for by name: bf16 is faster on
    CPUs with AVX512-BF16 or AMX (BENCHMARKS.md) but changes the numbers slightly."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    return "bf16" if bf16 else "fp32"


def autocast(device: torch.device, precision: str = "auto") -> contextlib.AbstractContextManager:
    """bf16 autocast where :func:`resolve_precision` says bf16; nothing otherwise."""
    if resolve_precision(device, precision) == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@contextlib.contextmanager
def float32_numerics(device: torch.device, precision: str = "auto") -> Iterator[None]:
    """Where the precision is fp32 on CUDA, true float32 inside: TF32 off for cuDNN
    convolutions (torch's default runs them in TF32) and for cuBLAS matmuls, forward and
    backward; the previous settings come back on exit."""
    if device.type != "cuda" or resolve_precision(device, precision) != "fp32":
        yield
        return
    matmul, conv = torch.backends.cuda.matmul, torch.backends.cudnn.conv
    saved = matmul.fp32_precision, conv.fp32_precision
    matmul.fp32_precision = conv.fp32_precision = "ieee"
    try:
        yield
    finally:
        matmul.fp32_precision, conv.fp32_precision = saved


def prepare_model(
    model: SKRD4AD, device: torch.device, channels_last: bool, inference_only: bool = False
) -> SKRD4AD:
    """Move ``model`` to ``device``; a model used only for inference also gets its
    BatchNorm layers folded into the convolutions (in place: it can no longer train)."""
    if inference_only:
        model = fold_batchnorm(model, inplace=True)
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def to_input(images: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    x = normalize(images.to(device, non_blocking=True))
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


@torch.inference_mode()
def predict_maps(
    model: SKRD4AD,
    images: torch.Tensor,
    *,
    device: torch.device,
    batch_size: int = 32,
    precision: str = "auto",
    channels_last: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Maps (N, S, S) float32 and scores (N,), left on ``device`` for on-device metrics."""
    model.eval()
    size = images.shape[-1]
    maps = torch.empty((images.shape[0], size, size), dtype=torch.float32, device=device)
    with float32_numerics(device, precision):
        for start in range(0, images.shape[0], batch_size):
            x = to_input(images[start : start + batch_size], device, channels_last)
            with autocast(device, precision):
                teacher, student = model(x)
            maps[start : start + x.shape[0]] = anomaly_map(teacher, student, size)
    return maps, image_score(maps)


@dataclass
class Predictor:
    """A checkpoint's model ready for inference, with the settings it was trained with."""

    model: SKRD4AD
    state: dict[str, Any]
    device: torch.device
    image_size: int
    precision: str
    channels_last: bool
    batch_size: int = 32

    @classmethod
    def from_checkpoint(
        cls,
        path: Path,
        *,
        device: str = "auto",
        precision: str | None = None,
        batch_size: int = 32,
        expect_backbone: str | None = None,
    ) -> Predictor:
        """Load ``path``; ``precision`` None means the checkpoint's own setting. Its
        ``precision`` attribute is the resolved one (``fp32`` or ``bf16``)."""
        from .checkpoint import load_model

        model, state = load_model(Path(path), expect_backbone=expect_backbone)
        cfg = state.get("config", {})
        dev = resolve_device(device)
        channels_last = bool(cfg.get("channels_last", True))
        return cls(
            model=prepare_model(model, dev, channels_last, inference_only=True),
            state=state,
            device=dev,
            image_size=int(cfg.get("image_size", 256)),
            precision=resolve_precision(dev, precision or cfg.get("precision", "auto")),
            channels_last=channels_last,
            batch_size=batch_size,
        )

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 images (N, 3, S, S) to maps (N, S, S) and scores (N,) on the device."""
        return predict_maps(
            self.model,
            images,
            device=self.device,
            batch_size=self.batch_size,
            precision=self.precision,
            channels_last=self.channels_last,
        )
