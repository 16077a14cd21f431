"""The pipelines' error boundary: a bad params.yaml or search-space value, a missing
dataset, a cluster's relative outputs, each one line naming the key and the fix, with exit
status 2, before Ray starts (subprocesses of the stage commands)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO, one_line_error


@pytest.fixture()
def prepared(work, tmp_path):
    """A project folder whose prepared/ names the small dataset, and a params.yaml."""
    _, data = work
    (tmp_path / "prepared").mkdir()
    (tmp_path / "prepared" / "dataset.json").write_text(
        json.dumps(
            {"name": "default", "root": str(data), "layout": "auto", "categories": ["brick"]}
        )
    )
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["train"]["image_size"] = 33
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    return tmp_path


def test_benchmark_rejects_a_bad_params_value_before_ray_starts(prepared):
    done = subprocess.run(
        [sys.executable, "-m", "pipelines.benchmark", "--prepared", "prepared", "--out", "results"]
        + ["--metrics", "metrics.json"],
        cwd=prepared,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert done.returncode == 2, done.stderr[-3000:]
    assert done.stderr.strip().splitlines() == [
        "benchmark: error: params.yaml: train.image_size must be a multiple of 32 (the "
        "teacher's stride), got 33; e.g. 32"
    ]
    assert not (prepared / "results").exists()  # no Ray run, no result folder


def test_search_rejects_a_bad_space_value_before_ray_starts(prepared):
    space = yaml.safe_load((REPO / "tune_spaces" / "smoke.yaml").read_text())
    space["config"]["train"]["batch_size"] = 0
    (prepared / "space.yaml").write_text(yaml.safe_dump(space))
    params = yaml.safe_load((prepared / "params.yaml").read_text())
    params["train"]["image_size"] = 64
    (prepared / "params.yaml").write_text(yaml.safe_dump(params))
    line = one_line_error(
        [sys.executable, "-m", "pipelines.tune", "--space", "space.yaml"],
        prepared,
        env={"PYTHONPATH": str(REPO)},
    )
    assert line == "tune: error: space.yaml: config.train.batch_size must be at least 1, got 0"
    assert not (prepared / "results").exists()


def prepare_params(tmp_path: Path, **dataset) -> None:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["dataset"].update(dataset)
    params["default_dataset"].update(
        image_size=32, crop_size=64, n_train=2, n_test_good=1, n_test_defect=1
    )
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))


def test_prepare_keeps_the_last_good_output_and_checks_categories(tmp_path):
    env = {"PYTHONPATH": str(REPO)}
    prepare_params(tmp_path)
    subprocess.run(
        [sys.executable, "-m", "pipelines.prepare", "--out", "prepared"],
        cwd=tmp_path,
        check=True,
        capture_output=True,
        env={**os.environ, **env},
        timeout=300,
    )
    good = (tmp_path / "prepared" / "dataset.json").read_text()
    assert json.loads(good)["root"] == "prepared/default"
    prepare_params(tmp_path, name="mvtec", root="no/such/folder")
    line = one_line_error(
        [sys.executable, "-m", "pipelines.prepare", "--out", "prepared"], tmp_path, env
    )
    assert "dataset.root no/such/folder does not exist" in line and "dvc pull" in line
    prepare_params(tmp_path, categories=["brick", "brik"])
    line = one_line_error(
        [sys.executable, "-m", "pipelines.prepare", "--out", "prepared"], tmp_path, env
    )
    assert "dataset.categories: brik not found" in line and "available: brick" in line
    assert (tmp_path / "prepared" / "dataset.json").read_text() == good
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_search_on_a_cluster_refuses_relative_outputs(prepared):
    """As a Ray job (RAY_ADDRESS, which Ray sets for a job's entrypoint), relative results
    and a relative sqlite URI would land in Ray's temporary copy of the working folder."""
    params = yaml.safe_load((prepared / "params.yaml").read_text())
    params["train"]["image_size"] = 64
    (prepared / "params.yaml").write_text(yaml.safe_dump(params))
    env = {"PYTHONPATH": str(REPO), "RAY_ADDRESS": "127.0.0.1:1"}
    smoke = [
        sys.executable,
        "-m",
        "pipelines.tune",
        "--space",
        str(REPO / "tune_spaces" / "smoke.yaml"),
    ]
    line = one_line_error(smoke, prepared, {**env, "MLFLOW_TRACKING_URI": ""})
    assert "the search storage results/tune is relative: pass --storage-path" in line
    assert (
        "the MLflow tracking URI sqlite:///mlflow.db is relative: set MLFLOW_TRACKING_URI" in line
    )
    line = one_line_error(
        [*smoke, "--storage-path", "s3://bucket/tune"],
        prepared,
        {**env, "MLFLOW_TRACKING_URI": "sqlite:///rel.db"},
    )
    assert "--storage-path" not in line and "sqlite:///rel.db is relative" in line


def test_dvc_repro_shows_the_stage_error_line(tmp_path):
    """Through `dvc repro`: the benchmark stage's one line names the params.yaml key (DVC
    then reports that the stage exited with 2, and exits with its own status)."""
    import shutil

    pytest.importorskip("dvc")
    for item in ("pipelines", "skrd4ad", "dvc.yaml", ".dvc/config", ".dvcignore"):
        (tmp_path / item).parent.mkdir(parents=True, exist_ok=True)
        if (REPO / item).is_dir():
            shutil.copytree(REPO / item, tmp_path / item, ignore=shutil.ignore_patterns("__py*"))
        else:
            shutil.copy(REPO / item, tmp_path / item)
    prepare_params(tmp_path)
    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    params["train"]["image_size"] = 33
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    env = {
        **os.environ,
        "PYTHONPATH": str(tmp_path),
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    for cmd in (
        ["git", "init", "-q"],
        ["git", "add", "-A"],
        ["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "init"],
    ):
        subprocess.run(cmd, cwd=tmp_path, check=True, env=env, capture_output=True)
    dvc = [sys.executable, "-m", "dvc"]
    done = subprocess.run(
        [*dvc, "repro"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert "benchmark: error: params.yaml: train.image_size must be a multiple of 32" in done.stderr
    assert "exited with 2" in done.stderr
