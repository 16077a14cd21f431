"""Memory layout per module on the CPU: channels_last everywhere, contiguous (NCHW)
everywhere, or channels_last but for the bottleneck (OCBE), which runs NCHW.

The last is what CPU training in float32 runs by default (``components/cpu_layout.py``);
inference runs channels_last everywhere. The three layouts take turns inside one
process, call by call, so that a machine whose speed drifts treats them alike; the
figure is the median.

    python benchmarks/bench_layout.py [--skip none] [--rounds 8]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import alternate, training_module, write_result  # noqa: E402

from skrd4ad import build_model  # noqa: E402
from skrd4ad.inference import predict_maps  # noqa: E402
from skrd4ad.models.reverse_distillation.components.cpu_layout import (  # noqa: E402
    run_in_nchw,
    weights_layout,
)
from skrd4ad.runtime import Runtime  # noqa: E402

LAYOUTS = ("channels_last", "contiguous", "bottleneck_contiguous")


def _lay_out(model: torch.nn.Module, layout: str) -> None:
    """The bottleneck in ``layout``'s memory format, whatever the runtime chose for it: a
    training model's is NCHW already, and moved to channels_last it gets channels_last
    inputs from the product's hook (it follows the weights)."""
    nchw = weights_layout(model.bottleneck) == torch.contiguous_format
    if layout == "bottleneck_contiguous" and not nchw:
        run_in_nchw(model.bottleneck)
    elif layout == "channels_last":
        model.bottleneck.to(memory_format=torch.channels_last)


def _infer(layout: str, skip: str, batch: int, size: int) -> Callable[[], object]:
    runtime = Runtime.create("cpu", "fp32", channels_last=layout != "contiguous")
    model = runtime.setup(build_model("wide_resnet50_2", "none", skip), inference_only=True)
    _lay_out(model, layout)
    images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8)
    return lambda: predict_maps(model, images, runtime, batch_size=batch)


def _train(layout: str, skip: str, batch: int, size: int) -> Callable[[], object]:
    args = argparse.Namespace(backbone="wide_resnet50_2", device="cpu", size=size)
    module, opt, _ = training_module(
        args, **{"model.skip": skip, "runtime.channels_last": layout != "contiguous"}
    )
    _lay_out(module.model, layout)
    images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8)
    return lambda: module.optimizer_step(opt, images=images)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--skip", default="none")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=8, help="calls of each layout, in turn")
    ap.add_argument("--tasks", nargs="+", default=["infer_b1", "infer_b16", "train_b4"])
    args = ap.parse_args()
    figures: dict[str, dict] = {"skip": args.skip, "image_size": args.size}
    for task in args.tasks:
        kind, batch = task.split("_b")
        build = _infer if kind == "infer" else _train
        calls = {layout: build(layout, args.skip, int(batch), args.size) for layout in LAYOUTS}
        rounds = args.rounds if int(batch) == 1 else max(2, args.rounds // 4)
        times = {k: [s / int(batch) for s in t] for k, t in alternate(calls, rounds).items()}
        figures[task] = {
            layout: {"median_s_per_image": statistics.median(t), "s_per_image": t}
            for layout, t in times.items()
        }
        print(task, {k: round(v["median_s_per_image"], 4) for k, v in figures[task].items()},
              flush=True)  # fmt: skip
        del calls
    write_result("layout", figures)


if __name__ == "__main__":
    main()
