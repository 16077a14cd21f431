"""The metric names every result carries, and strict JSON for the files users read.

Torch-free, so that the pipelines' drivers and Ray's controllers can name the metrics
without loading the model code.
"""

from __future__ import annotations

import json
import math
from typing import Any

# The files a training run writes: the resume point, the best-validation model and the
# final model.
LAST, BEST, MODEL = "last.pt", "best.pt", "model.pt"
# Accuracy metrics of a test (or validation) set, in the order tables show them.
METRIC_KEYS = ("image_auroc", "pixel_auroc", "aupro", "image_f1_max", "pixel_f1_max")
PIXEL_KEYS = ("pixel_auroc", "aupro", "pixel_f1_max")
# How tables and plots name them.
METRIC_LABELS = {
    "image_auroc": "image AUROC",
    "pixel_auroc": "pixel AUROC",
    "aupro": "AUPRO",
    "image_f1_max": "image F1-max",
    "pixel_f1_max": "pixel F1-max",
}


def finite_or_none(obj: Any) -> Any:
    """``obj`` with every NaN or infinite float replaced by None, recursively."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite_or_none(v) for v in obj]
    return obj


def json_text(obj: Any, indent: int = 2) -> str:
    """Strict JSON (no bare NaN, which strict parsers reject): undefined values are null.
    Whoever writes a null metric records its reason beside it (an ``absent`` entry)."""
    return json.dumps(finite_or_none(obj), indent=indent, allow_nan=False, default=str) + "\n"
