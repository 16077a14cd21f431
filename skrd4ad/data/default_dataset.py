"""The embedded default dataset: scikit-image's bundled texture photographs, cut into
crops, with synthetic defects and masks, written in MVTec AD layout.

It is deterministic: the same arguments give the same files, byte for byte (seeded
numpy generators, PNG written by Pillow with fixed settings and no timestamps).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
from PIL import Image
from skimage import data as skdata

from ..atomic import atomic_write_bytes
from .synthetic import DEFECTS, add_defect

# Real photographs bundled with scikit-image (no download needed).
TEXTURES = {"brick": skdata.brick, "grass": skdata.grass, "gravel": skdata.gravel}
DEFAULT_CATEGORIES = tuple(TEXTURES)
README = """This folder was written by `skrd4ad make-dataset`: crops of scikit-image's bundled
texture photographs ({cats}) with synthetic defects ({defects}) and their masks, in
MVTec AD layout. Arguments: {args}. See manifest.json for the SHA-256 of every file.
"""


def _png_bytes(array: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def _crop(rng: np.random.Generator, texture: np.ndarray, crop: int, size: int) -> np.ndarray:
    h, w = texture.shape[:2]
    y, x = rng.integers(0, h - crop + 1), rng.integers(0, w - crop + 1)
    patch = texture[y : y + crop, x : x + crop]
    if patch.ndim == 2:
        patch = np.repeat(patch[..., None], 3, axis=2)
    img = Image.fromarray(patch).resize((size, size), Image.BILINEAR)
    return np.asarray(img)


def make_default_dataset(
    out: Path,
    *,
    categories: tuple[str, ...] = DEFAULT_CATEGORIES,
    image_size: int = 128,
    crop_size: int = 192,
    n_train: int = 32,
    n_test_good: int = 8,
    n_test_defect: int = 4,
    seed: int = 0,
) -> dict[str, str]:
    """Write the dataset to ``out``; returns {relative path: sha256} (also manifest.json).

    ``n_test_defect`` images are made per defect type and category.
    """
    out = Path(out)
    unknown = [c for c in categories if c not in TEXTURES]
    if unknown:
        raise ValueError(f"unknown categories {unknown}; choose from {', '.join(TEXTURES)}")
    if crop_size > 512 or crop_size < 16:
        raise ValueError(f"--crop-size must be between 16 and 512, got {crop_size}")
    files: dict[str, bytes] = {}
    for ci, cat in enumerate(categories):
        texture = TEXTURES[cat]()
        rng = np.random.default_rng([seed, ci])
        for i in range(n_train):
            files[f"{cat}/train/good/{i:03d}.png"] = _png_bytes(
                _crop(rng, texture, crop_size, image_size)
            )
        for i in range(n_test_good):
            files[f"{cat}/test/good/{i:03d}.png"] = _png_bytes(
                _crop(rng, texture, crop_size, image_size)
            )
        for kind in DEFECTS:
            for i in range(n_test_defect):
                img, mask, _ = add_defect(rng, _crop(rng, texture, crop_size, image_size), kind)
                files[f"{cat}/test/{kind}/{i:03d}.png"] = _png_bytes(img)
                files[f"{cat}/ground_truth/{kind}/{i:03d}_mask.png"] = _png_bytes(
                    mask.astype(np.uint8) * 255
                )
    manifest = {name: hashlib.sha256(blob).hexdigest() for name, blob in sorted(files.items())}
    args = dict(
        categories=list(categories),
        image_size=image_size,
        crop_size=crop_size,
        n_train=n_train,
        n_test_good=n_test_good,
        n_test_defect=n_test_defect,
        seed=seed,
    )
    files["README.txt"] = README.format(
        cats=", ".join(categories), defects=", ".join(DEFECTS), args=json.dumps(args)
    ).encode()
    files["manifest.json"] = (
        json.dumps({"args": args, "files": manifest}, indent=1) + "\n"
    ).encode()
    for name, blob in files.items():
        path = out / name
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, blob)
    return manifest
