"""Self-contained exports of a trained model: an image batch in, (anomaly map, score) out.

Preprocessing the exported model expects (the same as ``skrd4ad.data.images``):

1. decode the image as RGB (grayscale, palette and RGBA converted to RGB);
2. resize it to the model size S x S (the checkpoint's ``image_size``, 256 by default)
   with bilinear, antialiased interpolation, e.g. ``torchvision.transforms.v2.functional
   .resize(img, [S, S], antialias=True)`` or PIL's ``Image.resize((S, S), Image.BILINEAR)``;
3. stack the images as **uint8** ``(N, 3, S, S)``, channels first, values 0..255.

ImageNet normalisation happens inside the exported model. It returns

- ``anomaly_map``: float32 ``(N, S, S)``, the Gaussian-smoothed (sigma 4) map;
- ``score``: float32 ``(N,)``, the image score, the maximum of the map.

The batch size is free (``N`` is a dynamic axis in ONNX; TorchScript traces shapes only
for S). The threshold chosen on the validation split, if any, is stored as model metadata
(``skrd4ad.threshold``) in ONNX, and in ``extra_files['skrd4ad.json']`` in TorchScript.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch

from .atomic import atomic_output
from .errors import UserError
from .inference import INPUT_NAME, OUTPUT_NAMES, AnomalyDetector
from .onnx_predictor import CHECKPOINT_SHA, checkpoint_sha256

FORMATS = ("torchscript", "onnx")
SUFFIX = {"torchscript": ".pt", "onnx": ".onnx"}


def _metadata(state: dict[str, Any], image_size: int) -> dict[str, Any]:
    from .checkpoint import stored_config

    cfg = stored_config(state)
    return {
        "image_size": image_size,
        "input": "uint8 (N, 3, S, S) RGB, resized bilinear antialiased; no normalisation",
        "outputs": [f"{OUTPUT_NAMES[0]} float32 (N, S, S)", f"{OUTPUT_NAMES[1]} float32 (N,)"],
        "threshold": state.get("threshold"),
        "threshold_precision": state.get("threshold_precision"),
        "backbone": cfg.model.backbone,
        "skip": cfg.model.skip,
        "category": cfg.data.category,
        "epoch": state.get("epoch"),
    }


def build_detector(checkpoint: Path) -> tuple[AnomalyDetector, dict[str, Any]]:
    """The checkpoint's model, BatchNorm folded, float32 on the CPU, wrapped for export."""
    from .inference import Predictor

    predictor = Predictor.from_checkpoint(Path(checkpoint), device="cpu", precision="fp32")
    model = predictor.model.to(memory_format=torch.contiguous_format)
    detector = AnomalyDetector(model, predictor.image_size).eval()
    return detector, _metadata(predictor.state, predictor.image_size)


def export(checkpoint: Path, fmt: str, out: Path | None = None) -> Path:
    """Write ``checkpoint``'s model as ``fmt`` (torchscript or onnx); returns the file."""
    if fmt not in FORMATS:
        raise UserError(f"--format must be one of {FORMATS}, got {fmt!r}")
    checkpoint = Path(checkpoint)
    out = Path(out) if out else checkpoint.with_suffix(SUFFIX[fmt])
    if out.resolve() == checkpoint.resolve():
        raise UserError(f"--out {out} would overwrite the checkpoint; choose another file")
    detector, meta = build_detector(checkpoint)
    # Which checkpoint this is the model of: predict and evaluate use the ONNX file beside
    # a checkpoint only when it names that checkpoint's bytes.
    meta[CHECKPOINT_SHA] = checkpoint_sha256(checkpoint)
    size = meta["image_size"]
    example = torch.randint(0, 256, (2, 3, size, size), dtype=torch.uint8)
    # torch 2.9+ marks TorchScript and the TorchScript-based ONNX exporter deprecated; both
    # still are what deployment runtimes load, so their warnings are not the user's concern.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        if fmt == "torchscript":
            traced = torch.jit.trace(detector, example, check_trace=False)
            traced = torch.jit.freeze(traced)
            with atomic_output(out) as tmp:
                torch.jit.save(traced, str(tmp), _extra_files={"skrd4ad.json": json.dumps(meta)})
        else:
            _export_onnx(detector, example, out, meta)
    return out


def _export_onnx(detector: AnomalyDetector, example: torch.Tensor, out: Path, meta: dict) -> None:
    try:
        import onnx
    except ImportError as exc:
        raise UserError("ONNX export needs the onnx package: pip install -e '.[export]'") from exc
    with atomic_output(out) as tmp:
        # dynamo=False: the TorchScript-based exporter needs no onnxscript and handles the
        # decoder's skip mapping; N stays a dynamic axis.
        torch.onnx.export(
            detector,
            (example,),
            str(tmp),
            dynamo=False,
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            dynamic_axes={name: {0: "N"} for name in (INPUT_NAME, *OUTPUT_NAMES)},
            opset_version=17,
        )
        model = onnx.load(str(tmp))
        for key, value in meta.items():
            entry = model.metadata_props.add()
            entry.key, entry.value = f"skrd4ad.{key}", json.dumps(value)
        onnx.save(model, str(tmp))
