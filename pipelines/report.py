"""DVC stage 'report': report.md, the per-category results beside the published ones."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from skrd4ad.atomic import atomic_write_text
from skrd4ad.results import METRIC_KEYS, METRIC_LABELS

from .params import load_params, stage_parser, tracking_uri, ui_base
from .published import TABLES, VAD_IMAGE_AUROC


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
    head = "| category | " + " | ".join(METRIC_LABELS[k] for k in METRIC_KEYS) + " |"
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


def _figures(plots: Path | None, benchmark: Path | None, cats: list[str], base: Path) -> list:
    """The plots, and each category's highest-scoring test image with its anomaly map;
    links relative to the report's folder ``base``."""
    lines: list[str] = []
    shown = [p for p in ("loss.png", "per_category.png") if plots and (plots / p).is_file()]
    if shown:
        lines += ["## Plots", ""]
        lines += [f"![{p[:-4].replace('_', ' ')}]({_rel(plots / p, base)})" for p in shown]
        lines.append("")
    tops = {}
    for cat in cats if benchmark else []:
        found = sorted((benchmark / cat / "eval" / "overlays").glob("top_00_*.png"))
        if found:
            tops[cat] = found[0]
    if tops:
        lines += ["## Highest-scoring test image per category", ""]
        lines += [f"**{cat}**: ![{cat}]({_rel(path, base)})" for cat, path in tops.items()]
        lines.append("")
    return lines


def _settings(runs: dict | None) -> list[str]:
    """The data version and the exact settings the numbers came from."""
    if not runs:
        return []
    import yaml

    lines = ["## Settings", "", f"Data version: `{runs.get('data_version') or 'unknown'}`.", ""]
    if runs.get("settings"):
        lines += ["```yaml", yaml.safe_dump(runs["settings"], sort_keys=False).rstrip(), "```", ""]
    return lines


def _rel(path: Path, base: Path) -> str:
    return Path(os.path.relpath(path.resolve(), base.resolve())).as_posix()


def full_report(metrics: dict, runs: dict | None, plots: Path | None, base: Path) -> str:
    """report.md: the table, the plots, the top overlays, the settings."""
    benchmark = plots.parent / "benchmark" if plots else None
    cats = [c for c, m in metrics["categories"].items() if "error" not in m]
    parts = [render(metrics), *_figures(plots, benchmark, cats, base), *_settings(runs)]
    return "\n".join(parts).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser("report", __doc__)
    parser.add_argument("--metrics", type=Path, required=True, help="the benchmark's metrics")
    parser.add_argument("--out", type=Path, required=True, help="the report to write")
    parser.add_argument("--runs", type=Path, help="the benchmark's runs.json (settings)")
    parser.add_argument("--plots", type=Path, help="the benchmark's plots folder (PNG files)")
    args = parser.parse_args(argv)
    try:
        metrics = json.loads(args.metrics.read_text())
        runs = json.loads(args.runs.read_text()) if args.runs else None
    except OSError as exc:
        print(f"report: error: cannot read {exc.filename} ({exc.strerror}); run the "
              "benchmark stage first", file=sys.stderr)  # fmt: skip
        return 2
    text = full_report(metrics, runs, args.plots, args.out.parent)
    atomic_write_text(args.out, text)
    mlflow_uri = tracking_uri(load_params(args.params)["mlflow"].get("tracking_uri"))
    _print_summary(metrics, args.out, mlflow_uri, (runs or {}).get("mlflow"))
    return 0


# Experiments side by side: the means first (metrics.json's order), then what differs.
EXP_SHOW = "dvc exp show --only-changed --drop 'categories|dataset'"


def _print_summary(metrics: dict, report: Path, mlflow_uri: str, run: dict | None) -> None:
    """The end of `dvc repro`: a boxed per-category table, then where to look next."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"SK-RD4AD on {metrics['dataset']} (%)", title_justify="left")
    table.add_column("category")
    for key in METRIC_KEYS:
        table.add_column(METRIC_LABELS[key], justify="right")
    for cat, m in metrics["categories"].items():
        cells = ["failed"] + [""] * (len(METRIC_KEYS) - 1) if "error" in m else [
            _pct(m.get(k)) for k in METRIC_KEYS]  # fmt: skip
        table.add_row(cat, *cells)
    table.add_row("mean", *(_pct(metrics["mean"].get(k)) for k in METRIC_KEYS), style="bold")
    console = Console(width=100)
    console.print(table)
    # The experiment's page on its training runs (MLflow 3's UI opens on GenAI otherwise).
    server = mlflow_uri.startswith(("http://", "https://"))
    page = run["url"] if run else ui_base(mlflow_uri)
    ui = "" if server else f"mlflow ui --backend-store-uri {mlflow_uri} --port 5000, then "
    console.print(
        f"Next: the report is {report}\n"
        f"  MLflow: {ui}open {page}\n"
        "  plots: dvc plots show (needs a network for Vega), or results/plots/*.png\n"
        f"  another setting: dvc exp run -S train.epochs=20, then {EXP_SHOW}",
        highlight=False, soft_wrap=True,
    )  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
