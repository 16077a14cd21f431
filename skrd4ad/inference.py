"""Batched inference: uint8 images to smoothed anomaly maps and image scores."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .data.images import Normalize
from .models import SKRD4AD
from .models.reverse_distillation.anomaly_map import anomaly_map, image_score
from .runtime import Runtime

# The detector's input and outputs by name, as every serialised form names them (ONNX,
# the MLflow model's signature and its pyfunc predictions).
INPUT_NAME = "images"
OUTPUT_NAMES = ("anomaly_map", "score")


class AnomalyDetector(torch.nn.Module):
    """uint8 images (N, 3, S, S) -> (anomaly maps (N, S, S), scores (N,)), in float32: the
    one place that normalises, runs the model, maps and scores, for :func:`predict_maps`
    and the exports alike."""

    def __init__(self, model: SKRD4AD, image_size: int, channels_last: bool = False) -> None:
        super().__init__()
        self.model = model.eval()
        self.normalize = Normalize()
        self.image_size = int(image_size)
        self.channels_last = channels_last

    def embed(self, images: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Teacher and student features of uint8 ``images`` (the part autocast covers)."""
        x = self.normalize(images)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.model(x)

    def maps(self, teacher: list[torch.Tensor], student: list[torch.Tensor]) -> torch.Tensor:
        return anomaly_map(teacher, student, self.image_size)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        maps = self.maps(*self.embed(images))
        return maps, image_score(maps)


@torch.inference_mode()
def predict_maps(
    model: SKRD4AD, images: torch.Tensor, runtime: Runtime, batch_size: int = 32
) -> tuple[torch.Tensor, torch.Tensor]:
    """Maps (N, S, S) float32 and scores (N,), left on the device for on-device metrics."""
    size = images.shape[-1]
    detector = AnomalyDetector(model, size, runtime.channels_last).to(runtime.device)
    maps = torch.empty((images.shape[0], size, size), dtype=torch.float32, device=runtime.device)
    with runtime.float32_numerics():
        for start in range(0, images.shape[0], batch_size):
            batch = images[start : start + batch_size].to(runtime.device, non_blocking=True)
            with runtime.autocast():
                features = detector.embed(batch)
            maps[start : start + batch.shape[0]] = detector.maps(*features)
    return maps, image_score(maps)


@dataclass
class Predictor:
    """A checkpoint's model ready for inference, with the settings it was trained with."""

    model: SKRD4AD
    state: dict[str, Any]
    runtime: Runtime
    image_size: int
    batch_size: int = 32
    backend = "torch"  # what scores (skrd4ad.onnx_predictor has the other)

    @property
    def device(self) -> torch.device:
        return self.runtime.device

    @property
    def precision(self) -> str:
        """The resolved precision (``fp32`` or ``bf16``)."""
        return self.runtime.precision

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
        """Load ``path``; ``precision`` None means the checkpoint's own setting."""
        from .checkpoint import load_model, stored_config

        model, state = load_model(Path(path), expect_backbone=expect_backbone)
        cfg = stored_config(state)
        runtime = Runtime.create(
            device, precision or cfg.runtime.precision, cfg.runtime.channels_last
        )
        return cls(
            model=runtime.setup(model, inference_only=True),
            state=state,
            runtime=runtime,
            image_size=cfg.train.image_size,
            batch_size=batch_size,
        )

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 images (N, 3, S, S) to maps (N, S, S) and scores (N,) on the device."""
        return predict_maps(self.model, images, self.runtime, self.batch_size)
