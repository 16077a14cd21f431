"""Teacher features computed once per training image and reused every epoch.

The teacher is frozen and in eval mode, so with no augmentation its features E1, E2, E3 of
an image are the same in every epoch: recomputing them is most of a training step's
forward cost. The cache holds them on the GPU (in the autocast dtype, bf16 by default)
when they fit in half the free memory, else in pinned host memory; on a CPU, in host
memory. Augmentation changes the input every epoch, so it turns the cache off.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
import time
import typing
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from .config import CacheMode
from .models.reverse_distillation.torch_model import SKRD4AD
from .runtime import Runtime

MODES = typing.get_args(CacheMode)
# Share of the free GPU memory the cache may take; the rest is for training itself.
GPU_SHARE = 0.5
# Share of the available host memory the caches being built on this machine may take.
HOST_SHARE = 0.8
# Caches being built on this machine, {pid: bytes}: their pages are not filled yet, so the
# kernel's MemAvailable does not count them, and concurrent categories would all fit.
RESERVATIONS = Path(tempfile.gettempdir()) / "skrd4ad-feature-cache-reservations.json"


def host_available() -> int | None:
    """The kernel's estimate of the memory available to new allocations (MemAvailable)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def _reservations() -> Iterator[dict[str, int]]:
    """The reservations of live processes, under an exclusive lock; changes are saved.
    Without access to the file (another user's), there is nothing to count against."""
    try:
        f = open(RESERVATIONS, "a+")  # noqa: SIM115 - closed by the with below
    except OSError:
        yield {}
        return
    with f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        try:
            held = {k: int(v) for k, v in json.loads(f.read() or "{}").items()}
        except (ValueError, AttributeError):
            held = {}
        held = {k: v for k, v in held.items() if _alive(int(k))}
        yield held
        f.seek(0)
        f.truncate()
        f.write(json.dumps(held))


@contextmanager
def host_reservation(nbytes: int) -> Iterator[str | None]:
    """Reserve ``nbytes`` of host memory while a cache is filled; yields None when it fits,
    else why not (how much it needs, what is available and reserved by others)."""
    me = str(os.getpid())
    with _reservations() as held:
        others = sum(v for k, v in held.items() if k != me)
        available = host_available()
        room = None if available is None else HOST_SHARE * available - others
        if room is not None and nbytes > room:
            yield (
                f"the teacher-feature cache needs {nbytes / 2**20:.0f} MiB of host memory, but "
                f"{available / 2**20:.0f} MiB is available and {others / 2**20:.0f} MiB is "
                "reserved by other caches being built here; features are recomputed every "
                "step instead (--cache-features off says so up front)"
            )
            return
        held[me] = held.get(me, 0) + nbytes
    try:
        yield None
    finally:
        with _reservations() as held:
            left = held.get(me, 0) - nbytes
            if left > 0:
                held[me] = left
            else:
                held.pop(me, None)


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
    model: SKRD4AD, images: torch.Tensor, runtime: Runtime, batch_size: int = 32
) -> FeatureCache | None:
    """Run the teacher over uint8 ``images`` (N, 3, S, S) once, in batches; None, with a
    warning, when host memory cannot hold it (the caller recomputes the features).

    no_grad, not inference_mode: the cached tensors feed the student's backward pass.
    """
    device = runtime.device
    first = _teacher(model, images[:1], runtime)
    per_image = sum(f[0].numel() for f in first) * first[0].element_size()
    on_gpu = (
        device.type == "cuda"
        and per_image * images.shape[0] <= GPU_SHARE * (torch.cuda.mem_get_info(device)[0])
    )
    if on_gpu:
        return _fill(model, images, first, runtime, device, batch_size)
    with host_reservation(per_image * images.shape[0]) as problem:
        if problem:
            warnings.warn(problem, ResourceWarning, stacklevel=2)
            return None
        return _fill(model, images, first, runtime, torch.device("cpu"), batch_size)


def _fill(model, images, first, runtime: Runtime, place: torch.device, batch_size: int):
    t0 = time.perf_counter()
    n, device = images.shape[0], runtime.device
    dtype = first[0].dtype
    pin = device.type == "cuda" and place.type == "cpu"
    levels = [
        torch.empty((n, *f.shape[1:]), dtype=dtype, device=place, pin_memory=pin) for f in first
    ]
    for start in range(0, n, batch_size):
        feats = _teacher(model, images[start : start + batch_size], runtime)
        for store, f in zip(levels, feats, strict=True):
            store[start : start + f.shape[0]].copy_(f, non_blocking=False)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    where = f"{'pinned' if pin else place.type}-{str(dtype).removeprefix('torch.')}"
    return FeatureCache(levels, where, time.perf_counter() - t0, runtime.channels_last, device)


def _teacher(model: SKRD4AD, images: torch.Tensor, runtime: Runtime) -> list[torch.Tensor]:
    x = runtime.to_input(images)
    with runtime.autocast():
        return [f.contiguous() for f in model.teacher(x)]
