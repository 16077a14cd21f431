"""The SK-RD4AD torch model: frozen teacher, trainable OCBE and student decoder."""

from __future__ import annotations

import os

import torch
from torch import nn

from .backbones import backbone as lookup
from .components.bottleneck import OCBE
from .components.decoder import Decoder
from .components.skip import resolve_skip
from .components.teacher import Teacher, build_teacher


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


def build_model(
    backbone: str = "wide_resnet50_2",
    teacher_weights: str | os.PathLike = "imagenet",
    skip: str | dict[int, int] = "sk",
) -> SKRD4AD:
    """Build SK-RD4AD.

    Args:
        backbone: one of ``resnet18``, ``resnet34``, ``resnet50``, ``wide_resnet50_2``.
        teacher_weights: ``"imagenet"``, ``"none"`` (random, tests only) or a state dict path.
        skip: a name from :data:`skrd4ad.models.SKIP_TOPOLOGIES` or a mapping.
    """
    teacher = build_teacher(backbone, teacher_weights)
    arch = lookup(backbone)
    bottleneck = OCBE(arch.block, arch.bn_layers, arch.width_per_group)
    decoder = Decoder(arch.de_block, arch.de_layers, arch.width_per_group)
    return SKRD4AD(teacher, bottleneck, decoder, skip)
