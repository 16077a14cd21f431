"""Evaluation metrics: image and pixel AUROC, image and pixel F1-max, and AUPRO (MVTec AD
definition).

Inputs are numpy arrays or torch tensors: maps and masks shaped (N, H, W), scores and
labels shaped (N,). Tensors stay on their device; only the ground-truth masks visit the
host once, for connected-component labelling.

Degenerate inputs (a single class, no defect region) give ``nan`` and a
:class:`UndefinedMetricWarning`, never an exception, so that a benchmark over many
categories reports the gap instead of dying on it.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import numpy as np
import torch
from scipy import ndimage
from sklearn.metrics import precision_recall_curve, roc_auc_score

ArrayLike = np.ndarray | torch.Tensor

# 8-connectivity inside each image and none across images, so one call labels a stack.
_STRUCTURE_8 = np.zeros((3, 3, 3), dtype=bool)
_STRUCTURE_8[1] = True

DEFAULT_FPR_LIMIT = 0.3
AUPRO_BINS = 1 << 20
AUPRO_TOLERANCE = 1e-4


class UndefinedMetricWarning(UserWarning):
    """A metric is undefined for the given input and was reported as nan."""


def _tensor(x: ArrayLike, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    elif not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a numpy array or torch tensor, got {type(x).__name__}")
    return x.to(dtype) if dtype is not None else x


def _check_same_shape(a: torch.Tensor, b: torch.Tensor, names: str, ndim: int) -> None:
    if a.dim() != ndim or a.shape != b.shape:
        raise ValueError(
            f"{names} must have the same shape with {ndim} dims "
            f"({'(N, H, W)' if ndim == 3 else '(N,)'}), got {tuple(a.shape)} and {tuple(b.shape)}"
        )


def _single_class(positives: int, total: int, what: str) -> bool:
    if 0 < positives < total:
        return False
    warnings.warn(
        f"{what} is undefined: the labels hold a single class; reporting nan",
        UndefinedMetricWarning,
        stacklevel=3,
    )
    return True


def _image_inputs(scores: ArrayLike, labels: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    s, y = _tensor(scores, "scores"), _tensor(labels, "labels")
    _check_same_shape(s, y, "scores and labels", 1)
    _score_range(s)
    return s.detach().cpu().double().numpy(), y.detach().cpu().numpy() > 0


def image_auroc(scores: ArrayLike, labels: ArrayLike) -> float:
    """Area under the ROC curve of image scores (N,) against labels (N,), 1 = anomalous."""
    # scikit-learn ranks the raw scores; torchmetrics' binary_auroc applies a sigmoid to
    # scores outside [0, 1], which in float32 ties every score above about 17.
    s, y = _image_inputs(scores, labels)
    if _single_class(int(y.sum()), y.size, "image AUROC"):
        return float("nan")
    return float(roc_auc_score(y, s))


def f1_max(scores: ArrayLike, labels: ArrayLike) -> tuple[float, float]:
    """The largest F1 over the thresholds of the precision-recall curve (anomalib's F1Max),
    and the threshold that gives it (score >= threshold is anomalous); (nan, nan) with a
    warning when the labels hold a single class."""
    s, y = _image_inputs(scores, labels)
    if _single_class(int(y.sum()), y.size, "F1-max"):
        return float("nan"), float("nan")
    precision, recall, thresholds = precision_recall_curve(y, s)
    # The curve's last point (precision 1, recall 0) has no threshold.
    p, r = precision[:-1], recall[:-1]
    f1 = np.divide(2 * p * r, p + r, out=np.zeros_like(p), where=(p + r) > 0)
    best = int(np.argmax(f1))
    return float(f1[best]), float(thresholds[best])


def _pixel_inputs(
    maps: ArrayLike, masks: ArrayLike, what: str
) -> tuple[torch.Tensor, torch.Tensor, int] | None:
    """Maps, 0/1 pixel labels on their device, and the defect-pixel count; None (with the
    warning) when the pixels hold a single class."""
    m, g = _tensor(maps, "maps"), _tensor(masks, "masks")
    _check_same_shape(m, g, "maps and masks", 3)
    target = (g.to(m.device) > 0).to(torch.int64)
    positives = int(target.sum())
    if _single_class(positives, target.numel(), what):
        return None
    return m, target, positives


def pixel_auroc(
    maps: ArrayLike, masks: ArrayLike, *, tolerance: float = AUPRO_TOLERANCE, bins: int = AUPRO_BINS
) -> float:
    """Area under the ROC curve of all pixels pooled: maps (N, H, W) against masks (N, H, W),
    within ``tolerance`` of exact (ties count as in scikit-learn's ``roc_auc_score``).

    The ROC curve is the PRO curve of a single region holding every defect pixel, so it is
    computed as :func:`aupro` computes that curve, with the same guarantee.
    """
    pixels = _pixel_inputs(maps, masks, "pixel AUROC")
    if pixels is None:
        return float("nan")
    m, target, n_defect = pixels
    region_weight = torch.tensor([0.0, 1.0 / n_defect], dtype=torch.float64, device=m.device)
    n_normal = target.numel() - n_defect
    value = _curve_area(m, target, region_weight, n_normal, 1.0, tolerance, bins)
    if value is None:
        value = _area(*_pro_curve_exact(m, target, region_weight, n_normal), 1.0)[0]
    return value


def pixel_f1_max(
    maps: ArrayLike, masks: ArrayLike, *, tolerance: float = AUPRO_TOLERANCE, bins: int = AUPRO_BINS
) -> float:
    """:func:`f1_max` of all pixels pooled, within ``tolerance`` of exact.

    Each histogram vertex is a point of the exact precision-recall curve. Inside a bin, F1
    can be at most 2 TP1 / (TP1 + FP0 + P), with TP1 the true positives at the bin's end and
    FP0 the false positives at its start; the bins where that exceeds the best vertex by
    more than ``tolerance`` are evaluated over each of their distinct scores.
    """
    pixels = _pixel_inputs(maps, masks, "pixel F1-max")
    if pixels is None:
        return float("nan")
    m, target, positives = pixels
    count = torch.tensor([0.0, 1.0], dtype=torch.float64, device=m.device)  # pro = TP

    def f1(fp: torch.Tensor, tp: torch.Tensor) -> torch.Tensor:
        return 2 * tp / (tp + fp.double() + positives)

    if m.numel() > bins // 4:
        hist = _Histogram(m, target, count, bins)
        fp, tp = hist.curve()
        best = float(f1(fp, tp).max())
        ceiling = f1(fp[:-1], tp[1:])
        segments = torch.nonzero(ceiling > best + tolerance).flatten()
        if segments.numel() == 0:
            return best
        if not _too_many(hist, segments):
            return float(f1(*_insert_vertices(hist, segments)[:2]).max())
    fpr, tp = _pro_curve_exact(m, target, count, target.numel() - positives)
    return float(f1(fpr * (target.numel() - positives), tp).max())


def label_regions(masks: ArrayLike) -> tuple[np.ndarray, int]:
    """8-connected components of each (N, H, W) mask, numbered across the whole stack."""
    g = masks.detach().cpu().numpy() if isinstance(masks, torch.Tensor) else np.asarray(masks)
    labels, count = ndimage.label(g > 0, structure=_STRUCTURE_8)
    return labels, int(count)


def _segments(
    fpr: torch.Tensor, pro: torch.Tensor, limit: float, exact: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Area under each segment of the (fpr, pro) polyline from 0 to ``limit`` (linear
    interpolation at ``limit``), and the largest error of that area against the exact curve,
    which passes through every vertex and is monotone between them.

    Between vertices (x0, y0) and (x1, y1) the exact curve stays in their bounding box, so the
    trapezoid, the box's midpoint, is off by at most (x1 - x0)(y1 - y0)/2. On the segment that
    crosses ``limit`` the exact curve may reach y1 anywhere before the limit: its area over
    [x0, limit] lies in [y0 d, y1 d] with d = limit - x0, so the interpolated trapezoid is off
    by at most d (y1 - (y0 + y_limit)/2). A segment that ``exact`` marks joins consecutive
    distinct thresholds: the exact curve is that segment, and its bound is 0.
    """
    fpr, pro = fpr.double().cpu(), pro.double().cpu()
    # Index of the first point at or beyond the limit; the curve always reaches fpr 1.
    end = int(torch.searchsorted(fpr, torch.tensor([limit], dtype=torch.float64), right=False))
    end = max(1, min(end, fpr.numel() - 1))
    x, y = fpr[: end + 1], pro[: end + 1]
    dx, dy = torch.diff(x), torch.diff(y)
    area = dx * (y[1:] + y[:-1]) / 2
    bound = dx * dy / 2
    if x[-1] > limit:
        d = limit - x[-2]
        y_limit = y[-2] + dy[-1] * d / dx[-1]
        area[-1] = d * (y[-2] + y_limit) / 2
        bound[-1] = d * (y[-1] - (y[-2] + y_limit) / 2)
    if exact is not None:
        bound = torch.where(exact[:end].cpu(), torch.zeros_like(bound), bound)
    return area, bound


def _area(
    fpr: torch.Tensor, pro: torch.Tensor, limit: float, exact: torch.Tensor | None = None
) -> tuple[float, float]:
    """The area of :func:`_segments` up to ``limit`` and its error bound, both / ``limit``."""
    area, bound = _segments(fpr, pro, limit, exact)
    return float(area.sum()) / limit, float(bound.sum()) / limit


def _score_dtype(maps: torch.Tensor) -> torch.dtype:
    # float64 maps stay float64: rounding them to float32 could merge distinct thresholds.
    return torch.float64 if maps.dtype == torch.float64 else torch.float32


def _score_range(maps: torch.Tensor) -> tuple[float, float]:
    lo, hi = (float(v) for v in torch.aminmax(maps.to(_score_dtype(maps))))
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ValueError(
            "the anomaly maps hold NaN or infinite scores; AUROC and AUPRO need finite scores "
            "(check the model's output for this input)"
        )
    return lo, hi


def _pro_curve_exact(
    maps: torch.Tensor, labels: torch.Tensor, region_weight: torch.Tensor, n_normal: int
) -> tuple[torch.Tensor, torch.Tensor]:
    # One point per distinct threshold: sort descending, cumulate, keep the last of ties.
    _score_range(maps)  # finite scores, as the histogram checks them
    scores = maps.flatten().to(_score_dtype(maps))
    lab = labels.flatten()
    order = torch.argsort(scores, descending=True)
    s = scores[order]
    lab = lab[order]
    fpr = torch.cumsum((lab == 0).double(), 0) / n_normal
    pro = torch.cumsum(region_weight[lab.long()], 0)
    last = torch.ones_like(s, dtype=torch.bool)
    last[:-1] = s[1:] != s[:-1]
    zero = torch.zeros(1, dtype=torch.float64, device=s.device)
    return torch.cat([zero, fpr[last]]), torch.cat([zero, pro[last]])


class _Histogram:
    """Equal-width score bins over all pixels: per bin the pixel count, the defect count and
    the summed region weights. The bin index is monotone in the score, so every vertex of the
    binned curve is a vertex of the exact curve (the pixels of the higher bins are exactly
    those above some threshold)."""

    def __init__(
        self,
        maps: torch.Tensor,
        labels: torch.Tensor,
        region_weight: torch.Tensor,
        bins: int,
        defects: torch.Tensor | None = None,
    ) -> None:
        self.maps, self.labels, self.region_weight, self.bins = maps, labels, region_weight, bins
        lo, hi = _score_range(maps)
        self.lo, self.scale = lo, (bins / (hi - lo) if hi > lo else 0.0)
        self.total = torch.zeros(bins, dtype=torch.int64, device=maps.device)
        for _, idx, _ in self._chunks():
            self.total += torch.bincount(idx, minlength=bins)
        # The few defect pixels, by position (``defects``: their flat indices, when known):
        # one gather instead of a scan of the labels in every chunk.
        if defects is None:
            defects = torch.nonzero(labels.flatten(), as_tuple=True)[0]
        d_idx = self._index(maps.flatten()[defects].to(_score_dtype(maps)))
        weights = region_weight[labels.flatten()[defects].long()]
        self.defect = torch.bincount(d_idx, minlength=bins)
        self.weight = torch.bincount(d_idx, weights=weights, minlength=bins).double()

    def _index(self, scores: torch.Tensor) -> torch.Tensor:
        return ((scores - self.lo) * self.scale).long().clamp_(0, self.bins - 1)

    def _chunks(self):
        # Chunks of about 1M pixels keep the temporaries small and cache-resident; whole-stack
        # temporaries cost more in page faults than in arithmetic on the CPU.
        m = self.maps
        step = max(1, (1 << 20) // max(1, m[0].numel()))
        for start in range(0, m.shape[0], step):
            scores = m[start : start + step].flatten().to(_score_dtype(m))
            yield scores, self._index(scores), self.labels[start : start + step].flatten()

    def curve(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Vertices from (0, 0), highest bin first: the cumulative normal-pixel counts and PRO.
        Vertex j starts segment j, the pixels of bin ``bins - 1 - j``; empty bins repeat a
        point and add nothing to the area."""
        zero = torch.zeros(1, dtype=torch.int64, device=self.total.device)
        normal = torch.cat([zero, torch.cumsum((self.total - self.defect).flip(0), 0)])
        return normal, torch.cat([zero.double(), torch.cumsum(self.weight.flip(0), 0)])

    def segment_pixels(self, segments: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Scores, labels and segment numbers of the pixels of the given segments' bins."""
        chosen = torch.zeros(self.bins, dtype=torch.bool, device=self.total.device)
        chosen[self.bins - 1 - segments.to(chosen.device)] = True
        parts = []
        for scores, idx, lab in self._chunks():
            keep = torch.nonzero(chosen[idx], as_tuple=True)[0]
            parts.append((scores[keep], lab[keep], self.bins - 1 - idx[keep]))
        return tuple(torch.cat(p) for p in zip(*parts, strict=True))


def _insert_vertices(
    hist: _Histogram, segments: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The binned curve with a vertex for every distinct score inside the given segments:
    (normal counts, pro, exact), where ``exact`` marks each segment that now joins
    consecutive distinct thresholds."""
    normal, pro = hist.curve()
    scores, lab, seg = hist.segment_pixels(segments)
    dev = seg.device
    # Descending scores run through the chosen segments in curve order.
    rank = torch.argsort(scores, descending=True)
    scores, lab, seg = scores[rank], lab[rank], seg[rank]
    normal_run = torch.cumsum((lab == 0).long(), 0)
    weight_run = torch.cumsum(hist.region_weight[lab.long()], 0)
    _, sizes = torch.unique_consecutive(seg, return_counts=True)
    first = torch.cumsum(sizes, 0) - sizes
    zero = torch.zeros(1, dtype=torch.long, device=dev)
    normal_run -= torch.cat([zero, normal_run])[first].repeat_interleave(sizes)
    weight_run -= torch.cat([zero.double(), weight_run])[first].repeat_interleave(sizes)
    last = torch.ones_like(scores, dtype=torch.bool)  # the last pixel of each tie
    last[:-1] = scores[1:] != scores[:-1]
    seg = seg[last]
    normal, pro = normal.to(dev), pro.to(dev)
    # Binned vertex j moves down by the vertices inserted into the segments before it; the
    # i-th inserted vertex (in curve order) lands after its segment's start and i others.
    shift = torch.cat([zero, torch.cumsum(torch.bincount(seg, minlength=hist.bins), 0)])
    at_binned = torch.arange(normal.numel(), device=dev) + shift
    at_inserted = seg + 1 + torch.arange(seg.numel(), device=dev)
    size = normal.numel() + seg.numel()
    m_normal = torch.empty(size, dtype=torch.long, device=dev)
    m_pro = torch.empty(size, dtype=torch.float64, device=dev)
    exact = torch.ones(size, dtype=torch.bool, device=dev)
    m_normal[at_binned], m_pro[at_binned] = normal, pro
    m_normal[at_inserted] = normal[seg] + normal_run[last]
    m_pro[at_inserted] = pro[seg] + weight_run[last]
    refined = torch.zeros(normal.numel(), dtype=torch.bool, device=dev)
    refined[segments.to(dev)] = True
    exact[at_binned] = refined
    return m_normal, m_pro, exact


def _too_many(hist: _Histogram, segments: torch.Tensor, max_share: float = 0.25) -> bool:
    """Whether the segments' bins hold so many pixels that one sort of all costs less."""
    pixels = int(hist.total.flip(0)[segments.to(hist.total.device)].sum())
    return pixels > max_share * hist.maps.numel()


def _curve_area(
    maps: torch.Tensor,
    labels: torch.Tensor,
    region_weight: torch.Tensor,
    n_normal: int,
    limit: float,
    tolerance: float,
    bins: int,
    defects: torch.Tensor | None = None,
) -> float | None:
    """The area of the PRO curve up to ``limit`` / ``limit`` from the histogram, refined where
    its proven bound exceeds ``tolerance``; ``None`` when only a full sort would do."""
    if maps.numel() <= bins // 4:
        return None  # a sort of this few pixels costs less than the histogram's passes
    hist = _Histogram(maps, labels, region_weight, bins, defects)
    normal, pro = hist.curve()
    value, bound = _area(normal.double() / n_normal, pro, limit)
    if bound <= tolerance:
        return value
    # Make exact the segments with the largest bounds until the others' sum is in tolerance.
    _, bounds = _segments(normal.double() / n_normal, pro, limit)
    order = torch.argsort(bounds, descending=True)
    excess = float(bounds.sum()) - tolerance * limit
    segments = order[: int(torch.searchsorted(torch.cumsum(bounds[order], 0), excess)) + 1]
    if _too_many(hist, segments):
        return None
    m_normal, m_pro, exact = _insert_vertices(hist, segments)
    value, bound = _area(m_normal.double() / n_normal, m_pro, limit, exact)
    return value if bound <= tolerance else None


def aupro(
    maps: ArrayLike,
    masks: ArrayLike,
    fpr_limit: float = DEFAULT_FPR_LIMIT,
    *,
    exact: bool = False,
    tolerance: float = AUPRO_TOLERANCE,
    bins: int = AUPRO_BINS,
) -> float:
    """Normalised area under the per-region-overlap curve up to ``fpr_limit``.

    As in the MVTec AD benchmark: all images are pooled; regions are the 8-connected
    components of the ground-truth masks; PRO(t) is the mean over all regions of the
    fraction of the region's pixels scoring at or above t; FPR(t) is over all normal
    pixels; the curve through the points of every distinct score t is integrated from FPR 0
    to ``fpr_limit`` with linear interpolation at the limit, then divided by ``fpr_limit``.
    Scores are compared in float32 (float64 for float64 maps).

    Guarantee: the result is within ``tolerance`` (default 1e-4, absolute) of that exact
    area, up to float64 rounding. It is computed from a histogram of ``bins`` equal-width
    score bins, an O(n) pass instead of an O(n log n) sort (benchmarks/bench_aupro.py). The
    histogram's vertices lie on the exact curve, so each bin's error is bounded (see
    ``_segments``); where the bounds sum to more than ``tolerance``, the bins with the
    largest bounds are evaluated over each of their distinct scores, and where those bins hold
    too many pixels, every pixel is sorted. ``exact=True`` always sorts.

    Returns nan with an :class:`UndefinedMetricWarning` when the masks hold no defect
    region or no normal pixel; raises ValueError for NaN or infinite scores.
    """
    if not 0 < fpr_limit <= 1:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
    prepared = _regions(maps, masks, "AUPRO")
    if prepared is None:
        return float("nan")
    m, labels, region_weight, n_normal, defects = prepared
    if not exact:
        value = _curve_area(m, labels, region_weight, n_normal, fpr_limit, tolerance, bins, defects)
        if value is not None:
            return value
    fpr, pro = _pro_curve_exact(m, labels, region_weight, n_normal)
    return _area(fpr, pro, fpr_limit)[0]


def pro_curve(
    maps: ArrayLike, masks: ArrayLike, points: int = 2048
) -> tuple[np.ndarray, np.ndarray]:
    """The (FPR, PRO) curve over the whole FPR range, thinned to about ``points`` points,
    for plotting."""
    prepared = _regions(maps, masks, "the PRO curve")
    if prepared is None:
        return np.zeros(0), np.zeros(0)
    m, labels, region_weight, n_normal, defects = prepared
    normal, pro = _Histogram(m, labels, region_weight, 1 << 16, defects).curve()
    fpr = normal.double() / n_normal
    keep = torch.linspace(0, fpr.numel() - 1, min(points, fpr.numel())).long()
    return fpr[keep].cpu().numpy(), pro[keep].cpu().numpy()


def _regions(maps: ArrayLike, masks: ArrayLike, what: str):
    m = _tensor(maps, "maps")
    g = _tensor(masks, "masks")
    _check_same_shape(m, g, "maps and masks", 3)
    labels_np, n_regions = label_regions(g)
    labels = torch.from_numpy(labels_np).to(m.device)
    # Region sizes from the defect pixels alone: a bincount of every pixel is slower.
    defects = torch.nonzero(labels.flatten(), as_tuple=True)[0]
    sizes = torch.bincount(labels.flatten()[defects], minlength=n_regions + 1).double()
    n_normal = labels.numel() - defects.numel()
    if n_regions == 0 or n_normal == 0:
        lacking = "no defect region" if n_regions == 0 else "no normal pixel"
        warnings.warn(
            f"{what} is undefined: the ground-truth masks hold {lacking}; reporting nan",
            UndefinedMetricWarning,
            stacklevel=3,
        )
        return None
    region_weight = 1.0 / (n_regions * sizes.clamp(min=1))
    region_weight[0] = 0.0
    return Regions(m, labels, region_weight, n_normal, defects)


class Regions(NamedTuple):
    """Maps and their ground truth, ready for the PRO curve."""

    maps: torch.Tensor
    labels: torch.Tensor  # region number per pixel, 0 = normal
    region_weight: torch.Tensor  # 1 / (regions x region size), 0 for normal pixels
    n_normal: int
    defects: torch.Tensor  # flat indices of the defect pixels
