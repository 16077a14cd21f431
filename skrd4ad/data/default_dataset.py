"""The embedded default dataset: scikit-image's bundled texture photographs, cut into
crops, with synthetic defects and masks, written in MVTec AD layout.

It is deterministic: the same arguments give the same files, byte for byte (seeded
numpy generators, PNG written by Pillow with fixed settings and no timestamps).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ..atomic import atomic_write_bytes

# Real photographs bundled with scikit-image (no download needed).
TEXTURES = ("brick", "grass", "gravel")  # skimage.data's loaders of the same names
DEFAULT_CATEGORIES = TEXTURES
README = """This folder was written by `skrd4ad make-dataset`: crops of scikit-image's bundled
texture photographs ({cats}) with synthetic defects ({defects}) and their masks, in
MVTec AD layout. Arguments: {args}. See manifest.json for the SHA-256 of every file.
"""


def _size(default: int, help: str) -> int:  # noqa: A002 - argparse's word
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class MakeSettings:
    """The sizes and counts of the dataset (``skrd4ad make-dataset`` flags, params.yaml's
    ``default_dataset``)."""

    image_size: int = _size(128, "side of the written images, px")
    crop_size: int = _size(192, "side of the crop cut from each photo, px")
    n_train: int = _size(32, "normal training images per category")
    n_test_good: int = _size(8, "normal test images per category")
    n_test_defect: int = _size(4, "defective test images per defect type and category")
    seed: int = _size(0, "generator seed")

    def __post_init__(self) -> None:
        if not 16 <= self.crop_size <= 512:
            raise ValueError(f"--crop-size must be between 16 and 512, got {self.crop_size}")


def _texture(name: str) -> np.ndarray:
    from skimage import data as skdata

    return getattr(skdata, name)()


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
    out: Path, *, categories: tuple[str, ...] = DEFAULT_CATEGORIES, **sizes: int
) -> dict[str, str]:
    """Write the dataset to ``out``; returns {relative path: sha256} (also manifest.json).
    ``sizes`` are :class:`MakeSettings` fields (``n_test_defect`` images are made per
    defect type and category)."""
    out = Path(out)
    unknown = [c for c in categories if c not in TEXTURES]
    if unknown:
        raise ValueError(f"unknown categories {unknown}; choose from {', '.join(TEXTURES)}")
    settings = MakeSettings(**sizes)
    from .synthetic import DEFECTS  # scipy and scikit-image: not for the CLI's --help

    files = _images(categories, settings)
    manifest = {name: hashlib.sha256(blob).hexdigest() for name, blob in sorted(files.items())}
    args = {"categories": list(categories), **dataclasses.asdict(settings)}
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


def _images(categories: tuple[str, ...], m: MakeSettings) -> dict[str, bytes]:
    from .synthetic import DEFECTS, add_defect

    files: dict[str, bytes] = {}
    for ci, cat in enumerate(categories):
        texture = _texture(cat)
        rng = np.random.default_rng([m.seed, ci])

        def crop(rng: np.random.Generator = rng, texture: np.ndarray = texture) -> np.ndarray:
            return _crop(rng, texture, m.crop_size, m.image_size)

        for i in range(m.n_train):
            files[f"{cat}/train/good/{i:03d}.png"] = _png_bytes(crop())
        for i in range(m.n_test_good):
            files[f"{cat}/test/good/{i:03d}.png"] = _png_bytes(crop())
        for kind in DEFECTS:
            for i in range(m.n_test_defect):
                img, mask, _ = add_defect(rng, crop(), kind)
                files[f"{cat}/test/{kind}/{i:03d}.png"] = _png_bytes(img)
                files[f"{cat}/ground_truth/{kind}/{i:03d}_mask.png"] = _png_bytes(
                    mask.astype(np.uint8) * 255
                )
    return files
