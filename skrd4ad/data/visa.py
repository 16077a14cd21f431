"""Convert the raw VisA download into MVTec AD layout.

Raw VisA: ``<raw>/<category>/Data/Images/{Normal,Anomaly}``, ``Data/Masks/Anomaly`` and
``<raw>/split_csv/1cls.csv`` with columns ``object,split,label,image,mask`` (paths
relative to ``<raw>``). Raw masks are not 0/255 (defect pixels hold small class ids), so
they are binarised (> 0 -> 255) on the way.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

from ..atomic import atomic_write
from ..errors import DataError

SPLIT_CSV = Path("split_csv") / "1cls.csv"


def prepare_visa(raw: Path, out: Path, categories: list[str] | None = None) -> dict[str, dict]:
    """Write ``out/<category>/{train/good, test/{good,bad}, ground_truth/bad}``; returns counts."""
    raw, out = Path(raw), Path(out)
    split = raw / SPLIT_CSV
    if not split.is_file():
        raise DataError(f"{split} not found: pass --raw with the extracted VisA folder")
    with split.open(newline="") as f:
        rows = list(csv.DictReader(f))
    need = {"object", "split", "label", "image", "mask"}
    if not rows or not need <= set(rows[0]):
        raise DataError(f"{split} lacks the columns {sorted(need)}")
    counts: dict[str, dict] = {}
    for row in rows:
        cat = row["object"]
        if categories and cat not in categories:
            continue
        src = raw / row["image"]
        if not src.is_file():
            raise DataError(f"{src} listed in {split} does not exist; re-extract VisA")
        normal = row["label"].strip().lower() == "normal"
        sub = ("train" if row["split"] == "train" else "test") + ("/good" if normal else "/bad")
        if row["split"] == "train" and not normal:
            continue  # one-class training: anomalies never enter train/
        dst = out / cat / sub / src.name
        atomic_write(dst, lambda f, s=src: f.write(s.read_bytes()))
        c = counts.setdefault(cat, {"train/good": 0, "test/good": 0, "test/bad": 0})
        c[sub] += 1
        if not normal:
            msrc = raw / row["mask"]
            if not msrc.is_file():
                raise DataError(f"mask {msrc} for {src} does not exist; re-extract VisA")
            mask = (np.asarray(Image.open(msrc).convert("L")) > 0).astype(np.uint8) * 255
            mdst = out / cat / "ground_truth" / "bad" / f"{src.stem}_mask.png"

            def write_mask(f, m=mask):
                Image.fromarray(m).save(f, format="PNG")

            atomic_write(mdst, write_mask)
    if not counts:
        raise DataError(f"{split} lists none of the categories {categories}")
    return counts
