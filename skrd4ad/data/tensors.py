"""Decode-once tensor caches of a category's images, masks and labels.

Every image is decoded and resized once into a uint8 tensor; epochs then index memory
instead of reading files (at 3 bytes per pixel a category fits in memory).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from .images import MaskValueWarning, image_size_of, image_tensor, mask_tensor
from .layouts import CategoryData, Sample
from .synthetic import add_defect


@dataclass
class TensorSet:
    """images uint8 (N, 3, S, S); masks bool (N, S, S) or None (image-level); labels (N,)."""

    images: torch.Tensor
    masks: torch.Tensor | None
    labels: torch.Tensor
    paths: list[str]
    defects: list[str]

    def __len__(self) -> int:
        return self.images.shape[0]


def decode(samples: list[Sample], size: int, with_masks: bool) -> TensorSet:
    if not samples:
        raise DataError("no images to decode")
    images = torch.empty((len(samples), 3, size, size), dtype=torch.uint8)
    masks = torch.zeros((len(samples), size, size), dtype=torch.bool) if with_masks else None
    not_binary, empty = 0, []
    for i, s in enumerate(samples):
        images[i] = image_tensor(s.path, size)
        if masks is not None and s.mask is not None:
            masks[i], graded = mask_tensor(s.mask, size, image_size_of(s.path))
            not_binary += graded
            if s.label == 1 and not masks[i].any():
                empty.append(str(s.mask))
    if masks is not None:
        _warn_masks(samples, not_binary, empty)
    labels = torch.tensor([s.label for s in samples], dtype=torch.long)
    return TensorSet(
        images, masks, labels, [str(s.path) for s in samples], [s.defect for s in samples]
    )


def _warn_masks(samples: list[Sample], not_binary: int, empty: list[str]) -> None:
    """One warning per decoded set for each kind of doubtful mask."""
    with_masks = sum(s.mask is not None for s in samples)
    if not_binary:
        folder = Path(next(s.mask for s in samples if s.mask is not None)).parent.parent
        warnings.warn(
            f"{not_binary} of {with_masks} masks under {folder} are not binary (values "
            "other than 0 and their maximum, e.g. antialiased edges): binarised at half "
            "their maximum",
            MaskValueWarning,
            stacklevel=3,
        )
    if empty:
        shown = ", ".join(empty[:5]) + (f" and {len(empty) - 5} more" if len(empty) > 5 else "")
        warnings.warn(
            f"{len(empty)} defective images have an empty mask (no defect pixel): {shown}; "
            "their pixels count as normal in pixel AUROC, AUPRO and F1-max: fix the masks "
            "or move the images",
            MaskValueWarning,
            stacklevel=3,
        )


def split_validation(
    train: list[Sample], fraction: float, seed: int
) -> tuple[list[Sample], list[Sample]]:
    """Hold out ``fraction`` of the normal training images (seeded, at least 2 when > 0)."""
    if fraction <= 0:
        return train, []
    if not fraction < 1:
        raise DataError(f"--val-fraction must be below 1, got {fraction}")
    n_val = max(2, round(fraction * len(train)))
    if len(train) - n_val < 1:
        raise DataError(
            f"only {len(train)} training images: too few to hold out {n_val} for validation; "
            "lower --val-fraction or add images"
        )
    order = np.random.default_rng([seed, 7]).permutation(len(train))
    held = set(order[:n_val].tolist())
    return (
        [s for i, s in enumerate(train) if i not in held],
        [s for i, s in enumerate(train) if i in held],
    )


def synthetic_validation(samples: list[Sample], size: int, seed: int) -> TensorSet:
    """Held-out normal images, half of them given a synthetic defect with its mask."""
    base = decode(samples, size, with_masks=True)
    rng = np.random.default_rng([seed, 11])
    defects = ["good"] * len(base)
    for i in range(0, len(base), 2):
        img = base.images[i].permute(1, 2, 0).numpy()
        img, mask, kind = add_defect(rng, np.ascontiguousarray(img))
        base.images[i] = torch.from_numpy(img).permute(2, 0, 1)
        base.masks[i] = torch.from_numpy(mask)
        base.labels[i] = 1
        defects[i] = f"synthetic_{kind}"
    base.defects = defects
    return base


def category_tensors(
    data: CategoryData, size: int, val_fraction: float, seed: int
) -> tuple[TensorSet, TensorSet | None]:
    """Training tensors and (when ``val_fraction`` > 0) the synthetic validation set."""
    train, val = split_validation(data.train, val_fraction, seed)
    train_set = decode(train, size, with_masks=False)
    val_set = synthetic_validation(val, size, seed) if val else None
    return train_set, val_set


def decode_test_split(data: CategoryData, size: int) -> TensorSet:
    return decode(data.test, size, with_masks=data.has_masks)
