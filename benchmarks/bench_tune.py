"""Ray Tune search figures: trials per hour, Tune's overhead per trial, and what ASHA saves.

1. The smoke space (tune_spaces/smoke.yaml, 4 trials) as shipped: trials per hour.
2. The same 4 trials one at a time, FIFO: Tune's overhead per trial =
   (search wall time - the trials' own time, `trial_s`) / trials. It is what Tune adds
   around a trial: actor start, scheduling, checkpoint persistence, result handling.
3. ASHA against FIFO on the embedded default dataset at params.yaml's settings (128 px,
   resnet18): the same random configs (basic generator, same seed), every trial to the
   end (FIFO) or pruned on the per-epoch validation AUPRO (ASHA). Compute = epochs
   trained; the best validation AUPRO of each is reported next to it.

Run from the repository root (Ray, MLflow and the pipelines extra installed):
    python benchmarks/bench_tune.py [--samples 8] [--epochs 8]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_result  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def search(project: Path, space: dict, name: str) -> dict:
    (project / f"{name}.yaml").write_text(yaml.safe_dump({**space, "name": name}))
    env = {
        **os.environ,
        "PYTHONPATH": str(project),
        "RAY_AUTH_MODE": "disabled",
        "MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}",
    }
    cmd = [sys.executable, "-m", "pipelines.tune", "--space", f"{name}.yaml"]
    cmd += ["--storage-path", str(project / "store")]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=project, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode:
        raise SystemExit(f"{name} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    summary = yaml.safe_load((project / "store" / name / "best.yaml").read_text())
    ((label, trials),) = summary["trials"].items()
    best = next(iter(summary["best"].values()))
    return {
        "command_wall_s": wall,
        "search_s": best["search_s"],
        "trials": len(trials),
        "trial_s_sum": best["trial_s"],
        "epochs_trained": best["epochs_trained"],
        "best_val_aupro": best.get("val_aupro"),
        "best_config": best.get("config"),
        "trials_detail": trials,
    }


def _asha_vs_fifo(project: Path, args: argparse.Namespace) -> dict:
    """The same sampled trials under FIFO (every trial to the end) and ASHA."""
    params = yaml.safe_load((project / "params.yaml").read_text())
    base = {
        "scope": "per_category",
        "categories": ["brick"],
        "metric": "val_aupro",
        "mode": "max",
        "epochs": args.epochs,
        "search": {"algorithm": "basic", "num_samples": args.samples, "max_concurrent": 2},
        "resources_per_trial": {"cpu": 1, "gpu": 0},
        "params": {
            "loss.alpha": {"uniform": [0.0, 1.0]},
            "loss.beta": 1.0,
            "loss.gamma": {"loguniform": [0.001, 0.5]},
        },
    }
    base["search"]["seed"] = 0
    fifo = search(project, {**base, "scheduler": {"name": "fifo"}}, "fifo")
    asha_scheduler = {"name": "asha", "grace_period": 2, "reduction_factor": 2}
    asha = search(project, {**base, "scheduler": asha_scheduler}, "asha")
    configs = [[t["config"] for t in run["trials_detail"]] for run in (fifo, asha)]
    return {
        "dataset": "default (params.yaml)",
        "image_size": params["train"]["image_size"],
        "backbone": params["model"]["backbone"],
        "trials": args.samples,
        "epochs": args.epochs,
        "same_configs": configs[0] == configs[1],
        "fifo": {k: v for k, v in fifo.items() if k != "trials_detail"},
        "asha": {k: v for k, v in asha.items() if k != "trials_detail"},
        "compute_saved": 1 - asha["epochs_trained"] / fifo["epochs_trained"],
        "time_saved": 1 - asha["search_s"] / fifo["search_s"],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=8, help="ASHA/FIFO trials")
    parser.add_argument("--epochs", type=int, default=8, help="ASHA/FIFO epochs per trial")
    args = parser.parse_args()
    smoke = yaml.safe_load((REPO / "tune_spaces" / "smoke.yaml").read_text())
    figures: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        project = Path(tmp)
        for item in ("pipelines", "skrd4ad", "params.yaml"):
            src = REPO / item
            if src.is_dir():
                shutil.copytree(src, project / item, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy(src, project / item)

        shipped = search(project, smoke, "smoke")
        figures["smoke"] = {
            **{k: v for k, v in shipped.items() if k != "trials_detail"},
            "trials_per_hour": shipped["trials"] / shipped["search_s"] * 3600,
            "trials_per_hour_incl_ray_start": shipped["trials"] / shipped["command_wall_s"] * 3600,
        }

        serial = {**smoke, "search": {**smoke["search"], "max_concurrent": 1}}
        serial["scheduler"] = {"name": "fifo"}
        one = search(project, serial, "smoke_serial")
        figures["overhead"] = {
            "search_s": one["search_s"],
            "trial_s_sum": one["trial_s_sum"],
            "trials": one["trials"],
            "tune_overhead_per_trial_s": (one["search_s"] - one["trial_s_sum"]) / one["trials"],
        }

        figures["asha_vs_fifo"] = _asha_vs_fifo(project, args)
    write_result("tune", figures)


if __name__ == "__main__":
    main()
