"""CPU latency of the exported model: PyTorch (eager, BatchNorm folded), TorchScript and
ONNX Runtime, image batch (uint8) in, anomaly map and score out.

The model is the paper's (wide_resnet50_2, SK skips, 256 px); weights are random, which
does not change the cost. Run from the repository root:
    python benchmarks/bench_export.py [--backbone wide_resnet50_2] [--size 256] [--batch 1]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import timeit, write_result  # noqa: E402

from skrd4ad.checkpoint import save_checkpoint  # noqa: E402
from skrd4ad.config import Config  # noqa: E402
from skrd4ad.export import build_detector, export  # noqa: E402
from skrd4ad.models import build_model  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backbone", default="wide_resnet50_2")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=10)
    args = parser.parse_args()
    torch.manual_seed(0)
    images = torch.randint(0, 256, (args.batch, 3, args.size, args.size), dtype=torch.uint8)
    figures: dict = {
        "backbone": args.backbone,
        "image_size": args.size,
        "batch": args.batch,
        "threads": torch.get_num_threads(),
    }
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "model.pt"
        config = Config().with_values(
            {"model.backbone": args.backbone, "train.image_size": args.size}
        )
        model = build_model(args.backbone, "none", "sk")
        save_checkpoint(ckpt, model, epoch=0, config=config.to_dict())

        detector, _ = build_detector(ckpt)
        with torch.inference_mode():
            figures["pytorch_eager"] = timeit(lambda: detector(images), args.repeat)

        ts = torch.jit.load(str(export(ckpt, "torchscript", Path(tmp) / "m.ts")))
        with torch.inference_mode():
            figures["torchscript"] = timeit(lambda: ts(images), args.repeat)

        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = torch.get_num_threads()
        onnx_file = export(ckpt, "onnx", Path(tmp) / "m.onnx")
        session = ort.InferenceSession(str(onnx_file), opts, providers=["CPUExecutionProvider"])
        feed = {"images": images.numpy()}
        figures["onnxruntime"] = timeit(lambda: session.run(None, feed), args.repeat)
        figures["onnx_file_mb"] = onnx_file.stat().st_size / 2**20
    for key in ("pytorch_eager", "torchscript", "onnxruntime"):
        figures[key]["per_image_s"] = figures[key]["median_s"] / args.batch
    write_result(f"export_{args.backbone}_b{args.batch}", figures)


if __name__ == "__main__":
    main()
