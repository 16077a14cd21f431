"""Folding eval-mode BatchNorm into the preceding convolution, for inference: one pass
over every activation map less (benchmarks/bench_train_infer.py).

The fusion itself is torch's (``torch.nn.utils.fusion.fuse_conv_bn_eval``, transposed
convolutions too); only finding the pairs is this module's, by name, because torch.fx's
pattern fuser cannot trace the decoder's skip mapping.
"""

from __future__ import annotations

import copy

from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


def _fused(conv: nn.Conv2d | nn.ConvTranspose2d, bn: nn.BatchNorm2d) -> nn.Module:
    return fuse_conv_bn_eval(conv, bn, transpose=isinstance(conv, nn.ConvTranspose2d))


def fold_batchnorm(module: nn.Module, inplace: bool = False) -> nn.Module:
    """``module`` (a copy unless ``inplace``), in eval mode, with conv -> BatchNorm folded.

    Pairs are found by name, as torchvision and this project name them: ``convN``/``bnN``
    siblings and ``Sequential(conv, bn)`` (downsample / upsample branches).
    """
    module = (module if inplace else copy.deepcopy(module)).eval()
    convs = (nn.Conv2d, nn.ConvTranspose2d)
    # Only the modules that hold others: a list of every module would keep each replaced
    # convolution alive to the end, a second copy of the weights at the peak.
    parents = [m for m in module.modules() if next(m.children(), None) is not None]
    for parent in parents:
        if isinstance(parent, nn.Sequential):
            items = list(parent)
            for i in range(len(items) - 1):
                if isinstance(items[i], convs) and isinstance(items[i + 1], nn.BatchNorm2d):
                    parent[i] = _fused(items[i], items[i + 1])
                    parent[i + 1] = nn.Identity()
            continue
        children = dict(parent.named_children())
        for name, child in children.items():
            if name.startswith("bn") and isinstance(child, nn.BatchNorm2d):
                conv = children.get("conv" + name[2:])
                if isinstance(conv, convs):
                    setattr(parent, "conv" + name[2:], _fused(conv, child))
                    setattr(parent, name, nn.Identity())
    return module
