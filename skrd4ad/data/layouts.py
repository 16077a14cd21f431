"""Dataset layouts: MVTec AD, VAD, and the generic good/defect/mask folder layout.

Each loader returns a :class:`CategoryData`: lists of :class:`Sample` for training (normal
images only: the one-class setting) and testing. A dataset is pixel-level when it has
ground-truth masks at all; only then is a defective test image without a mask an error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DataError
from .images import IMAGE_EXTENSIONS, list_images

LAYOUTS = ("auto", "mvtec", "vad", "folder")


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int  # 0 normal, 1 anomalous
    defect: str = "good"
    mask: Path | None = None


@dataclass
class CategoryData:
    name: str
    root: Path
    layout: str
    train: list[Sample]
    test: list[Sample]
    has_masks: bool
    notes: list[str] = field(default_factory=list)

    @property
    def defect_types(self) -> list[str]:
        return sorted({s.defect for s in self.test if s.label})


def _find_mask(folder: Path, image: Path, suffixes: tuple[str, ...]) -> Path | None:
    for suffix in suffixes:
        for ext in IMAGE_EXTENSIONS:
            candidate = folder / f"{image.stem}{suffix}{ext}"
            if candidate.is_file():
                return candidate
    return None


def list_categories(root: Path) -> list[str]:
    """Categories of an MVTec-layout root: sub-folders holding ``train/good``."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"dataset root {root} does not exist; pass --data with a dataset folder")
    return sorted(p.name for p in root.iterdir() if (p / "train" / "good").is_dir())


def _category_dir(root: Path, category: str) -> Path:
    path = Path(root) / category
    if not path.is_dir():
        available = list_categories(root) if Path(root).is_dir() else []
        hint = f"available: {', '.join(available)}" if available else "none found there"
        raise DataError(f"category {category!r} not found: {path} does not exist ({hint})")
    return path


def _train_good(path: Path) -> list[Sample]:
    good = list_images(path)
    if not good:
        raise DataError(
            f"empty train set: {path} holds no images ({', '.join(IMAGE_EXTENSIONS)}); "
            "add normal training images there"
        )
    return [Sample(p, 0) for p in good]


def load_mvtec(root: Path, category: str, *, layout: str = "mvtec") -> CategoryData:
    """``<root>/<category>/{train/good, test/<defect>, ground_truth/<defect>/<stem>_mask.png}``.

    Without a ``ground_truth`` folder the dataset is image-level (as VAD is).
    """
    cdir = _category_dir(root, category)
    train = _train_good(cdir / "train" / "good")
    test_dir = cdir / "test"
    if not test_dir.is_dir():
        raise DataError(f"{test_dir} does not exist; an MVTec-layout category needs test/")
    gt_dir = cdir / "ground_truth"
    has_masks = gt_dir.is_dir()
    test: list[Sample] = []
    for defect_dir in sorted(p for p in test_dir.iterdir() if p.is_dir()):
        defect = defect_dir.name
        for img in list_images(defect_dir):
            if defect == "good":
                test.append(Sample(img, 0))
                continue
            mask = _find_mask(gt_dir / defect, img, ("_mask", "")) if has_masks else None
            if has_masks and mask is None:
                raise DataError(
                    f"defective test image {img} has no mask: expected "
                    f"{gt_dir / defect / (img.stem + '_mask.png')}; add the mask or move "
                    "the image out of the test set"
                )
            test.append(Sample(img, 1, defect, mask))
    if not test:
        raise DataError(f"empty test set: {test_dir} holds no images")
    notes = [] if has_masks else [f"{cdir} has no ground_truth/: image-level metrics only"]
    return CategoryData(category, cdir, layout, train, test, has_masks, notes)


def load_vad(root: Path, category: str) -> CategoryData:
    """Valeo Anomaly Dataset: ``train/{good,bad}``, ``test/{good,bad,bad_unseen_defects}``,
    no masks. The one-class setting trains on ``train/good`` only; ``train/bad`` is unused.
    """
    data = load_mvtec(root, category, layout="vad")
    if data.has_masks:
        raise DataError(f"{data.root} has ground_truth/: use --layout mvtec for it")
    return data


def load_folder(
    root: Path, category: str | None = None, *, train_fraction: float = 0.5, seed: int = 0
) -> CategoryData:
    """``good/``, one folder per defect type, masks in ``mask/<defect>/`` or
    ``masks/<defect>/`` matched by file name.

    There is no train/test split in this layout: a seeded permutation of ``good/`` puts
    ``train_fraction`` of it in training and the rest in the test set.
    """
    cdir = Path(root) if category is None else _category_dir(root, category)
    if not 0 < train_fraction < 1:
        raise DataError(f"--train-fraction must be between 0 and 1, got {train_fraction}")
    good = _train_good(cdir / "good")
    order = np.random.default_rng(seed).permutation(len(good))
    n_train = max(1, min(len(good) - 1, round(train_fraction * len(good))))
    train = [good[i] for i in sorted(order[:n_train])]
    test = [good[i] for i in sorted(order[n_train:])]
    mask_roots = [cdir / name for name in ("mask", "masks") if (cdir / name).is_dir()]
    has_masks = bool(mask_roots)
    for defect_dir in sorted(p for p in cdir.iterdir() if p.is_dir()):
        if defect_dir.name in ("good", "mask", "masks"):
            continue
        for img in list_images(defect_dir):
            mask = None
            for mroot in mask_roots:
                mask = _find_mask(mroot / defect_dir.name, img, ("", "_mask"))
                if mask:
                    break
            if has_masks and mask is None:
                raise DataError(
                    f"defective image {img} has no mask: expected "
                    f"{mask_roots[0] / defect_dir.name / img.name}; add it or remove the image"
                )
            test.append(Sample(img, 1, defect_dir.name, mask))
    return CategoryData(category or cdir.name, cdir, "folder", train, test, has_masks)


def detect_layout(root: Path, category: str | None) -> str:
    cdir = Path(root) if category is None else Path(root) / category
    if (cdir / "train" / "good").is_dir():
        if (cdir / "ground_truth").is_dir():
            return "mvtec"
        return "vad" if (cdir / "test" / "bad").is_dir() else "mvtec"
    if (cdir / "good").is_dir():
        return "folder"
    if category is not None and not cdir.exists():
        _category_dir(root, category)  # raises the missing-category error
    if category is None and Path(root).is_dir() and list_categories(root):
        found = list_categories(root)
        raise DataError(
            f"{root} holds categories ({', '.join(found)}): pass --category, e.g. "
            f"--category {found[0]}"
        )
    raise DataError(
        f"cannot tell the layout of {cdir}: expected train/good (MVTec AD, VAD) or good/ "
        "(folder layout); pass --layout"
    )


def load_category(
    root: Path,
    category: str | None,
    layout: str = "auto",
    *,
    train_fraction: float = 0.5,
    seed: int = 0,
) -> CategoryData:
    """Load one category with the given (or detected) layout."""
    root = Path(root)
    if layout not in LAYOUTS:
        raise DataError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    if layout == "auto":
        layout = detect_layout(root, category)
    if layout == "folder":
        return load_folder(root, category, train_fraction=train_fraction, seed=seed)
    if category is None:
        raise DataError(f"--category is required for the {layout} layout")
    return load_vad(root, category) if layout == "vad" else load_mvtec(root, category)
