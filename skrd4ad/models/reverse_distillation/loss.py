"""SK-RD4AD training loss: alpha * L2 + beta * cosine + gamma * inter-scale consistency.

The poster calls the L2 term 'L_recon = ||X - S(T(X))||^2', a pixel reconstruction.
The model has no pixel decoder: the student rebuilds teacher features, never the image,
so the published code (and this module) computes the L2 term between teacher and student
feature maps. That is the only reading under which the term can be computed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

Features = list[torch.Tensor]

DEFAULT_ALPHA = 0.0
DEFAULT_BETA = 1.0
DEFAULT_GAMMA = 0.05


def cosine_loss(teacher: Features, student: Features) -> torch.Tensor:
    """Sum over levels of the batch mean of 1 - cosine(flattened teacher, flattened student)."""
    total = teacher[0].new_zeros((), dtype=torch.float32)
    for t, s in zip(teacher, student, strict=True):
        cos = F.cosine_similarity(t.flatten(1).float(), s.flatten(1).float(), dim=1)
        total = total + (1 - cos).mean()
    return total


def l2_loss(teacher: Features, student: Features) -> torch.Tensor:
    """Sum over levels of the mean squared error of the feature maps."""
    total = teacher[0].new_zeros((), dtype=torch.float32)
    for t, s in zip(teacher, student, strict=True):
        total = total + F.mse_loss(s.float(), t.float())
    return total


def consistency_loss(teacher: Features, student: Features) -> torch.Tensor:
    """Inter-scale consistency: sum_k |MSE_{k+1}(upsampled to level k) - MSE_k|.

    MSE_k is the level-k mean squared error; the upsampled variant first resizes both
    teacher and student level-(k+1) maps bilinearly (align_corners=True) to level k's size.
    """
    total = teacher[0].new_zeros((), dtype=torch.float32)
    for k in range(len(teacher) - 1):
        size = teacher[k].shape[-2:]
        up_t = F.interpolate(teacher[k + 1].float(), size=size, mode="bilinear", align_corners=True)
        up_s = F.interpolate(student[k + 1].float(), size=size, mode="bilinear", align_corners=True)
        mse_up = F.mse_loss(up_s, up_t)
        mse_k = F.mse_loss(student[k].float(), teacher[k].float())
        total = total + (mse_up - mse_k).abs()
    return total


@dataclass
class SKRD4ADLoss:
    """The weighted total. Each weight is a plain float, so Ray Tune can search it.

    A weight of 0 skips computing its term (the returned term is then exactly 0).
    """

    alpha: float = DEFAULT_ALPHA
    beta: float = DEFAULT_BETA
    gamma: float = DEFAULT_GAMMA

    def __call__(
        self, teacher: Features, student: Features
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        zero = teacher[0].new_zeros((), dtype=torch.float32)
        terms = {
            "l2": l2_loss(teacher, student) if self.alpha else zero,
            "cosine": cosine_loss(teacher, student) if self.beta else zero,
            "consistency": consistency_loss(teacher, student) if self.gamma else zero,
        }
        total = (
            self.alpha * terms["l2"]
            + self.beta * terms["cosine"]
            + self.gamma * terms["consistency"]
        )
        return total, terms
