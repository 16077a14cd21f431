"""Test-set evaluation of a checkpoint: metrics.json, overlays and curves."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .atomic import atomic_write_text, ensure_writable_dir
from .data import TensorSet, decode_test_split, load_category
from .metrics import pro_curve
from .results import json_text
from .scoring import score_tensor_set


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
    backend: str = "auto",
) -> dict[str, Any]:
    """Evaluate ``checkpoint`` on the test split; writes ``out/metrics.json`` atomically.
    ``backend``: see :func:`~skrd4ad.onnx_predictor.load_predictor`."""
    from .checkpoint import stored_config
    from .onnx_predictor import load_predictor

    t_start = time.perf_counter()
    out = ensure_writable_dir(Path(out))
    predictor = load_predictor(
        Path(checkpoint), backend=backend, device=device, precision=precision,
        batch_size=batch_size, expect_backbone=backbone,
    )  # fmt: skip
    cfg = stored_config(predictor.state)
    # The folder layout's train/test split must be the one the model was trained with.
    fraction = train_fraction if train_fraction is not None else cfg.data.train_fraction
    cat = load_category(Path(data), category, layout, train_fraction=fraction, seed=cfg.train.seed)
    t0 = time.perf_counter()
    ts = decode_test_split(cat, predictor.image_size)
    timings = {"decode_s": time.perf_counter() - t0}
    maps, scores, metrics = _score(predictor, ts, timings)
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
        "threshold": predictor.state.get("threshold"),
        "threshold_precision": predictor.state.get("threshold_precision"),
        "timings": {**timings, "total_s": time.perf_counter() - t_start},
        "device": str(predictor.device),
        "precision": predictor.precision,
        "backend": predictor.backend,
        "notes": cat.notes,
    }
    result.update(_figures(out, ts, maps.cpu(), scores.cpu(), overlays, curves, metrics))
    atomic_write_text(out / "metrics.json", json_text(result))
    return result


def _score(predictor: Any, ts: TensorSet, timings: dict[str, float]) -> tuple:
    """Maps, scores and metrics of the test set; the times go into ``timings``."""
    t0 = time.perf_counter()
    maps, scores = predictor(ts.images)
    if predictor.device.type == "cuda":
        torch.cuda.synchronize()
    t_infer = time.perf_counter() - t0
    t0 = time.perf_counter()
    metrics = score_tensor_set(maps, scores, ts)
    timings.update(
        inference_s=t_infer,
        inference_ms_per_image=1000 * t_infer / len(ts),
        metrics_s=time.perf_counter() - t0,
    )
    return maps, scores, metrics


def _figures(
    out: Path, ts: TensorSet, maps: torch.Tensor, scores: torch.Tensor, overlays: int,
    curves: bool, metrics: dict[str, Any],
) -> dict[str, Any]:  # fmt: skip
    """Overlays of the ``overlays`` highest- and lowest-scoring images, and the curves
    (titled with the image AUROC and AUPRO of ``metrics``)."""
    written: dict[str, Any] = {}
    if overlays:
        from .plots import write_overlays

        order = torch.argsort(scores, descending=True).tolist()
        picks = [("top", r, i) for r, i in enumerate(order[:overlays])]
        picks += [("bottom", r, i) for r, i in enumerate(order[::-1][:overlays])]
        written["overlays"] = write_overlays(out / "overlays", ts, maps, scores, picks)
    if curves:
        from .plots import write_curves

        pro = pro_curve(maps, ts.masks) if ts.masks is not None else None
        labels = np.array(ts.labels.tolist())
        written["curves"] = write_curves(
            out, scores.numpy(), labels, pro, metrics["image_auroc"], metrics["aupro"]
        )
    return written
