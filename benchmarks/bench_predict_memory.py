"""Each path of a CPU prediction, a checkpoint to one image's map and score: its latency
and where its memory goes.

Each variant runs in a fresh process, which reports its resident memory (RSS) after each
phase, its peak, and the median latency of ``--calls`` predictions after a warm-up:

- ``imports``: torch, torchvision and skrd4ad imported (the runtime, before any model);
- ``loaded``: the checkpoint read and the model built from it (or the ONNX session made);
- ``folded``: BatchNorm folded into the convolutions (the PyTorch inference path);
- ``predicted``: after the predictions.

Variants: ``torch`` is predict's and evaluate's PyTorch path (``load_model``, BatchNorm
folded); ``unfolded`` the same without the folding; ``onnxruntime`` the ONNX Runtime path
(``load_predictor(backend="onnxruntime")``, the model exported beside the checkpoint, the
checkpoint read memory-mapped); ``built`` builds the model in memory (random weights, no
checkpoint), to tell the weights from the loading.

    python benchmarks/bench_predict_memory.py [--backbone wide_resnet50_2] [--size 256]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _memory import peak_rss_mb, rss_mb  # noqa: E402

VARIANTS = ("torch", "unfolded", "onnxruntime", "built")


def worker(variant: str, path: Path, size: int, backbone: str, calls: int) -> dict:
    import statistics
    import time

    import torch
    import torchvision  # noqa: F401 - what the model's builders import

    from skrd4ad.checkpoint import load_model
    from skrd4ad.inference import predict_maps
    from skrd4ad.models import build_model
    from skrd4ad.onnx_predictor import load_predictor
    from skrd4ad.runtime import Runtime

    phases = {"imports": rss_mb()}
    runtime = Runtime.create("cpu", "fp32")
    if variant == "onnxruntime":
        predictor = load_predictor(path, backend="onnxruntime", device="cpu", batch_size=1)
        phases["loaded"] = rss_mb()
    else:
        model = build_model(backbone, "none", "sk") if variant == "built" else load_model(path)[0]
        phases["loaded"] = rss_mb()
        model = runtime.setup(model, inference_only=variant != "unfolded")
        phases["folded"] = rss_mb()

        def predictor(images: torch.Tensor) -> tuple:
            return predict_maps(model, images, runtime, batch_size=1)

    images = torch.randint(0, 256, (1, 3, size, size), dtype=torch.uint8)
    times = []
    for _ in range(calls + 1):  # the first is the warm-up
        t0 = time.perf_counter()
        predictor(images)
        times.append(time.perf_counter() - t0)
    phases["predicted"] = rss_mb()
    return {
        "variant": variant, "rss_mb": phases, "peak_rss_mb": peak_rss_mb(),
        "latency_s": statistics.median(times[1:]), "threads": torch.get_num_threads(),
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backbone", default="wide_resnet50_2")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--calls", type=int, default=5, help="timed predictions per process")
    ap.add_argument("--worker", nargs=2, metavar=("VARIANT", "CHECKPOINT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        variant, path = args.worker[0], Path(args.worker[1])
        print(json.dumps(worker(variant, path, args.size, args.backbone, args.calls)))
        return
    from _common import write_result

    from skrd4ad.checkpoint import save_checkpoint
    from skrd4ad.export import export
    from skrd4ad.models import build_model

    runs: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.pt"
        save_checkpoint(path, build_model(args.backbone, teacher_weights="none", skip="sk"))
        export(path, "onnx")  # beside it, as `skrd4ad export --format onnx` puts it
        for _ in range(args.rounds):
            for variant in VARIANTS:
                cmd = [sys.executable, __file__, "--size", str(args.size), "--backbone",
                       args.backbone, "--calls", str(args.calls),
                       "--worker", variant, str(path)]  # fmt: skip
                done = subprocess.run(cmd, capture_output=True, text=True, check=True)
                run = json.loads(done.stdout.strip().splitlines()[-1])
                print(json.dumps(run), flush=True)
                runs[variant].append(run)
        checkpoint_mb = path.stat().st_size / 2**20
    figures = {
        "backbone": args.backbone, "image_size": args.size, "checkpoint_mb": checkpoint_mb,
        **{v: {"peak_rss_mb": min(r["peak_rss_mb"] for r in done), "rss_mb": done[-1]["rss_mb"],
               "latency_s": min(r["latency_s"] for r in done), "threads": done[-1]["threads"]}
           for v, done in runs.items()},
    }  # fmt: skip
    write_result("predict_memory", figures)


if __name__ == "__main__":
    main()
