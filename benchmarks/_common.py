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


def training_setup(model: torch.nn.Module, dev: torch.device) -> tuple:
    """The production training set-up (skrd4ad.train.fit's defaults): channels_last model on
    ``dev``, Adam over bottleneck and decoder, the SK-RD4AD loss, student in train mode.
    Returns (model, optimizer, loss_fn)."""
    import dataclasses

    from skrd4ad.inference import prepare_model
    from skrd4ad.models.reverse_distillation.loss import SKRD4ADLoss
    from skrd4ad.train import TrainConfig

    # TrainConfig's own defaults, not copies of them, so the benchmark follows fit.
    default = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    model = prepare_model(model, dev, default["channels_last"])
    params = [*model.bottleneck.parameters(), *model.decoder.parameters()]
    opt = torch.optim.Adam(params, lr=default["lr"], betas=default["betas"])
    model.bottleneck.train()
    model.decoder.train()
    return model, opt, SKRD4ADLoss()


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
