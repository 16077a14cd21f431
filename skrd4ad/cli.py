"""The ``skrd4ad`` command: make-dataset, prepare-visa, train, evaluate, predict, demo.

Every subcommand takes ``--config FILE.yaml`` whose keys mirror its flags (dashes or
underscores); flags given on the command line win over the file. User errors print one
line and exit with status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
import typing
import warnings
from pathlib import Path
from typing import Any

from .errors import UserError
from .results import json_text

EXIT_USER_ERROR = 2


class Commands:
    """The subcommands' parsers, and for each the flags added by hand ({dest: action}),
    which a ``--config`` file of that command may set."""

    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self.sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
        self.parsers: dict[str, argparse.ArgumentParser] = {}
        self.actions: dict[str, dict[str, argparse.Action]] = {}

    def add(self, name: str, help_: str) -> argparse.ArgumentParser:
        p = self.sub.add_parser(name, help=help_, description=help_)
        p.add_argument(
            "--config", metavar="FILE.yaml", help="YAML file of settings (see --help of each)"
        )
        self.parsers[name], self.actions[name] = p, {}
        return p

    def flag(self, name: str, *flags: str, **kw: Any) -> argparse.Action:
        """A flag of command ``name``; its help names its default once (none for a switch
        or a flag without one)."""
        default, text = kw.get("default"), kw.get("help", "")
        switch_or_none = any(default is x for x in (None, False, argparse.SUPPRESS))
        if not switch_or_none and "default" not in text:
            shown = " ".join(map(str, default)) if isinstance(default, list) else default
            kw["help"] = f"{text} (default: {shown})"
        action = self.parsers[name].add_argument(*flags, **kw)
        self.actions[name][action.dest] = action
        return action


# The quick start's settings: a small random teacher, so that it runs on a laptop CPU.
DEMO_PRESET = {
    "model.backbone": "resnet18",
    "model.teacher_weights": "none",
    "train.image_size": 128,
    "train.epochs": 30,
    "train.val_fraction": 0.25,
}
DEMO_FLAGS = (
    *(f"model.{k}" for k in ("backbone", "teacher_weights", "skip")),
    *(f"runtime.{k}" for k in ("device", "precision")),
    *(f"train.{k}" for k in ("image_size", "epochs", "batch_size")),
)
# Settings the train command needs to be told: where the data is and where the run goes.
TRAIN_REQUIRED = ("data.root", "train.out")


def _add_runtime_flags(commands: Commands, name: str) -> None:
    """evaluate and predict: where and how to score (the checkpoint's precision unless
    given); the choices and help are the training settings'."""
    from .config import SETTINGS, Backend

    for key in ("runtime.device", "runtime.precision"):
        s = SETTINGS[key]
        default = s.default if key == "runtime.device" else None
        note = "" if default else " (default: the checkpoint's setting)"
        commands.flag(name, s.flag, choices=s.choices, default=default, help=s.help + note)
    commands.flag(
        name, "--batch-size", type=_positive_int,
        default=SETTINGS["runtime.eval_batch_size"].default, help="images per batch",
    )  # fmt: skip
    commands.flag(
        name, "--backend", choices=typing.get_args(Backend), default="auto",
        help="what scores: onnxruntime runs the ONNX model `skrd4ad export --format onnx` "
        "wrote beside the checkpoint, on the CPU in fp32; auto takes it when it is there "
        "and current, else torch (BatchNorm folded)",
    )  # fmt: skip


def _add_data_flags(commands: Commands, name: str) -> None:
    from .config import SETTINGS

    for key in ("data.root", "data.category", "data.layout"):
        s = SETTINGS[key]
        commands.flag(name, s.flag, dest=s.field.name if key != "data.root" else "data",
                      choices=s.choices, default=s.default, help=s.help)  # fmt: skip
    commands.flag(
        name, "--train-fraction", type=float, default=None,
        help="folder layout only: fraction of good/ used for training (default: the "
        "checkpoint's)",
    )  # fmt: skip


def build_parser() -> tuple[argparse.ArgumentParser, Commands]:
    from . import __version__
    from .config_cli import add_setting_flags

    parser = argparse.ArgumentParser(
        prog="skrd4ad", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"skrd4ad {__version__}")
    commands = Commands(parser)
    _add_dataset_commands(commands)
    p = commands.add("train", "train SK-RD4AD on one category (normal images only)")
    add_setting_flags(p)
    _add_use_commands(commands)
    p = commands.add("demo", "make the default dataset, train and evaluate every category")
    commands.flag("demo", "--out", default="runs/demo", help="run folder")
    commands.flag("demo", "--data", default="data/default", help="where the dataset is written")
    add_setting_flags(p, DEMO_FLAGS, DEMO_PRESET)
    return parser, commands


