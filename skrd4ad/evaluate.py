"""Test-set evaluation of a checkpoint: metrics.json, overlays and curves."""

from __future__ import annotations

import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .atomic import atomic_write_text, ensure_writable_dir
from .data import TensorSet, decode_test_split, load_category
from .metrics import (
    UndefinedMetricWarning,
    aupro,
    f1_max,
    image_auroc,
    pixel_auroc,
    pixel_f1_max,
    pro_curve,
)
from .results import METRIC_KEYS, PIXEL_KEYS, json_text

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


def evaluate(
    checkpoint: Path,
    data: Path,
    category: str | None,
    out: Path,
    *,
    layout: str = "auto",
    device: str = "auto",
    batch_size: int = 32,
    overlays: int = 0,
    curves: bool = False,
    backbone: str | None = None,
    train_fraction: float | None = None,
    precision: str | None = None,
) -> dict[str, Any]:
    """Evaluate ``checkpoint`` on the test split; writes ``out/metrics.json`` atomically."""
    from .inference import Predictor

    t_start = time.perf_counter()
    out = ensure_writable_dir(Path(out))
    predictor = Predictor.from_checkpoint(
        Path(checkpoint),
        device=device,
        precision=precision,
        batch_size=batch_size,
        expect_backbone=backbone,
    )
    dev, state = predictor.device, predictor.state
    cfg = state.get("config", {})
    # The folder layout's train/test split must be the one the model was trained with.
    fraction = train_fraction if train_fraction is not None else cfg.get("train_fraction", 0.5)
    cat = load_category(
        Path(data), category, layout, train_fraction=fraction, seed=cfg.get("seed", 111)
    )
    t0 = time.perf_counter()
    ts = decode_test_split(cat, predictor.image_size)
    t_decode = time.perf_counter() - t0

    t0 = time.perf_counter()
    maps, scores = predictor(ts.images)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t_infer = time.perf_counter() - t0
    t0 = time.perf_counter()
    metrics = score_tensor_set(maps, scores, ts)
    t_metrics = time.perf_counter() - t0

    labels = ts.labels.tolist()
    result: dict[str, Any] = {
        "category": cat.name,
        "data": str(data),
        "layout": cat.layout,
        "checkpoint": str(checkpoint),
        **metrics,
        "counts": {
            "test": len(ts),
            "normal": labels.count(0),
            "anomalous": labels.count(1),
            "by_defect": dict(sorted(Counter(ts.defects).items())),
        },
        "threshold": state.get("threshold"),
        "threshold_precision": state.get("threshold_precision"),
        "timings": {
            "decode_s": t_decode,
            "inference_s": t_infer,
            "inference_ms_per_image": 1000 * t_infer / len(ts),
            "metrics_s": t_metrics,
            "total_s": time.perf_counter() - t_start,
        },
        "device": str(dev),
        "precision": predictor.precision,
        "notes": cat.notes,
    }
    maps_cpu, scores_cpu = maps.cpu(), scores.cpu()
    if overlays:
        from .plots import write_overlays

        order = torch.argsort(scores_cpu, descending=True).tolist()
        picks = [("top", r, i) for r, i in enumerate(order[:overlays])]
        picks += [("bottom", r, i) for r, i in enumerate(order[::-1][:overlays])]
        result["overlays"] = write_overlays(out / "overlays", ts, maps_cpu, scores_cpu, picks)
    if curves:
        from .plots import write_curves

        pro = pro_curve(maps_cpu, ts.masks) if ts.masks is not None else None
        result["curves"] = write_curves(out, scores_cpu.numpy(), np.array(labels), pro)
    atomic_write_text(out / "metrics.json", json_text(result))
    return result
