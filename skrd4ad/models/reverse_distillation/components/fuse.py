"""Folding eval-mode BatchNorm into the preceding convolution, for inference.

Hand-written because torch.fx's fuser cannot trace the decoder's skip mapping and knows
no ConvTranspose2d + BatchNorm pair; folding saves one pass over every activation map
(measured in benchmarks/bench_train_infer.py).
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def _fold(conv: nn.Conv2d | nn.ConvTranspose2d, bn: nn.BatchNorm2d) -> None:
    scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
    shift = bn.bias.detach() - bn.running_mean * scale
    w = conv.weight.detach()
    # Conv2d weights are (out, in, kh, kw); ConvTranspose2d weights are (in, out, kh, kw).
    shape = (1, -1, 1, 1) if isinstance(conv, nn.ConvTranspose2d) else (-1, 1, 1, 1)
    conv.weight = nn.Parameter(w * scale.view(shape), requires_grad=False)
    bias = conv.bias.detach() * scale + shift if conv.bias is not None else shift
    conv.bias = nn.Parameter(bias, requires_grad=False)


def fold_batchnorm(module: nn.Module, inplace: bool = False) -> nn.Module:
    """``module`` (a copy unless ``inplace``), in eval mode, with conv -> BatchNorm folded.

    Pairs are found by name, as torchvision and this project name them: ``convN``/``bnN``
    siblings and ``Sequential(conv, bn)`` (downsample / upsample branches).
    """
    module = (module if inplace else copy.deepcopy(module)).eval()
    convs = (nn.Conv2d, nn.ConvTranspose2d)
    for parent in list(module.modules()):
        if isinstance(parent, nn.Sequential):
            items = list(parent)
            for i in range(len(items) - 1):
                if isinstance(items[i], convs) and isinstance(items[i + 1], nn.BatchNorm2d):
                    _fold(items[i], items[i + 1])
                    parent[i + 1] = nn.Identity()
            continue
        children = dict(parent.named_children())
        for name, child in children.items():
            if name.startswith("bn") and isinstance(child, nn.BatchNorm2d):
                conv = children.get("conv" + name[2:])
                if isinstance(conv, convs):
                    _fold(conv, child)
                    setattr(parent, name, nn.Identity())
    return module
