"""Shared-scope search time: the smoke and the loss-weights searches with one config for
two categories (scope shared), where every trial trains the categories in lockstep.

Run from the repository root (Ray, MLflow and the pipelines extra installed):
    python benchmarks/bench_tune_scope.py [--repo OTHER_CHECKOUT --label before]
``--repo`` runs the same searches on another checkout's code (e.g. a git worktree of an
earlier commit), so that a change is measured before and after on the same machine.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_result  # noqa: E402
from bench_tune import search  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED = {"scope": "shared", "categories": ["brick", "grass"]}


def spaces() -> dict[str, dict]:
    """The two shipped spaces in shared scope over two categories; the loss-weights one
    scaled to a 2-core machine (4 Optuna trials of 6 epochs at 64 px instead of 24 of 40)."""
    smoke = yaml.safe_load((REPO / "tune_spaces" / "smoke.yaml").read_text())
    loss = yaml.safe_load((REPO / "tune_spaces" / "loss_weights.yaml").read_text())
    loss.update(epochs=6, train={"image_size": 64, "batch_size": 8})
    loss["search"].update(num_samples=4, max_concurrent=2)
    loss["scheduler"].update(grace_period=2)
    loss["resources_per_trial"] = {"cpu": 1, "gpu": 0}
    return {"smoke_shared": {**smoke, **SHARED}, "loss_weights_shared": {**loss, **SHARED}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", type=Path, default=REPO, help="checkout whose code runs")
    parser.add_argument("--label", default="now", help="name of this measurement")
    args = parser.parse_args()
    figures: dict = {"code": str(args.repo), "label": args.label}
    with tempfile.TemporaryDirectory() as tmp:
        project = Path(tmp)
        for item in ("pipelines", "skrd4ad"):
            shutil.copytree(
                args.repo / item, project / item, ignore=shutil.ignore_patterns("__pycache__")
            )
        shutil.copy(REPO / "params.yaml", project / "params.yaml")
        for name, space in spaces().items():
            result = search(project, space, name)
            figures[name] = {k: v for k, v in result.items() if k != "trials_detail"}
            figures[name]["search_s_per_epoch_trained"] = (
                result["search_s"] / result["epochs_trained"]
            )
    write_result(f"tune_scope_{args.label}", figures)


if __name__ == "__main__":
    main()
