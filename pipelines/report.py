"""DVC stage 'report': report.md, the per-category results beside the published ones."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from skrd4ad.atomic import atomic_write_text
from skrd4ad.results import METRIC_KEYS

from .published import TABLES, VAD_IMAGE_AUROC

LABELS = {
    "image_auroc": "image AUROC",
    "pixel_auroc": "pixel AUROC",
    "aupro": "AUPRO",
    "image_f1_max": "image F1-max",
    "pixel_f1_max": "pixel F1-max",
}


def _pct(value: float | None) -> str:
    return "—" if value is None or value != value else f"{100 * value:.2f}"


def render(metrics: dict) -> str:
    name = metrics["dataset"]
    cats = metrics["categories"]
    lines = [f"# SK-RD4AD benchmark: {name}", ""]
    table, mean = TABLES.get(name, ({}, None))
    if name == "default":
        lines += [
            "The embedded default dataset is this project's own: **no published numbers "
            "exist** for it.",
            "",
        ]
    elif name == "vad":
        lines += [
            f"Published one-class image AUROC on VAD: RD4AD baseline {VAD_IMAGE_AUROC[0]}, "
            f"SK-RD4AD {VAD_IMAGE_AUROC[1]}. Pixel metrics do not exist: VAD has no masks.",
            "",
        ]
    elif name not in TABLES:
        lines += [f"No published numbers exist for the dataset '{name}'.", ""]
    else:
        lines += [
            "Published columns: the authors' README and poster (pixel AUROC / AUPRO, %). "
            "Their AUPRO is a per-image 200-threshold approximation; ours is the MVTec AD "
            "definition, so the columns are close but not identical quantities.",
            "",
        ]
    head = "| category | " + " | ".join(LABELS[k] for k in METRIC_KEYS) + " |"
    rule = "| --- " * (len(METRIC_KEYS) + 1) + "|"
    if table:
        head += " RD4AD (pub.) | SK-RD4AD (pub.) |"
        rule += " --- | --- |"
    lines += [head, rule]
    blank = " |" * (len(METRIC_KEYS) - 1 + (2 if table else 0))
    for cat, m in sorted(cats.items()):
        if "error" in m:
            lines.append(f"| {cat} | failed: {m['error'][:120]} |" + blank)
            continue
        row = f"| {cat} | " + " | ".join(_pct(m.get(k)) for k in METRIC_KEYS) + " |"
        if table:
            pub = table.get(cat)
            row += f" {pub[0]} / {pub[1]} | {pub[2]} / {pub[3]} |" if pub else " — | — |"
        lines.append(row)
    mrow = "| **mean** | " + " | ".join(_pct(metrics["mean"].get(k)) for k in METRIC_KEYS) + " |"
    if table:
        mrow += f" {mean[0]} / {mean[1]} | {mean[2]} / {mean[3]} |"
    lines += [mrow, ""]
    if metrics.get("failed"):
        lines += [f"Failed categories: {', '.join(sorted(metrics['failed']))}.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.report", description=__doc__)
    parser.add_argument("--metrics", type=Path, required=True, help="the benchmark's metrics")
    parser.add_argument("--out", type=Path, required=True, help="the report to write")
    args = parser.parse_args(argv)
    try:
        metrics = json.loads(args.metrics.read_text())
    except OSError as exc:
        print(f"report: error: cannot read {args.metrics} ({exc.strerror}); run the "
              "benchmark stage first", file=sys.stderr)  # fmt: skip
        return 2
    text = render(metrics)
    atomic_write_text(args.out, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
