"""The backbone table: each teacher variant with its student's architecture, in one row.

One builder per variant, as torchvision does, with the ImageNet weights the published code
loaded (``pretrained=True`` is IMAGENET1K_V1), and the bottleneck and decoder blocks that
mirror it (RD4AD's resnet.py / de_resnet.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torchvision import models
from torchvision.models.resnet import BasicBlock, Bottleneck

from .components.decoder import DeBasicBlock, DeBottleneck


@dataclass(frozen=True)
class Backbone:
    builder: Callable[..., models.ResNet]
    weights: models.WeightsEnum
    block: type
    de_block: type
    bn_layers: int
    de_layers: tuple[int, int, int]
    width_per_group: int


BACKBONES: dict[str, Backbone] = {
    "resnet18": Backbone(
        models.resnet18, models.ResNet18_Weights.IMAGENET1K_V1,
        BasicBlock, DeBasicBlock, 2, (2, 2, 2), 64,
    ),
    "resnet34": Backbone(
        models.resnet34, models.ResNet34_Weights.IMAGENET1K_V1,
        BasicBlock, DeBasicBlock, 2, (3, 4, 6), 64,
    ),
    "resnet50": Backbone(
        models.resnet50, models.ResNet50_Weights.IMAGENET1K_V1,
        Bottleneck, DeBottleneck, 3, (3, 4, 6), 64,
    ),
    "wide_resnet50_2": Backbone(
        models.wide_resnet50_2, models.Wide_ResNet50_2_Weights.IMAGENET1K_V1,
        Bottleneck, DeBottleneck, 3, (3, 4, 6), 128,
    ),
}  # fmt: skip


def backbone(name: str) -> Backbone:
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(sorted(BACKBONES))}")
    return BACKBONES[name]
