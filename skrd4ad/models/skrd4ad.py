"""The SK-RD4AD torch model: frozen teacher, trainable OCBE and student decoder."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from .bottleneck import OCBE
from .decoder import DeBasicBlock, DeBottleneck, Decoder
from .skip import resolve_skip
from .teacher import BACKBONES, Teacher, build_teacher


@dataclass(frozen=True)
class _Arch:
    block: type
    de_block: type
    bn_layers: int
    de_layers: tuple[int, int, int]
    width_per_group: int


# Mirrors of the published model per backbone (RD4AD's resnet.py / de_resnet.py).
ARCHS: dict[str, _Arch] = {
    "resnet18": _Arch(BasicBlock, DeBasicBlock, 2, (2, 2, 2), 64),
    "resnet34": _Arch(BasicBlock, DeBasicBlock, 2, (3, 4, 6), 64),
    "resnet50": _Arch(Bottleneck, DeBottleneck, 3, (3, 4, 6), 64),
    "wide_resnet50_2": _Arch(Bottleneck, DeBottleneck, 3, (3, 4, 6), 128),
}
assert set(ARCHS) == set(BACKBONES)


class Student(nn.Module):
    """The trainable half (bottleneck + decoder) as one module, so that it can be wrapped in
    DistributedDataParallel; it shares its parameters with the :class:`SKRD4AD` it came from."""

    def __init__(self, bottleneck: OCBE, decoder: Decoder, skip: dict[int, int]) -> None:
        super().__init__()
        self.bottleneck = bottleneck
        self.decoder = decoder
        self.skip = dict(skip)

    def forward(self, teacher_features: list[torch.Tensor]) -> list[torch.Tensor]:
        embedding = self.bottleneck(teacher_features)
        skips = {stage: teacher_features[level] for stage, level in self.skip.items()}
        a, b, c = self.decoder(embedding, skips)
        return [c, b, a]


class SKRD4AD(nn.Module):
    """Teacher features E1..E3 in, student features D aligned with them out.

    ``forward`` returns ``(teacher_features, student_features)``, both lists ordered
    [level 1, level 2, level 3], so ``student[i]`` is compared against ``teacher[i]``.
    """

    def __init__(
        self,
        teacher: Teacher,
        bottleneck: OCBE,
        decoder: Decoder,
        skip: str | dict[int, int] = "sk",
    ) -> None:
        super().__init__()
        self.teacher = teacher
        self.bottleneck = bottleneck
        self.decoder = decoder
        self.skip = resolve_skip(skip)

    @property
    def backbone(self) -> str:
        return self.teacher.backbone

    def student(self, teacher_features: list[torch.Tensor]) -> list[torch.Tensor]:
        """Student features from teacher features; usable with cached teacher features."""
        return Student.forward(self, teacher_features)  # same wiring, this module's parts

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        teacher_features = self.teacher(x)
        return teacher_features, self.student(teacher_features)

    def trainable_state_dict(self) -> dict[str, dict[str, torch.Tensor]]:
        return {"bottleneck": self.bottleneck.state_dict(), "decoder": self.decoder.state_dict()}


def build_model(
    backbone: str = "wide_resnet50_2",
    teacher_weights: str | os.PathLike = "imagenet",
    skip: str | dict[int, int] = "sk",
) -> SKRD4AD:
    """Build SK-RD4AD.

    Args:
        backbone: one of ``resnet18``, ``resnet34``, ``resnet50``, ``wide_resnet50_2``.
        teacher_weights: ``"imagenet"``, ``"none"`` (random, tests only) or a state dict path.
        skip: a name from :data:`skrd4ad.models.skip.SKIP_TOPOLOGIES` or a mapping.
    """
    teacher = build_teacher(backbone, teacher_weights)
    arch = ARCHS[backbone]
    bottleneck = OCBE(arch.block, arch.bn_layers, arch.width_per_group)
    decoder = Decoder(arch.de_block, arch.de_layers, arch.width_per_group)
    return SKRD4AD(teacher, bottleneck, decoder, skip)
