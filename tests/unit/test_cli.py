"""The skrd4ad command: flags, config files, predict, and one-line errors for bad input."""

from __future__ import annotations

import csv
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import tiny_config
from PIL import Image

from skrd4ad.cli import main
from skrd4ad.data import MaskSizeWarning
from skrd4ad.results import METRIC_KEYS
from skrd4ad.train import fit

TRAIN = [
    "--backbone",
    "resnet18",
    "--teacher-weights",
    "none",
    "--image-size",
    "64",
    "--epochs",
    "1",
    "--batch-size",
    "4",
    "--no-progress",
]


@pytest.fixture(scope="module")
def trained(small_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("trained")
    fit(tiny_config(small_dataset, out, epochs=2))
    return out / "model.pt"


def user_error(capsys, argv) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    errors = [line for line in err if line.startswith("skrd4ad: error:")]
    assert len(errors) == 1 and not any("Traceback" in line for line in err), err
    return errors[0]


def copy_dataset(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_help_explains_every_flag(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for flag in (
        "--data",
        "--category",
        "--out",
        "--backbone",
        "--teacher-weights",
        "--skip",
        "--image-size",
        "--epochs",
        "--batch-size",
        "--alpha",
        "--beta",
        "--gamma",
        "--seed",
        "--device",
        "--resume",
        "--config",
    ):
        assert flag in out
    _one_default_per_flag(out)
    for cmd in ("make-dataset", "evaluate", "predict", "prepare-visa", "export", "demo"):
        with pytest.raises(SystemExit) as exit_:
            main([cmd, "--help"])
        out = capsys.readouterr().out
        assert exit_.value.code == 0 and "--config" in out
        _one_default_per_flag(out)
    done = subprocess.run([sys.executable, "-m", "skrd4ad.cli", "evaluate"], capture_output=True)
    assert done.returncode == 2 and b"--checkpoint" in done.stderr


def _one_default_per_flag(help_text: str) -> None:
    """Each flag's help names its default at most once, and never a default of None;
    switches are ``--x/--no-x`` or a bare ``--x``, never ``--x X``."""
    options = help_text.split("options:", 1)[1]
    blocks = re.split(r"\n  (?=-)", options)
    for block in blocks:
        assert block.count("(default:") <= 1, block
        assert "(default: None" not in block and "(default: False" not in block, block
    assert not re.search(r"--(channels-last|compile|progress|resume) [A-Z]", help_text)


def test_config_file_mirrors_flags(small_dataset, tmp_path, capsys):
    cfg = tmp_path / "train.yaml"
    cfg.write_text(
        f"data: {{root: {small_dataset}, category: grass}}\n"
        "model: {backbone: resnet18, teacher_weights: none}\nloss: {gamma: 0.2}\n"
        f"train: {{out: {tmp_path / 'run'}, image_size: 64, epochs: 1, batch_size: 6,"
        " val_fraction: 0, progress: false}\n"
    )
    assert main(["train", "--config", str(cfg), "--alpha", "0.5"]) == 0
    # progress: false drops the bar, not the epoch's line; train ends with its summary.
    err = capsys.readouterr().err
    assert "\r" not in err and "epoch 1/1 loss " in err
    model = tmp_path / "run" / "model.pt"
    assert "skrd4ad: trained 1 epoch in " in err and f"model: {model}" in err
    assert (
        f"skrd4ad: evaluate it: skrd4ad evaluate --checkpoint {model} --data {small_dataset} "
        f"--category grass --out {tmp_path / 'run' / 'eval'}"
    ) in err
    from skrd4ad.checkpoint import read_checkpoint

    conf = read_checkpoint(tmp_path / "run" / "model.pt")["config"]
    got = conf["data"]["category"], conf["loss"]["gamma"], conf["loss"]["alpha"]
    assert (*got, conf["train"]["batch_size"]) == ("grass", 0.2, 0.5, 6)
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {epochz: 3}\n")
    assert "train.epochz" in user_error(capsys, ["train", "--config", str(bad)])
    # A flat key (the vocabulary of earlier versions) names the section it belongs in.
    bad.write_text("epochs: 3\n")
    line = user_error(capsys, ["train", "--config", str(bad)])
    assert "epochs belongs in the train section" in line and "train: {epochs: 3}" in line


def test_missing_category(small_dataset, tmp_path, capsys):
    msg = user_error(
        capsys,
        [
            "train",
            "--data",
            str(small_dataset),
            "--category",
            "tile",
            "--out",
            str(tmp_path / "o"),
            *TRAIN,
        ],
    )
    assert "tile" in msg and "available: brick, grass, gravel" in msg


def test_empty_train_set(small_dataset, tmp_path, capsys):
    root = copy_dataset(small_dataset, tmp_path / "d")
    for p in (root / "brick" / "train" / "good").iterdir():
        p.unlink()
    msg = user_error(
        capsys,
        ["train", "--data", str(root), "--category", "brick", "--out", str(tmp_path / "o"), *TRAIN],
    )
    assert "empty train set" in msg and str(root / "brick" / "train" / "good") in msg


def test_truncated_image(small_dataset, tmp_path, capsys):
    root = copy_dataset(small_dataset, tmp_path / "d")
    victim = root / "brick" / "train" / "good" / "003.png"
    victim.write_bytes(victim.read_bytes()[:200])
    msg = user_error(
        capsys,
        ["train", "--data", str(root), "--category", "brick", "--out", str(tmp_path / "o"), *TRAIN],
    )
    assert str(victim) in msg and "truncated" in msg
    assert not (tmp_path / "o" / "model.pt").exists()


def test_defective_image_without_mask(small_dataset, tmp_path, capsys):
    root = copy_dataset(small_dataset, tmp_path / "d")
    (root / "brick" / "ground_truth" / "hole" / "001_mask.png").unlink()
    msg = user_error(
        capsys,
        ["train", "--data", str(root), "--category", "brick", "--out", str(tmp_path / "o"), *TRAIN],
    )
    assert str(root / "brick" / "test" / "hole" / "001.png") in msg and "001_mask.png" in msg


def test_mask_of_other_size_is_resized_with_warning(small_dataset, trained, tmp_path, capsys):
    root = copy_dataset(small_dataset, tmp_path / "d")
    mask = root / "brick" / "ground_truth" / "hole" / "000_mask.png"
    Image.open(mask).resize((32, 32), Image.NEAREST).save(mask)
    with pytest.warns(MaskSizeWarning, match="resized") as record:
        assert (
            main(
                [
                    "evaluate",
                    "--checkpoint",
                    str(trained),
                    "--data",
                    str(root),
                    "--category",
                    "brick",
                    "--out",
                    str(tmp_path / "e"),
                ]
            )
            == 0
        )
    assert str(mask) in str(record[0].message)
    assert (tmp_path / "e" / "metrics.json").is_file()


def test_checkpoint_of_other_backbone_and_non_checkpoint(small_dataset, trained, tmp_path, capsys):
    args = ["--data", str(small_dataset), "--category", "brick", "--out", str(tmp_path / "e")]
    msg = user_error(
        capsys, ["evaluate", "--checkpoint", str(trained), "--backbone", "resnet34", *args]
    )
    assert "resnet18" in msg and "resnet34" in msg
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    msg = user_error(capsys, ["evaluate", "--checkpoint", str(junk), *args])
    assert str(junk) in msg and "not an skrd4ad checkpoint" in msg
    assert not (tmp_path / "e" / "metrics.json").exists()


def test_output_dir_not_writable(small_dataset, trained, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should be")
    msg = user_error(
        capsys,
        [
            "predict",
            str(trained),
            str(small_dataset / "brick" / "test" / "hole"),
            "--out",
            str(blocker / "out"),
        ],
    )
    assert str(blocker / "out") in msg and "not writable" in msg


def test_predict_writes_csv_and_overlays(small_dataset, trained, tmp_path, capsys):
    folder = small_dataset / "brick" / "test" / "good"
    single = small_dataset / "brick" / "test" / "hole" / "000.png"
    assert main(["predict", str(trained), str(folder), str(single), "--out", str(tmp_path)]) == 0
    rows = list(csv.DictReader((tmp_path / "predictions.csv").open()))
    assert len(rows) == 5 and rows[-1]["path"] == str(single)
    assert {r["anomalous"] for r in rows} <= {"yes", "no"}
    for r in rows:
        assert (float(r["score"]) >= float(r["threshold"])) == (r["anomalous"] == "yes")
    assert len(list((tmp_path / "overlays").glob("*.png"))) == 5
    assert (
        main(
            [
                "predict",
                str(trained),
                str(single),
                "--out",
                str(tmp_path / "t"),
                "--threshold",
                "1e9",
                "--no-overlays",
            ]
        )
        == 0
    )
    rows = list(csv.DictReader((tmp_path / "t" / "predictions.csv").open()))
    assert rows[0]["anomalous"] == "no" and not (tmp_path / "t" / "overlays").exists()


def test_make_dataset_command(tmp_path, capsys):
    args = [
        "make-dataset",
        "--image-size",
        "32",
        "--crop-size",
        "64",
        "--n-train",
        "2",
        "--n-test-good",
        "1",
        "--n-test-defect",
        "1",
        "--categories",
        "gravel",
    ]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    assert main([*args, "--out", str(tmp_path / "b")]) == 0
    a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.png"))
    assert len(a) == 2 + 1 + 4 * 2
    for rel in a:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()


@pytest.mark.slow
def test_end_to_end_on_hazelnut_toy(hazelnut_root, tmp_path, capsys):
    out = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--data",
                str(hazelnut_root),
                "--out",
                str(out),
                "--backbone",
                "resnet18",
                "--teacher-weights",
                "none",
                "--image-size",
                "128",
                "--epochs",
                "3",
                "--batch-size",
                "8",
                "--val-fraction",
                "0.2",
                "--no-progress",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "evaluate",
                "--checkpoint",
                str(out / "model.pt"),
                "--data",
                str(hazelnut_root),
                "--out",
                str(out / "eval"),
                "--overlays",
                "2",
                "--curves",
            ]
        )
        == 0
    )
    import json

    m = json.loads((out / "eval" / "metrics.json").read_text())
    assert m["layout"] == "folder" and m["counts"]["anomalous"] == 17
    assert all(np.isfinite(m[k]) for k in METRIC_KEYS)
    assert (
        main(
            [
                "predict",
                str(out / "model.pt"),
                str(hazelnut_root / "colour"),
                "--out",
                str(out / "pred"),
            ]
        )
        == 0
    )
    assert len(list(csv.DictReader((out / "pred" / "predictions.csv").open()))) == 17
