"""Scoring with ONNX Runtime on the CPU: the model `skrd4ad export --format onnx` wrote
beside its checkpoint (``model.pt`` -> ``model.onnx``), used by ``predict`` and
``evaluate`` in place of PyTorch when it is the faster path (BENCHMARKS.md, "Predicting
on a CPU: each path").

The ONNX file names the checkpoint it was exported from (the SHA-256 of its bytes, in the
metadata ``skrd4ad.checkpoint_sha256``), so a file left from an earlier checkpoint is
never used for a newer one. The checkpoint is read memory-mapped: its settings and
threshold without its weights in memory.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import sys
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import Backend
from .errors import UserError
from .inference import INPUT_NAME, OUTPUT_NAMES, Predictor
from .runtime import resolve_device, resolve_precision

BACKENDS = typing.get_args(Backend)
CHECKPOINT_SHA = "checkpoint_sha256"


def checkpoint_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def export_command(checkpoint: Path) -> list[str]:
    """The command that writes ``checkpoint``'s ONNX model where predict looks for it."""
    return ["skrd4ad", "export", "--checkpoint", str(checkpoint), "--format", "onnx"]


def exported_beside(checkpoint: Path) -> Path:
    """Where ``skrd4ad export --format onnx`` writes ``checkpoint``'s model by default."""
    return Path(checkpoint).with_suffix(".onnx")


@dataclass
class OnnxPredictor:
    """A checkpoint's exported ONNX model in an ONNX Runtime session; called like
    :class:`~skrd4ad.inference.Predictor` (uint8 images in; maps and scores out, float32
    on the CPU)."""

    session: Any
    state: dict[str, Any]
    image_size: int
    batch_size: int
    device = torch.device("cpu")
    precision = "fp32"
    backend = "onnxruntime"

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        maps, scores = [], []
        for start in range(0, images.shape[0], self.batch_size):
            batch = images[start : start + self.batch_size].numpy()
            m, s = self.session.run(list(OUTPUT_NAMES), {INPUT_NAME: batch})
            maps.append(m)
            scores.append(s)
        return torch.from_numpy(np.concatenate(maps)), torch.from_numpy(np.concatenate(scores))


def _why_not(checkpoint: Path, state: dict, device: str, precision: str | None) -> str | None:
    """Why ONNX Runtime cannot score ``checkpoint`` as asked (None: it can)."""
    from .checkpoint import stored_config

    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return "onnxruntime is not installed (pip install -e '.[export]')"
    dev = resolve_device(device)
    if dev.type != "cpu":
        return f"it runs on the CPU only, and the device is {dev.type} (pass --device cpu)"
    wanted = resolve_precision(dev, precision or stored_config(state).runtime.precision)
    if "bf16" in (wanted, state.get("threshold_precision")):
        return (
            "the exported model scores in fp32, and bf16 was asked for or the threshold "
            "was chosen on bf16 scores (pass --precision fp32)"
        )
    onnx_file = exported_beside(checkpoint)
    if not onnx_file.is_file():
        return f"{onnx_file} does not exist (write it: {shlex.join(export_command(checkpoint))})"
    return None


def _session(onnx_file: Path, checkpoint: Path) -> Any | None:
    """An ONNX Runtime session of ``onnx_file``, or None when it was exported from
    another checkpoint than ``checkpoint``."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    # The same threads as PyTorch's (OMP_NUM_THREADS, torch.set_num_threads): both paths
    # take the share of the machine a user or a Ray worker gave this process.
    options.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(str(onnx_file), options, providers=["CPUExecutionProvider"])
    stored = session.get_modelmeta().custom_metadata_map.get(f"skrd4ad.{CHECKPOINT_SHA}")
    if stored is None or json.loads(stored) != checkpoint_sha256(checkpoint):
        return None
    return session


def load_predictor(
    checkpoint: Path,
    *,
    backend: str = "auto",
    device: str = "auto",
    precision: str | None = None,
    batch_size: int = 32,
    expect_backbone: str | None = None,
) -> Predictor | OnnxPredictor:
    """``checkpoint``'s predictor: ONNX Runtime when ``backend`` is onnxruntime, or auto
    and its exported model is beside it, current, and fits the device and precision;
    PyTorch (BatchNorm folded) otherwise. Asked for by name, ONNX Runtime that cannot be
    used is an error that says why."""
    if backend not in BACKENDS:
        raise UserError(f"--backend must be one of {BACKENDS}, got {backend!r}")
    checkpoint, onnx_file = Path(checkpoint), exported_beside(checkpoint)
    if backend == "onnxruntime" or (backend == "auto" and onnx_file.is_file()):
        from .checkpoint import check_backbone, read_checkpoint, stored_config

        state = read_checkpoint(checkpoint, mmap=True)
        check_backbone(checkpoint, state, expect_backbone)
        reason = _why_not(checkpoint, state, device, precision)
        session = None if reason else _session(onnx_file, checkpoint)
        if session is not None:
            size = stored_config(state).train.image_size
            return OnnxPredictor(session, state, size, batch_size)
        if reason is None:  # a stale export: said, since it is why scoring is slower
            reason = (
                f"{onnx_file} was exported from another checkpoint than {checkpoint} "
                f"(export it again: {shlex.join(export_command(checkpoint))})"
            )
            if backend == "auto":
                print(f"skrd4ad: warning: scoring with torch: {reason}", file=sys.stderr)
        if backend == "onnxruntime":
            raise UserError(f"--backend onnxruntime cannot score {checkpoint}: {reason}")
    return Predictor.from_checkpoint(
        checkpoint, device=device, precision=precision, batch_size=batch_size,
        expect_backbone=expect_backbone,
    )  # fmt: skip
