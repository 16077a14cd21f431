from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SKRD4AD = [sys.executable, "-m", "skrd4ad.cli"]
SHARED = Path(os.environ.get("SKRD4AD_SHARED", REPO.parent / "shared"))
REFERENCE = SHARED / "reference"
HAZELNUT = SHARED / "datasets" / "hazelnut_toy"


def _require(path: Path) -> Path:
    if not path.exists():
        raise FileNotFoundError(
            f"{path} is missing: the tests need the project's shared/ folder beside the "
            "checkout (or SKRD4AD_SHARED pointing at it)"
        )
    return path


@pytest.fixture(scope="session")
def reference() -> dict:
    return torch.load(_require(REFERENCE / "skrd4ad_resnet18_reference.pt"), weights_only=False)


@pytest.fixture(scope="session")
def shapes_file() -> Path:
    return _require(REFERENCE / "skrd4ad_wide_resnet50_2_shapes.json")


@pytest.fixture(scope="session")
def hazelnut_root() -> Path:
    return _require(HAZELNUT)


@pytest.fixture(autouse=True)
def _small_threads():
    torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory) -> Path:
    from skrd4ad.data import make_default_dataset

    root = tmp_path_factory.mktemp("default")
    make_default_dataset(
        root, image_size=64, crop_size=128, n_train=12, n_test_good=4, n_test_defect=2
    )
    return root


def tiny_config(data: Path, out: Path, **overrides):
    """A small, fast Config; ``overrides`` by field name (``epochs=2``), which the schema
    keeps unique across its sections."""
    from skrd4ad.config import SETTINGS, Config

    by_field = {s.field.name: name for name, s in SETTINGS.items()}
    base = dict(
        root=str(data),
        category="brick",
        out=str(out),
        backbone="resnet18",
        teacher_weights="none",
        image_size=64,
        epochs=4,
        batch_size=4,
        checkpoint_every=2,
        val_every=2,
        val_fraction=0.25,
        progress=False,
        seed=5,
    )
    base.update(overrides)
    return Config().with_values({by_field[k]: v for k, v in base.items()})


def model_with_batchnorm_statistics(seed: int = 0):
    """A random resnet18 SK model whose BatchNorm layers have non-trivial statistics and
    affine weights, so that folding them into the convolutions is exercised."""
    from skrd4ad.models import build_model

    torch.manual_seed(seed)
    model = build_model("resnet18", "none", "sk")
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    return model


def one_line_error(cmd: list[str], cwd: Path, env: dict | None = None) -> str:
    """Run a console command that must fail on bad input: exit status 2, no traceback,
    and an error line last; returns that line."""
    done = subprocess.run(
        cmd, cwd=cwd, capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})}
    )
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, (done.returncode, done.stderr[-3000:])
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert lines and "error:" in lines[-1], done.stderr
    return lines[-1]


@pytest.fixture(scope="module")
def work(small_dataset, tmp_path_factory):
    """A scratch folder with broken weight files, and the small dataset."""
    root = tmp_path_factory.mktemp("errors")
    (root / "text.pth").write_text("not a torch file\n")
    torch.save(torch.nn.Linear(2, 2), root / "module.pth")  # a pickled module, no state dict
    return root, small_dataset
