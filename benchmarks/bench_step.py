"""Per-step figures for the speed issue: training images/s with and without the teacher
feature cache at batch 16, 32 and 64, achieved TFLOP/s (FLOPs counted by
torch.utils.flop_counter, not estimated) and, on a GPU, the fraction of bf16 peak;
inference latency at batch 1 and throughput at batch 64 with peak memory.

Model: wide_resnet50_2, SK skips, 256 px (the paper's), random weights (same cost).
The training step is skrd4ad.train.fit's: channels_last, bf16 autocast on CUDA, fp32 on
a CPU unless --precision bf16. Each measurement runs in a fresh process (own peak memory).
    python benchmarks/bench_step.py [--device cpu|cuda] [--batches 16 32 64] [--steps 3]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import model_parser, training_module, write_result  # noqa: E402
from _memory import peak_rss_mb  # noqa: E402

from skrd4ad import build_model  # noqa: E402
from skrd4ad.feature_cache import build_cache  # noqa: E402
from skrd4ad.inference import predict_maps  # noqa: E402
from skrd4ad.runtime import Runtime  # noqa: E402

# Dense bf16 tensor-core peak, TFLOP/s (vendor data sheets), for the fraction of peak.
BF16_PEAK = {"H100 SXM": 989.4, "H100 PCIe": 756.0, "H100 NVL": 835.0, "H200": 989.4}


def _peak(name: str) -> float | None:
    for key, value in BF16_PEAK.items():
        if all(part in name for part in key.split()):
            return value
    return None


def worker(task: str, cached: bool, batch: int, args: argparse.Namespace) -> dict:
    dev = torch.device(args.device)
    torch.manual_seed(0)
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    images = torch.randint(0, 256, (batch, 3, args.size, args.size), dtype=torch.uint8)
    if dev.type == "cuda":
        images = images.pin_memory()
    if task == "infer":
        runtime = Runtime.create(args.device, args.precision)
        model = build_model(args.backbone, teacher_weights="none", skip="sk")
        model = runtime.setup(model, inference_only=True)

        def step() -> None:
            predict_maps(model, images, runtime, batch_size=batch)
    else:
        module, opt, runtime = training_module(args)
        cache = build_cache(module.model, images, runtime) if cached else None
        idx = torch.arange(batch)

        def step() -> None:  # fit's training step, from the cache or from the images
            if cache is not None:
                module.optimizer_step(opt, features=cache.batch(idx))
            else:
                module.optimizer_step(opt, images=images)

    step()  # warm-up (and cuDNN autotuning)
    sync()
    counter = FlopCounterMode(display=False)
    with counter:
        step()
    sync()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)
    median = sorted(times)[len(times) // 2]
    flops = counter.get_total_flops()
    out = {
        "task": task,
        "cached": cached,
        "batch": batch,
        "median_step_s": median,
        "images_per_s": batch / median,
        "s_per_image": median / batch,
        "gflop_per_step": flops / 1e9,
        "achieved_tflops": flops / median / 1e12,
        "peak_rss_mb": peak_rss_mb(),
    }
    if dev.type == "cuda":
        out["peak_cuda_mb"] = torch.cuda.max_memory_allocated(dev) / 2**20
        peak = _peak(torch.cuda.get_device_name(dev))
        if peak:
            out["fraction_of_bf16_peak"] = out["achieved_tflops"] / peak
    return out


def main() -> None:
    ap = model_parser(__doc__)
    ap.add_argument("--batches", type=int, nargs="+", default=[16, 32, 64])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    ap.add_argument("--compile", action="store_true", help="torch.compile the student")
    ap.add_argument("--infer-batch", type=int, default=64, help="inference throughput batch")
    ap.add_argument(
        "--worker", nargs=3, metavar=("TASK", "CACHED", "BATCH"), help=argparse.SUPPRESS
    )
    args = ap.parse_args()
    if args.worker:
        task, cached, batch = args.worker
        print(json.dumps(worker(task, cached == "1", int(batch), args)))
        return
    plan = [("train", c, b) for b in args.batches for c in (True, False)]
    if args.compile:  # compiling is about the training step: the cached one, at each batch
        plan = [p for p in plan if p[1]]
    else:
        plan += [("infer", False, 1), ("infer", False, args.infer_batch)]
    runs = {}
    for task, cached, batch in plan:
        cmd = [sys.executable, __file__, "--device", args.device, "--backbone", args.backbone]
        cmd += ["--size", str(args.size), "--precision", args.precision]
        cmd += ["--steps", str(5 * args.steps if task == "infer" and batch == 1 else args.steps)]
        cmd += ["--compile"] if args.compile else []
        cmd += ["--worker", task, "1" if cached else "0", str(batch)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        key = f"{task}_{'cached' if cached else 'uncached'}_b{batch}".replace("_uncached", "")
        if task == "train":
            key = f"train_{'cached' if cached else 'uncached'}_b{batch}"
        if done.returncode:
            runs[key] = {"error": done.stderr.strip().splitlines()[-1][:300]}
        else:
            runs[key] = json.loads(done.stdout.strip().splitlines()[-1])
        print(key, runs[key], flush=True)
    speedup = {
        f"b{b}": runs[f"train_uncached_b{b}"]["median_step_s"]
        / runs[f"train_cached_b{b}"]["median_step_s"]
        for b in args.batches
        if "error" not in runs[f"train_cached_b{b}"]
        and "error" not in runs.get(f"train_uncached_b{b}", {"error": "not run"})
    }
    figures = {
        "device": args.device,
        "gpu": torch.cuda.get_device_name(0) if args.device == "cuda" else None,
        "backbone": args.backbone,
        "image_size": args.size,
        "precision": args.precision,
        "runs": runs,
        "cache_speedup": speedup,
        "paper_inference": {"s_per_image": 0.37, "memory_mb": 401},
    }
    compiled = "_compiled" if args.compile else ""
    write_result(f"step_{args.backbone}_{args.precision}{compiled}", figures)


if __name__ == "__main__":
    main()
