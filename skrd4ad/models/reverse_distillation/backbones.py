"""The backbone table: each teacher variant with its student's architecture, in one row.

One builder per variant, as torchvision does, with the ImageNet weights the published code
loaded (``pretrained=True`` is IMAGENET1K_V1), and the bottleneck and decoder blocks that
mirror it (RD4AD's resnet.py / de_resnet.py).

The table is plain data that names torchvision's builders (``torchvision.models.get_model``
resolves them when a model is built), so that the CLI lists the backbones, and parses its
flags, without importing torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal


@dataclass(frozen=True)
class Backbone:
    name: str  # torchvision's builder
    kind: Literal["basic", "bottleneck"]  # the residual block of the teacher and student
    bn_layers: int
    de_layers: tuple[int, int, int]
    width_per_group: int

    @property
    def builder(self) -> Callable[..., Any]:
        from torchvision import models

        return getattr(models, self.name)

    @property
    def weights(self) -> Any:
        from torchvision import models

        return models.get_model_weights(self.name).IMAGENET1K_V1

    @property
    def block(self) -> type:
        from torchvision.models.resnet import BasicBlock, Bottleneck

        return BasicBlock if self.kind == "basic" else Bottleneck

    @property
    def de_block(self) -> type:
        from .components.decoder import DeBasicBlock, DeBottleneck

        return DeBasicBlock if self.kind == "basic" else DeBottleneck


BACKBONES: dict[str, Backbone] = {
    b.name: b
    for b in (
        Backbone("resnet18", "basic", 2, (2, 2, 2), 64),
        Backbone("resnet34", "basic", 2, (3, 4, 6), 64),
        Backbone("resnet50", "bottleneck", 3, (3, 4, 6), 64),
        Backbone("wide_resnet50_2", "bottleneck", 3, (3, 4, 6), 128),
    )
}


def backbone(name: str) -> Backbone:
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(sorted(BACKBONES))}")
    return BACKBONES[name]
