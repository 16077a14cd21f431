"""Published SK-RD4AD and RD4AD results (pixel AUROC / AUPRO, %), from the authors' README
and poster (../shared/seeds/). Keys are the datasets' folder names."""

from __future__ import annotations

# category: (RD4AD pixel AUROC, RD4AD AUPRO, SK-RD4AD pixel AUROC, SK-RD4AD AUPRO)
MVTEC = {
    "carpet": (98.9, 97.0, 99.2, 97.7),
    "grid": (99.3, 97.6, 99.3, 97.6),
    "leather": (99.4, 99.1, 99.6, 99.2),
    "tile": (95.6, 90.6, 96.1, 91.7),
    "wood": (95.3, 90.9, 95.4, 92.5),
    "bottle": (98.7, 96.6, 98.8, 96.9),
    "cable": (97.4, 91.0, 98.0, 92.9),
    "capsule": (98.7, 95.8, 98.7, 96.2),
    "hazelnut": (98.9, 95.5, 99.1, 96.2),
    "metal_nut": (97.3, 92.3, 97.6, 92.7),
    "pill": (98.2, 96.4, 98.4, 97.2),
    "screw": (99.6, 98.2, 99.6, 98.5),
    "toothbrush": (99.1, 94.5, 99.1, 94.3),
    "transistor": (92.5, 78.0, 93.2, 80.1),
    "zipper": (98.2, 95.4, 98.8, 96.6),
}
MVTEC_MEAN = (97.8, 93.9, 98.06, 94.69)

VISA = {
    "candle": (98.9, 92.2, 98.6, 93.9),
    "capsules": (99.4, 56.9, 99.1, 91.9),
    "cashew": (94.4, 79.0, 98.1, 87.3),
    "chewinggum": (97.6, 92.5, 97.7, 94.3),
    "fryum": (96.4, 81.0, 96.7, 90.3),
    "macaroni1": (99.3, 71.9, 99.3, 95.5),
    "macaroni2": (99.1, 68.0, 99.3, 95.2),
    "pcb1": (99.6, 43.2, 99.6, 93.7),
    "pcb2": (98.3, 46.4, 98.3, 89.2),
    "pcb3": (99.3, 80.3, 98.3, 90.3),
    "pcb4": (98.2, 72.2, 98.6, 89.0),
    "pipe_fryum": (99.1, 68.3, 99.1, 94.8),
}
# The README gives RD4AD's VisA mean pixel AUROC as 97.8, the poster as 98.3.
VISA_MEAN = (97.8, 70.9, 98.5, 92.1)

# VAD is image-level: (baseline image AUROC, SK-RD4AD image AUROC), one-class setting.
VAD_IMAGE_AUROC = (84.5, 87.0)

TABLES = {"mvtec": (MVTEC, MVTEC_MEAN), "visa": (VISA, VISA_MEAN)}
