"""PNG overlays and metric curves (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from sklearn.metrics import roc_curve  # noqa: E402

from .atomic import atomic_write  # noqa: E402


def _save(fig: plt.Figure, path: Path) -> None:
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100, bbox_inches="tight"))
    plt.close(fig)


def overlay_png(
    path: Path,
    image: np.ndarray,
    amap: np.ndarray,
    title: str,
    mask: np.ndarray | None = None,
    vmax: float | None = None,
) -> None:
    """Image, heat map over the image, and the ground truth when there is one."""
    panels = 3 if mask is not None else 2
    fig, axes = plt.subplots(1, panels, figsize=(3 * panels, 3.2))
    axes[0].imshow(image)
    axes[0].set_title("image")
    axes[1].imshow(image)
    axes[1].imshow(amap, cmap="jet", alpha=0.5, vmin=0, vmax=vmax or float(amap.max()) or 1.0)
    axes[1].set_title("anomaly map")
    if mask is not None:
        axes[2].imshow(mask, cmap="gray", vmin=0, vmax=1)
        axes[2].set_title("ground truth")
    for ax in axes:
        ax.axis("off")
    fig.suptitle(title, fontsize=8)
    _save(fig, path)


def write_overlays(out: Path, ts, maps: torch.Tensor, scores: torch.Tensor, picks) -> list[str]:
    """One PNG per (group, rank, index) pick; the colour scale is shared across images."""
    vmax = float(maps.max())
    written = []
    for group, rank, i in picks:
        name = f"{group}_{rank:02d}_{Path(ts.paths[i]).stem}_{ts.defects[i]}.png"
        mask = ts.masks[i].numpy() if ts.masks is not None else None
        overlay_png(
            out / name,
            ts.images[i].permute(1, 2, 0).numpy(),
            maps[i].numpy(),
            f"{ts.paths[i]}  score {float(scores[i]):.4f}",
            mask,
            vmax,
        )
        written.append(str(out / name))
    return written


def _value(name: str, value: float | None) -> str:
    return "" if value is None else f": {name} {value:.4f}"


def write_curves(
    out: Path, scores: np.ndarray, labels: np.ndarray, pro: tuple[np.ndarray, np.ndarray] | None,
    image_auroc: float | None = None, aupro: float | None = None,
) -> list[str]:  # fmt: skip
    """The image ROC curve and the PRO curve, their titles giving the image AUROC and the
    AUPRO (FPR <= 0.3) that metrics.json records."""
    written = []
    if 0 < labels.sum() < len(labels):
        fpr, tpr, _ = roc_curve(labels, scores)
        fig, ax = plt.subplots(figsize=(4, 4))
        ax.plot(fpr, tpr)
        ax.plot([0, 1], [0, 1], "k:", lw=0.5)
        title = f"image ROC{_value('AUROC', image_auroc)}"
        ax.set(xlabel="false positive rate", ylabel="true positive rate", title=title)
        _save(fig, out / "roc_image.png")
        written.append(str(out / "roc_image.png"))
    if pro is not None and len(pro[0]):
        fig, ax = plt.subplots(figsize=(4, 4))
        ax.plot(pro[0], pro[1])
        ax.axvline(0.3, color="k", ls=":", lw=0.5)
        ax.set(
            xlabel="false positive rate (pixels)",
            ylabel="per-region overlap",
            title=f"PRO curve{_value('AUPRO (FPR <= 0.3)', aupro)}",
        )
        _save(fig, out / "pro_curve.png")
        written.append(str(out / "pro_curve.png"))
    return written


def write_benchmark_plots(out: Path, bars: list[dict], loss: list[dict]) -> list[str]:
    """The benchmark's plots as PNG files, readable offline (DVC's HTML loads Vega from a
    CDN): the training loss with a line per category, and each accuracy metric per
    category. ``bars``: {category, metric: value}; ``loss``: {category, epoch, loss}."""
    from .results import METRIC_KEYS, METRIC_LABELS

    written = []
    fig, ax = plt.subplots(figsize=(6, 4))
    for cat in dict.fromkeys(r["category"] for r in loss):
        rows = [r for r in loss if r["category"] == cat]
        ax.plot([r["epoch"] for r in rows], [r["loss"] for r in rows], marker=".", label=cat)
    ax.set(xlabel="epoch", ylabel="loss", title="training loss per category")
    if loss:
        ax.legend(fontsize=7, ncol=2)
    _save(fig, out / "loss.png")
    written.append(str(out / "loss.png"))
    cats = [r["category"] for r in bars]
    size = (3 * len(METRIC_KEYS), 0.6 + 0.3 * len(cats))
    fig, axes = plt.subplots(1, len(METRIC_KEYS), figsize=size, sharey=True, squeeze=False)
    for ax, key in zip(axes[0], METRIC_KEYS, strict=True):
        values = [np.nan if r[key] is None else r[key] for r in bars]
        ax.barh(cats, values)
        ax.set(xlim=(0, 1), title=METRIC_LABELS[key])
        ax.invert_yaxis()
    _save(fig, out / "per_category.png")
    written.append(str(out / "per_category.png"))
    return written
