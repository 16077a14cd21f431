"""AUPRO speed: skrd4ad's pooled AUPRO against the published per-image 200-threshold loop.

Input as in the issue: 256x256 anomaly maps, half of them with 3 rectangular defects; and
the same maps made adversarial for the histogram (an outlier stretches the score range and
one crowded bin straddles FPR 0.3 with every defect pixel at its top), where the error
bound sends part or all of the curve to the exact sort.
Run: python benchmarks/bench_aupro.py [--device cpu|cuda] [--skip-published]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from skimage import measure
from sklearn.metrics import auc

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import timeit, write_result  # noqa: E402

from skrd4ad.metrics import AUPRO_BINS, aupro, pixel_auroc, pixel_f1_max  # noqa: E402


def adversarial(maps: np.ndarray, masks: np.ndarray, hi: float) -> np.ndarray:
    """The maps moved so that, over the range [0, hi], a bin edge sits just above the normal
    pixels' 70th percentile and every defect pixel at the top of the bin below it."""
    width = hi / AUPRO_BINS
    normal = masks == 0
    v = maps.astype(np.float64) - maps[normal].min() + 10 * width
    q = np.quantile(v[normal], 0.7)
    top = (np.floor(q / width) + 1) * width
    v[normal] += top - 0.02 * width - q
    v[masks > 0] = top - 0.001 * width
    v.flat[np.flatnonzero(normal.ravel())[:2]] = (0.0, hi)
    return v.astype(np.float32)


def make_case(n: int, size: int = 256, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, size, size), np.uint8)
    for i in range(n // 2):
        for _ in range(3):
            y, x = rng.integers(0, size - 60, 2)
            h, w = rng.integers(8, 60, 2)
            masks[i, y : y + h, x : x + w] = 1
    maps = rng.normal(size=masks.shape).astype(np.float32)
    maps = maps + 1.5 * masks + 0.2 * rng.normal(size=(n, 1, 1)).astype(np.float32)
    return maps, masks


def published_style_pro(masks: np.ndarray, amaps: np.ndarray, num_th: int = 200) -> float:
    """The published evaluation's algorithm: 200 evenly spaced thresholds, regions labelled
    per image with skimage each time, mean overlap, FPR < 0.3 rescaled to [0, 1]."""
    binary = np.zeros_like(amaps, dtype=bool)
    lo, hi = amaps.min(), amaps.max()
    delta = (hi - lo) / num_th
    pros_all, fprs = [], []
    inverse = 1 - masks
    for th in np.arange(lo, hi, delta):
        binary[amaps <= th] = 0
        binary[amaps > th] = 1
        pros = []
        for b, m in zip(binary, masks, strict=True):
            for region in measure.regionprops(measure.label(m)):
                tp = b[region.coords[:, 0], region.coords[:, 1]].sum()
                pros.append(tp / region.area)
        fprs.append(np.logical_and(inverse, binary).sum() / inverse.sum())
        pros_all.append(np.mean(pros))
    fprs, pros_all = np.array(fprs), np.array(pros_all)
    keep = fprs < 0.3
    f = fprs[keep] / fprs[keep].max()
    return float(auc(f, pros_all[keep]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--skip-published", action="store_true")
    args = ap.parse_args()
    sync = args.device == "cuda"
    figures: dict = {"device": args.device}

    maps, masks = make_case(100)
    t_maps = torch.from_numpy(maps).to(args.device)
    t_masks = torch.from_numpy(masks).to(args.device)
    figures["aupro_100"] = {
        **timeit(lambda: aupro(t_maps, t_masks), sync=sync),
        "value": aupro(t_maps, t_masks),
    }
    figures["aupro_100_exact"] = {
        **timeit(lambda: aupro(t_maps, t_masks, exact=True), repeat=3, sync=sync),
        "value": aupro(t_maps, t_masks, exact=True),
    }
    figures["pixel_auroc_100"] = timeit(lambda: pixel_auroc(t_maps, t_masks), sync=sync)
    figures["pixel_f1_max_100"] = timeit(lambda: pixel_f1_max(t_maps, t_masks), sync=sync)
    # hi 3e5: the crowded bins are refined; hi 3e7: nearly every pixel in one bin, so a sort.
    for hi in (3e5, 3e7):
        a_maps = torch.from_numpy(adversarial(maps, masks, hi)).to(args.device)
        figures[f"aupro_100_adversarial_range_{hi:.0e}"] = {
            **timeit(lambda a=a_maps: aupro(a, t_masks), repeat=3, sync=sync),
            "value": aupro(a_maps, t_masks),
            "exact": aupro(a_maps, t_masks, exact=True),
        }
    if not args.skip_published:
        t = timeit(lambda: published_style_pro(masks, maps), repeat=1)
        figures["published_style_100"] = {**t, "value": published_style_pro(masks, maps)}
        figures["speedup_vs_published_100"] = t["median_s"] / figures["aupro_100"]["median_s"]

    maps, masks = make_case(1725, seed=1)
    t_maps = torch.from_numpy(maps).to(args.device)
    t_masks = torch.from_numpy(masks).to(args.device)
    figures["aupro_1725"] = {**timeit(lambda: aupro(t_maps, t_masks), repeat=3, sync=sync)}
    figures["pixel_auroc_1725"] = timeit(lambda: pixel_auroc(t_maps, t_masks), repeat=3, sync=sync)
    figures["pixel_f1_max_1725"] = timeit(
        lambda: pixel_f1_max(t_maps, t_masks), repeat=3, sync=sync
    )
    write_result("aupro", figures)


if __name__ == "__main__":
    main()
