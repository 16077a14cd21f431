from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage
from sklearn.metrics import roc_auc_score

from skrd4ad.metrics import (
    AUPRO_BINS,
    UndefinedMetricWarning,
    aupro,
    f1_max,
    image_auroc,
    pixel_auroc,
    pixel_f1_max,
)


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


# --- Adversarial inputs for the binned path's guarantee (within 1e-4 of exact) -------------


def reference_aupro(maps: np.ndarray, masks: np.ndarray, limit: float = 0.3) -> float:
    """The definition at every distinct threshold, counted with searchsorted per region:
    independent of skrd4ad's histogram and fast enough for a million pixels."""
    lab, n = ndimage.label(
        masks > 0, structure=np.array([np.zeros((3, 3)), np.ones((3, 3)), np.zeros((3, 3))], bool)
    )
    flat = np.asarray(maps, np.float64).ravel()
    where = lab.ravel()
    thresholds = np.unique(flat)[::-1]
    normal = np.sort(flat[where == 0])
    fpr = (normal.size - np.searchsorted(normal, thresholds)) / normal.size
    pro = np.zeros_like(thresholds)
    for r in range(1, n + 1):
        v = np.sort(flat[where == r])
        pro += (v.size - np.searchsorted(v, thresholds)) / v.size / n
    x, y = np.r_[0.0, fpr], np.r_[0.0, pro]
    i = int(np.searchsorted(x, limit))
    y_limit = (
        y[i]
        if x[i] == limit
        else y[i - 1] + (y[i] - y[i - 1]) * (limit - x[i - 1]) / (x[i] - x[i - 1])
    )
    return float(np.trapezoid(np.r_[y[:i], y_limit], np.r_[x[:i], limit]) / limit)


def _defect_masks(n=20, size=128, regions=4, rng=None):
    masks = np.zeros((n, size, size), np.uint8)
    for i in range(regions):
        h, w = (3 + 7 * i, 4 + 5 * i) if rng is None else rng.integers(2, 30, 2)
        masks[i % n, 10 + i : 10 + i + h, 5 + 3 * i : 5 + 3 * i + w] = 1
    return masks


def crossing_bin_case(share: float, seed: int = 0):
    """One bin straddles FPR 0.3, just past its lower edge, and holds ``share`` of the normal
    pixels; every defect pixel sits at the top of that bin. The interpolated segment is
    almost flat up to the limit, the exact curve jumps to PRO 1 at once."""
    from skrd4ad.metrics import AUPRO_BINS

    rng = np.random.default_rng(seed)
    masks = _defect_masks()
    normal = masks == 0
    k, width = 300_000, 1 / AUPRO_BINS
    vals = rng.uniform(0.0, (k - 1) * width, normal.sum()).astype(np.float32)
    n_high = int(normal.sum() * 0.2995)
    vals[:n_high] = rng.uniform(0.5, 1.0, n_high)
    vals[n_high : n_high + int(normal.sum() * share)] = (k + 0.1) * width
    maps = np.empty(masks.shape, np.float32)
    maps[normal] = rng.permutation(vals)
    maps[masks > 0] = (k + 0.8) * width
    maps.flat[0], maps.flat[1] = 0.0, 1.0
    return maps, masks


def straddle(maps, masks, *, hi: float, gap: float = 0.02, quantize=np.float32):
    """Moves the scores so that the range [0, hi] puts a bin edge just above the normal
    pixels' 70th percentile (a bin straddles FPR 0.3, with the limit ``gap`` of a bin below
    its top), and every defect pixel at the top of that bin."""
    width = hi / AUPRO_BINS
    normal = masks == 0
    v = maps.astype(np.float64)
    v = v - v[normal].min() + 10 * width
    q = np.quantile(v[normal], 0.7)
    top = (np.floor(q / width) + 1) * width
    v[normal] += top - gap * width - q
    v = v.astype(quantize).astype(np.float64)
    defect = quantize(top - 0.001 * width)
    while defect >= top:
        defect = np.nextafter(defect, quantize(0))
    v[masks > 0] = defect
    edges = np.flatnonzero(normal.ravel())[:2]
    v.flat[edges[0]], v.flat[edges[1]] = 0.0, hi
    return v.astype(np.float32), masks


def outlier_case(seed: int = 0):
    """One outlier pixel stretches the score range: a bin holds ~10 % of the normal pixels."""
    rng = np.random.default_rng(seed)
    masks = _defect_masks(rng=rng, regions=6)
    return straddle(rng.normal(size=masks.shape), masks, hi=3e5)


