"""Teacher features computed once per training image and reused every epoch.

The teacher is frozen and in eval mode, so with no augmentation its features E1, E2, E3 of
an image are the same in every epoch: recomputing them is most of a training step's
forward cost. The cache holds them on the GPU (in the autocast dtype, bf16 by default)
when they fit in half the free memory, else in pinned host memory; on a CPU, in host
memory. Augmentation changes the input every epoch, so it turns the cache off.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from .inference import autocast, to_input
from .models.skrd4ad import SKRD4AD

MODES = ("auto", "on", "off")
# Share of the free GPU memory the cache may take; the rest is for training itself.
GPU_SHARE = 0.5


@dataclass
class FeatureCache:
    """E1..E3 of every training image, indexable by a batch of image indices."""

    levels: list[torch.Tensor]
    where: str  # "cuda-bfloat16", "pinned-float32", "cpu-float32", ...
    build_s: float
    channels_last: bool
    device: torch.device

    def batch(self, idx: torch.Tensor) -> list[torch.Tensor]:
        idx = idx.to(self.levels[0].device)
        out = []
        for level in self.levels:
            f = level.index_select(0, idx).to(self.device, non_blocking=True)
            if self.channels_last:
                f = f.contiguous(memory_format=torch.channels_last)
            out.append(f)
        return out

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.levels)


def use_cache(mode: str, augment: str) -> bool:
    if mode not in MODES:
        raise ValueError(f"cache_features must be one of {MODES}, got {mode!r}")
    return mode != "off" and augment == "none"


@torch.no_grad()
def build_cache(
    model: SKRD4AD,
    images: torch.Tensor,
    *,
    device: torch.device,
    precision: str,
    channels_last: bool,
    batch_size: int = 32,
) -> FeatureCache:
    """Run the teacher over uint8 ``images`` (N, 3, S, S) once, in batches.

    no_grad, not inference_mode: the cached tensors feed the student's backward pass.
    """
    t0 = time.perf_counter()
    n = images.shape[0]
    first = _teacher(model, images[:1], device, precision, channels_last)
    dtype = first[0].dtype
    per_image = sum(f[0].numel() for f in first) * first[0].element_size()
    place = torch.device("cpu")
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if per_image * n <= GPU_SHARE * free:
            place = device
    pin = device.type == "cuda" and place.type == "cpu"
    levels = [
        torch.empty((n, *f.shape[1:]), dtype=dtype, device=place, pin_memory=pin) for f in first
    ]
    for start in range(0, n, batch_size):
        feats = _teacher(
            model, images[start : start + batch_size], device, precision, channels_last
        )
        for store, f in zip(levels, feats, strict=True):
            store[start : start + f.shape[0]].copy_(f, non_blocking=False)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    where = f"{'pinned' if pin else place.type}-{str(dtype).removeprefix('torch.')}"
    return FeatureCache(levels, where, time.perf_counter() - t0, channels_last, device)


def _teacher(model, images, device, precision, channels_last) -> list[torch.Tensor]:
    x = to_input(images, device, channels_last)
    with autocast(device, precision):
        return [f.contiguous() for f in model.teacher(x)]
