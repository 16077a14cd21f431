"""Decoding images and masks into uint8 tensors at the model size, with clear errors."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from ..errors import DataError

IMAGE_EXTENSIONS = (".png", ".PNG", ".jpg", ".JPG", ".jpeg", ".JPEG", ".bmp", ".BMP")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class MaskSizeWarning(UserWarning):
    """A mask's size differs from its image's; it was resized to the image's size."""


def list_images(folder: Path) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in IMAGE_EXTENSIONS)


def _open(path: Path) -> Image.Image:
    try:
        with Image.open(path) as img:
            img.load()
            return img.copy()
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise DataError(
            f"cannot read image {path}: it is truncated or not an image ({exc}); "
            "re-export it or remove it from the dataset"
        ) from exc


def load_rgb(path: Path) -> Image.Image:
    """Open ``path`` as RGB; grayscale, palette and RGBA images are converted."""
    img = _open(path)
    if img.mode != "RGB":
        # Palette images with transparency need RGBA first to keep their colours.
        img = img.convert("RGBA").convert("RGB") if img.mode == "P" else img.convert("RGB")
    return img


def image_tensor(path: Path, size: int) -> torch.Tensor:
    """uint8 (3, size, size): RGB resized bilinearly (antialiased) to the model size."""
    img = load_rgb(path)
    img = TF.resize(img, [size, size], interpolation=InterpolationMode.BILINEAR, antialias=True)
    return TF.pil_to_tensor(img)


def mask_tensor(path: Path, size: int, image_size: tuple[int, int] | None = None) -> torch.Tensor:
    """bool (size, size): nearest-resized, binarised (> 0) mask.

    When ``image_size`` (width, height) is given and differs from the mask's, the mask
    is first resized to the image's size with a :class:`MaskSizeWarning`.
    """
    mask = _open(path).convert("L")
    if image_size is not None and mask.size != image_size:
        warnings.warn(
            f"mask {path} is {mask.size[0]}x{mask.size[1]} but its image is "
            f"{image_size[0]}x{image_size[1]}; resized it to the image's size",
            MaskSizeWarning,
            stacklevel=2,
        )
        mask = mask.resize(image_size, Image.NEAREST)
    mask = TF.resize(mask, [size, size], interpolation=InterpolationMode.NEAREST)
    return torch.from_numpy(np.asarray(mask) > 0)


def image_size_of(path: Path) -> tuple[int, int]:
    try:
        with Image.open(path) as img:
            return img.size
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"cannot read image {path} ({exc}); re-export or remove it") from exc


def normalize(batch: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 3, H, W) on any device to ImageNet-normalised float32."""
    mean = torch.tensor(IMAGENET_MEAN, device=batch.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=batch.device).view(1, 3, 1, 1)
    return (batch.float() / 255.0 - mean) / std
