"""S3 through a real local endpoint (moto's server on 127.0.0.1): a DVC remote pushes and
pulls the dataset byte for byte, and MLflow stores its artifacts in the same bucket."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from skrd4ad.results import METRIC_KEYS

BUCKET = "skrd4ad-test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    endpoint = f"http://127.0.0.1:{port}"
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint)
    for _ in range(100):
        try:
            client.create_bucket(Bucket=BUCKET)
            break
        except Exception:  # noqa: BLE001 - the server is still starting
            time.sleep(0.1)
    else:
        server.kill()
        raise RuntimeError(f"moto server did not start: {log.read_text()[-2000:]}")
    yield endpoint, client, env
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
    tracker.log_category(
        "brick",
        {"epochs": 1},
        result.history,
        {"aupro": 0.5},
        {"dataset": "default"},
        tmp_path / "run",
    )
    (tmp_path / "metrics.json").write_text('{"mean": {"aupro": 0.5}}')
    tracker.finish({"mean_aupro": 0.5}, tmp_path / "metrics.json")
    assert tracker.ok
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=BUCKET, Prefix="mlflow/")["Contents"]]
    assert any(k.endswith("eval/metrics.json") for k in keys)
    assert any(k.endswith("checkpoint/model.pt") for k in keys)
    assert any(k.endswith("/metrics.json") and "eval" not in k for k in keys)


def test_ray_train_checkpoints_go_to_s3(s3, tmp_path, small_dataset):
    import ray

    from pipelines.ray_train import fit_category

    endpoint, client, env = s3
    config = {
        "data": {"root": str(small_dataset), "category": "gravel"},
        "model": {"backbone": "resnet18", "teacher_weights": "none"},
        "runtime": {"device": "cpu"},
        "train": {
            "image_size": 64, "epochs": 2, "batch_size": 8, "val_fraction": 0,
            "checkpoint_every": 1,
        },
    }  # fmt: skip
    ray.init(address="local", num_cpus=2, include_dashboard=False, runtime_env={"env_vars": env})
    try:
        outcome = fit_category(
            "gravel",
            config,
            num_workers=1,
            cpus_per_worker=1,
            gpus_per_worker=0,
            storage_path=f"s3://{BUCKET}/ray",
            run_name="s3run",
            max_failures=0,
            overlays=0,
            dest=tmp_path / "gravel",
            storage_endpoint=endpoint,
        )
    finally:
        ray.shutdown()
    assert "error" not in outcome, outcome
    assert (tmp_path / "gravel" / "model.pt").is_file()  # fetched back from the bucket
    keys = [
        o["Key"] for o in client.list_objects_v2(Bucket=BUCKET, Prefix="ray/s3run/")["Contents"]
    ]
    assert any(k.endswith("/last.pt") for k in keys) and any(k.endswith("/model.pt") for k in keys)


def test_tune_search_stores_trials_in_s3(s3, tmp_path):
    import yaml

    endpoint, client, env = s3
    repo = Path(__file__).resolve().parents[2]
    for item in ("pipelines", "skrd4ad", "tune_spaces"):
        shutil.copytree(repo / item, tmp_path / item, ignore=shutil.ignore_patterns("__pycache__"))
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["default_dataset"].update(
        image_size=64, crop_size=128, n_train=8, n_test_good=2, n_test_defect=1
    )
    params["ray"]["storage_endpoint"] = endpoint
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    space = yaml.safe_load((repo / "tune_spaces" / "smoke.yaml").read_text())
    space["params"] = {"loss.alpha": {"grid": [0.0, 1.0]}}
    space["epochs"] = 1
    (tmp_path / "s3.yaml").write_text(yaml.safe_dump({**space, "name": "s3smoke"}))
    run_env = {
        **os.environ,
        **env,
        "PYTHONPATH": str(tmp_path),
        "RAY_AUTH_MODE": "disabled",
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
    }
    cmd = [sys.executable, "-m", "pipelines.tune", "--space", "s3.yaml"]
    cmd += ["--storage-path", f"s3://{BUCKET}/tune"]
    done = subprocess.run(cmd, cwd=tmp_path, env=run_env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    listing = client.list_objects_v2(Bucket=BUCKET, Prefix="tune/s3smoke-brick/")
    keys = [o["Key"] for o in listing.get("Contents", [])]
    assert any("/checkpoint_" in k and k.endswith("brick/last.pt") for k in keys), keys
    best = yaml.safe_load((tmp_path / "s3smoke-best.yaml").read_text())
    assert set(best["best"]["brick"]["test"]) == set(METRIC_KEYS)
