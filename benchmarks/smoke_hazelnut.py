"""Smoke figure on ../shared/datasets/hazelnut_toy (real photos, real defects): train,
evaluate and predict through the CLI. With 17 test defects this is a smoke check, not a claim.

Run: python benchmarks/smoke_hazelnut.py [--data PATH] [--epochs N] [--image-size N]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_result  # noqa: E402

from skrd4ad.cli import main as cli  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "datasets" / "hazelnut_toy"))
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--teacher-weights", default="none")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--image-size", type=int, default=128)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        train = ["train", "--data", args.data, "--out", str(out), "--backbone", args.backbone]
        train += ["--teacher-weights", args.teacher_weights, "--image-size", str(args.image_size)]
        train += ["--epochs", str(args.epochs), "--batch-size", "8", "--val-fraction", "0.2"]
        t0 = time.perf_counter()
        assert cli([*train, "--no-progress"]) == 0
        train_s = time.perf_counter() - t0
        evaluate = ["evaluate", "--checkpoint", str(out / "model.pt"), "--data", args.data]
        assert cli([*evaluate, "--out", str(out / "eval")]) == 0
        m = json.loads((out / "eval" / "metrics.json").read_text())
        predict = ["predict", str(out / "model.pt"), str(Path(args.data) / "colour")]
        assert cli([*predict, "--out", str(out / "pred"), "--no-overlays"]) == 0
    figures = {
        "dataset": "hazelnut_toy (folder layout, train fraction 0.5, 17 colour defects)",
        "backbone": args.backbone,
        "teacher_weights": args.teacher_weights,
        "epochs": args.epochs,
        "image_size": args.image_size,
        "train_s": train_s,
        **{k: m[k] for k in ("image_auroc", "pixel_auroc", "aupro", "counts")},
        "inference_ms_per_image": m["timings"]["inference_ms_per_image"],
    }
    write_result("smoke_hazelnut", figures)


if __name__ == "__main__":
    main()
