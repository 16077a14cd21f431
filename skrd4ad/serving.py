"""The python_function face of a logged :class:`~skrd4ad.inference.AnomalyDetector`.

MLflow's pytorch flavor serves a module that returns one tensor; the detector returns
two (anomaly maps and scores). A logged detector's ``python_function`` flavor therefore
names this module as its loader (MLflow's documented protocol for a custom flavor: a
module with ``_load_pyfunc(data_path)``), so that ``mlflow.pyfunc.load_model`` and
``mlflow models serve`` return both outputs by name. It needs torch and numpy only; MLflow
imports it, skrd4ad never imports MLflow.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from .inference import INPUT_NAME, OUTPUT_NAMES, AnomalyDetector

# The file mlflow.pytorch pickles the module to, in the folder its flavor names as data.
PICKLED_MODULE = "model.pth"


class DetectorPyfunc:
    """uint8 images ``(N, 3, S, S)`` (an array, or a dict holding it as ``images``) ->
    ``{"anomaly_map": (N, S, S), "score": (N,)}``, float32 numpy arrays."""

    def __init__(self, detector: AnomalyDetector) -> None:
        self.detector = detector.eval()

    def predict(self, data: Any, params: dict[str, Any] | None = None) -> dict[str, np.ndarray]:
        images = np.asarray(data[INPUT_NAME] if isinstance(data, dict) else data)
        size = self.detector.image_size
        if images.dtype != np.uint8 or images.shape[1:] != (3, size, size):
            raise ValueError(
                f"expected uint8 images of shape (N, 3, {size}, {size}), got "
                f"{images.dtype} {tuple(images.shape)}: resize to the model size first"
            )
        with torch.inference_mode():
            outputs = self.detector(torch.from_numpy(np.ascontiguousarray(images)))
        return {name: out.float().numpy() for name, out in zip(OUTPUT_NAMES, outputs, strict=True)}


def _load_pyfunc(data_path: str) -> DetectorPyfunc:
    """MLflow's loader protocol: ``data_path`` is the model's data folder."""
    detector = torch.load(Path(data_path) / PICKLED_MODULE, map_location="cpu", weights_only=False)
    return DetectorPyfunc(detector)
