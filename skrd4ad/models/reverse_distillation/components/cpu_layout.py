"""The memory layout the bottleneck trains in on a CPU.

The model runs channels_last by default (``runtime.channels_last``), which is faster
than NCHW throughout. The bottleneck's convolutions are the exception in CPU training:
oneDNN's forward and backward on its wide maps of 32x32 down to 8x8 are faster with
weights and activations in NCHW (``benchmarks/bench_layout.py``, BENCHMARKS.md). A
convolution runs channels_last when either its input or its weight is, so NCHW weights
alone would still run channels_last on the teacher's maps: the weights go to NCHW and a
pre-hook hands the bottleneck its inputs in its weights' layout. What it returns feeds
the channels_last decoder, which runs channels_last for the same reason.

The layout is read from the weights on each call, so a module moved back to channels_last
(``module.to(memory_format=torch.channels_last)``) gets channels_last inputs again. Both
layouts compute the same convolution; their results differ by float rounding.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def weights_layout(module: nn.Module) -> torch.memory_format:
    """channels_last when ``module``'s first spatial convolution weight is held that way,
    else NCHW (``torch.contiguous_format``)."""
    for p in module.parameters():
        if p.dim() == 4 and p.shape[-2:] != (1, 1):  # a 1x1 kernel reads as both layouts
            cl = p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
            return torch.channels_last if cl else torch.contiguous_format
    return torch.contiguous_format


def _inputs_in_weights_layout(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    layout = weights_layout(module)
    feats = args[0]
    if isinstance(feats, list | tuple):
        return ([f.contiguous(memory_format=layout) for f in feats], *args[1:])
    return (feats.contiguous(memory_format=layout), *args[1:])


def run_in_nchw(module: nn.Module) -> nn.Module:
    """``module`` (in place) with NCHW weights and a pre-hook that converts its inputs to
    its weights' layout on every call."""
    module.to(memory_format=torch.contiguous_format)
    module.register_forward_pre_hook(_inputs_in_weights_layout)
    return module
