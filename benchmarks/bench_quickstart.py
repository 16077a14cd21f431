"""The quick start's wall time, metrics and the bytes it leaves: `dvc repro` (params.yaml
as committed) in a fresh clone of each git revision, with this checkout's environment,
alternated over rounds so that both revisions see the same machine load.

    python benchmarks/bench_quickstart.py --revs dd43d0e HEAD [--rounds 2] [--s3]

Each run clones the revision into a scratch folder, so nothing of this checkout is used
but its Python environment; the clone's own code runs (PYTHONPATH is the clone). With
``--s3`` the run storage (``ray.storage_path``) and MLflow's artifacts go to a bucket of
moto's S3 server on 127.0.0.1, as on a cluster, and the bytes are counted there too.
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
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # tests.servers: moto's S3
from _common import write_result  # noqa: E402

from tests.makefile import dvc_command  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BUCKET = "quickstart"


def sh(cmd: list[str], cwd: Path, env: dict | None = None) -> str:
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed in {cwd}:\n{done.stderr[-3000:]}")
    return done.stdout


def one_run(rev: str, scratch: Path, s3: str | None = None) -> dict:
    """One quick start of ``rev``; ``s3``: the endpoint of an S3 server for its storage."""
    clone = scratch / "clone"
    shutil.rmtree(clone, ignore_errors=True)
    sh(["git", "clone", "-q", str(REPO), str(clone)], scratch)
    sh(["git", "checkout", "-q", rev], clone)
    commit = sh(["git", "rev-parse", "--short", "HEAD"], clone).strip()
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHONPATH": str(clone)}
    env.pop("RAY_ADDRESS", None)
    if s3:
        env.update(_to_s3(clone, s3))
    t0 = time.perf_counter()
    # `make demo`'s command, read from this checkout's Makefile; its console is counted in
    # lines, as a user reads it in a log.
    done = subprocess.run(dvc_command("demo"), cwd=clone, env=env,
                          capture_output=True, text=True)  # fmt: skip
    wall = time.perf_counter() - t0
    if done.returncode:
        raise SystemExit(f"dvc repro failed in {clone}:\n{done.stderr[-3000:]}")
    console = (done.stdout + done.stderr).splitlines()
    metrics = json.loads((clone / "metrics.json").read_text())
    # What the run left in the clone (the git history aside), by top-level entry; the Ray
    # storage (results/ray) stands for what S3 would hold on a cluster.
    left = {p.name: _size(p) for p in clone.iterdir() if p.name != ".git"}
    left["results/ray"] = _size(clone / "results" / "ray")
    run = {"rev": rev, "commit": commit, "wall_s": wall, "console_lines": len(console),
           "mean": metrics["mean"],
           "bytes_left": {k: v for k, v in sorted(left.items()) if v > 1e5}}  # fmt: skip
    if s3:
        run["s3_bytes"] = _bucket_bytes(s3)
    return run


def _to_s3(clone: Path, endpoint: str) -> dict[str, str]:
    """The clone's run storage and MLflow artifacts in the bucket (a fresh prefix per run);
    the environment that reaches it."""
    import yaml

    from tests.servers import AWS, s3_client

    client = s3_client(endpoint)
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
        for item in page.get("Contents", []):
            client.delete_object(Bucket=BUCKET, Key=item["Key"])
    params = yaml.safe_load((clone / "params.yaml").read_text())
    params["ray"].update(storage_path=f"s3://{BUCKET}/ray", storage_endpoint=endpoint)
    params["mlflow"]["artifact_location"] = f"s3://{BUCKET}/mlflow"
    (clone / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return {**AWS, "MLFLOW_S3_ENDPOINT_URL": endpoint}


def _bucket_bytes(endpoint: str) -> dict[str, int]:
    from tests.servers import s3_client

    sizes: dict[str, int] = {}
    for page in s3_client(endpoint).get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
        for item in page.get("Contents", []):
            top = item["Key"].split("/")[0]
            sizes[top] = sizes.get(top, 0) + item["Size"]
    return sizes


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--revs", nargs="+", default=["HEAD"], help="git revisions to compare")
    ap.add_argument("--rounds", type=int, default=2, help="alternated runs per revision")
    ap.add_argument("--s3", action="store_true", help="run storage and MLflow artifacts in S3")
    args = ap.parse_args()
    runs: dict[str, list[dict]] = {rev: [] for rev in args.revs}
    with tempfile.TemporaryDirectory() as tmp:
        server, endpoint = None, None
        if args.s3:
            from tests.servers import start_moto

            server, endpoint = start_moto(Path(tmp), BUCKET)
        try:
            for _ in range(args.rounds):
                for rev in args.revs:
                    run = one_run(rev, Path(tmp), endpoint)
                    print(json.dumps(run), flush=True)
                    runs[rev].append(run)
        finally:
            if server is not None:
                server.terminate()
    figures = {
        rev: {
            "commit": done[0]["commit"],
            "wall_s": [r["wall_s"] for r in done],
            "median_wall_s": statistics.median(r["wall_s"] for r in done),
            "console_lines": [r["console_lines"] for r in done],
            "mean_metrics": done[0]["mean"],
            "same_metrics_every_round": all(r["mean"] == done[0]["mean"] for r in done),
            "bytes_left": done[-1]["bytes_left"],
            "s3_bytes": done[-1].get("s3_bytes"),
        }
        for rev, done in runs.items()
    }
    write_result("quickstart-s3" if args.s3 else "quickstart", figures)


if __name__ == "__main__":
    main()
