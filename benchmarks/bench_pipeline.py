"""Scaling of the Ray benchmark stage against the CLI run one category after another.

Uses params.yaml's settings (the quick-start benchmark on the embedded default dataset):
1. the CLI, sequentially: `skrd4ad train` + `skrd4ad evaluate` per category;
2. `python -m pipelines.benchmark` with 1, 2 and 3 concurrent categories.
Ray's fixed cost per category = Ray wall time for one category - CLI time for it.
With --repeat N the CLI and Ray runs alternate N times and the figures are medians (a
shared machine moves single runs by 10 % or more). Run from the repository root after
`python -m pipelines.prepare`:
    python benchmarks/bench_pipeline.py [--epochs N] [--repeat N] [--counts K ...]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_result  # noqa: E402

PY = sys.executable


def run(cmd: list[str], env: dict | None = None) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, help="override params.yaml train.epochs")
    parser.add_argument("--repeat", type=int, default=1, help="alternate runs; report medians")
    parser.add_argument(
        "--counts",
        type=int,
        nargs="+",
        help="numbers of concurrent categories to run through Ray (default 1..all); the "
        "ratio needs all, the fixed cost needs 1",
    )
    args = parser.parse_args()
    params = yaml.safe_load(Path("params.yaml").read_text())
    if args.epochs:
        params["train"]["epochs"] = args.epochs
    dataset = json.loads(Path("prepared/dataset.json").read_text())
    cats = dataset["categories"]
    counts = sorted(set(args.counts or range(1, len(cats) + 1)))
    if not all(1 <= k <= len(cats) for k in counts):
        parser.error(f"--counts must lie in 1..{len(cats)} (the prepared categories)")
    m, t = params["model"], params["train"]
    figures: dict = {
        "categories": cats,
        "epochs": t["epochs"],
        "image_size": t["image_size"],
        "backbone": m["backbone"],
        "repeat": args.repeat,
        "cli_runs_s": {cat: [] for cat in cats},
        "ray_runs_s": {k: [] for k in counts},
    }
    for _ in range(args.repeat):
        one_round(params, dataset, figures)
    figures["cli_s"] = {c: statistics.median(v) for c, v in figures["cli_runs_s"].items()}
    figures["ray_s"] = {k: statistics.median(v) for k, v in figures["ray_runs_s"].items()}
    cli_total = sum(figures["cli_s"].values())
    n = len(cats)
    figures["cli_sequential_total_s"] = cli_total
    if n in counts:
        figures["ray_over_cli_ratio"] = figures["ray_s"][n] / cli_total
    if 1 in counts:
        figures["ray_fixed_cost_per_category_s"] = figures["ray_s"][1] - figures["cli_s"][cats[0]]
    write_result("pipeline_scaling" + (f"_e{args.epochs}" if args.epochs else ""), figures)


def one_round(params: dict, dataset: dict, figures: dict) -> None:
    """One CLI-sequential run, then the Ray stage with 1..n categories."""
    cats = dataset["categories"]
    with tempfile.TemporaryDirectory() as tmp:
        # The CLI reads params.yaml's training sections as they are (one vocabulary).
        config = Path(tmp) / "train.yaml"
        sections = ("data", "model", "loss", "optim", "runtime", "train")
        config.write_text(yaml.safe_dump({k: params[k] for k in sections if k in params}))
        for cat in cats:
            out = Path(tmp) / cat
            train = [PY, "-m", "skrd4ad.cli", "train", "--config", str(config), "--no-progress"]
            train += ["--data", dataset["root"], "--category", cat, "--out", str(out)]
            evaluate = [PY, "-m", "skrd4ad.cli", "evaluate", "--checkpoint", str(out / "model.pt")]
            evaluate += ["--data", dataset["root"], "--category", cat, "--out", str(out / "eval")]
            evaluate += ["--overlays", str(params["evaluate"]["overlays"]), "--curves"]
            figures["cli_runs_s"][cat].append(run(train) + run(evaluate))
        for k in figures["ray_runs_s"]:
            p = Path(tmp) / f"params{k}.yaml"
            prepared = Path(tmp) / f"prepared{k}"
            prepared.mkdir()
            (prepared / "dataset.json").write_text(json.dumps({**dataset, "categories": cats[:k]}))
            mlflow = {**params["mlflow"], "tracking_uri": f"sqlite:///{tmp}/mlflow.db"}
            p.write_text(yaml.safe_dump({**params, "mlflow": mlflow}))
            stage = [PY, "-m", "pipelines.benchmark", "--params", str(p), "--prepared"]
            stage += [str(prepared), "--out", "results", "--metrics", "metrics.json"]
            figures["ray_runs_s"][k].append(run(stage, dict(os.environ)))


if __name__ == "__main__":
    main()
