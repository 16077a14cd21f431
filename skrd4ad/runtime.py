"""Where and how a model runs: device, precision, memory layout and the data-parallel
rank and world, in one object (as Fabric's ``fabric.setup`` and Ray's ``prepare_model``).

Training and inference both go through a :class:`Runtime`; nothing else reads the device,
the precision or torch.distributed.
"""

from __future__ import annotations

import contextlib
import typing
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from .config import Device, Precision
from .data.images import normalize
from .errors import UserError

DEVICES = typing.get_args(Device)
PRECISIONS = typing.get_args(Precision)
# The validation threshold is computed in float32 whatever the training precision, so that
# it applies to what predict (by default) and the float32 exports compute.
THRESHOLD_PRECISION = "fp32"


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError(
            "--device cuda was asked for but no CUDA device is available; use --device cpu"
        )
    return torch.device(name)


def resolve_precision(device: torch.device, precision: str = "auto") -> str:
    """What ``precision`` means on ``device``: ``bf16`` for bf16, and for auto on CUDA;
    ``fp32`` otherwise. CPUs run float32 unless bf16 is asked for by name: bf16 is faster on
    CPUs with AVX512-BF16 or AMX (BENCHMARKS.md) but changes the numbers slightly."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    return "bf16" if bf16 else "fp32"


def _distributed() -> tuple[int, int]:
    """(rank, world size) of an initialised torch.distributed group, else (0, 1)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


@dataclass(frozen=True)
class Runtime:
    """``precision`` is the resolved one (``fp32`` or ``bf16``)."""

    device: torch.device
    precision: str = "fp32"
    channels_last: bool = True
    rank: int = 0
    world: int = 1

    @classmethod
    def create(
        cls, device: str = "auto", precision: str = "auto", channels_last: bool = True
    ) -> Runtime:
        """The runtime of this process: the device named (auto: CUDA when available) and,
        inside a torch.distributed group, this rank's GPU."""
        dev = resolve_device(device)
        rank, world = _distributed()
        if world > 1 and dev.type == "cuda":
            dev = torch.device("cuda", torch.cuda.current_device())
        return cls(dev, resolve_precision(dev, precision), channels_last, rank, world)

    def with_precision(self, precision: str) -> Runtime:
        return Runtime(
            self.device,
            resolve_precision(self.device, precision),
            self.channels_last,
            self.rank,
            self.world,
        )

    @property
    def is_rank_zero(self) -> bool:
        return self.rank == 0

    def setup(self, model: torch.nn.Module, inference_only: bool = False) -> torch.nn.Module:
        """``model`` on the device in its memory layout; a model used only for inference
        also gets its BatchNorm layers folded into the convolutions (in place), and on a
        CPU in float32 its bottleneck takes the plain convolution kernel for a single image
        (:mod:`~skrd4ad.models.reverse_distillation.components.cpu_kernels`). A model to
        train on a CPU in float32 channels_last keeps its bottleneck in NCHW
        (:mod:`~skrd4ad.models.reverse_distillation.components.cpu_layout`)."""
        cpu_fp32 = self.device.type == "cpu" and self.precision == "fp32"
        if inference_only:
            from .models.reverse_distillation.components.cpu_kernels import (
                few_images_take_plain_kernels,
            )
            from .models.reverse_distillation.components.fuse import fold_batchnorm

            model = fold_batchnorm(model, inplace=True)
            if cpu_fp32:
                few_images_take_plain_kernels(model.bottleneck)
        model = model.to(self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
            if cpu_fp32 and not inference_only:
                from .models.reverse_distillation.components.cpu_layout import run_in_nchw

                run_in_nchw(model.bottleneck)
        return model

    def wrap(self, module: torch.nn.Module) -> torch.nn.Module:
        """The trainable ``module`` data-parallel across the world (DDP averages the
        gradients; BatchNorm statistics follow rank 0), or itself on one process."""
        if self.world == 1:
            return module
        ids = [self.device.index] if self.device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(module, device_ids=ids)

    def to_input(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images to the normalised float input on the device."""
        x = normalize(images.to(self.device, non_blocking=True))
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast where the precision is bf16; nothing otherwise."""
        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def float32_numerics(self) -> Iterator[None]:
        """Where the precision is fp32 on CUDA, true float32 inside: TF32 off for cuDNN
        convolutions (torch's default runs them in TF32) and for cuBLAS matmuls, forward and
        backward; the previous settings come back on exit."""
        if self.device.type != "cuda" or self.precision != "fp32":
            yield
            return
        matmul, conv = torch.backends.cuda.matmul, torch.backends.cudnn.conv
        saved = matmul.fp32_precision, conv.fp32_precision
        matmul.fp32_precision = conv.fp32_precision = "ieee"
        try:
            yield
        finally:
            matmul.fp32_precision, conv.fp32_precision = saved

    def shard(self, order: torch.Tensor) -> torch.Tensor:
        """This rank's equal share of ``order``, so that every rank takes as many steps."""
        if self.world == 1:
            return order
        n = len(order)
        return order[: n - n % self.world][self.rank :: self.world]

    def all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        """The sum of ``t`` over the world, in place."""
        if self.world > 1:
            torch.distributed.all_reduce(t)
        return t

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()
