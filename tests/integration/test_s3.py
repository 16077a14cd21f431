"""S3 through a real local endpoint (moto's server on 127.0.0.1): a DVC remote pushes and
pulls the dataset byte for byte, and MLflow stores its artifacts in the same bucket."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from servers import AWS, s3_client, start_moto

BUCKET = "skrd4ad-test"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    server, endpoint = start_moto(tmp_path_factory.mktemp("moto"), BUCKET)
    saved = {k: os.environ.get(k) for k in AWS}
    os.environ.update(AWS)
    yield endpoint, s3_client(endpoint), dict(AWS)
    server.terminate()
    server.wait(timeout=10)
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def test_dvc_push_pull_round_trip_is_byte_identical(s3, tmp_path):
    from skrd4ad.data import make_default_dataset

    endpoint, client, env = s3
    repo = tmp_path / "repo"
    repo.mkdir()
    run_env = {**os.environ, **env}

    def dvc(*args: str) -> None:
        done = subprocess.run(
            [sys.executable, "-m", "dvc", *args],
            cwd=repo,
            env=run_env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stdout + done.stderr

    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    dvc("init", "-q")
    make_default_dataset(
        repo / "data" / "default",
        categories=("brick",),
        image_size=32,
        crop_size=64,
        n_train=3,
        n_test_good=1,
        n_test_defect=1,
    )
    originals = {
        p.relative_to(repo): p.read_bytes() for p in (repo / "data").rglob("*") if p.is_file()
    }
    dvc("add", "-q", "data")
    dvc("remote", "add", "-d", "store", f"s3://{BUCKET}/dvc")
    dvc("remote", "modify", "store", "endpointurl", endpoint)
    dvc("push", "-q")
    assert client.list_objects_v2(Bucket=BUCKET, Prefix="dvc/")["KeyCount"] > 0
    shutil.rmtree(repo / "data")
    shutil.rmtree(repo / ".dvc" / "cache")
    dvc("pull", "-q")
    pulled = {
        p.relative_to(repo): p.read_bytes() for p in (repo / "data").rglob("*") if p.is_file()
    }
    assert pulled == originals


def test_mlflow_artifacts_land_in_the_bucket(s3, tmp_path, monkeypatch, small_dataset):
    from conftest import tiny_config

    from pipelines.tracking import Tracker
    from skrd4ad.evaluate import evaluate
    from skrd4ad.train import fit

    endpoint, client, _ = s3
    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", endpoint)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    result = fit(tiny_config(small_dataset, tmp_path / "run", epochs=1, val_fraction=0))
    evaluate(result.model_path, small_dataset, "brick", tmp_path / "run" / "eval")
    tracker = Tracker(
        "s3-artifacts", f"sqlite:///{tmp_path / 'mlflow.db'}", f"s3://{BUCKET}/mlflow"
    )
    tracker.start("bench", {"train": {"epochs": 1}}, {"dataset": "default"})
    run_id = tracker.start_child("brick", {"train": {"epochs": 1}}, {"dataset": "default"})
    for epoch_metrics in result.history:
        tracker.log_epoch(run_id, epoch_metrics)
    uri = tracker.finish_child(run_id, {"aupro": 0.5}, {"host": "here"}, tmp_path / "run", "m")
    (tmp_path / "metrics.json").write_text('{"mean": {"aupro": 0.5}}')
    tracker.finish({"mean_aupro": 0.5}, tmp_path / "metrics.json")
    assert tracker.ok
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=BUCKET, Prefix="mlflow/")["Contents"]]
    assert any(k.endswith("eval/metrics.json") for k in keys)
    assert any(k.endswith("MLmodel") for k in keys)  # the logged model, in the bucket
    assert not any(k.endswith("model.pt") for k in keys)  # not again as a file
    assert any(k.endswith("/metrics.json") and "eval" not in k for k in keys)
    # The logged model is the one copy of the weights: model.pt comes back from it whole.
    import torch

    from pipelines.mlflow_model import checkpoint_from_model
    from skrd4ad.checkpoint import read_checkpoint

    original = read_checkpoint(result.model_path)
    rebuilt = read_checkpoint(checkpoint_from_model(uri, tmp_path / "again.pt"))
    assert set(rebuilt) == set(original) - {"optimizer"} and "optimizer" not in original
    for part in ("teacher", "bottleneck", "decoder"):
        assert rebuilt[part].keys() == original[part].keys()
        assert all(torch.equal(rebuilt[part][k], original[part][k]) for k in original[part])
    rest = [k for k in original if k not in ("teacher", "bottleneck", "decoder")]
    assert json.dumps({k: rebuilt[k] for k in rest}, sort_keys=True) == json.dumps(
        {k: original[k] for k in rest}, sort_keys=True
    )
