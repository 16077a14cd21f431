from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage
from sklearn.metrics import roc_auc_score

from skrd4ad.metrics import UndefinedMetricWarning, aupro, image_auroc, pixel_auroc


def brute_force_aupro(maps: np.ndarray, masks: np.ndarray, limit: float = 0.3) -> float:
    """Every distinct threshold, one at a time, straight from the definition."""
    regions = []
    for m in masks:
        lab, n = ndimage.label(m > 0, structure=np.ones((3, 3)))
        regions.append([lab == k for k in range(1, n + 1)])
    normal = masks == 0
    points = [(0.0, 0.0)]
    for t in np.unique(maps)[::-1]:
        above = maps >= t
        fpr = (above & normal).sum() / normal.sum()
        overlaps = [above[i][r].mean() for i, rs in enumerate(regions) for r in rs]
        points.append((fpr, float(np.mean(overlaps))))
    x, y = np.array(points).T
    area = 0.0
    for i in range(1, len(x)):
        if x[i - 1] >= limit:
            break
        x1, y1 = x[i], y[i]
        if x1 > limit:
            y1 = y[i - 1] + (y[i] - y[i - 1]) * (limit - x[i - 1]) / (x[i] - x[i - 1])
            x1 = limit
        area += (x1 - x[i - 1]) * (y1 + y[i - 1]) / 2
    return area / limit


def random_case(seed: int, n: int = 4, size: int = 12, levels: int | None = 6):
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, size, size), np.uint8)
    for i in range(n - 1):  # the last image has no defect
        for _ in range(rng.integers(1, 3)):
            y, x = rng.integers(0, size - 3, 2)
            h, w = rng.integers(1, 4, 2)
            masks[i, y : y + h, x : x + w] = 255
    # a diagonal touch: one region under 8-connectivity, two under 4-connectivity
    masks[0, 0, 0] = masks[0, 1, 1] = 255
    maps = rng.random((n, size, size)) + 0.6 * (masks > 0)
    if levels:  # coarse quantisation makes many ties
        maps = np.round(maps * levels) / levels
    return maps.astype(np.float32), masks


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("levels", [None, 4])
def test_aupro_matches_brute_force(seed, levels):
    maps, masks = random_case(seed, levels=levels)
    expected = brute_force_aupro(maps, masks)
    assert aupro(maps, masks, exact=True) == pytest.approx(expected, abs=1e-9)
    assert aupro(maps, masks) == pytest.approx(expected, abs=1e-3)
    assert aupro(torch.from_numpy(maps), torch.from_numpy(masks)) == pytest.approx(
        expected, abs=1e-3
    )


def test_aupro_binned_equals_exact_on_realistic_maps():
    rng = np.random.default_rng(1)
    masks = np.zeros((20, 64, 64), np.uint8)
    for i in range(10):
        masks[i, 10 + i : 30 + i, 5:25] = 1
    maps = rng.normal(size=masks.shape).astype(np.float32) + 2 * masks
    assert aupro(maps, masks) == pytest.approx(aupro(maps, masks, exact=True), abs=1e-4)


def test_aupro_other_limit_and_perfect_scores():
    maps, masks = random_case(3, levels=None)
    assert aupro(maps, masks, fpr_limit=1.0) == pytest.approx(
        brute_force_aupro(maps, masks, 1.0), abs=1e-3
    )
    perfect = (masks > 0).astype(np.float32)
    assert aupro(perfect, masks) == pytest.approx(1.0, abs=1e-9)


def test_aupro_without_defects_is_nan_with_warning():
    maps = np.random.default_rng(0).random((3, 8, 8)).astype(np.float32)
    with pytest.warns(UndefinedMetricWarning, match="no defect region"):
        assert np.isnan(aupro(maps, np.zeros((3, 8, 8), np.uint8)))


def test_auroc_against_sklearn_with_ties():
    maps, masks = random_case(5, n=6, size=16, levels=3)
    assert pixel_auroc(maps, masks) == pytest.approx(
        roc_auc_score(masks.ravel() > 0, maps.ravel()), abs=1e-6
    )
    scores = maps.reshape(6, -1).max(1)
    labels = (masks.reshape(6, -1).max(1) > 0).astype(int)
    labels[0] = 0  # both classes present
    assert image_auroc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-9)
    assert image_auroc(torch.tensor(scores), torch.tensor(labels)) == pytest.approx(
        roc_auc_score(labels, scores), abs=1e-9
    )


def test_single_class_auroc_is_nan_with_warning():
    with pytest.warns(UndefinedMetricWarning):
        assert np.isnan(image_auroc(np.array([0.1, 0.2]), np.array([0, 0])))


def test_shape_errors_name_the_shapes():
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        aupro(np.zeros((2, 4, 4)), np.zeros((2, 4, 5)))
    with pytest.raises(ValueError, match=r"\(N,\)"):
        image_auroc(np.zeros(3), np.zeros(4))
