"""The error boundary: every user error ends in one line naming the file, key or value and
the fix, with exit status 2, through the real console commands (subprocesses)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import SKRD4AD, one_line_error


def train_cmd(data: Path, *extra: str) -> list[str]:
    return [
        *SKRD4AD,
        "train",
        "--data",
        str(data),
        "--category",
        "brick",
        "--out",
        "run",
        "--backbone",
        "resnet18",
        "--image-size",
        "64",
        "--epochs",
        "1",
        "--no-progress",
        *extra,
    ]


def test_default_imagenet_teacher_without_cached_weights(work):
    root, data = work
    line = one_line_error(train_cmd(data), root, env={"TORCH_HOME": str(root / "empty-torch-home")})
    assert "resnet18-f37072fd.pth" in line and "--teacher-weights" in line


@pytest.mark.parametrize(
    ("weights", "expected"),
    [
        ("missing.pth", "missing.pth is not a file"),
        ("text.pth", "text.pth cannot be used: it is not a file written by torch.save"),
        ("module.pth", "module.pth cannot be used: it holds pickled Python objects"),
    ],
)
def test_teacher_weights_file_problems(work, weights, expected):
    root, data = work
    line = one_line_error(train_cmd(data, "--teacher-weights", weights), root)
    assert expected in line and "state_dict" in line or "state dict" in line


CONFIG_CASES = {
    "model: {backbone: resnet9000}": "config c.yaml: model.backbone must be one of resnet18",
    "runtime: {device: tpu}": "config c.yaml: runtime.device must be one of auto, cpu, cuda; got",
    'train: {resume: "false"}': "config c.yaml: train.resume must be true or false, got 'false'",
    'train: {epochs: "ten"}': "config c.yaml: train.epochs must be a whole number, got 'ten'",
    "frobnicate: 1": "config c.yaml: unknown section 'frobnicate'",
    "train: {frobnicate: 1}": "config c.yaml: unknown keys ['train.frobnicate']",
    "train: {epochs: 1.5}": "config c.yaml: train.epochs must be a whole number, got 1.5",
    "train: {epochs: true}": "config c.yaml: train.epochs must be a whole number, got True",
    "train: {batch_size: 0}": "config c.yaml: train.batch_size must be at least 1, got 0",
    "train: {image_size: 33}": "config c.yaml: train.image_size must be a multiple of 32",
    "loss: {alpha: 0, beta: 0, gamma: 0}": "alpha and --beta and --gamma are all 0",
    "runtime: {channels_last: 'no'}": "config c.yaml: runtime.channels_last must be true or false",
    "epochs: 3": "config c.yaml: epochs belongs in the train section",
}


@pytest.mark.parametrize("entry", sorted(CONFIG_CASES))
def test_config_file_problems(work, entry):
    root, data = work
    config = {
        "data": {"root": str(data), "category": "brick"},
        "model": {"backbone": "resnet18", "teacher_weights": "none"},
        "train": {"out": "run-config", "image_size": 64, "epochs": 1},
    }
    for section, values in yaml.safe_load(entry).items():
        if isinstance(values, dict):
            config.setdefault(section, {}).update(values)
        else:
            config[section] = values
    (root / "c.yaml").write_text(yaml.safe_dump(config))
    line = one_line_error([*SKRD4AD, "train", "--config", "c.yaml", "--no-progress"], root)
    assert CONFIG_CASES[entry] in line
    assert not (root / "run-config").exists()  # nothing was started, nothing half-written


def test_zero_batch_size_flag(work):
    root, data = work
    line = one_line_error(train_cmd(data, "--teacher-weights", "none", "--batch-size", "0"), root)
    assert "--batch-size" in line and "at least 1" in line


def test_training_into_a_used_run_folder(work, tmp_path):
    _, data = work
    cmd = train_cmd(data, "--teacher-weights", "none", "--out", str(tmp_path / "r"))
    subprocess.run(cmd, cwd=tmp_path, check=True, capture_output=True, timeout=300)
    line = one_line_error(cmd, tmp_path)
    assert "already holds a training run" in line and "--resume" in line and "--overwrite" in line


@pytest.fixture(scope="module")
def model(work, tmp_path_factory) -> Path:
    """A model trained through the command line, for the predict cases."""
    _, data = work
    out = tmp_path_factory.mktemp("model")
    subprocess.run(
        train_cmd(data, "--teacher-weights", "none", "--out", str(out)),
        cwd=out,
        check=True,
        capture_output=True,
        timeout=300,
    )
    return out / "model.pt"


def test_a_huge_image_names_its_size_and_the_way_to_allow_it(model, tmp_path):
    from PIL import Image

    Image.new("1", (15000, 15000)).save(tmp_path / "huge.png")  # 225 Mpx, 27 kB on disk
    line = one_line_error(
        [*SKRD4AD, "predict", str(model), "huge.png", "--out", "p", "--no-overlays"], tmp_path
    )
    assert "huge.png has 225,000,000 pixels" in line
    assert "SKRD4AD_MAX_IMAGE_PIXELS=225000000" in line


def test_ctrl_c_of_train_names_the_resume_command(work, tmp_path):
    import shlex
    import signal
    import time

    _, data = work
    cmd = train_cmd(
        data,
        "--teacher-weights",
        "none",
        "--out",
        str(tmp_path / "run"),
        "--epochs",
        "500",
        "--checkpoint-every",
        "1",
        "--val-fraction",
        "0",
    )
    proc = subprocess.Popen(cmd, cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not (tmp_path / "run" / "last.pt").is_file() and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 130, err
    line = err.strip().splitlines()[-1]
    assert "interrupted;" in line and "holds epoch" in line and line.endswith("--resume")
    again = shlex.split(line.split("Continue with: ", 1)[1])
    assert again[0] == "skrd4ad" and again[-1] == "--resume"
    again[again.index("500")] = "2"  # finish soon
    done = subprocess.run(
        [*SKRD4AD, *again[1:]], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]


def test_missing_category_on_a_dataset_root_says_so(work, tmp_path):
    _, data = work
    line = one_line_error(
        [
            *SKRD4AD,
            "train",
            "--data",
            str(data),
            "--out",
            "run",
            "--teacher-weights",
            "none",
            "--backbone",
            "resnet18",
            "--image-size",
            "64",
        ],
        tmp_path,
    )
    assert "holds categories (brick, grass, gravel): pass --category" in line


def test_predict_scores_the_good_images_and_names_every_bad_one(work, model, tmp_path):
    import csv

    _, data = work
    folder = tmp_path / "images"
    folder.mkdir()
    for src in sorted((data / "brick" / "test" / "good").iterdir())[:2]:
        (folder / src.name).write_bytes(src.read_bytes())
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    half = (data / "brick" / "test" / "good").iterdir().__next__().read_bytes()
    (folder / "cut.png").write_bytes(half[: len(half) // 3])
    line = one_line_error(
        [
            *SKRD4AD,
            "predict",
            str(model),
            str(folder),
            "--out",
            "p",
            "--threshold",
            "0.5",
        ],
        tmp_path,
    )
    assert "2 of 4 images could not be read" in line
    assert "broken.png" in line and "cut.png" in line and "the other 2 were scored" in line
    rows = list(csv.DictReader((tmp_path / "p" / "predictions.csv").open()))
    assert len(rows) == 4
    scored = [r for r in rows if r["score"]]
    bad = {Path(r["path"]).name: r["error"] for r in rows if r["error"]}
    assert len(scored) == 2 and set(bad) == {"broken.png", "cut.png"}
    assert all("cannot read image" in e for e in bad.values())
