"""Synthetic defects drawn into real images, each returning the image and its mask.

Used for the embedded default dataset's test defects and for the validation split, so
that model selection and tuning never need the test set.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import ndimage
from skimage import draw

DefectFn = Callable[[np.random.Generator, np.ndarray], tuple[np.ndarray, np.ndarray]]


def _blend(img: np.ndarray, mask: np.ndarray, colour: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    out = img.astype(np.float32)
    a = (alpha * mask)[..., None]
    out = out * (1 - a) + colour.astype(np.float32) * a
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def scratch(rng: np.random.Generator, img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A thin bright or dark polyline of two or three segments."""
    h, w = img.shape[:2]
    mask = np.zeros((h, w), bool)
    y, x = rng.uniform(0.2, 0.8) * h, rng.uniform(0.2, 0.8) * w
    angle = rng.uniform(0, np.pi)
    for _ in range(rng.integers(2, 4)):
        length = rng.uniform(0.15, 0.3) * min(h, w)
        angle += rng.uniform(-0.5, 0.5)
        y2 = np.clip(y + length * np.sin(angle), 0, h - 1)
        x2 = np.clip(x + length * np.cos(angle), 0, w - 1)
        rr, cc = draw.line(int(y), int(x), int(y2), int(x2))
        mask[rr, cc] = True
        y, x = y2, x2
    mask = ndimage.binary_dilation(mask, iterations=max(1, min(h, w) // 96))
    colour = np.full(3, 250 if rng.random() < 0.5 else 10)
    return _blend(img, mask, colour, np.float32(0.9)), mask


def stain(rng: np.random.Generator, img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A soft-edged coloured ellipse."""
    h, w = img.shape[:2]
    ry, rx = rng.uniform(0.06, 0.15) * h, rng.uniform(0.06, 0.15) * w
    cy, cx = rng.uniform(ry, h - ry), rng.uniform(rx, w - rx)
    rr, cc = draw.ellipse(cy, cx, ry, rx, shape=(h, w), rotation=rng.uniform(0, np.pi))
    mask = np.zeros((h, w), bool)
    mask[rr, cc] = True
    alpha = ndimage.gaussian_filter(mask.astype(np.float32), 1.0) * 0.7
    colour = rng.integers(0, 256, 3)
    return _blend(img, np.ones_like(mask), colour, alpha), mask


def foreign_patch(rng: np.random.Generator, img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A rectangle cut from another place of the image, flipped and transposed."""
    h, w = img.shape[:2]
    ph, pw = int(rng.uniform(0.12, 0.25) * h), int(rng.uniform(0.12, 0.25) * w)
    y, x = rng.integers(0, h - ph), rng.integers(0, w - pw)
    sy, sx = rng.integers(0, h - pw), rng.integers(0, w - ph)
    patch = img[sy : sy + pw, sx : sx + ph].transpose(1, 0, 2)[::-1]
    patch = (255 - patch) if rng.random() < 0.5 else np.roll(patch, 1, axis=2)
    out = img.copy()
    out[y : y + ph, x : x + pw] = patch
    mask = np.zeros((h, w), bool)
    mask[y : y + ph, x : x + pw] = True
    return out, mask


def hole(rng: np.random.Generator, img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A dark irregular blob, like a puncture."""
    h, w = img.shape[:2]
    r = rng.uniform(0.04, 0.1) * min(h, w)
    cy, cx = rng.uniform(r, h - r), rng.uniform(r, w - r)
    angles = np.sort(rng.uniform(0, 2 * np.pi, 9))
    radii = r * rng.uniform(0.6, 1.3, 9)
    rr, cc = draw.polygon(cy + radii * np.sin(angles), cx + radii * np.cos(angles), (h, w))
    mask = np.zeros((h, w), bool)
    mask[rr, cc] = True
    noise = rng.integers(0, 30, (h, w, 1))
    out = img.copy()
    out[mask] = np.broadcast_to(noise, (h, w, 3))[mask]
    return out, mask


DEFECTS: dict[str, DefectFn] = {
    "scratch": scratch,
    "stain": stain,
    "patch": foreign_patch,
    "hole": hole,
}


def add_defect(
    rng: np.random.Generator, img: np.ndarray, kind: str | None = None
) -> tuple[np.ndarray, np.ndarray, str]:
    """Draw one defect (a random kind unless given) into an (H, W, 3) uint8 image."""
    if kind is None:
        kind = list(DEFECTS)[int(rng.integers(len(DEFECTS)))]
    out, mask = DEFECTS[kind](rng, img)
    if not mask.any():  # keep every synthetic defect visible in its mask
        mask[img.shape[0] // 2, img.shape[1] // 2] = True
    return out, mask, kind
