"""A category's model in MLflow: an skrd4ad checkpoint logged as an MLflow model, and back.

The logged model has two flavors:

- ``pytorch``: ``mlflow.pytorch.load_model`` gives the
  :class:`~skrd4ad.inference.AnomalyDetector` (uint8 images in; anomaly maps and scores
  out, a tuple);
- ``python_function``: ``mlflow.pyfunc.load_model(...).predict(images)`` and ``mlflow
  models serve`` give ``{"anomaly_map", "score"}``, through :mod:`skrd4ad.serving`.

Its signature and input example say so; the rest of the checkpoint (config, threshold,
history) is stored beside the weights, so :func:`checkpoint_from_model` rebuilds model.pt.
This module is also the flavor module ``mlflow.models.Model.log`` saves it with.
"""

from __future__ import annotations

import json
import logging
import sys
import tempfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

CHECKPOINT_FILE = "skrd4ad_checkpoint.json"


def model_name(dataset: str | None, category: str, train: dict[str, Any]) -> str:
    """A logged model's name: the dataset, the category and the model's topology
    (``default-brick-resnet18-sk``); a search registers its best under the same name."""
    from skrd4ad.config import Config

    model = Config.from_dict(train, "the category's config").model
    return "-".join((dataset or "data", category, model.backbone, model.skip))


def register(model_uri: str, name: str, alias: str, tags: dict[str, str]) -> int:
    """``model_uri`` as a new version of registered model ``name``, with ``tags``, and
    ``alias`` (MLflow's replacement for stages) moved to it; returns the version."""
    import re

    import mlflow

    client = mlflow.MlflowClient()
    version = mlflow.register_model(model_uri, name, tags=tags).version
    # MLflow allows letters, digits, _ and - in an alias.
    client.set_registered_model_alias(name, re.sub(r"[^\w\-]", "-", alias), version)
    return int(version)


def requirements() -> list[str]:
    """The logged model's pip requirements: skrd4ad itself (the pickled model is its
    module) and the packages it imports, at the versions installed here."""
    out = []
    for name in ("skrd4ad", "torch", "torchvision", "numpy", "scikit-image", "pillow", "pyyaml",
                 "tqdm"):  # fmt: skip
        try:
            out.append(f"{name}=={version(name).split('+')[0]}")
        except PackageNotFoundError:
            out.append(name)
    return out


def signature(image_size: int) -> Any:
    """uint8 images (N, 3, S, S) in; named float32 anomaly maps (N, S, S) and scores (N,) out."""
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    from skrd4ad.inference import INPUT_NAME, OUTPUT_NAMES

    s = int(image_size)
    inputs = Schema([TensorSpec(np.dtype(np.uint8), (-1, 3, s, s), INPUT_NAME)])
    maps, scores = OUTPUT_NAMES
    outputs = Schema([
        TensorSpec(np.dtype(np.float32), (-1, s, s), maps),
        TensorSpec(np.dtype(np.float32), (-1,), scores),
    ])  # fmt: skip
    return ModelSignature(inputs=inputs, outputs=outputs)


def save_model(
    path: str, mlflow_model: Any, detector: Any, image_size: int, extra_files: list[str], **kwargs
) -> None:
    """The flavor-module hook of ``mlflow.models.Model.log``: mlflow.pytorch's files, with
    the python_function flavor loaded by :mod:`skrd4ad.serving`."""
    import mlflow.pytorch
    import numpy as np
    from mlflow import pyfunc

    from skrd4ad import serving
    from skrd4ad.inference import INPUT_NAME

    # A mid-grey image: the example documents the input, its pixels do not matter.
    example = {INPUT_NAME: np.full((1, 3, image_size, image_size), 128, dtype=np.uint8)}
    # pickle, not pt2: torch.export would need a fixed batch size. Naming the requirements
    # skips MLflow's inference of them (seconds per model).
    mlflow.pytorch.save_model(
        detector, path, mlflow_model=mlflow_model, serialization_format="pickle",
        signature=signature(image_size), input_example=example,
        pip_requirements=requirements(), extra_files=extra_files,
    )  # fmt: skip
    data = mlflow_model.flavors["pytorch"]["model_data"]
    if not (Path(path) / data / serving.PICKLED_MODULE).is_file():
        raise RuntimeError(f"mlflow.pytorch wrote no {data}/{serving.PICKLED_MODULE}: "
                           "this MLflow version stores models differently")  # fmt: skip
    previous = mlflow_model.flavors["python_function"]
    pyfunc.add_to_model(
        mlflow_model, loader_module=serving.__name__, data=data,
        conda_env=previous.get("env", {}).get("conda"),
        python_env=previous.get("env", {}).get("virtualenv"),
    )  # fmt: skip
    mlflow_model.save(str(Path(path) / "MLmodel"))


def log_model(checkpoint: Path, name: str, state: dict[str, Any] | None = None) -> str:
    """An skrd4ad checkpoint as an MLflow model named ``name`` in the active run; returns
    the model's URI. ``state``: the checkpoint already read, not read again. MLflow checks
    at logging that the pyfunc predicts on the example."""
    from mlflow.models import Model

    from skrd4ad.checkpoint import load_model
    from skrd4ad.inference import AnomalyDetector

    # The model holds the weights; the checkpoint's other entries go beside it as JSON.
    model, rest = load_model(checkpoint, state=state)
    size = int(rest["config"]["train"]["image_size"])
    detector = AnomalyDetector(model, size).eval()
    # Pickle is chosen knowingly (see save_model): MLflow's warning about it is not for the
    # user of a benchmark.
    logging.getLogger("mlflow.pytorch").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / CHECKPOINT_FILE).write_text(json.dumps(rest))
        info = Model.log(
            artifact_path=None, name=name, flavor=sys.modules[__name__], flavor_name="pytorch",
            detector=detector, image_size=size, extra_files=[str(Path(tmp) / CHECKPOINT_FILE)],
        )  # fmt: skip
    return info.model_uri


def checkpoint_from_model(model_uri: str, out: Path) -> Path:
    """model.pt again (an skrd4ad checkpoint for evaluate, predict and export) from a
    model :func:`log_model` logged: the same weights and state."""
    import mlflow.artifacts
    import mlflow.pytorch

    from skrd4ad.checkpoint import save_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=tmp))
        detector = mlflow.pytorch.load_model(str(local), map_location="cpu")
        rest = json.loads((local / "extra_files" / CHECKPOINT_FILE).read_text())
    kept = {k: v for k, v in rest.items() if k not in ("format", "version", "backbone", "skip")}
    save_checkpoint(Path(out), detector.model, **kept)
    return Path(out)
