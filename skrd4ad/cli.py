"""The ``skrd4ad`` command: make-dataset, prepare-visa, train, evaluate, predict, demo.

Every subcommand takes ``--config FILE.yaml`` whose keys mirror its flags (dashes or
underscores); flags given on the command line win over the file. User errors print one
line and exit with status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import warnings
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError, UserError
from .results import json_text

EXIT_USER_ERROR = 2


def _bool(text: str) -> bool:
    value = str(text).strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _add_model_flags(p: argparse.ArgumentParser) -> None:
    from .models import BACKBONES, SKIP_TOPOLOGIES

    p.add_argument(
        "--backbone",
        choices=sorted(BACKBONES),
        default="wide_resnet50_2",
        help="teacher network (torchvision builder); the paper uses wide_resnet50_2",
    )
    p.add_argument(
        "--teacher-weights",
        default="imagenet",
        metavar="{imagenet,none,PATH}",
        help="'imagenet' (torchvision weights API, hub cache under TORCH_HOME), "
        "'none' (random, for tests) or a state dict file",
    )
    p.add_argument(
        "--skip",
        choices=list(SKIP_TOPOLOGIES),
        default="sk",
        help="skip topology: 'sk' = published SK-RD4AD, 'none' = RD4AD, "
        "'sk_deep'/'sk_shallow' = one skip only (ablation)",
    )


def _add_data_flags(p: argparse.ArgumentParser, required: bool = True) -> None:
    from .data import LAYOUTS

    p.add_argument(
        "--data",
        required=required,
        metavar="ROOT",
        help="dataset root (MVTec AD / VAD layout: ROOT/CATEGORY/train/good ...; "
        "folder layout: ROOT holds good/, defect folders and mask/)",
    )
    p.add_argument(
        "--category",
        default=None,
        help="category folder under ROOT (optional for the folder layout)",
    )
    p.add_argument(
        "--layout", choices=LAYOUTS, default="auto", help="dataset layout (default: detect)"
    )
    p.add_argument(
        "--train-fraction",
        type=float,
        default=None,
        help="folder layout only: fraction of good/ used for training (default 0.5, "
        "or the checkpoint's)",
    )


def _add_runtime_flags(p: argparse.ArgumentParser, precision: str | None = "auto") -> None:
    p.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda"],
        default="auto",
        help="where to run (auto: CUDA when available)",
    )
    p.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16"],
        default=precision,
        help="auto = bf16 autocast on CUDA and float32 on CPU; bf16 runs on a CPU only when "
        "named" + ("" if precision else " (default: the checkpoint's setting)"),
    )
    p.add_argument("--batch-size", type=_positive_int, default=None, help="images per batch")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="skrd4ad", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"skrd4ad {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    fmt = argparse.ArgumentDefaultsHelpFormatter

    def add(name: str, help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_, formatter_class=fmt)
        p.add_argument(
            "--config", metavar="FILE.yaml", help="YAML file whose keys mirror this command's flags"
        )
        return p

    p = add("make-dataset", "write the embedded default dataset (MVTec layout, deterministic)")
    p.add_argument("--out", required=True, help="folder to write the dataset into")
    p.add_argument(
        "--categories",
        nargs="+",
        default=None,
        help="texture categories (default: brick grass gravel)",
    )
    p.add_argument("--image-size", type=int, default=128, help="side of the written images, px")
    p.add_argument(
        "--crop-size", type=int, default=192, help="side of the crop cut from each photo, px"
    )
    p.add_argument("--n-train", type=int, default=32, help="normal training images per category")
    p.add_argument("--n-test-good", type=int, default=8, help="normal test images per category")
    p.add_argument(
        "--n-test-defect",
        type=int,
        default=4,
        help="defective test images per defect type and category",
    )
    p.add_argument("--seed", type=int, default=0, help="generator seed")

    p = add("prepare-visa", "convert a raw VisA download into MVTec layout (binarised masks)")
    p.add_argument("--raw", required=True, help="the extracted VisA folder (holds split_csv/)")
    p.add_argument("--out", required=True, help="where to write the MVTec-layout copy")
    p.add_argument("--categories", nargs="+", default=None, help="only these categories")

    p = add("train", "train SK-RD4AD on one category (normal images only)")
    _add_data_flags(p)
    p.add_argument("--out", required=True, help="run folder: checkpoints, model.pt, history")
    _add_model_flags(p)
    _add_runtime_flags(p)
    p.add_argument(
        "--image-size", type=int, default=256, help="model input size, px (multiple of 32)"
    )
    p.add_argument("--epochs", type=int, default=200, help="training epochs")
    p.add_argument("--lr", type=float, default=0.005, help="Adam learning rate")
    p.add_argument("--betas", type=float, nargs=2, default=[0.5, 0.999], help="Adam betas")
    p.add_argument("--alpha", type=float, default=0.0, help="weight of the feature L2 loss")
    p.add_argument("--beta", type=float, default=1.0, help="weight of the cosine loss")
    p.add_argument(
        "--gamma", type=float, default=0.05, help="weight of the inter-scale consistency loss"
    )
    p.add_argument("--seed", type=int, default=111, help="random seed (the published one is 111)")
    p.add_argument(
        "--channels-last",
        type=_bool,
        default=True,
        help="channels_last memory layout (measured faster on CPU and GPU)",
    )
    p.add_argument("--checkpoint-every", type=int, default=10, help="write last.pt every N epochs")
    p.add_argument(
        "--val-fraction",
        type=float,
        default=0.1,
        help="fraction of train/good held out (with synthetic defects) for validation; 0 = none",
    )
    p.add_argument("--val-every", type=int, default=10, help="validate every N epochs")
    p.add_argument(
        "--select",
        choices=["last", "best-val"],
        default="last",
        help="final model: the last epoch, or the best validation AUPRO (never test metrics)",
    )
    p.add_argument(
        "--cache-features",
        choices=["auto", "on", "off"],
        default="auto",
        help="compute the frozen teacher's features once per image and reuse them every "
        "epoch (auto: unless --augment); off recomputes them every step",
    )
    p.add_argument(
        "--augment",
        choices=["none", "hflip"],
        default="none",
        help="training augmentation (hflip: random horizontal flips; disables the cache)",
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the bottleneck and decoder (compiles on the first step)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="resume from OUT/last.pt; changed settings apply from there on and are recorded",
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace the training run already in OUT"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = add("evaluate", "evaluate a checkpoint on the test split; writes OUT/metrics.json")
    p.add_argument("--checkpoint", required=True, help="model.pt (or last.pt) written by train")
    _add_data_flags(p)
    p.add_argument("--out", required=True, help="folder for metrics.json, overlays and curves")
    p.add_argument(
        "--backbone", default=None, help="fail unless the checkpoint holds this backbone"
    )
    _add_runtime_flags(p, precision=None)
    p.add_argument(
        "--overlays",
        type=int,
        default=0,
        metavar="N",
        help="write overlays of the N highest- and N lowest-scoring test images",
    )
    p.add_argument("--curves", action="store_true", help="write ROC and PRO curve PNGs")

    p = add("predict", "score images with a checkpoint; writes OUT/predictions.csv and overlays")
    p.add_argument("checkpoint", help="model.pt written by train")
    p.add_argument("inputs", nargs="+", metavar="IMAGES_OR_DIR", help="image files or folders")
    p.add_argument("--out", required=True, help="folder for predictions.csv and overlays/")
    p.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="score at or above which an image is anomalous (default: the checkpoint's "
        "validation threshold)",
    )
    p.add_argument("--no-overlays", action="store_true", help="skip the overlay PNGs")
    _add_runtime_flags(p, precision=None)

    p = add(
        "export",
        "write a self-contained model: uint8 images (N, 3, S, S) -> (anomaly map, score)",
    )
    p.add_argument("--checkpoint", required=True, help="model.pt (or last.pt) written by train")
    p.add_argument("--format", required=True, choices=["torchscript", "onnx"], help="file format")
    p.add_argument(
        "--out", default=None, help="file to write (default: the checkpoint's name, .pt/.onnx)"
    )

    p = add("demo", "make the default dataset, train and evaluate every category (quick start)")
    p.add_argument("--out", default="runs/demo", help="run folder")
    p.add_argument("--data", default="data/default", help="where the default dataset is written")
    _add_model_flags(p)
    p.set_defaults(backbone="resnet18", teacher_weights="none")
    _add_runtime_flags(p)
    p.add_argument("--image-size", type=int, default=128, help="model input size, px")
    p.add_argument("--epochs", type=int, default=30, help="training epochs per category")
    return parser


def _config_path(argv: list[str]) -> str | None:
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
    return None


def _apply_config(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Parse ``argv``; values from ``--config`` become the subcommand's defaults first, so
    flags on the command line still win."""
    config = _config_path(argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    subparsers = parser._subparsers._group_actions[0].choices  # noqa: SLF001
    if config is None or command not in subparsers:
        return parser.parse_args(argv)
    path = Path(config)
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise UserError(
            f"cannot read config {path} ({exc.strerror}); pass an existing YAML file"
        ) from exc
    except yaml.YAMLError as exc:
        raise UserError(f"config {path} is not valid YAML ({exc})") from exc
    if not isinstance(loaded, dict):
        raise UserError(f"config {path} must be a mapping of flag: value")
    subparser = subparsers[command]
    actions = {a.dest: a for a in subparser._actions if a.dest not in ("help", "config")}  # noqa: SLF001
    values = {str(k).replace("-", "_"): v for k, v in loaded.items()}
    unknown = sorted(set(values) - set(actions))
    if unknown:
        raise UserError(f"config {path}: unknown keys {unknown}; use this command's flag names")
    for dest, value in values.items():
        action = actions[dest]
        action.required = False
        values[dest] = _config_value(action, value, f"config {path}: {dest}")
    subparser.set_defaults(**values)
    args = parser.parse_args(argv)
    # The settings the file decides (no flag overrode them), to name in their errors.
    given = {a.split("=", 1)[0] for a in argv if a.startswith("--")}
    args.config_keys = {
        d: f"config {path}: {d}" for d in values if not given & set(actions[d].option_strings)
    }
    return args


def _config_value(action: argparse.Action, value: Any, where: str) -> Any:
    """A --config value as its flag would give it. The YAML type must fit the flag: a
    number where a number is expected (1.5 is no epoch count, true is no number), a YAML
    boolean for a switch (a quoted "false" is a string, and strings are true)."""
    if value is None:
        return None
    if action.nargs == 0:  # a switch: store_true
        if not isinstance(value, bool):
            raise UserError(f"{where} must be true or false (unquoted), got {value!r}")
        return value
    if action.nargs is not None and action.nargs != "?":
        items = value if isinstance(value, list) else [value]
        if isinstance(action.nargs, int) and len(items) != action.nargs:
            raise UserError(f"{where} must be a list of {action.nargs} values, got {value!r}")
        return [_config_scalar(action, v, where) for v in items]
    if isinstance(value, list | dict):
        raise UserError(f"{where} must be a single value, got {value!r}")
    return _config_scalar(action, value, where)


def _config_scalar(action: argparse.Action, value: Any, where: str) -> Any:
    kind = action.type
    numeric = {int: (int,), _positive_int: (int,), float: (int, float)}.get(kind)
    wrong = isinstance(value, bool) and kind is not _bool
    if numeric and not isinstance(value, (*numeric, str)) or wrong:
        expected = {int: "a whole number", float: "a number"}.get(numeric and numeric[-1], "")
        raise UserError(f"{where} must be {expected or 'a string'}, got {value!r}")
    if kind is _bool and not isinstance(value, bool):
        raise UserError(f"{where} must be true or false (unquoted), got {value!r}")
    try:
        converted = kind(str(value)) if kind is not None and kind is not _bool else value
    except argparse.ArgumentTypeError as exc:
        raise UserError(f"{where} {exc}") from exc
    except (TypeError, ValueError) as exc:
        expected = "a whole number" if numeric == (int,) else "a number"
        raise UserError(f"{where} must be {expected}, got {value!r}") from exc
    if kind is None and not isinstance(converted, str):
        converted = str(converted)
    if action.choices is not None and converted not in action.choices:
        raise UserError(
            f"{where} must be one of {', '.join(map(str, action.choices))}; got {value!r}"
        )
    return converted


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


class Interrupted(Exception):
    """Ctrl-C; the message says how to continue."""


def _how_to_continue(out: Path, argv: list[str]) -> str:
    from .checkpoint import read_checkpoint

    last = out / "last.pt"
    if not last.is_file():
        return (
            f"interrupted before the first checkpoint; run again: {shlex.join(['skrd4ad', *argv])}"
        )
    again = [a for a in argv if a != "--overwrite"] + ([] if "--resume" in argv else ["--resume"])
    epoch = read_checkpoint(last)["epoch"]
    return f"interrupted; {last} holds epoch {epoch}. Continue with: " + shlex.join(
        ["skrd4ad", *again]
    )


def _train(args: argparse.Namespace) -> dict[str, Any]:
    from .train import TrainConfig, fit

    cfg = TrainConfig(
        data=args.data,
        category=args.category,
        out=args.out,
        layout=args.layout,
        train_fraction=args.train_fraction if args.train_fraction is not None else 0.5,
        backbone=args.backbone,
        teacher_weights=str(args.teacher_weights),
        skip=args.skip,
        image_size=args.image_size,
        epochs=args.epochs,
        batch_size=args.batch_size or 16,
        lr=args.lr,
        betas=tuple(args.betas),
        alpha=args.alpha,
        beta=args.beta,
        gamma=args.gamma,
        seed=args.seed,
        device=args.device,
        precision=args.precision,
        channels_last=args.channels_last,
        checkpoint_every=args.checkpoint_every,
        val_fraction=args.val_fraction,
        val_every=args.val_every,
        select=args.select,
        resume=args.resume,
        overwrite=args.overwrite,
        progress=not args.no_progress,
        cache_features=args.cache_features,
        augment=args.augment,
        compile=args.compile,
    )
    try:
        result = fit(cfg)
    except ConfigError as exc:
        where = getattr(args, "config_keys", {}).get(exc.field)
        raise exc.named(where) if where else exc from None
    except KeyboardInterrupt:
        raise Interrupted(_how_to_continue(Path(cfg.out), args.argv)) from None
    return {
        "model": str(result.model_path),
        "epochs": result.epochs_run,
        "threshold": result.threshold,
        "val": result.val_metrics,
    }


def _evaluate(args: argparse.Namespace) -> dict[str, Any]:
    from .evaluate import evaluate

    return evaluate(
        Path(args.checkpoint),
        Path(args.data),
        args.category,
        Path(args.out),
        layout=args.layout,
        device=args.device,
        batch_size=args.batch_size or 32,
        precision=args.precision,
        overlays=args.overlays,
        curves=args.curves,
        backbone=args.backbone,
        train_fraction=args.train_fraction,
    )


def _predict(args: argparse.Namespace) -> dict[str, Any]:
    from .predict import predict

    rows = predict(
        Path(args.checkpoint),
        [Path(p) for p in args.inputs],
        Path(args.out),
        threshold=args.threshold,
        overlays=not args.no_overlays,
        device=args.device,
        batch_size=args.batch_size or 32,
        precision=args.precision,
    )
    return {
        "predictions": str(Path(args.out) / "predictions.csv"),
        "images": len(rows),
        "anomalous": sum(r.get("anomalous") == "yes" for r in rows),
    }


def _demo(args: argparse.Namespace) -> dict[str, Any]:
    from .data import make_default_dataset
    from .data.default_dataset import DEFAULT_CATEGORIES
    from .evaluate import evaluate
    from .train import TrainConfig, fit

    data, out = Path(args.data), Path(args.out)
    if not (data / "manifest.json").is_file():
        make_default_dataset(data)
    summary = {}
    for cat in DEFAULT_CATEGORIES:
        cfg = TrainConfig(
            data=str(data),
            category=cat,
            out=str(out / cat),
            backbone=args.backbone,
            teacher_weights=str(args.teacher_weights),
            skip=args.skip,
            image_size=args.image_size,
            epochs=args.epochs,
            batch_size=args.batch_size or 16,
            device=args.device,
            precision=args.precision,
            checkpoint_every=max(1, args.epochs),
            val_every=max(1, args.epochs),
            val_fraction=0.25,
            overwrite=True,  # the demo re-runs into the same folder
        )
        result = fit(cfg)
        m = evaluate(
            result.model_path,
            data,
            cat,
            out / cat / "eval",
            device=args.device,
            overlays=3,
            curves=True,
        )
        summary[cat] = {k: m[k] for k in ("image_auroc", "pixel_auroc", "aupro")}
        print(
            f"{cat}: image AUROC {m['image_auroc']:.3f}  pixel AUROC {m['pixel_auroc']:.3f}  "
            f"AUPRO {m['aupro']:.3f}",
            flush=True,
        )
    return summary


def run(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _apply_config(parser, argv)
    args.argv = argv
    if args.command == "make-dataset":
        from .data import make_default_dataset

        kwargs = dict(
            image_size=args.image_size,
            crop_size=args.crop_size,
            n_train=args.n_train,
            n_test_good=args.n_test_good,
            n_test_defect=args.n_test_defect,
            seed=args.seed,
        )
        if args.categories:
            kwargs["categories"] = tuple(args.categories)
        try:
            manifest = make_default_dataset(Path(args.out), **kwargs)
        except ValueError as exc:
            raise UserError(str(exc)) from exc
        except OSError as exc:
            raise UserError(
                f"cannot write the dataset to {args.out} ({exc.strerror}); choose another --out"
            ) from exc
        result: Any = {"out": args.out, "files": len(manifest)}
    elif args.command == "prepare-visa":
        from .data import prepare_visa

        result = prepare_visa(Path(args.raw), Path(args.out), args.categories)
    elif args.command == "train":
        result = _train(args)
    elif args.command == "evaluate":
        result = _evaluate(args)
    elif args.command == "predict":
        result = _predict(args)
    elif args.command == "export":
        from .export import export

        out = export(Path(args.checkpoint), args.format, Path(args.out) if args.out else None)
        result = {"out": str(out), "format": args.format, "preprocessing": "see skrd4ad/export.py"}
    else:
        result = _demo(args)
    print(json_text(result), end="")
    return 0


def _one_line_warning(message, category, filename, lineno, line=None) -> str:  # noqa: ANN001
    return f"skrd4ad: warning: {message}\n"


def main(argv: list[str] | None = None) -> int:
    warnings.formatwarning = _one_line_warning
    try:
        return run(argv)
    except UserError as exc:
        print(f"skrd4ad: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except Interrupted as exc:
        print(f"skrd4ad: {exc}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("skrd4ad: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
