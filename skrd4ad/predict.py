"""Scoring new images with a checkpoint: a CSV row per image plus overlay PNGs."""

from __future__ import annotations

import csv
import io
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .atomic import atomic_write_text, ensure_writable_dir
from .data.images import image_tensor, list_images
from .errors import DataError, UserError
from .inference import Predictor
from .onnx_predictor import OnnxPredictor, load_predictor


@dataclass(frozen=True)
class Predictions:
    """What :func:`predict` wrote: a row per image (as in predictions.csv) and the backend
    that scored them (``auto`` resolved: torch or onnxruntime)."""

    rows: list[dict[str, Any]]
    backend: str


def collect_images(inputs: list[Path]) -> list[Path]:
    paths: list[Path] = []
    for item in inputs:
        item = Path(item)
        if item.is_dir():
            found = list_images(item)
            if not found:
                raise UserError(
                    f"{item} holds no images (.png, .jpg, .bmp); pass images or a folder of them"
                )
            paths.extend(found)
        elif item.is_file():
            paths.append(item)
        else:
            raise UserError(f"{item} does not exist; pass image files or folders")
    return paths


def _match_threshold_precision(predictor: Predictor | OnnxPredictor, asked: str | None) -> None:
    """Score in the precision the checkpoint's threshold was chosen in, unless the user
    asked for another; then say that scores near the threshold may fall either side."""
    wanted = predictor.state.get("threshold_precision")
    if wanted is None or predictor.precision == wanted:
        return
    if asked is None:
        predictor.runtime = predictor.runtime.with_precision(wanted)
        return
    print(
        f"predict: warning: scoring in {predictor.precision}, but the checkpoint's threshold "
        f"was chosen on {wanted} scores; images scoring near it may fall on either side "
        f"(drop --precision to score in {wanted})",
        file=sys.stderr,
    )


def predict(
    checkpoint: Path,
    inputs: list[Path],
    out: Path,
    *,
    threshold: float | None = None,
    overlays: bool = True,
    device: str = "auto",
    batch_size: int = 32,
    precision: str | None = None,
    backend: str = "auto",
) -> Predictions:
    """Write ``out/predictions.csv`` (path, score, anomalous, threshold) and overlays
    (``backend``: :func:`~skrd4ad.onnx_predictor.load_predictor`'s)."""
    out = ensure_writable_dir(Path(out))
    predictor = load_predictor(Path(checkpoint), backend=backend, device=device,
                               precision=precision, batch_size=batch_size)  # fmt: skip
    if threshold is None:
        threshold = predictor.state.get("threshold")
        _match_threshold_precision(predictor, precision)
    if threshold is None:
        raise UserError(
            f"no threshold: {checkpoint} recorded none (it was trained without a validation "
            "split); pass --threshold VALUE"
        )
    paths, images, failed = _decode_all(collect_images(inputs), predictor.image_size)
    rows = [{"path": str(p), "error": error} for p, error in failed.items()]
    if paths:
        maps, scores = predictor(torch.stack(images))
        maps, scores = maps.cpu(), scores.cpu()
        rows = [
            {
                "path": str(p),
                "score": float(s),
                "anomalous": "yes" if float(s) >= threshold else "no",
                "threshold": threshold,
            }
            for p, s in zip(paths, scores, strict=True)
        ] + rows
    if overlays and paths:
        _write_overlays(out, paths, images, maps, rows)
    buf = io.StringIO()
    writer = csv.DictWriter(
        buf,
        fieldnames=["path", "score", "anomalous", "threshold", "overlay", "error"],
        extrasaction="ignore",
    )
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out / "predictions.csv", buf.getvalue())
    if failed:
        names = ", ".join(str(p) for p in failed)
        first = next(iter(failed.values()))
        raise UserError(
            f"{len(failed)} of {len(rows)} images could not be read: {names}; the other "
            f"{len(paths)} were scored, and {out / 'predictions.csv'} gives each error "
            f"(the first: {first})"
        )
    return Predictions(rows, predictor.backend)


def _decode_all(paths: list[Path], size: int) -> tuple[list[Path], list[torch.Tensor], dict]:
    """The images that decode, and the error of each one that does not."""
    good, images, failed = [], [], {}
    for p in paths:
        try:
            images.append(image_tensor(p, size))
            good.append(p)
        except DataError as exc:
            failed[p] = str(exc)
    return good, images, failed


def _write_overlays(out: Path, paths: list[Path], images: list, maps: torch.Tensor, rows) -> None:
    """One overlay PNG per scored image (the rows of scored images come first)."""
    from .plots import overlay_png

    vmax = float(maps.max())
    for i, (p, row) in enumerate(zip(paths, rows, strict=False)):
        title = f"{p}  score {row['score']:.4f}  anomalous: {row['anomalous']}"
        name = f"{i:04d}_{p.stem}.png"
        overlay_png(
            out / "overlays" / name,
            images[i].permute(1, 2, 0).numpy(),
            maps[i].numpy(),
            title,
            vmax=vmax,
        )
        row["overlay"] = str(out / "overlays" / name)
