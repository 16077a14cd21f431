from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from skrd4ad.models.reverse_distillation.anomaly_map import anomaly_map, gaussian_blur, image_score
from skrd4ad.models.reverse_distillation.loss import SKRD4ADLoss


@pytest.mark.parametrize("shape", [(3, 64, 64), (2, 5, 40), (1, 256, 256)])
def test_blur_matches_scipy_reflect(shape):
    x = torch.rand(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    expected = np.stack([ndimage.gaussian_filter(m, 4, mode="reflect") for m in x.numpy()])
    np.testing.assert_allclose(gaussian_blur(x).numpy(), expected, atol=1e-12)


def test_map_batches_and_scores():
    teacher = [torch.randn(3, c, s, s) for c, s in [(8, 16), (16, 8), (32, 4)]]
    student = [t + 0.1 * torch.randn_like(t) for t in teacher]
    maps = anomaly_map(teacher, student, 64)
    assert maps.shape == (3, 64, 64)
    single = anomaly_map([t[1:2] for t in teacher], [s[1:2] for s in student], 64)
    torch.testing.assert_close(maps[1:2], single)
    assert torch.equal(image_score(maps), maps.flatten(1).max(1).values)


def test_identical_features_give_zero_map():
    teacher = [torch.randn(2, 4, 8, 8)] * 3
    assert float(anomaly_map(teacher, teacher, 32).abs().max()) < 1e-5


def test_zero_weight_switches_a_term_off():
    teacher = [torch.randn(2, 4, 8, 8), torch.randn(2, 8, 4, 4)]
    student = [t + torch.randn_like(t) for t in teacher]
    total, terms = SKRD4ADLoss(alpha=0.0, beta=1.0, gamma=0.0)(teacher, student)
    assert float(terms["l2"]) == 0.0 and float(terms["consistency"]) == 0.0
    assert float(total) == pytest.approx(float(terms["cosine"]))
    total, terms = SKRD4ADLoss(alpha=1.0, beta=0.0, gamma=0.0)(teacher, student)
    assert float(total) == pytest.approx(float(terms["l2"])) and float(terms["l2"]) > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_map_on_cuda_matches_cpu():
    teacher = [torch.randn(2, c, s, s) for c, s in [(8, 16), (16, 8), (32, 4)]]
    student = [t + 0.1 * torch.randn_like(t) for t in teacher]
    cpu = anomaly_map(teacher, student, 64)
    gpu = anomaly_map([t.cuda() for t in teacher], [s.cuda() for s in student], 64)
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-5, rtol=1e-5)
