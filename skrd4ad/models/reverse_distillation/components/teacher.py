"""The frozen ImageNet teacher: a torchvision ResNet cut after ``layer3``.

The teacher yields E1, E2, E3 (the outputs of ``layer1``, ``layer2`` and ``layer3``).
``layer4`` and ``fc`` are removed at build time, so they are never computed and never
held in memory; key names are otherwise torchvision's own, so torchvision state dicts
and the published encoder weights load unchanged.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn
from torchvision import models

from ....errors import UserError, load_problem
from ..backbones import backbone as lookup


class TeacherWeightsError(UserError):
    """ImageNet weights were asked for and cannot be had (no cache file, no network)."""


def imagenet_cache_file(backbone: str) -> Path:
    """The file torchvision's weights API reads from (and downloads to) for ``backbone``."""
    weights = lookup(backbone).weights
    filename = os.path.basename(weights.url)
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def _imagenet_state_dict(backbone: str) -> dict[str, torch.Tensor]:
    weights = lookup(backbone).weights
    cache = imagenet_cache_file(backbone)
    try:
        # torchvision reads the hub cache when the file is there and downloads otherwise.
        return weights.get_state_dict(progress=False, check_hash=False)
    except Exception as exc:  # noqa: BLE001 - any download failure means the same to the user
        raise TeacherWeightsError(
            f"ImageNet weights for {backbone} are not available: torchvision looks for "
            f"{cache} (file name {cache.name}, directory set by TORCH_HOME) and could not "
            f"download it ({type(exc).__name__}: {str(exc).splitlines()[0][:100]}). Fix: copy "
            f"{cache.name} from {weights.url} into {cache.parent}, or pass --teacher-weights "
            "PATH with a torchvision state dict file. Random weights are used only with "
            "--teacher-weights none."
        ) from exc


def _file_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise TeacherWeightsError(
            f"teacher weights file {path} does not exist; pass a torchvision state dict "
            "file, 'imagenet' or 'none'"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise TeacherWeightsError(
            f"teacher weights file {path} cannot be used: {load_problem(path, exc)}; pass a file "
            "saved with torch.save(model.state_dict(), PATH)"
        ) from exc
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise TeacherWeightsError(f"teacher weights file {path} holds no state dict")
    return state


class Teacher(nn.Module):
    """A frozen ResNet trunk returning [E1, E2, E3]; it never builds an autograd graph."""

    def __init__(self, trunk: models.ResNet, backbone: str) -> None:
        super().__init__()
        self.backbone = backbone
        self.conv1 = trunk.conv1
        self.bn1 = trunk.bn1
        self.relu = trunk.relu
        self.maxpool = trunk.maxpool
        self.layer1 = trunk.layer1
        self.layer2 = trunk.layer2
        self.layer3 = trunk.layer3
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> Teacher:
        # BatchNorm statistics are part of the ImageNet teacher: it stays in eval mode
        # even when the surrounding model is put in training mode.
        return super().train(False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        with torch.no_grad():
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            e1 = self.layer1(x)
            e2 = self.layer2(e1)
            e3 = self.layer3(e2)
        return [e1, e2, e3]


def build_teacher(
    backbone: str = "wide_resnet50_2", weights: str | os.PathLike = "imagenet"
) -> Teacher:
    """Build the teacher for ``backbone``.

    ``weights`` is ``"imagenet"`` (torchvision's weights API, hub cache under TORCH_HOME),
    ``"none"`` (random, for tests) or a path to a state dict. ImageNet weights that cannot
    be had raise :class:`TeacherWeightsError`; random weights are never a fallback.
    """
    builder = lookup(backbone).builder
    trunk = builder(weights=None)
    if isinstance(weights, str) and weights == "imagenet":
        state = _imagenet_state_dict(backbone)
    elif isinstance(weights, str) and weights == "none":
        state = None
    else:
        state = _file_state_dict(Path(weights))
    if state is not None:
        state = {k: v for k, v in state.items() if not k.startswith(("layer4.", "fc."))}
        teacher = Teacher(trunk, backbone)
        try:
            teacher.load_state_dict({k: v.float() for k, v in state.items()})
        except RuntimeError as exc:
            raise TeacherWeightsError(
                f"teacher weights {weights} do not fit {backbone} ({str(exc).splitlines()[0]} "
                "...); pass a state dict of the same torchvision architecture"
            ) from exc
        return teacher
    return Teacher(trunk, backbone)
