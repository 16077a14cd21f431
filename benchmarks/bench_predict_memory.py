"""Where the memory of a CPU prediction goes: a checkpoint to one image's map and score.

Each variant runs in a fresh process, which reports its resident memory (RSS) after each
phase and its peak:

- ``imports``: torch, torchvision and skrd4ad imported (the runtime, before any model);
- ``loaded``: the checkpoint read and the model built from it;
- ``folded``: BatchNorm folded into the convolutions (the inference path);
- ``predicted``: one 256 px image's anomaly map and score.

Variants: ``checkpoint`` loads a random wide_resnet50_2 model's checkpoint with
skrd4ad's loader (``skrd4ad.checkpoint.load_model``, what ``predict`` and ``evaluate``
do); ``built`` builds the same model in memory (``build_model``, random weights).

    python benchmarks/bench_predict_memory.py [--backbone wide_resnet50_2] [--size 256]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
VARIANTS = ("checkpoint", "built")


def _peak_rss_mb() -> float:
    # VmHWM, not getrusage's ru_maxrss: Linux carries that over from the parent through
    # fork and exec, and the parent here has built a model.
    with open("/proc/self/status") as f:
        line = next(x for x in f if x.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def worker(variant: str, path: Path, size: int, backbone: str) -> dict:
    import torch
    import torchvision  # noqa: F401 - what the model's builders import

    from skrd4ad.checkpoint import load_model
    from skrd4ad.inference import predict_maps
    from skrd4ad.models import build_model
    from skrd4ad.runtime import Runtime

    phases = {"imports": _rss_mb()}
    if variant == "checkpoint":
        model = load_model(path)[0]
    else:
        model = build_model(backbone, "none", "sk")
    phases["loaded"] = _rss_mb()
    runtime = Runtime.create("cpu", "fp32")
    model = runtime.setup(model, inference_only=True)
    phases["folded"] = _rss_mb()
    images = torch.randint(0, 256, (1, 3, size, size), dtype=torch.uint8)
    predict_maps(model, images, runtime, batch_size=1)
    phases["predicted"] = _rss_mb()
    peak = _peak_rss_mb()
    return {"variant": variant, "rss_mb": phases, "peak_rss_mb": peak}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backbone", default="wide_resnet50_2")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--worker", nargs=2, metavar=("VARIANT", "CHECKPOINT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker[0], Path(args.worker[1]), args.size, args.backbone)))
        return
    sys.path.insert(0, str(HERE))
    from _common import write_result

    from skrd4ad.checkpoint import save_checkpoint
    from skrd4ad.models import build_model

    runs: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.pt"
        save_checkpoint(path, build_model(args.backbone, teacher_weights="none", skip="sk"))
        for _ in range(args.rounds):
            for variant in VARIANTS:
                cmd = [sys.executable, __file__, "--size", str(args.size), "--backbone",
                       args.backbone, "--worker", variant, str(path)]  # fmt: skip
                done = subprocess.run(cmd, capture_output=True, text=True, check=True)
                run = json.loads(done.stdout.strip().splitlines()[-1])
                print(json.dumps(run), flush=True)
                runs[variant].append(run)
        checkpoint_mb = path.stat().st_size / 2**20
    figures = {
        "backbone": args.backbone, "image_size": args.size, "checkpoint_mb": checkpoint_mb,
        **{v: {"peak_rss_mb": min(r["peak_rss_mb"] for r in done), "rss_mb": done[-1]["rss_mb"]}
           for v, done in runs.items()},
    }  # fmt: skip
    write_result("predict_memory", figures)


if __name__ == "__main__":
    main()
