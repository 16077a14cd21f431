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


def _flat_pair(t: torch.Tensor, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each image's teacher and student map as one vector each, both in the same element
    order: memory order when both are channels_last (a view, where ``flatten(1)`` would
    copy), else the logical order. Only for order-free reductions (dot products, norms)."""
    if all(x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) for x in (t, s)):
        t, s = t.permute(0, 2, 3, 1), s.permute(0, 2, 3, 1)
    return t.flatten(1), s.flatten(1)


def cosine_loss(teacher: Features, student: Features) -> torch.Tensor:
    """Sum over levels of the batch mean of 1 - cosine(flattened teacher, flattened student)."""
    total = teacher[0].new_zeros((), dtype=torch.float32)
    for t, s in zip(teacher, student, strict=True):
        cos = F.cosine_similarity(*_flat_pair(t.float(), s.float()), dim=1)
        total = total + (1 - cos).mean()
    return total


def l2_loss(teacher: Features, student: Features) -> torch.Tensor:
    """Sum over levels of the mean squared error of the feature maps."""
    total = teacher[0].new_zeros((), dtype=torch.float32)
    for t, s in zip(teacher, student, strict=True):
        total = total + F.mse_loss(s.float(), t.float())
    return total


def _interpolation_gram(n_out: int, n_in: int, like: torch.Tensor) -> torch.Tensor:
    """``A.T @ A`` for ``A`` (n_out, n_in), the matrix of 1-D linear interpolation with
    ``align_corners=True`` (F.interpolate's), built in float64."""
    src = torch.arange(n_out, dtype=torch.float64) * ((n_in - 1) / max(n_out - 1, 1))
    lo = src.floor().long().clamp(max=n_in - 1)
    hi = (lo + 1).clamp(max=n_in - 1)
    rows = torch.arange(n_out)
    a = torch.zeros(n_out, n_in, dtype=torch.float64)
    a.index_put_((rows, lo), 1 - (src - lo), accumulate=True)
    a.index_put_((rows, hi), src - lo, accumulate=True)
    return (a.T @ a).to(device=like.device, dtype=like.dtype)


def upsampled_mse(student: torch.Tensor, teacher: torch.Tensor, size: torch.Size) -> torch.Tensor:
    """``F.mse_loss`` of student and teacher maps after both are resized bilinearly
    (align_corners=True) to ``size``, without building the resized maps.

    The resize is linear, ``U = A d B^T`` for the difference ``d`` of the two maps, so
    ``sum(U^2) = <d, (A^T A) d (B^T B)>``: two small matrix products on the coarse map
    replace two resizes, their difference and its backward on maps 4x larger
    (BENCHMARKS.md, "The parts of a CPU step")."""
    with torch.autocast(student.device.type, enabled=False):  # the sum stays in float32
        dtype = torch.promote_types(student.dtype, torch.float32)
        d = student.to(dtype) - teacher.to(dtype)
        gh = _interpolation_gram(size[0], d.shape[-2], d)
        gw = _interpolation_gram(size[1], d.shape[-1], d)
        total = ((gh @ d @ gw) * d).sum()
    return total / (d.shape[0] * d.shape[1] * size[0] * size[1])


def consistency_loss(teacher: Features, student: Features) -> torch.Tensor:
    """Inter-scale consistency: sum_k |MSE_{k+1}(upsampled to level k) - MSE_k|.

    MSE_k is the level-k mean squared error; the upsampled variant first resizes both
    teacher and student level-(k+1) maps bilinearly (align_corners=True) to level k's size
    (:func:`upsampled_mse`).
    """
    total = teacher[0].new_zeros((), dtype=torch.float32)
    for k in range(len(teacher) - 1):
        mse_up = upsampled_mse(student[k + 1], teacher[k + 1], teacher[k].shape[-2:])
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
