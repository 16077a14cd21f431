"""The quick start's wall time, metrics and the bytes it leaves: `dvc repro` (params.yaml
as committed) in a fresh clone of each git revision, with this checkout's environment,
alternated over rounds so that both revisions see the same machine load.

    python benchmarks/bench_quickstart.py --revs dd43d0e HEAD [--rounds 2]

Each run clones the revision into a scratch folder, so nothing of this checkout is used
but its Python environment; the clone's own code runs (PYTHONPATH is the clone).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_result  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def sh(cmd: list[str], cwd: Path, env: dict | None = None) -> str:
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed in {cwd}:\n{done.stderr[-3000:]}")
    return done.stdout


def one_run(rev: str, scratch: Path) -> dict:
    clone = scratch / "clone"
    shutil.rmtree(clone, ignore_errors=True)
    sh(["git", "clone", "-q", str(REPO), str(clone)], scratch)
    sh(["git", "checkout", "-q", rev], clone)
    commit = sh(["git", "rev-parse", "--short", "HEAD"], clone).strip()
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHONPATH": str(clone)}
    env.pop("RAY_ADDRESS", None)
    t0 = time.perf_counter()
    sh([sys.executable, "-m", "dvc", "repro", "-q"], clone, env)
    wall = time.perf_counter() - t0
    metrics = json.loads((clone / "metrics.json").read_text())
    # What the run left in the clone (the git history aside), by top-level entry; the Ray
    # storage (results/ray) stands for what S3 would hold on a cluster.
    left = {p.name: _size(p) for p in clone.iterdir() if p.name != ".git"}
    left["results/ray"] = _size(clone / "results" / "ray")
    return {"rev": rev, "commit": commit, "wall_s": wall, "mean": metrics["mean"],
            "bytes_left": {k: v for k, v in sorted(left.items()) if v > 1e5}}  # fmt: skip


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--revs", nargs="+", default=["HEAD"], help="git revisions to compare")
    ap.add_argument("--rounds", type=int, default=2, help="alternated runs per revision")
    args = ap.parse_args()
    runs: dict[str, list[dict]] = {rev: [] for rev in args.revs}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.rounds):
            for rev in args.revs:
                run = one_run(rev, Path(tmp))
                print(json.dumps(run), flush=True)
                runs[rev].append(run)
    figures = {
        rev: {
            "commit": done[0]["commit"],
            "wall_s": [r["wall_s"] for r in done],
            "median_wall_s": statistics.median(r["wall_s"] for r in done),
            "mean_metrics": done[0]["mean"],
            "same_metrics_every_round": all(r["mean"] == done[0]["mean"] for r in done),
            "bytes_left": done[-1]["bytes_left"],
        }
        for rev, done in runs.items()
    }
    write_result("quickstart", figures)


if __name__ == "__main__":
    main()
