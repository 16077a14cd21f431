"""The benchmark at scale on this machine: 15 synthetic categories with MVTec AD's train and
test image counts (64 px, resnet18 random teacher) through `dvc repro`, then the same
`dvc repro` killed (SIGKILL of it and all it started) once some categories have finished
and others have checkpointed, and run again.

    python benchmarks/bench_scale.py [--epochs 2]

It reports, for the full run and the re-run: wall time; peak memory (the machine's used
memory over its idle level, and the summed RSS of the run's processes); bytes left in the
project (outputs, DVC cache, MLflow), in Ray's session folder, and in the run storage
(`ray.storage_path`, a folder outside the project standing for S3); the orchestration's own
CPU time per category (every process of the run but the Ray Train workers, which train and
evaluate); and the nodes, processes and actors per category. After the kill: which
categories the re-run reused, and how many epochs it trained again per unfinished one.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_result  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# MVTec AD's per-category image counts: train (all good), test good, test defective.
MVTEC = {
    "bottle": (209, 20, 63), "cable": (224, 58, 92), "capsule": (219, 23, 109),
    "carpet": (280, 28, 89), "grid": (264, 21, 57), "hazelnut": (391, 40, 70),
    "leather": (245, 32, 92), "metal_nut": (220, 22, 93), "pill": (267, 26, 141),
    "screw": (320, 41, 119), "tile": (230, 33, 84), "toothbrush": (60, 12, 30),
    "transistor": (213, 60, 40), "wood": (247, 19, 60), "zipper": (240, 32, 119),
}  # fmt: skip
TEXTURES = ("brick", "grass", "gravel")


def make_data(root: Path) -> None:
    """15 categories in MVTec layout with MVTec AD's counts, cut from the default
    dataset's textures (64 px)."""
    from skrd4ad.data import make_default_dataset

    for i, (name, (train, good, defect)) in enumerate(MVTEC.items()):
        texture = TEXTURES[i % len(TEXTURES)]
        with tempfile.TemporaryDirectory() as tmp:
            make_default_dataset(
                Path(tmp), categories=(texture,), image_size=64, crop_size=128,
                n_train=train, n_test_good=good, n_test_defect=defect,
            )  # fmt: skip
            shutil.move(str(Path(tmp) / texture), root / name)


def project(folder: Path, epochs: int, storage: Path) -> tuple[Path, dict]:
    proj = folder / "project"
    for item in ("pipelines", "skrd4ad", "dvc.yaml", "params.yaml", ".gitignore", ".dvcignore"):
        src = REPO / item
        if src.is_dir():
            shutil.copytree(src, proj / item, ignore=shutil.ignore_patterns("__pycache__"))
        elif src.exists():
            shutil.copy(src, proj / item)
    make_data(proj / "data")
    params = yaml.safe_load((proj / "params.yaml").read_text())
    params["dataset"].update(name="mvtec", root="data", categories="all")
    params["train"].update(epochs=epochs, batch_size=16, image_size=64, val_every=epochs,
                           checkpoint_every=1)  # fmt: skip
    params["ray"]["storage_path"] = str(storage)
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "PYTHONPATH": str(proj), "RAY_AUTH_MODE": "disabled"}  # fmt: skip
    for key in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI"):
        env.pop(key, None)
    dvc = [sys.executable, "-m", "dvc"]
    commit = ["git", "-c", "user.email=b@b", "-c", "user.name=b", "commit", "-qm", "scale"]
    for cmd in (["git", "init", "-q"], [*dvc, "init", "-q"], [*dvc, "add", "-q", "data"],
                ["git", "add", "-A"], commit):  # fmt: skip
        subprocess.run(cmd, cwd=proj, env=env, check=True, capture_output=True)
    return proj, env


class Sampler(threading.Thread):
    """Samples the run's process tree: peak summed RSS, the machine's peak used memory,
    each process's last CPU time, and the kinds of processes (Ray's ``ray::Name``)."""

    def __init__(self, root: psutil.Process) -> None:
        super().__init__(daemon=True)
        self.root, self.stop = root, threading.Event()
        self.idle = psutil.virtual_memory().used
        self.peak_rss = self.peak_used = 0
        self.cpu: dict[int, tuple[str, float]] = {}
        self.kinds: dict[str, set[int]] = {}

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                family = [self.root, *self.root.children(recursive=True)]
            except psutil.NoSuchProcess:
                break
            rss = 0
            for p in family:
                try:
                    with p.oneshot():
                        rss += p.memory_info().rss
                        name = _kind(p)
                        t = p.cpu_times()
                        self.cpu[p.pid] = (name, t.user + t.system)
                        self.kinds.setdefault(name, set()).add(p.pid)
                except psutil.NoSuchProcess:
                    continue
            self.peak_rss = max(self.peak_rss, rss)
            self.peak_used = max(self.peak_used, psutil.virtual_memory().used - self.idle)
            time.sleep(0.5)

    def figures(self, categories: int) -> dict:
        workers = sum(c for n, c in self.cpu.values() if n == "ray::RayTrainWorker")
        total = sum(c for _, c in self.cpu.values())
        actors = {n: len(p) for n, p in self.kinds.items() if n.startswith("ray::")}
        return {
            "peak_tree_rss_gb": self.peak_rss / 1e9,
            "peak_machine_used_over_idle_gb": self.peak_used / 1e9,
            "cpu_s_total": total,
            "cpu_s_train_workers": workers,
            "orchestration_cpu_s_per_category": (total - workers) / categories,
            "processes": sum(len(p) for p in self.kinds.values()),
            "processes_per_category": sum(len(p) for p in self.kinds.values()) / categories,
            "ray_processes_by_kind": actors,
        }


