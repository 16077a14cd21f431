"""Which CPU convolution kernel a single image takes through the bottleneck.

oneDNN, PyTorch's default CPU convolution, reorders each convolution's weights into its
blocked layout on every call, a cost that a batch shares. The bottleneck holds most of
the model's weights (wide_resnet50_2: 58.9 M of 108.7 M) on maps of 32x32 down to 8x8, so
for one image the reorders take longer than its convolutions, while PyTorch's other CPU
kernel (im2col and a GEMM) reads the weights as they are stored. From 2 images on, oneDNN
is as fast or faster (``benchmarks/bench_cpu_parts.py --parts kernels``, BENCHMARKS.md).
Both kernels compute the same convolution; their results differ by float rounding.

The switch is torch's process-wide ``torch.backends.mkldnn.enabled``, so it is held by a
count: threads scoring at once all run with it off until the last one leaves, which
restores the setting found by the first.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

FEW_IMAGES = 2  # below this many images, the plain kernel: one image


class _PlainKernels:
    """oneDNN off while anyone holds it; the setting found before comes back after."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.holders = 0
        self.found = True
        self.local = threading.local()  # per thread: did this call take hold?

    def enter(self, take: bool) -> None:
        self.local.taken = [*getattr(self.local, "taken", []), take]
        if not take:
            return
        with self.lock:
            if self.holders == 0:
                self.found = torch.backends.mkldnn.enabled
                torch.backends.mkldnn.enabled = False
            self.holders += 1

    def leave(self) -> None:
        *self.local.taken, took = self.local.taken
        if not took:
            return
        with self.lock:
            self.holders -= 1
            if self.holders == 0:
                torch.backends.mkldnn.enabled = self.found


PLAIN = _PlainKernels()


def _few_images(args: tuple[Any, ...], below: int) -> bool:
    """An inference call (no autograd) on fewer than ``below`` float32 CPU images, run
    eagerly: a trace or a compiled graph records operations, not kernel choices."""
    if torch.jit.is_tracing() or torch.compiler.is_compiling() or not args:
        return False
    first = args[0][0] if isinstance(args[0], list | tuple) and args[0] else args[0]
    return (
        isinstance(first, torch.Tensor)
        and not torch.is_grad_enabled()
        and first.device.type == "cpu"
        and first.dtype == torch.float32
        and first.shape[0] < below
    )


@dataclass(frozen=True)
class _FewImagesHooks:
    """The hook pair, as plain data so that a module holding it still pickles."""

    below: int

    def pre(self, _module: nn.Module, args: tuple[Any, ...]) -> None:
        PLAIN.enter(_few_images(args, self.below))

    def post(self, _module: nn.Module, _args: tuple[Any, ...], _output: Any) -> None:
        PLAIN.leave()


def few_images_take_plain_kernels(module: nn.Module, below: int = FEW_IMAGES) -> nn.Module:
    """Hooks on ``module`` (in place): an inference call on a CPU with fewer than
    ``below`` float32 images runs its convolutions on PyTorch's plain kernel instead of
    oneDNN's. Training (autograd on) and larger batches are untouched."""
    hooks = _FewImagesHooks(below)
    module.register_forward_pre_hook(hooks.pre)
    module.register_forward_hook(hooks.post, always_call=True)  # after an exception too
    return module
