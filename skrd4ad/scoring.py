"""The metrics of a scored image set (maps and scores against its labels and masks): the
test split in :mod:`skrd4ad.evaluate`, the validation split in training."""

from __future__ import annotations

import warnings
from typing import Any

import torch

from .data import TensorSet
from .metrics import UndefinedMetricWarning, aupro, f1_max, image_auroc, pixel_auroc, pixel_f1_max
from .results import METRIC_KEYS, PIXEL_KEYS

NO_MASKS = "the dataset has no ground-truth masks (image-level only)"


def score_tensor_set(maps: torch.Tensor, scores: torch.Tensor, ts: TensorSet) -> dict[str, Any]:
    """Every metric of :data:`METRIC_KEYS` for the set; a metric that is undefined for it
    (no masks, a single class) is None, with the reason under ``absent``."""
    labels = ts.labels.to(scores.device)
    out: dict[str, Any] = {}
    absent: dict[str, str] = {}

    def measure(key: str, fn, *args) -> None:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UndefinedMetricWarning)
            value = fn(*args)
        out[key] = None if value != value else value  # nan: undefined
        reasons = [str(w.message) for w in caught if w.category is UndefinedMetricWarning]
        for w in caught:  # still shown; the reason is also recorded beside the null
            warnings.warn(w.message, w.category, stacklevel=3)
        if out[key] is None:
            absent[key] = reasons[0] if reasons else "undefined for this set"

    measure("image_auroc", image_auroc, scores, labels)
    measure("image_f1_max", lambda s, y: f1_max(s, y)[0], scores, labels)
    if ts.masks is None:
        out.update(dict.fromkeys(PIXEL_KEYS))
        absent.update(dict.fromkeys(PIXEL_KEYS, NO_MASKS))
    else:
        masks = ts.masks.to(maps.device)
        for key, fn in (
            ("pixel_auroc", pixel_auroc),
            ("aupro", aupro),
            ("pixel_f1_max", pixel_f1_max),
        ):
            measure(key, fn, maps, masks)
    out = {k: out[k] for k in METRIC_KEYS}
    if absent:
        out["absent"] = absent
    return out


def best_f1_threshold(scores: torch.Tensor, labels: torch.Tensor) -> float | None:
    """The image-score threshold with the best F1 (score >= threshold is anomalous), from
    scikit-learn's precision-recall curve; None when the labels hold a single class."""
    y = labels.cpu().numpy().astype(bool)
    if y.all() or not y.any():
        return None
    return f1_max(scores, labels)[1]