def _add_dataset_commands(c: Commands) -> None:
    from .data.default_dataset import DEFAULT_CATEGORIES, MakeSettings

    c.add("make-dataset", "write the embedded default dataset (MVTec layout, deterministic)")
    c.flag("make-dataset", "--out", required=True, help="folder to write the dataset into")
    c.flag("make-dataset", "--categories", nargs="+", default=list(DEFAULT_CATEGORIES),
           help="texture categories")  # fmt: skip
    for f in dataclasses.fields(MakeSettings):
        c.flag("make-dataset", "--" + f.name.replace("_", "-"), type=int,
               default=f.default, help=f.metadata["help"])  # fmt: skip
    c.add("prepare-visa", "convert a raw VisA download into MVTec layout (binarised masks)")
    c.flag("prepare-visa", "--raw", required=True, help="the extracted VisA folder (split_csv/)")
    c.flag("prepare-visa", "--out", required=True, help="where to write the MVTec-layout copy")
    c.flag("prepare-visa", "--categories", nargs="+", default=None, help="only these categories")


def _add_use_commands(c: Commands) -> None:
    c.add("evaluate", "evaluate a checkpoint on the test split; writes OUT/metrics.json")
    c.flag("evaluate", "--checkpoint", required=True, help="model.pt (or last.pt) from train")
    _add_data_flags(c, "evaluate")
    c.flag("evaluate", "--out", required=True, help="folder for metrics.json, overlays, curves")
    c.flag("evaluate", "--backbone", default=None, help="fail unless the checkpoint holds it")
    _add_runtime_flags(c, "evaluate")
    c.flag("evaluate", "--overlays", type=int, default=0, metavar="N",
           help="write overlays of the N highest- and N lowest-scoring test images")  # fmt: skip
    c.flag("evaluate", "--curves", action="store_true", help="write ROC and PRO curve PNGs")

    c.add("predict", "score images with a checkpoint; writes OUT/predictions.csv and overlays")
    c.flag("predict", "checkpoint", help="model.pt written by train")
    c.flag("predict", "inputs", nargs="+", metavar="IMAGES_OR_DIR", help="image files or folders")
    c.flag("predict", "--out", required=True, help="folder for predictions.csv and overlays/")
    c.flag("predict", "--threshold", type=float, default=None,
           help="score at or above which an image is anomalous (default: the checkpoint's "
           "validation threshold)")  # fmt: skip
    c.flag("predict", "--no-overlays", action="store_true", help="skip the overlay PNGs")
    _add_runtime_flags(c, "predict")

    c.add("export", "write a self-contained model: uint8 images (N, 3, S, S) -> (map, score)")
    c.flag("export", "--checkpoint", required=True, help="model.pt (or last.pt) from train")
    c.flag("export", "--format", required=True, choices=["torchscript", "onnx"], help="format")
    c.flag("export", "--out", default=None,
           help="file to write (default: the checkpoint's name, .pt/.onnx)")  # fmt: skip


def _config_path(argv: list[str]) -> str | None:
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
    return None