def clipped_case(seed: int = 0):
    """Maps clipped at 0: 70 % of the normal pixels tie at exactly 0, in the bin that
    straddles FPR 0.3; faint defects score just above 0."""
    rng = np.random.default_rng(seed)
    masks = _defect_masks(rng=rng)
    maps = np.maximum(rng.normal(-0.53, 1.0, masks.shape), 0)
    hi = 5.0
    normal = masks == 0
    maps[normal] = np.where(maps[normal] > 0, maps[normal] + hi / AUPRO_BINS, 0.0)
    maps[masks > 0] = 0.5 * hi / AUPRO_BINS
    maps.flat[np.flatnonzero(normal.ravel())[0]] = hi
    return maps.astype(np.float32), masks


def float16_case(seed: int = 0):
    """float16 maps (ties) with an outlier at float16's top: tens of distinct values a bin."""
    rng = np.random.default_rng(seed)
    masks = _defect_masks(rng=rng, regions=5)
    maps = 0.1 * rng.normal(size=masks.shape)
    return straddle(maps, masks, hi=59968.0, gap=0.02, quantize=np.float16)


def tiny_region_case(seed: int = 0):
    """One-pixel regions weigh as much as a large one: five of them at the top of the
    straddling bin, the large region far below."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((6, 256, 256), np.uint8)
    for i in range(1, 6):
        masks[i, 5 * i, 7 * i] = 1
    maps, masks = straddle(rng.uniform(0, 1, masks.shape), masks, hi=2e4)
    masks[0, 10:60, 10:60] = 1
    maps[0, 10:60, 10:60] = rng.uniform(0.01, 0.2, (50, 50))
    return maps, masks


ADVERSARIAL = {
    "crossing_bin_70pct": lambda: crossing_bin_case(0.70),
    "crossing_bin_10pct": lambda: crossing_bin_case(0.10, seed=1),
    "crossing_bin_2pct": lambda: crossing_bin_case(0.02, seed=2),
    "outlier": outlier_case,
    "clipped_at_zero": clipped_case,
    "float16": float16_case,
    "tiny_regions": tiny_region_case,
}


@pytest.mark.parametrize("name", sorted(ADVERSARIAL))
def test_aupro_within_tolerance_on_adversarial_inputs(name):
    maps, masks = ADVERSARIAL[name]()
    assert maps.size > AUPRO_BINS // 4  # large enough for the histogram, not the sort
    expected = reference_aupro(maps, masks)
    assert aupro(maps, masks) == pytest.approx(expected, abs=1e-4)
    assert aupro(torch.from_numpy(maps), torch.from_numpy(masks)) == pytest.approx(
        expected, abs=1e-4
    )
    assert aupro(maps, masks, exact=True) == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("name", sorted(ADVERSARIAL))
def test_pixel_auroc_within_tolerance_on_adversarial_inputs(name):
    maps, masks = ADVERSARIAL[name]()
    expected = roc_auc_score(masks.ravel() > 0, maps.ravel())
    assert pixel_auroc(maps, masks) == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize("seed", range(40))
@pytest.mark.parametrize("limit", [0.3, 0.05, 1.0])
def test_reported_bound_holds_on_coarse_bins(seed, limit):
    """The bound itself, where it is large: with 16-256 bins every segment is coarse, and
    the binned area must be within its reported bound of the exact area."""
    from skrd4ad.metrics import _area, _Histogram, _pro_curve_exact, _regions

    rng = np.random.default_rng(seed)
    maps, masks = random_case(seed, n=6, size=24, levels=None if seed % 2 else 8)
    if seed % 3 == 0:  # defects bunched at the top of a narrow band
        maps = np.where(masks > 0, rng.uniform(0.5, 0.52, maps.shape), maps).astype(np.float32)
    m, labels, weight, n_normal, _ = _regions(torch.from_numpy(maps), torch.from_numpy(masks), "x")
    exact = _area(*_pro_curve_exact(m, labels, weight, n_normal), limit)[0]
    normal, pro = _Histogram(m, labels, weight, int(rng.choice([16, 64, 256]))).curve()
    value, bound = _area(normal.double() / n_normal, pro, limit)
    assert abs(value - exact) <= bound + 1e-12


@pytest.mark.parametrize("seed", range(12))
def test_aupro_within_tolerance_on_random_hard_inputs(seed):
    """Random mixtures of the mechanisms above: ties, an outlier, defects in a narrow band."""
    rng = np.random.default_rng(100 + seed)
    masks = _defect_masks(n=6, size=64, regions=int(rng.integers(1, 7)), rng=rng)
    maps = rng.normal(size=masks.shape)
    band = np.quantile(maps[masks == 0], rng.uniform(0.6, 0.8))
    maps[masks > 0] = band + rng.uniform(0, 10 ** rng.uniform(-6, -1), (masks > 0).sum())
    if rng.random() < 0.5:
        maps.flat[int(rng.integers(maps.size))] = 10 ** rng.uniform(2, 6)
    if rng.random() < 0.5:
        maps = np.round(maps * 64) / 64
    maps = maps.astype(np.float32)
    assert aupro(maps, masks) == pytest.approx(reference_aupro(maps, masks), abs=1e-4)


def test_non_finite_scores_are_an_error():
    maps, masks = random_case(0)
    maps[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        aupro(maps, masks)
    with pytest.raises(ValueError, match="NaN or infinite"):
        pixel_auroc(maps, masks)


def test_float64_maps_keep_their_distinct_thresholds():
    """Scores that differ only beyond float32 precision are distinct thresholds."""
    masks = np.zeros((1, 4, 4), np.uint8)
    masks[0, 0, :2] = 1
    maps = np.full((1, 4, 4), 0.5)
    maps[0, 0, :2] += 1e-12  # defects above every normal pixel, but only in float64
    assert aupro(maps, masks) == pytest.approx(1.0, abs=1e-9)
    assert pixel_auroc(maps, masks) == pytest.approx(1.0, abs=1e-9)


def brute_force_f1_max(scores: np.ndarray, labels: np.ndarray) -> float:
    """Every distinct threshold, straight from the definition of F1."""
    y = labels > 0
    best = 0.0
    for t in np.unique(scores):
        pred = scores >= t
        tp = np.sum(pred & y)
        best = max(best, 2 * tp / (pred.sum() + y.sum()))
    return float(best)


@pytest.mark.parametrize("seed", range(6))
def test_f1_max_and_its_threshold(seed):
    rng = np.random.default_rng(seed)
    labels = (rng.random(40) < 0.4).astype(int)
    labels[:2] = [0, 1]
    scores = np.round(rng.normal(size=40) + labels, 1) * 30  # ties, and scores far above 1
    value, threshold = f1_max(scores, labels)
    assert value == pytest.approx(brute_force_f1_max(scores, labels), abs=1e-12)
    pred = scores >= threshold
    assert 2 * np.sum(pred & (labels > 0)) / (pred.sum() + labels.sum()) == pytest.approx(value)


@pytest.mark.parametrize("name", sorted(ADVERSARIAL))
def test_pixel_f1_max_within_tolerance_on_adversarial_inputs(name):
    maps, masks = ADVERSARIAL[name]()
    expected, _ = f1_max(maps.ravel(), masks.ravel())
    assert pixel_f1_max(maps, masks) == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize("seed", range(6))
def test_pixel_f1_max_on_large_maps_with_a_narrow_peak(seed):
    """Over a million pixels (the histogram path), the best F1 inside one crowded bin: an
    outlier widens the bins and the defect pixels sit in a narrow band at their top."""
    rng = np.random.default_rng(seed)
    masks = _defect_masks(n=20, size=256, regions=12, rng=rng)
    maps = rng.normal(size=masks.shape)
    maps[masks > 0] = 2.0 + rng.uniform(0, 10 ** rng.uniform(-5, -1), (masks > 0).sum())
    maps.flat[0] = 10 ** rng.uniform(3, 6)
    maps = maps.astype(np.float32)
    expected, _ = f1_max(maps.ravel(), masks.ravel())
    assert pixel_f1_max(maps, masks) == pytest.approx(expected, abs=1e-4)
    assert pixel_auroc(maps, masks) == pytest.approx(
        roc_auc_score(masks.ravel() > 0, maps.ravel()), abs=1e-4
    )


def test_image_auroc_ranks_scores_far_above_one():
    """Scores of 20-40 (a sum of three 1 - cos maps is up to 6; unnormalised maps more): a
    sigmoid on float32 would tie them all at 1.0 and report 0.5."""
    scores = np.array([20.0, 21.0, 22.0, 35.0, 36.0, 40.0])
    labels = np.array([0, 0, 0, 1, 1, 1])
    assert image_auroc(scores, labels) == pytest.approx(1.0)
    assert image_auroc(torch.tensor(scores), torch.tensor(labels)) == pytest.approx(1.0)
