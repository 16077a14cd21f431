"""End to end: every category of an MVTec-sized synthetic set trained and evaluated, with
the fast paths on (teacher feature cache, bf16 autocast and channels_last on CUDA) or off.

The set has MVTec AD's 15 categories with its train and test counts (3,629 / 1,725
images), made by `skrd4ad make-dataset` from the bundled textures with synthetic defects,
so the figure needs no download. It runs through the core package (`skrd4ad train` +
`skrd4ad evaluate` per category), because a lent GPU machine has torch but no Ray, DVC or
MLflow; `--parallel N` runs N categories at once on the one GPU (packing). On a machine
with the pipelines installed, `dvc repro` with the same settings runs the same work.

    python benchmarks/bench_e2e.py --data /tmp/mvtec_synth --epochs 200 --fast on --parallel 4
    python benchmarks/bench_e2e.py --data /tmp/mvtec_synth --epochs 200 --fast off
    # a quick check on a CPU: --scale 0.02 --categories 2 --epochs 1 --image-size 64
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_result  # noqa: E402

from skrd4ad.data import make_default_dataset  # noqa: E402
from skrd4ad.data.default_dataset import TEXTURES  # noqa: E402
from skrd4ad.data.synthetic import DEFECTS  # noqa: E402

# MVTec AD: (train images, test images) per category.
MVTEC = {
    "bottle": (209, 83),
    "cable": (224, 150),
    "capsule": (219, 132),
    "carpet": (280, 117),
    "grid": (264, 78),
    "hazelnut": (391, 110),
    "leather": (245, 124),
    "metal_nut": (220, 115),
    "pill": (267, 167),
    "screw": (320, 160),
    "tile": (230, 117),
    "toothbrush": (60, 42),
    "transistor": (213, 100),
    "wood": (247, 79),
    "zipper": (240, 151),
}


def make_set(root: Path, names: list[str], size: int, scale: float) -> None:
    """One MVTec-layout category per name, with MVTec's counts (times ``scale``)."""
    textures = list(TEXTURES)
    for i, name in enumerate(names):
        if (root / name).is_dir():
            continue
        n_train, n_test = (max(2, round(n * scale)) for n in MVTEC[name])
        per_defect = max(1, round(0.75 * n_test / len(DEFECTS)))
        good = max(1, n_test - per_defect * len(DEFECTS))
        texture = textures[i % len(textures)]
        with tempfile.TemporaryDirectory(dir=root) as tmp:
            make_default_dataset(
                Path(tmp),
                categories=(texture,),
                image_size=size,
                crop_size=max(size, 192),
                n_train=n_train,
                n_test_good=good,
                n_test_defect=per_defect,
                seed=i,
            )
            shutil.move(str(Path(tmp) / texture), str(root / name))


def run_category(name: str, args: argparse.Namespace, out: Path) -> dict:
    py = [sys.executable, "-m", "skrd4ad.cli"]
    train = [*py, "train", "--data", str(args.data), "--category", name, "--out", str(out)]
    train += ["--backbone", args.backbone, "--teacher-weights", args.teacher_weights]
    train += ["--image-size", str(args.image_size), "--epochs", str(args.epochs)]
    train += ["--batch-size", str(args.batch_size), "--val-fraction", "0", "--no-progress"]
    train += ["--checkpoint-every", str(args.epochs), "--device", args.device]
    if args.fast == "off":
        train += ["--cache-features", "off", "--precision", "fp32", "--no-channels-last"]
    evaluate = [*py, "evaluate", "--checkpoint", str(out / "model.pt"), "--data", str(args.data)]
    evaluate += ["--category", name, "--out", str(out / "eval"), "--device", args.device]
    if args.fast == "off":
        evaluate += ["--precision", "fp32"]
    t0 = time.perf_counter()
    for cmd in (train, evaluate):
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode:
            return {"category": name, "error": done.stderr.strip()[-500:]}
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    return {
        "category": name,
        "wall_s": time.perf_counter() - t0,
        **{k: metrics.get(k) for k in ("image_auroc", "pixel_auroc", "aupro")},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, help="where the synthetic set lives")
    ap.add_argument("--categories", type=int, default=15)
    ap.add_argument("--scale", type=float, default=1.0, help="fraction of MVTec's counts")
    ap.add_argument("--epochs", type=int, default=200)
    ap.add_argument("--image-size", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--backbone", default="wide_resnet50_2")
    ap.add_argument("--teacher-weights", default="none", help="none: random (same cost)")
    ap.add_argument("--fast", choices=["on", "off"], default="on")
    ap.add_argument("--parallel", type=int, default=1, help="categories at once on the device")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    names = list(MVTEC)[: args.categories]
    args.data.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    make_set(args.data, names, args.image_size, args.scale)
    make_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(args.parallel) as pool:
            rows = list(pool.map(lambda n: run_category(n, args, Path(tmp) / n), names))
        wall = time.perf_counter() - t0
    failed = [r for r in rows if "error" in r]
    figures = {
        "settings": {k: str(v) for k, v in vars(args).items()},
        "dataset_make_s": make_s,
        "wall_s": wall,
        "categories": rows,
        "failed": len(failed),
    }
    write_result(f"e2e_fast{args.fast}_p{args.parallel}_e{args.epochs}", figures)
    if failed:
        raise SystemExit(f"{len(failed)} categories failed: {failed[0]['error']}")


if __name__ == "__main__":
    main()
