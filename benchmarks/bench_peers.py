"""skrd4ad beside anomalib's Reverse Distillation on the CPU: time, memory and FLOPs.

Both models are WideResNet-50-2 at 256 px with random weights, float32, on the same
inputs. Each measurement is a fresh process: anomalib's in the Python of its own
environment (``--anomalib-python``; anomalib is not a dependency of this project), and
skrd4ad's in this one. The three models take turns in every round, so that all see the
same machine load:

- ``anomalib``: ``ReverseDistillationModel(pre_trained=False)`` with its loss and its
  optimiser (Adam on bottleneck and decoder);
- ``skrd4ad_none``: skrd4ad without skips (RD4AD, the like-for-like model), with
  SK-RD4AD's loss (cosine and the inter-scale consistency term);
- ``skrd4ad_rd``: the same with RD4AD's loss, cosine only (``loss.gamma`` 0, as
  anomalib's), for training only (inference is ``skrd4ad_none``'s);
- ``skrd4ad_sk``: the published SK-RD4AD.

Training is one step (forward through the frozen teacher, loss, backward, Adam) at batch
4 and 16; inference is maps and scores (Gaussian blur included) at batch 1 and 16, in each
project's production path (skrd4ad: BatchNorm folded, inference mode). Reported per image:
seconds (median of the steps), GFLOP (``torch.utils.flop_counter``), achieved GFLOP/s, and
the peak RSS of the process. ``--profile`` adds a per-module profile (teacher, bottleneck,
decoder, anomaly map, blur) from ``torch.profiler``.

    python benchmarks/bench_peers.py --anomalib-python /path/to/venv/bin/python [--rounds 2]
        [--tasks infer_b1]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _memory import peak_rss_mb  # noqa: E402

MODELS = ("anomalib", "skrd4ad_none", "skrd4ad_rd", "skrd4ad_sk")
# skrd4ad_<variant>: its skip topology and loss settings.
VARIANTS = {"none": {"model.skip": "none"}, "sk": {"model.skip": "sk"},
            "rd": {"model.skip": "none", "loss.alpha": 0.0, "loss.gamma": 0.0}}  # fmt: skip
PLAN = (("train", 4), ("train", 16), ("infer", 1), ("infer", 16))


# ------------------------------------------------------------------ one measurement (worker)
def _anomalib(task: str, x: torch.Tensor) -> tuple[Callable[[], object], dict]:
    from anomalib.models.image.reverse_distillation.loss import ReverseDistillationLoss
    from anomalib.models.image.reverse_distillation.torch_model import (
        ReverseDistillationModel,
    )

    size = x.shape[-1]
    model = ReverseDistillationModel(
        backbone="wide_resnet50_2", input_size=(size, size),
        layers=["layer1", "layer2", "layer3"], anomaly_map_mode="add", pre_trained=False,
    )  # fmt: skip
    from anomalib.models.components import GaussianBlur2d

    # The map generator makes its GaussianBlur2d in every call: the blur is profiled by
    # its class (and, nested in the map's range, taken out of it).
    parts = {"teacher": model.encoder, "bottleneck": model.bottleneck, "decoder": model.decoder,
             "anomaly map": model.anomaly_map_generator, "blur": GaussianBlur2d}  # fmt: skip
    if task == "infer":
        model.eval()

        def infer() -> object:
            with torch.inference_mode():
                return model(x)

        return infer, parts
    loss_fn = ReverseDistillationLoss()
    # anomalib's ReverseDistillation.configure_optimizers: Adam on decoder and bottleneck.
    opt = torch.optim.Adam(
        [*model.decoder.parameters(), *model.bottleneck.parameters()], lr=0.005,
        betas=(0.5, 0.99),
    )  # fmt: skip
    model.train()

    def step() -> None:
        loss = loss_fn(*model(x))
        opt.zero_grad()
        loss.backward()
        opt.step()

    return step, parts


def _skrd4ad(task: str, x: torch.Tensor, variant: str) -> tuple[Callable[[], object], dict]:
    sys.path.insert(0, str(HERE))
    from _common import training_module

    from skrd4ad import build_model
    from skrd4ad.models.reverse_distillation.anomaly_map import (
        gaussian_blur,
        image_score,
        raw_anomaly_map,
    )
    from skrd4ad.runtime import Runtime

    size = x.shape[-1]
    if task == "infer":
        runtime = Runtime.create("cpu", "fp32")
        skip = VARIANTS[variant]["model.skip"]
        model = runtime.setup(build_model("wide_resnet50_2", "none", skip), inference_only=True)
        parts = {"teacher": model.teacher, "bottleneck": model.bottleneck,
                 "decoder": model.decoder}  # fmt: skip

        # predict_maps's computation, phase by phase (on normalised float input, as
        # anomalib's model takes it), so that the profile names the map and the blur.
        # The input in the model's memory layout, as predict_maps gives it.
        inputs = x.contiguous(memory_format=torch.channels_last) if runtime.channels_last else x

        def infer() -> object:
            with torch.inference_mode():
                teacher, student = model(inputs)
                with torch.profiler.record_function("anomaly map"):
                    raw = raw_anomaly_map(teacher, student, size)
                with torch.profiler.record_function("blur"):
                    maps = gaussian_blur(raw)
                return maps, image_score(maps)

        return infer, parts
    args = argparse.Namespace(backbone="wide_resnet50_2", device="cpu", size=size)
    module, opt, _ = training_module(args, **VARIANTS[variant])
    images = ((x - x.min()) / (x.max() - x.min()) * 255).to(torch.uint8)
    model = module.model
    parts = {"teacher": model.teacher, "bottleneck": model.bottleneck, "decoder": model.decoder}
    return (lambda: module.optimizer_step(opt, images=images)), parts


def _profile(step: Callable[[], object], parts: dict) -> dict[str, float]:
    """CPU milliseconds per module of one step (forward; a training step's backward is
    its own row), from torch.profiler with a labelled range around each module."""
    from torch.nn.modules.module import (
        register_module_forward_hook,
        register_module_forward_pre_hook,
    )
    from torch.profiler import ProfilerActivity, profile, record_function

    handles, open_ranges = [], {}
    for name, part in parts.items():

        def pre(m, _a, name=name, part=part):  # noqa: ANN001 - torch's hook signature
            if not isinstance(part, type) or isinstance(m, part):
                open_ranges[name] = record_function(name)
                open_ranges[name].__enter__()

        def post(m, _a, _o, name=name, part=part):  # noqa: ANN001
            if not isinstance(part, type) or isinstance(m, part):
                open_ranges.pop(name).__exit__(None, None, None)

        if isinstance(part, type):  # every module of this class, made when it runs
            handles += [register_module_forward_pre_hook(pre), register_module_forward_hook(post)]
        else:
            handles += [part.register_forward_pre_hook(pre), part.register_forward_hook(post)]
    try:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            with record_function("step"):
                step()
    finally:
        for h in handles:
            h.remove()
    rows = {e.key: e.cpu_time_total / 1e3 for e in prof.key_averages()}
    out = {name: rows.get(name, 0.0) for name in [*parts, "anomaly map", "blur", "step"]}
    backward = [v for k, v in rows.items() if k.startswith("autograd::engine::evaluate")]
    if backward:
        out["backward"] = sum(backward)
    return out


def worker(model_name: str, task: str, batch: int, size: int, steps: int, profile: bool) -> dict:
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    x = torch.randn(batch, 3, size, size)  # the same input in every process (seed 0)
    if model_name == "anomalib":
        step, parts = _anomalib(task, x)
    else:
        step, parts = _skrd4ad(task, x, model_name.removeprefix("skrd4ad_"))
    step()  # warm-up
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    median = statistics.median(times)
    with FlopCounterMode(display=False) as counter:
        step()
    gflop = counter.get_total_flops() / 1e9 / batch
    # Per module, two levels deep (the model and its parts), forward and backward.
    by_module = {
        name: sum(counts.values()) / 1e9 / batch
        for name, counts in counter.get_flop_counts().items()
        if name != "Global" and name.count(".") == 1
    }
    out = {
        "model": model_name, "task": task, "batch": batch, "steps": steps,
        "s_per_image": median / batch, "gflop_per_image": gflop,
        "achieved_gflop_s": gflop / (median / batch), "gflop_by_module": by_module,
        "peak_rss_mb": peak_rss_mb(),
        "torch": torch.__version__, "threads": torch.get_num_threads(),
    }  # fmt: skip
    if profile:
        out["profile_ms"] = _profile(step, parts)
        if model_name == "anomalib":  # its blur runs inside its map generator
            out["profile_ms"]["anomaly map"] -= out["profile_ms"]["blur"]
    return out


# ------------------------------------------------------------------------------- driver
def _run(python: str, model_name: str, task: str, batch: int, args: argparse.Namespace) -> dict:
    steps = args.steps if task == "train" else 3 * args.steps
    cmd = [python, __file__, "--worker", model_name, task, str(batch), "--size", str(args.size),
           "--steps", str(steps)] + (["--profile"] if args.profile else [])  # fmt: skip
    env_path = str(HERE.parent)  # skrd4ad from this checkout, anomalib from its environment
    env = {**os.environ, "PYTHONPATH": env_path if model_name != "anomalib" else ""}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode:
        raise SystemExit(f"{model_name} {task} b{batch} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _table(runs: dict[str, list[dict]]) -> dict[str, dict]:
    """Per model, task and batch: the median over rounds of each figure."""
    figures: dict[str, dict] = {}
    for key, done in runs.items():
        figures[key] = {
            "s_per_image": statistics.median(r["s_per_image"] for r in done),
            "s_per_image_rounds": [r["s_per_image"] for r in done],
            "gflop_per_image": done[0]["gflop_per_image"],
            "gflop_by_module": done[-1].get("gflop_by_module"),
            "achieved_gflop_s": statistics.median(r["achieved_gflop_s"] for r in done),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in done),
        }
        if "profile_ms" in done[-1]:
            figures[key]["profile_ms"] = done[-1]["profile_ms"]
    return figures


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--anomalib-python", help="the Python of an environment with anomalib")
    ap.add_argument("--rounds", type=int, default=2, help="alternated runs of every model")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per training run")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--profile", action="store_true", help="add a per-module profile")
    ap.add_argument("--only", nargs="+", choices=MODELS, default=list(MODELS))
    tasks = [f"{task}_b{batch}" for task, batch in PLAN]
    ap.add_argument("--tasks", nargs="+", choices=tasks, default=tasks,
                    help="a subset is written to peers_<tasks>, beside the table")  # fmt: skip
    ap.add_argument("--worker", nargs=3, metavar=("MODEL", "TASK", "BATCH"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        name, task, batch = args.worker
        print(json.dumps(worker(name, task, int(batch), args.size, args.steps, args.profile)))
        return
    if "anomalib" in args.only and not args.anomalib_python:
        raise SystemExit("--anomalib-python is required to run anomalib (or --only skrd4ad_*)")
    runs: dict[str, list[dict]] = {}
    plan = [(task, batch) for task, batch in PLAN if f"{task}_b{batch}" in args.tasks]
    for _ in range(args.rounds):
        for task, batch in plan:
            for name in args.only:
                if name == "skrd4ad_rd" and task == "infer":  # the loss is training's only
                    continue
                python = args.anomalib_python if name == "anomalib" else sys.executable
                run = _run(python, name, task, batch, args)
                print(json.dumps(run), flush=True)
                runs.setdefault(f"{name}_{task}_b{batch}", []).append(run)
    sys.path.insert(0, str(HERE))
    from _common import write_result

    figures = _table(runs)
    figures["anomalib_torch"] = next(
        (r[0]["torch"] for k, r in runs.items() if k.startswith("anomalib")), None
    )
    subset = len(plan) < len(PLAN)
    write_result("peers" + ("_" + "_".join(args.tasks) if subset else ""), figures)


if __name__ == "__main__":
    main()
