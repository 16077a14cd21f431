"""Shared by the benchmark scripts: machine description and atomic result files."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from skrd4ad.atomic import atomic_write_text

RESULTS = Path(__file__).resolve().parent / "results"


def model_parser(doc: str | None) -> argparse.ArgumentParser:
    """The flags every model benchmark takes: device, backbone, image size."""
    ap = argparse.ArgumentParser(description=doc)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--backbone", default="wide_resnet50_2")
    ap.add_argument("--size", type=int, default=256)
    return ap


def training_module(args: argparse.Namespace, **settings: object) -> tuple:
    """The production training set-up: the Config's defaults but for the benchmark's
    flags, and the model's own hooks (skrd4ad.models.reverse_distillation.hooks), so that a
    benchmark times the training step fit runs. Returns (module, optimizer, runtime)."""
    from skrd4ad.config import Config
    from skrd4ad.models.reverse_distillation.hooks import ReverseDistillation
    from skrd4ad.runtime import Runtime

    cfg = Config().with_values({
        "model.backbone": args.backbone, "model.teacher_weights": "none",
        "runtime.device": args.device, "runtime.precision": getattr(args, "precision", "auto"),
        "runtime.compile": getattr(args, "compile", False), "train.image_size": args.size,
        "train.seed": 0, **settings,
    })  # fmt: skip
    runtime = Runtime.create(cfg.runtime.device, cfg.runtime.precision, cfg.runtime.channels_last)
    module = ReverseDistillation(cfg, runtime)
    module.train()
    return module, module.configure_optimizers(cfg), runtime


def machine() -> dict:
    info = {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def timeit(fn: Callable[[], object], repeat: int = 5, sync: bool = False) -> dict:
    """Wall times of ``repeat`` calls after one warm-up call: first, median, best (seconds)."""
    times = []
    for _ in range(repeat + 1):
        if sync:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if sync:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    warm = sorted(times[1:])
    return {"first_s": times[0], "median_s": warm[len(warm) // 2], "best_s": warm[0]}


def alternate(ways: dict[str, Callable[[], object]], rounds: int) -> dict[str, list[float]]:
    """Wall seconds of each way over ``rounds`` rounds, the ways called in turn within a
    round after one warm-up call each, so that a machine whose speed drifts treats them
    alike."""
    times: dict[str, list[float]] = {name: [] for name in ways}
    for fn in ways.values():
        fn()
    for _ in range(rounds):
        for name, fn in ways.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def write_result(name: str, figures: dict) -> Path:
    """Print the figures and write them with the machine, command and date (atomically)."""
    record = {
        "benchmark": name,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv]),
        "machine": machine(),
        "figures": figures,
    }
    text = json.dumps(record, indent=2)
    print(text)
    suffix = "gpu" if torch.cuda.is_available() else "cpu"
    path = RESULTS / f"{name}_{suffix}.json"
    atomic_write_text(path, text + "\n")
    return path
