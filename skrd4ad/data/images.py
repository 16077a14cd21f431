"""Decoding images and masks into uint8 tensors at the model size, with clear errors."""

from __future__ import annotations

import os
import re
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


class MaskValueWarning(UserWarning):
    """Masks held values other than 0 and their maximum, or a defect's mask was empty."""


def list_images(folder: Path) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in IMAGE_EXTENSIONS)


# Pillow refuses images over twice MAX_IMAGE_PIXELS (a guard against decompression bombs);
# this variable raises the limit for datasets of genuinely large images.
MAX_PIXELS_VARIABLE = "SKRD4AD_MAX_IMAGE_PIXELS"
if os.environ.get(MAX_PIXELS_VARIABLE, "").isdigit():
    Image.MAX_IMAGE_PIXELS = int(os.environ[MAX_PIXELS_VARIABLE])


def _too_large(path: Path, exc: Image.DecompressionBombError) -> DataError:
    found = re.search(r"\((\d+) pixels\)", str(exc))
    pixels = int(found.group(1)) if found else None
    size = f"{pixels:,} pixels" if pixels else "more pixels"
    return DataError(
        f"image {path} has {size}, over the {2 * (Image.MAX_IMAGE_PIXELS or 0):,} Pillow opens "
        f"(a guard against decompression bombs); downscale it, or allow it with "
        f"{MAX_PIXELS_VARIABLE}={pixels or 2 * (Image.MAX_IMAGE_PIXELS or 0)}"
    )


def _open(path: Path) -> Image.Image:
    try:
        with Image.open(path) as img:
            img.load()
            return img.copy()
    except Image.DecompressionBombError as exc:
        raise _too_large(path, exc) from exc
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise DataError(
            f"cannot read image {path}: it is truncated or not an image ({exc}); "
            "re-export it or remove it from the dataset"
        ) from exc


def _eight_bit(img: Image.Image, path: Path) -> Image.Image:
    """16-bit grayscale (mode I;16*, or I holding 16-bit values, as industrial cameras
    write) scaled to 8 bits (65535 -> 255); Pillow's convert would clip every value above
    255, which turns such an image white."""
    if not (img.mode.startswith("I;16") or img.mode == "I"):
        return img
    values = np.asarray(img).astype(np.int64)
    if values.min() < 0 or values.max() > 65535:
        raise DataError(
            f"image {path} holds {img.mode} values from {values.min()} to {values.max()}, "
            "beyond 16 bits; save it as an 8- or 16-bit image"
        )
    return Image.fromarray(np.round(values / 257).astype(np.uint8), mode="L")


def load_rgb(path: Path) -> Image.Image:
    """Open ``path`` as RGB; 16-bit grayscale is scaled to 8 bits; grayscale, palette and
    RGBA images are converted."""
    img = _eight_bit(_open(path), path)
    if img.mode != "RGB":
        # Palette images with transparency need RGBA first to keep their colours.
        img = img.convert("RGBA").convert("RGB") if img.mode == "P" else img.convert("RGB")
    return img


def image_tensor(path: Path, size: int) -> torch.Tensor:
    """uint8 (3, size, size): RGB resized bilinearly (antialiased) to the model size."""
    img = load_rgb(path)
    img = TF.resize(img, [size, size], interpolation=InterpolationMode.BILINEAR, antialias=True)
    return TF.pil_to_tensor(img)


def mask_tensor(
    path: Path, size: int, image_size: tuple[int, int] | None = None
) -> tuple[torch.Tensor, bool]:
    """bool (size, size): the mask binarised at half its largest value (a gradient or an
    antialiased edge counts where it is at least half on), then nearest-resized; and
    whether the file held values other than 0 and that largest value.

    When ``image_size`` (width, height) is given and differs from the mask's, the mask
    is first resized to the image's size with a :class:`MaskSizeWarning`.
    """
    raw = _open(path)
    values = np.asarray(raw.convert("L") if raw.mode in ("P", "RGB", "RGBA", "LA") else raw)
    values = values.astype(np.float64)
    if values.ndim == 3:
        values = values.max(axis=-1)
    top = float(values.max()) if values.size else 0.0
    binary = values >= top / 2 if top > 0 else np.zeros(values.shape, bool)
    not_binary = bool(np.any((values != 0) & (values != top)))
    mask = Image.fromarray(binary.astype(np.uint8) * 255, mode="L")
    if image_size is not None and mask.size != image_size:
        warnings.warn(
            f"mask {path} is {mask.size[0]}x{mask.size[1]} but its image is "
            f"{image_size[0]}x{image_size[1]}; resized it to the image's size",
            MaskSizeWarning,
            stacklevel=2,
        )
        mask = mask.resize(image_size, Image.NEAREST)
    mask = TF.resize(mask, [size, size], interpolation=InterpolationMode.NEAREST)
    return torch.from_numpy(np.asarray(mask) > 0), not_binary


def image_size_of(path: Path) -> tuple[int, int]:
    try:
        with Image.open(path) as img:
            return img.size
    except Image.DecompressionBombError as exc:
        raise _too_large(path, exc) from exc
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"cannot read image {path} ({exc}); re-export or remove it") from exc


class Normalize(torch.nn.Module):
    """uint8 (N, 3, H, W) to ImageNet-normalised float32: the one normalisation, a module
    so that an exported model carries it (its constants are buffers, not traced values)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return (batch.float() / 255.0 - self.mean) / self.std


def normalize(batch: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 3, H, W) on any device to ImageNet-normalised float32."""
    return Normalize().to(batch.device)(batch)
