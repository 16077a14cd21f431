"""Training throughput and inference latency/memory of SK-RD4AD (wide_resnet50_2, 256 px).

Compares skrd4ad with a published-style loop measured the same way on the same machine:
the published teacher also computes layer4 (and discards it) and keeps an autograd graph
through the frozen teacher (its parameters still require grad).

Each measurement runs in a fresh process so that peak memory is its own.
Run: python benchmarks/bench_train_infer.py [--device cpu|cuda] [--steps N] [--batch 16]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import model_parser, training_module, write_result  # noqa: E402

from skrd4ad import build_model  # noqa: E402
from skrd4ad.data.images import normalize  # noqa: E402
from skrd4ad.inference import predict_maps  # noqa: E402
from skrd4ad.models.reverse_distillation.anomaly_map import anomaly_map, image_score  # noqa: E402
from skrd4ad.models.reverse_distillation.loss import SKRD4ADLoss  # noqa: E402
from skrd4ad.runtime import Runtime  # noqa: E402


class PublishedStyleTeacher(torch.nn.Module):
    """The same trunk, run as the published code runs it: layer4 computed, grads enabled."""

    def __init__(self, teacher: torch.nn.Module, backbone: str) -> None:
        super().__init__()
        import torchvision

        full = getattr(torchvision.models, backbone)(weights=None)
        full.load_state_dict(teacher.state_dict(), strict=False)
        self.full = full.eval()

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        f = self.full
        x = f.maxpool(f.relu(f.bn1(f.conv1(x))))
        a = f.layer1(x)
        b = f.layer2(a)
        c = f.layer3(b)
        f.layer4(c)  # computed and thrown away, as in the published encoder
        return [a, b, c]


def _ours(task: str, backbone: str, size: int, batch: int, device: str, precision: str):
    """skrd4ad's production paths: inference with BatchNorm folded, in inference mode, map
    and score on the device; training with fit's own step (channels_last, bf16 on CUDA)."""
    images = (torch.rand(batch, 3, size, size) * 255).to(torch.uint8)
    if task == "infer":
        runtime = Runtime.create(device, precision)
        model = runtime.setup(build_model(backbone, "none", "sk"), inference_only=True)
        return lambda: predict_maps(model, images, runtime, batch_size=batch)
    args = argparse.Namespace(backbone=backbone, device=device, precision=precision, size=size)
    module, opt, _ = training_module(args)
    return lambda: module.optimizer_step(opt, images=images)


def _published(task: str, backbone: str, size: int, batch: int, device: str):
    """The published-style loop: layer4 computed, an autograd graph through the teacher."""
    dev = torch.device(device)
    model = build_model(backbone, teacher_weights="none", skip="sk").to(dev)
    teacher = PublishedStyleTeacher(model.teacher, backbone).to(dev)
    x = normalize((torch.rand(batch, 3, size, size) * 255).to(torch.uint8).to(dev))
    if task == "train":
        params = [*model.bottleneck.parameters(), *model.decoder.parameters()]
        opt = torch.optim.Adam(params, lr=0.005, betas=(0.5, 0.999))
        loss_fn = SKRD4ADLoss()
        model.bottleneck.train()
        model.decoder.train()

        def step() -> None:
            t = teacher(x)
            loss, _ = loss_fn(t, model.student(t))
            opt.zero_grad()
            loss.backward()
            opt.step()

        return step
    model.eval()

    def infer() -> None:
        with torch.no_grad():
            t = teacher(x)
            image_score(anomaly_map(t, model.student(t), size))

    return infer


def worker(
    mode: str, task: str, backbone: str, size: int, batch: int, steps: int, device: str
) -> dict:
    dev = torch.device(device)
    torch.manual_seed(0)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    if mode.startswith("skrd4ad"):
        precision = "bf16" if mode.endswith("bf16") else "auto"
        step = _ours(task, backbone, size, batch, device, precision)
    else:
        step = _published(task, backbone, size, batch, device)
    step()  # warm-up
    sync()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)
    times.sort()
    median = times[len(times) // 2]
    out = {
        "mode": mode,
        "task": task,
        "batch": batch,
        "steps": steps,
        "median_step_s": median,
        "s_per_image": median / batch,
        "images_per_s": batch / median,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    if dev.type == "cuda":
        out["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def _measure(args: argparse.Namespace) -> dict[str, dict]:
    """Every mode, task and batch in a fresh process of this script."""
    runs = {}
    plan = [("train", args.batch), ("train", 4), ("infer", 1)]
    modes = ["skrd4ad", "published_style"]
    if args.device == "cpu" and args.bf16:
        modes.insert(1, "skrd4ad_bf16")
    for mode in modes:
        for task, batch in plan:
            steps = args.steps if task == "train" else 5 * args.steps
            cmd = [sys.executable, __file__, "--device", args.device, "--backbone", args.backbone]
            cmd += ["--size", str(args.size), "--steps", str(steps)]
            cmd += ["--worker", mode, task, str(batch)]
            done = subprocess.run(cmd, capture_output=True, text=True, check=True)
            key = f"{mode}_{task}_b{batch}"
            runs[key] = json.loads(done.stdout.strip().splitlines()[-1])
            print(key, runs[key], flush=True)
    return runs


def main() -> None:
    ap = model_parser(__doc__)
    ap.add_argument("--batch", type=int, default=16, help="training batch")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--bf16", action="store_true", help="also time the opt-in CPU bf16 path")
    ap.add_argument("--worker", nargs=3, metavar=("MODE", "TASK", "BATCH"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        mode, task, batch = args.worker
        print(
            json.dumps(
                worker(mode, task, args.backbone, args.size, int(batch), args.steps, args.device)
            )
        )
        return
    runs = _measure(args)

    def ratio(task: str, batch: int) -> float:
        a, b = runs[f"published_style_{task}_b{batch}"], runs[f"skrd4ad_{task}_b{batch}"]
        return a["s_per_image"] / b["s_per_image"]

    published = {"train_s_per_image_batch4": 1.64, "infer_s_per_image_batch1": 0.56}
    figures = {
        "device": args.device,
        "backbone": args.backbone,
        "image_size": args.size,
        **runs,
        f"train_speedup_same_machine_b{args.batch}": ratio("train", args.batch),
        "train_speedup_same_machine_b4": ratio("train", 4),
        "infer_speedup_same_machine_b1": ratio("infer", 1),
        "published_reference_cpu": published,
        "train_speedup_vs_published_figure_b4": published["train_s_per_image_batch4"]
        / runs["skrd4ad_train_b4"]["s_per_image"],
        f"train_speedup_vs_published_figure_b{args.batch}": published["train_s_per_image_batch4"]
        / runs[f"skrd4ad_train_b{args.batch}"]["s_per_image"],
        "infer_speedup_vs_published_figure": published["infer_s_per_image_batch1"]
        / runs["skrd4ad_infer_b1"]["s_per_image"],
    }
    if "skrd4ad_bf16_infer_b1" in runs:
        figures["bf16_infer_speedup_vs_published_figure"] = (
            published["infer_s_per_image_batch1"] / runs["skrd4ad_bf16_infer_b1"]["s_per_image"]
        )
        figures["bf16_train_speedup_vs_published_figure_b4"] = (
            published["train_s_per_image_batch4"] / runs["skrd4ad_bf16_train_b4"]["s_per_image"]
        )
    write_result("train_infer", figures)


if __name__ == "__main__":
    main()
