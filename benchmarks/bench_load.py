"""Loading a checkpoint into a model (`skrd4ad.checkpoint.load_model`), per backbone.

What `evaluate`, `predict`, `export` and the pipeline's MLflow logging pay before the
first image. "load_model" is the whole call (torch.load of the file, the model built on
the meta device, the tensors copied in). "build_then_load" is what load_model did before
(at e9c2df7): the model built and initialised at random, then overwritten from the same
state. The checkpoint is a random model's, written once to a temporary folder; the file
stays in the page cache, as it does right after training.

    python benchmarks/bench_load.py [--backbones resnet18 wide_resnet50_2] [--repeat 5]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import timeit, write_result  # noqa: E402

from skrd4ad.checkpoint import load_model, read_checkpoint, save_checkpoint  # noqa: E402
from skrd4ad.models import BACKBONES, build_model  # noqa: E402


def build_then_load(path: Path) -> torch.nn.Module:
    state = read_checkpoint(path)
    skip = {int(k): v for k, v in state["skip"].items()}
    model = build_model(state["backbone"], teacher_weights="none", skip=skip)
    for part in ("teacher", "bottleneck", "decoder"):
        getattr(model, part).load_state_dict(state[part])
    return model.eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--backbones", nargs="+", default=list(BACKBONES), choices=list(BACKBONES))
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    figures: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        for backbone in args.backbones:
            path = Path(tmp) / f"{backbone}.pt"
            save_checkpoint(path, build_model(backbone, teacher_weights="none", skip="sk"))
            figures[backbone] = {
                "checkpoint_mb": path.stat().st_size / 1e6,
                "load_model": timeit(lambda p=path: load_model(p), args.repeat),
                "torch_load_only": timeit(lambda p=path: read_checkpoint(p), args.repeat),
                "build_then_load": timeit(lambda p=path: build_then_load(p), args.repeat),
            }
            print(
                f"{backbone}: load_model {figures[backbone]['load_model']['median_s']:.3f} s "
                f"(torch.load {figures[backbone]['torch_load_only']['median_s']:.3f} s); "
                f"before: {figures[backbone]['build_then_load']['median_s']:.3f} s",
                flush=True,
            )
    figures["threads"] = torch.get_num_threads()
    write_result("load", figures)


if __name__ == "__main__":
    main()
