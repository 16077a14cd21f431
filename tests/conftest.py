from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
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