def _apply_config(
    parser: argparse.ArgumentParser, commands: Commands, argv: list[str]
) -> argparse.Namespace:
    """Parse ``argv``. For train and demo the settings come from the schema
    (:mod:`skrd4ad.config_cli`); for the other commands, values from ``--config`` become
    the command's defaults first, so flags on the command line still win."""
    config = _config_path(argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    if config is None or command in (None, "train", "demo") or command not in commands.parsers:
        return parser.parse_args(argv)
    from .config_cli import read_config_file

    path = Path(config)
    loaded = read_config_file(path)
    actions = {d: a for d, a in commands.actions[command].items() if d not in ("help", "config")}
    values = {str(k).replace("-", "_"): v for k, v in loaded.items()}
    unknown = sorted(set(values) - set(actions))
    if unknown:
        raise UserError(f"config {path}: unknown keys {unknown}; use this command's flag names")
    for dest, value in values.items():
        action = actions[dest]
        action.required = False
        values[dest] = _config_value(action, value, f"config {path}: {dest}")
    commands.parsers[command].set_defaults(**values)
    return parser.parse_args(argv)


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
    wrong = isinstance(value, bool)
    if numeric and not isinstance(value, (*numeric, str)) or wrong:
        expected = {int: "a whole number", float: "a number"}.get(numeric and numeric[-1], "")
        raise UserError(f"{where} must be {expected or 'a string'}, got {value!r}")
    try:
        converted = kind(str(value)) if kind is not None else value
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
    from .results import LAST

    last = out / LAST
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
    from .config_cli import build_config
    from .train import fit

    cfg = build_config(args, args.config, required=TRAIN_REQUIRED)
    try:
        result = fit(cfg)
    except KeyboardInterrupt:
        raise Interrupted(_how_to_continue(Path(cfg.train.out), args.argv)) from None
    print(_train_summary(cfg, result), file=sys.stderr)
    return {
        "model": str(result.model_path),
        "epochs": result.epochs_run,
        "threshold": result.threshold,
        "val": result.val_metrics,
    }


def _train_summary(cfg: Any, result: Any) -> str:
    """What a person reads at the end of train: the final loss, the time, where the model
    is, and the command that evaluates it."""
    seconds = sum(h.get("epoch_s", 0.0) for h in result.history)
    loss = f", final loss {result.history[-1]['loss']:.4f}" if result.history else ""
    evaluate = ["skrd4ad", "evaluate", "--checkpoint", str(result.model_path),
                "--data", cfg.data.root]  # fmt: skip
    if cfg.data.category:
        evaluate += ["--category", cfg.data.category]
    evaluate += ["--out", str(Path(cfg.train.out) / "eval")]
    return (
        f"skrd4ad: trained {len(result.history)} epoch{'' if len(result.history) == 1 else 's'} "
        f"in {seconds:.1f} s{loss}; "
        f"model: {result.model_path}\nskrd4ad: evaluate it: {shlex.join(evaluate)}"
    )


def _evaluate(args: argparse.Namespace) -> dict[str, Any]:
    from .evaluate import evaluate

    return evaluate(
        Path(args.checkpoint),
        Path(args.data),
        args.category,
        Path(args.out),
        layout=args.layout,
        device=args.device,
        batch_size=args.batch_size,
        precision=args.precision,
        overlays=args.overlays,
        curves=args.curves,
        backbone=args.backbone,
        train_fraction=args.train_fraction,
        backend=args.backend,
    )


def _predict(args: argparse.Namespace) -> dict[str, Any]:
    from .predict import predict

    done = predict(
        Path(args.checkpoint),
        [Path(p) for p in args.inputs],
        Path(args.out),
        threshold=args.threshold,
        overlays=not args.no_overlays,
        device=args.device,
        batch_size=args.batch_size,
        precision=args.precision,
        backend=args.backend,
    )
    return {
        "predictions": str(Path(args.out) / "predictions.csv"),
        "images": len(done.rows),
        "anomalous": sum(r.get("anomalous") == "yes" for r in done.rows),
        "backend": done.backend,
    }


def _demo(args: argparse.Namespace) -> dict[str, Any]:
    from .config_cli import build_config
    from .data import make_default_dataset
    from .data.default_dataset import DEFAULT_CATEGORIES
    from .evaluate import evaluate
    from .train import fit

    data, out = Path(args.data), Path(args.out)
    if not (data / "manifest.json").is_file():
        make_default_dataset(data)
    base = build_config(args, args.config, preset=DEMO_PRESET)
    epochs = base.train.epochs
    summary = {}
    for cat in DEFAULT_CATEGORIES:
        cfg = base.with_values({
            "data.root": str(data), "data.category": cat, "train.out": str(out / cat),
            "train.checkpoint_every": epochs, "train.val_every": epochs,
            "train.overwrite": True,  # the demo re-runs into the same folder
        })  # fmt: skip
        result = fit(cfg)
        m = evaluate(result.model_path, data, cat, out / cat / "eval",
                     device=cfg.runtime.device, overlays=3, curves=True)  # fmt: skip
        summary[cat] = {k: m[k] for k in ("image_auroc", "pixel_auroc", "aupro")}
        print(
            f"{cat}: image AUROC {m['image_auroc']:.3f}  pixel AUROC {m['pixel_auroc']:.3f}  "
            f"AUPRO {m['aupro']:.3f}",
            flush=True,
        )
    return summary


def _make_dataset(args: argparse.Namespace) -> dict[str, Any]:
    from .data import make_default_dataset
    from .data.default_dataset import MakeSettings

    sizes = {f.name: getattr(args, f.name) for f in dataclasses.fields(MakeSettings)}
    try:
        manifest = make_default_dataset(Path(args.out), categories=tuple(args.categories), **sizes)
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    except OSError as exc:
        raise UserError(
            f"cannot write the dataset to {args.out} ({exc.strerror}); choose another --out"
        ) from exc
    return {"out": args.out, "files": len(manifest)}


def run(argv: list[str] | None = None) -> int:
    parser, commands = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _apply_config(parser, commands, argv)
    args.argv = argv
    if args.command == "make-dataset":
        result: Any = _make_dataset(args)
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
