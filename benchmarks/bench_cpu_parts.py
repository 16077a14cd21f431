"""The parts of a CPU step that skrd4ad computes its own way, each beside the plain way.

- ``loss``: the consistency and cosine terms (forward and backward) on wide_resnet50_2's
  feature shapes, as defined (both maps resized, then their MSE; ``flatten(1)`` of
  channels_last maps) and as skrd4ad computes them (``skrd4ad...loss``);
- ``adam``: one Adam step over the bottleneck's and decoder's 84 M parameters, torch's
  default on a CPU (a loop over the tensors) and ``fused=True``;
- ``kernels``: the bottleneck at inference, oneDNN and PyTorch's plain convolution, per
  batch size: where :data:`~skrd4ad.models.reverse_distillation.components.cpu_kernels.
  FEW_IMAGES` comes from.

The two ways of each part take turns call by call in one process, so that a machine
whose speed drifts treats them alike; each figure is the median.

    python benchmarks/bench_cpu_parts.py [--parts loss adam kernels] [--repeat 7]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import alternate, write_result  # noqa: E402

from skrd4ad import build_model  # noqa: E402
from skrd4ad.models.reverse_distillation.components.fuse import fold_batchnorm  # noqa: E402
from skrd4ad.models.reverse_distillation.loss import consistency_loss, cosine_loss  # noqa: E402

# wide_resnet50_2's E1, E2, E3 at 256 px: (channels, side).
LEVELS = ((256, 64), (512, 32), (1024, 16))


def median_ms(ways: dict[str, Callable[[], object]], repeat: int) -> dict[str, float]:
    """Median milliseconds of each way, the ways taking turns (``_common.alternate``)."""
    return {name: statistics.median(t) * 1e3 for name, t in alternate(ways, repeat).items()}


def consistency_by_definition(teacher: list, student: list) -> torch.Tensor:
    total = teacher[0].new_zeros(())
    for k in range(len(teacher) - 1):
        up = [F.interpolate(m[k + 1], size=teacher[k].shape[-2:], mode="bilinear",
                            align_corners=True) for m in (student, teacher)]  # fmt: skip
        total = total + (F.mse_loss(*up) - F.mse_loss(student[k], teacher[k])).abs()
    return total


def cosine_by_definition(teacher: list, student: list) -> torch.Tensor:
    return sum(
        (1 - F.cosine_similarity(t.flatten(1), s.flatten(1), dim=1)).mean()
        for t, s in zip(teacher, student, strict=True)
    )


def loss_part(batch: int, repeat: int) -> dict[str, float]:
    g = torch.Generator().manual_seed(0)
    cl = torch.channels_last
    teacher = [torch.randn(batch, c, s, s, generator=g).contiguous(memory_format=cl)
               for c, s in LEVELS]  # fmt: skip
    student = [(t + 0.1 * torch.randn(t.shape, generator=g)).contiguous(memory_format=cl)
               .requires_grad_() for t in teacher]  # fmt: skip

    def backward(loss_fn: Callable) -> Callable[[], None]:
        return lambda: loss_fn(teacher, student).backward()

    return median_ms({
        "consistency, resized maps": backward(consistency_by_definition),
        "consistency, skrd4ad": backward(consistency_loss),
        "cosine, flatten(1)": backward(cosine_by_definition),
        "cosine, skrd4ad": backward(cosine_loss),
    }, repeat)  # fmt: skip


def adam_part(repeat: int) -> dict[str, float]:
    torch.manual_seed(0)
    model = build_model("wide_resnet50_2", "none", "none").to(memory_format=torch.channels_last)
    params = [*model.bottleneck.parameters(), *model.decoder.parameters()]
    ways = {}
    for name, fused in (("Adam, torch's default", None), ("Adam, fused", True)):
        own = [p.detach().clone().requires_grad_() for p in params]
        for p in own:
            p.grad = torch.randn_like(p) * 1e-3
        ways[name] = torch.optim.Adam(own, lr=0.005, betas=(0.5, 0.999), fused=fused).step
    return {**median_ms(ways, repeat), "parameters_m": sum(p.numel() for p in params) / 1e6}


def kernels_part(batches: list[int], repeat: int) -> dict[str, dict[str, float]]:
    torch.manual_seed(0)
    model = build_model("wide_resnet50_2", "none", "none")
    # Folded and channels_last as inference runs it, but without the kernel hooks, so that
    # each kernel is chosen here.
    model = fold_batchnorm(model, inplace=True).to(memory_format=torch.channels_last)
    out = {}
    for batch in batches:
        x = torch.randn(batch, 3, 256, 256).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            ms = median_ms(_bottleneck_ways(model, model.teacher(x)), repeat)
        out[f"b{batch}"] = {f"{k} ms/img": v / batch for k, v in ms.items()}
    return out


def _bottleneck_ways(model: torch.nn.Module, features: list) -> dict[str, Callable[[], object]]:
    def plain() -> object:
        with torch.backends.mkldnn.flags(enabled=False):
            return model.bottleneck(features)

    return {"oneDNN": lambda: model.bottleneck(features), "plain": plain}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--parts", nargs="+", default=["loss", "adam", "kernels"],
                    choices=["loss", "adam", "kernels"])  # fmt: skip
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 2, 3, 4, 8, 16])
    args = ap.parse_args()
    figures: dict[str, object] = {}
    if "loss" in args.parts:
        figures["loss_ms_fwd_bwd"] = {f"b{b}": loss_part(b, args.repeat) for b in (4, 16)}
        print(figures["loss_ms_fwd_bwd"], flush=True)
    if "adam" in args.parts:
        figures["adam_ms_per_step"] = adam_part(args.repeat)
        print(figures["adam_ms_per_step"], flush=True)
    if "kernels" in args.parts:
        figures["bottleneck_inference"] = kernels_part(args.batches, args.repeat)
    write_result("cpu_parts", figures)


if __name__ == "__main__":
    main()