def _kind(p: psutil.Process) -> str:
    cmd = p.cmdline()
    if cmd and cmd[0].startswith("ray::"):
        return cmd[0].split()[0].split(".")[0]
    return Path(cmd[1]).name if len(cmd) > 1 and cmd[0].endswith("python") else p.name()


def size(path: Path) -> int:
    if not path.exists():
        return 0
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def repro(proj: Path, env: dict, *, kill_when=None) -> dict:
    """One `dvc repro`, sampled; ``kill_when(storage)`` true: SIGKILL it and all it started."""
    sessions = set(Path("/tmp/ray").glob("session_2*"))
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "dvc", "repro", "-q"], cwd=proj, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)  # fmt: skip
    sampler = Sampler(psutil.Process(proc.pid))
    sampler.start()
    killed = False
    while proc.poll() is None:
        if kill_when is not None and kill_when():
            family = [sampler.root, *sampler.root.children(recursive=True)]
            for p in family:
                try:
                    p.kill()
                except psutil.NoSuchProcess:  # it ended between the listing and the kill
                    pass
            psutil.wait_procs(family, timeout=60)
            killed = True
            break
        time.sleep(0.5)
    out = proc.communicate()[0].decode(errors="replace")
    sampler.stop.set()
    sampler.join()
    wall = time.perf_counter() - t0
    if not killed and proc.returncode:
        raise SystemExit(f"dvc repro failed:\n{out[-4000:]}")
    new_sessions = set(Path("/tmp/ray").glob("session_2*")) - sessions
    return {"wall_s": wall, "killed": killed, "console_lines": len(out.splitlines()),
            "ray_session_bytes": sum(size(s) for s in new_sessions),
            **sampler.figures(len(MVTEC))}  # fmt: skip


def finished_and_checkpointed(storage: Path, finished: int) -> bool:
    """At least ``finished`` categories have their final checkpoint and another one an
    epoch's checkpoint, as Ray Train registered them."""
    done = partial = 0
    for run in storage.glob("*-*"):
        if not (run / "checkpoint_manager_snapshot.json").is_file():
            continue
        if any((c / "final_metrics.json").is_file() for c in run.glob("checkpoint_*")):
            done += 1
        elif any((c / "last.pt").is_file() for c in run.glob("checkpoint_*")):  # an epoch's
            partial += 1
    return done >= finished and partial >= 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--finished-before-kill", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        storage = Path(tmp) / "storage"
        proj, env = project(Path(tmp), args.epochs, storage)
        data_bytes = size(proj / "data") + size(proj / ".dvc" / "cache")
        full = repro(proj, env)
        full["project_bytes_but_data"] = size(proj) - data_bytes - size(proj / ".git")
        full["storage_bytes"] = size(storage)
        metrics = json.loads((proj / "metrics.json").read_text())
        full["mean"] = metrics["mean"]
        print(json.dumps({"full": full}, indent=1), flush=True)
        # The same run again from scratch, killed part-way, then re-run.
        shutil.rmtree(storage)
        for item in ("results", "metrics.json", "mlflow.db", "mlruns", "prepared", "dvc.lock"):
            path = proj / item
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
        # DVC's run cache would restore the first run's outputs without running anything:
        # a user's first run of these settings has none.
        shutil.rmtree(proj / ".dvc" / "cache" / "runs", ignore_errors=True)
        cut = repro(proj, env, kill_when=lambda: finished_and_checkpointed(
            storage, args.finished_before_kill))  # fmt: skip
        if not cut["killed"]:
            raise SystemExit("the second run ended before it could be killed")
        again = repro(proj, env)
        cats = json.loads((proj / "results" / "runs.json").read_text())["categories"]
        reused = sorted(c for c, m in cats.items() if m.get("reused"))
        resumed = {c: m["resumed_from_epoch"] for c, m in cats.items() if not m.get("reused")}
        again.update(
            reused=reused,
            epochs_retrained={c: args.epochs - int(e) for c, e in resumed.items()},
            storage_bytes=size(storage),
        )
        print(json.dumps({"killed": cut, "rerun": again}, indent=1), flush=True)
    write_result("scale", {
        "categories": len(MVTEC), "epochs": args.epochs, "image_size": 64,
        "backbone": "resnet18 (random)", "nodes": 1, "full": full, "killed": cut,
        "rerun": again, "data_bytes": data_bytes,
    })  # fmt: skip


if __name__ == "__main__":
    main()
