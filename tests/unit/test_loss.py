"""The loss terms computed the cheap way equal their definitions: the consistency term
without building the upsampled maps, the cosine term without copying channels_last maps."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from skrd4ad.models.reverse_distillation.loss import (
    consistency_loss,
    cosine_loss,
    upsampled_mse,
)

CHANNELS_LAST = torch.channels_last


def resized_mse(student: torch.Tensor, teacher: torch.Tensor, size) -> torch.Tensor:
    """The definition: resize both maps, then their mean squared error."""
    up = lambda t: F.interpolate(t, size=size, mode="bilinear", align_corners=True)  # noqa: E731
    return F.mse_loss(up(student), up(teacher))


# (coarse h, w) -> (fine h, w): the model's 2x, odd and non-square sizes, a single row or
# column on either side, and a shrink (the same interpolation, read the other way).
SIZES = [((8, 8), (16, 16)), ((7, 5), (13, 16)), ((1, 6), (4, 11)), ((6, 1), (1, 9)),
         ((9, 12), (4, 5)), ((3, 3), (3, 3))]  # fmt: skip


@pytest.mark.parametrize(("coarse", "fine"), SIZES)
@pytest.mark.parametrize("layout", [torch.contiguous_format, CHANNELS_LAST])
def test_upsampled_mse_is_the_mse_of_the_resized_maps(coarse, fine, layout):
    g = torch.Generator().manual_seed(sum(coarse) * 31 + sum(fine))
    teacher = torch.randn(2, 3, *coarse, generator=g, dtype=torch.float64)
    student = teacher + 0.1 * torch.randn(2, 3, *coarse, generator=g, dtype=torch.float64)
    teacher = teacher.contiguous(memory_format=layout)
    student = student.contiguous(memory_format=layout).requires_grad_()
    got = upsampled_mse(student, teacher, torch.Size(fine))
    (grad_got,) = torch.autograd.grad(got, student)
    want = resized_mse(student, teacher, fine)
    (grad_want,) = torch.autograd.grad(want, student)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)
    torch.testing.assert_close(grad_got, grad_want, rtol=1e-10, atol=1e-15)


def features(batch: int = 2, layout=CHANNELS_LAST, dtype=torch.float32):
    """Teacher and student maps shaped as resnet18's levels, the student near the teacher."""
    g = torch.Generator().manual_seed(0)
    shapes = [(64, 32), (128, 16), (256, 8)]
    teacher = [torch.randn(batch, c, s, s, generator=g) for c, s in shapes]
    student = [t + 0.2 * torch.randn(t.shape, generator=g) for t in teacher]
    as_ = lambda ts: [t.to(dtype).contiguous(memory_format=layout) for t in ts]  # noqa: E731
    return as_(teacher), as_(student)


def consistency_by_definition(teacher, student) -> torch.Tensor:
    total = torch.zeros((), dtype=torch.float64)
    for k in range(len(teacher) - 1):
        size = teacher[k].shape[-2:]
        up = resized_mse(student[k + 1].double(), teacher[k + 1].double(), size)
        total = total + (up - F.mse_loss(student[k].double(), teacher[k].double())).abs()
    return total


@pytest.mark.parametrize("layout", [torch.contiguous_format, CHANNELS_LAST])
def test_consistency_loss_matches_its_definition(layout):
    teacher, student = features(layout=layout)
    got = consistency_loss(teacher, student)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), consistency_by_definition(teacher, student),
                               rtol=1e-5, atol=1e-8)  # fmt: skip


def test_consistency_loss_stays_float32_under_bf16_autocast():
    """bf16 student maps (autocast training): the quadratic form's matrix products must
    not run in bf16, which would lose the difference between two close MSEs."""
    teacher, student = features(dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = consistency_loss(teacher, student)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), consistency_by_definition(teacher, student),
                               rtol=1e-5, atol=1e-8)  # fmt: skip


@pytest.mark.parametrize(
    ("t_layout", "s_layout"),
    [
        (CHANNELS_LAST, CHANNELS_LAST),
        (torch.contiguous_format, CHANNELS_LAST),
        (CHANNELS_LAST, torch.contiguous_format),
    ],  # fmt: skip
)
def test_cosine_loss_is_layout_free(t_layout, s_layout):
    """Each map is read in its memory order; a teacher and student in different layouts
    must still be compared element by element."""
    teacher, student = features(layout=torch.contiguous_format)
    want = sum(
        (1 - F.cosine_similarity(t.flatten(1).double(), s.flatten(1).double(), dim=1)).mean()
        for t, s in zip(teacher, student, strict=True)
    )
    teacher = [t.contiguous(memory_format=t_layout) for t in teacher]
    student = [s.contiguous(memory_format=s_layout) for s in student]
    torch.testing.assert_close(cosine_loss(teacher, student).double(), want, rtol=1e-4, atol=0)
