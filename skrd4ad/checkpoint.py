"""Checkpoints: everything evaluate, predict and resume need, in one file.

Unlike the published code (decoder-only checkpoints), a checkpoint holds the teacher,
bottleneck, decoder, optimizer state, epoch, full config, history and the validation
threshold, so it is self-contained: no hub cache and no training flags are needed to use it.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .atomic import atomic_write
from .errors import CheckpointError, UserError, load_problem
from .models import SKRD4AD, build_model

if TYPE_CHECKING:
    from .config import Config

FORMAT = "skrd4ad-checkpoint"
# 2: the config is stored in sections (skrd4ad.config); 1 stored it flat.
VERSION = 2
_PARTS = ("teacher", "bottleneck", "decoder")
# A checkpoint's entries that hold tensors (last.pt adds the optimizer's); the others are
# its settings and records, plain data.
TENSOR_ENTRIES = (*_PARTS, "optimizer")


def save_checkpoint(path: Path, model: SKRD4AD, **extra: Any) -> None:
    """Write atomically: an interrupted save leaves the previous checkpoint intact."""
    state = {
        "format": FORMAT,
        "version": VERSION,
        "backbone": model.backbone,
        "skip": {str(k): v for k, v in model.skip.items()},
        "teacher": model.teacher.state_dict(),
        "bottleneck": model.bottleneck.state_dict(),
        "decoder": model.decoder.state_dict(),
        **extra,
    }
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write(Path(path), lambda f: f.write(buf.getvalue()))


def read_checkpoint(path: Path, mmap: bool = False) -> dict[str, Any]:
    """A checkpoint's contents; ``mmap``: its tensors mapped from the file, read from disk
    only when used (its settings without its weights in memory)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint {path} does not exist; pass a file written by skrd4ad train"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means the same here
        raise CheckpointError(
            f"{path} is not an skrd4ad checkpoint ({load_problem(path, exc)}); pass a .pt file "
            "written by skrd4ad train"
        ) from exc
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is not an skrd4ad checkpoint (no '{FORMAT}' marker); "
            "pass a .pt file written by skrd4ad train"
        )
    if state.get("version", 0) > VERSION:
        raise CheckpointError(f"{path} was written by a newer skrd4ad; upgrade skrd4ad")
    return state


def stored_config(state: dict[str, Any]) -> Config:
    """The config a checkpoint was trained with (a version-1 checkpoint's too)."""
    from .config import Config, from_flat_v1

    raw = state.get("config") or {}
    nested = raw if state.get("version", 1) >= 2 else from_flat_v1(raw)
    try:
        return Config.from_dict(nested, "the checkpoint's config")
    except UserError as exc:
        raise CheckpointError(f"{exc}; the checkpoint is damaged or from another program") from exc


def check_backbone(path: Path, state: dict[str, Any], expected: str | None) -> None:
    """A clear error unless the checkpoint at ``path`` holds the ``expected`` backbone."""
    backbone = state["backbone"]
    if expected is not None and expected != backbone:
        raise CheckpointError(
            f"checkpoint {path} holds a {backbone} model, not {expected}; "
            f"pass --backbone {backbone} or a checkpoint trained with {expected}"
        )


def load_model(
    path: Path, expect_backbone: str | None = None, state: dict | None = None
) -> tuple[SKRD4AD, dict[str, Any]]:
    """Rebuild the model stored in a checkpoint (eval mode, CPU); returns it and the
    checkpoint's entries but its tensors (its settings, threshold, epoch).

    The model's tensors are the ones read, assigned rather than copied into a second set,
    and the returned entries hold no reference to them: the weights are in memory once,
    and what BatchNorm folding replaces is freed (BENCHMARKS.md, "Predicting on a CPU")."""
    state = state if state is not None else read_checkpoint(path)
    check_backbone(path, state, expect_backbone)
    backbone = state["backbone"]
    model = _empty_model(backbone, {int(k): v for k, v in state["skip"].items()})
    try:
        for part in _PARTS:
            getattr(model, part).load_state_dict(state[part], assign=True)
    except RuntimeError as exc:
        raise CheckpointError(
            f"checkpoint {path} does not fit a {backbone} SK-RD4AD model "
            f"({str(exc).splitlines()[0]}); it is damaged or from another program"
        ) from exc
    return model.eval(), {k: v for k, v in state.items() if k not in TENSOR_ENTRIES}


def _empty_model(backbone: str, skip: dict[int, str]) -> SKRD4AD:
    """The model's modules on the meta device (no memory), for a checkpoint's tensors to
    be assigned to.

    Not initialised at random and overwritten, which took most of a load
    (benchmarks/bench_load.py, BENCHMARKS.md). Falls back to a normal build if the model
    ever holds a tensor the checkpoint's parts do not (it would stay on the meta device)."""
    with torch.device("meta"):
        model = build_model(backbone, teacher_weights="none", skip=skip)
    held = {f"{p}.{k}" for p in _PARTS for k in getattr(model, p).state_dict()}
    tensors = {n for n, _ in model.named_parameters()} | {n for n, _ in model.named_buffers()}
    if tensors != held:
        return build_model(backbone, teacher_weights="none", skip=skip)
    return model
