"""Checkpoints: everything evaluate, predict and resume need, in one file.

Unlike the published code (decoder-only checkpoints), a checkpoint holds the teacher,
bottleneck, decoder, optimizer state, epoch, full config, history and the validation
threshold, so it is self-contained: no hub cache and no training flags are needed to use it.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from .atomic import atomic_write
from .errors import CheckpointError
from .models import SKRD4AD, build_model

FORMAT = "skrd4ad-checkpoint"
VERSION = 1


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


def read_checkpoint(path: Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint {path} does not exist; pass a file written by skrd4ad train"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means the same here
        raise CheckpointError(
            f"{path} is not an skrd4ad checkpoint (cannot be read by torch.load: "
            f"{str(exc).splitlines()[0][:120]}); pass a .pt file written by skrd4ad train"
        ) from exc
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is not an skrd4ad checkpoint (no '{FORMAT}' marker); "
            "pass a .pt file written by skrd4ad train"
        )
    if state.get("version", 0) > VERSION:
        raise CheckpointError(f"{path} was written by a newer skrd4ad; upgrade skrd4ad")
    return state


def load_model(
    path: Path, expect_backbone: str | None = None, state: dict | None = None
) -> tuple[SKRD4AD, dict[str, Any]]:
    """Rebuild the model stored in a checkpoint (eval mode, CPU)."""
    state = state if state is not None else read_checkpoint(path)
    backbone = state["backbone"]
    if expect_backbone is not None and expect_backbone != backbone:
        raise CheckpointError(
            f"checkpoint {path} holds a {backbone} model, not {expect_backbone}; "
            f"pass --backbone {backbone} or a checkpoint trained with {expect_backbone}"
        )
    model = build_model(
        backbone, teacher_weights="none", skip={int(k): v for k, v in state["skip"].items()}
    )
    try:
        model.teacher.load_state_dict(state["teacher"])
        model.bottleneck.load_state_dict(state["bottleneck"])
        model.decoder.load_state_dict(state["decoder"])
    except RuntimeError as exc:
        raise CheckpointError(
            f"checkpoint {path} does not fit a {backbone} SK-RD4AD model "
            f"({str(exc).splitlines()[0]}); it is damaged or from another program"
        ) from exc
    return model.eval(), state
