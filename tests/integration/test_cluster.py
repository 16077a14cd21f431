"""The pipeline on a Ray cluster of three nodes that share no disk, on this one host.

The head has no CPUs (the drivers' node); worker nodes ``a`` (2 CPUs, 1 fake GPU) and
``b`` (2 CPUs) each run ``ray start`` in their own mount namespace with empty tmpfs over
the project (its data, prepared/, DVC cache and outputs) and over the checkout's code. A
worker reaches code only through Ray's runtime env and data only through the DVC remote;
S3 (moto's server) is the only store the nodes share; MLflow is a real ``mlflow server``
with its artifacts in the same bucket. Tests run in order: the node-loss test is last.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from servers import AWS, RayCluster, run, s3_client, start_mlflow, start_moto

from skrd4ad.data import make_default_dataset
from skrd4ad.results import METRIC_KEYS

REPO = Path(__file__).resolve().parents[2]
BUCKET = "skrd4ad-cluster"
CATEGORIES = ["brick", "grass", "gravel", "tile"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cluster")
    project = folder / "project"
    project.mkdir()
    moto, endpoint = start_moto(folder, BUCKET)
    mlflow_server, tracking = start_mlflow(folder, f"s3://{BUCKET}/mlflow", endpoint)
    env = {
        **os.environ, **AWS, "RAY_AUTH_MODE": "disabled",
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "MLFLOW_TRACKING_URI": tracking,
    }  # fmt: skip
    for key in ("PYTHONPATH", "RAY_ADDRESS", "SKRD4AD_DATA_CACHE"):
        env.pop(key, None)
    ray_cluster = RayCluster(folder, [project, REPO / "skrd4ad", REPO / "pipelines"], env)
    try:
        ray_cluster.start({"a": {"cpus": 2, "gpus": 1}, "b": {"cpus": 2}})
        _make_project(project, endpoint, env)
        yield {"ray": ray_cluster, "project": project, "env": env, "endpoint": endpoint,
               "tracking": tracking}  # fmt: skip
    finally:
        ray_cluster.stop()
        for server in (mlflow_server, moto):
            server.terminate()
            server.wait(timeout=30)


def _make_project(project: Path, endpoint: str, env: dict) -> None:
    """A DVC project whose dataset (4 categories) is pushed to S3, prepared, and then
    removed with the DVC cache: only the remote holds it."""
    for item in ("pipelines", "skrd4ad", "tune_spaces", "dvc.yaml", "params.yaml", ".gitignore"):
        src = REPO / item
        if src.is_dir():
            shutil.copytree(src, project / item, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, project / item)
    make_default_dataset(
        project / "data", image_size=64, crop_size=128, n_train=8, n_test_good=2, n_test_defect=1
    )
    shutil.copytree(project / "data" / "brick", project / "data" / "tile")
    dvc = [sys.executable, "-m", "dvc"]
    for cmd in (
        ["git", "init", "-q"],
        [*dvc, "init", "-q"],
        [*dvc, "remote", "add", "-d", "store", f"s3://{BUCKET}/dvc"],
        [*dvc, "remote", "modify", "store", "endpointurl", endpoint],
        [*dvc, "add", "-q", "data"],
        [*dvc, "push", "-q"],
    ):
        run(cmd, project, env)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["dataset"].update(name="mvtec", root="data", categories="all")
    params["train"].update(epochs=2, batch_size=8, image_size=64, val_every=1, checkpoint_every=1)
    params["runtime"]["device"] = "cpu"
    params["ray"].update(storage_path=f"s3://{BUCKET}/ray", storage_endpoint=endpoint)
    params["evaluate"]["overlays"] = 0
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run([sys.executable, "-m", "pipelines.prepare", "--out", "prepared"], project, env)
    shutil.rmtree(project / "data")
    shutil.rmtree(project / ".dvc" / "cache", ignore_errors=True)


def benchmark(cluster, categories: list[str], *, background: bool = False, **sections):
    """The benchmark stage on the cluster with ``categories`` and other settings."""
    project, env = cluster["project"], cluster["env"]
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["ray"]["address"] = cluster["ray"].address
    for section, values in sections.items():
        params[section].update(values)
    (project / "run.yaml").write_text(yaml.safe_dump(params))
    info = json.loads((project / "prepared" / "dataset.json").read_text())
    (project / "run").mkdir(exist_ok=True)
    (project / "run" / "dataset.json").write_text(json.dumps({**info, "categories": categories}))
    stage = [sys.executable, "-m", "pipelines.benchmark", "--params", "run.yaml", "--prepared",
             "run", "--out", "results", "--metrics", "metrics.json"]  # fmt: skip
    if background:
        log = (project / "run.log").open("w")
        return subprocess.Popen(stage, cwd=project, env=env, stdout=log, stderr=subprocess.STDOUT)
    done = run(stage, project, env, cluster=cluster["ray"])
    return done, _results(project)


def _results(project: Path) -> dict[str, dict]:
    """Each category's accuracy (metrics.json) and how and where it ran (runs.json)."""
    accuracy = json.loads((project / "metrics.json").read_text())["categories"]
    runs = json.loads((project / "results" / "runs.json").read_text())["categories"]
    return {cat: {**accuracy[cat], **runs.get(cat, {})} for cat in accuracy}


def test_data_reaches_nodes_without_the_checkout_through_the_dvc_remote(cluster):
    done, metrics = benchmark(cluster, ["brick", "grass"], resources={"gpus_per_worker": 0})
    workers = {cluster["ray"].node_ids()[n] for n in ("a", "b")}
    for cat in ("brick", "grass"):
        entry = metrics[cat]
        assert entry["data_source"] in ("remote", "node-cache"), entry
        assert entry["node_id"] in workers  # trained on a worker node, not the head
        assert 0.0 <= entry["aupro"] <= 1.0
    assert "remote" in {metrics[c]["data_source"] for c in ("brick", "grass")}
    console = done.stdout + done.stderr
    assert "TrainingReport(" not in console and "brick: epoch 2/2" in console
    # The final checkpoint is in S3 and names the model, whose weights are stored once: as
    # the MLflow model, in MLflow's S3 artifacts. The driver fetched the results back.
    s3 = s3_client(cluster["endpoint"])
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="ray/brick-")["Contents"]]
    pointer = cluster["project"] / "results" / "benchmark" / "brick" / "model.json"
    model = json.loads(pointer.read_text())
    assert model["model"].startswith("models:/")
    (stored,) = [k for k in keys if k.endswith("/model.json")]
    assert json.loads(s3.get_object(Bucket=BUCKET, Key=stored)["Body"].read()) == model
    assert not [k for k in keys if k.endswith((".pt", ".pth"))]  # no weights in run storage
    weights = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="mlflow/")["Contents"]
               if o["Key"].endswith("model.pth")]  # fmt: skip
    assert len(weights) == 2  # brick's and grass's MLflow models
    assert (pointer.parent / "eval" / "metrics.json").is_file()
    _check_mlflow(cluster, ["brick", "grass"])


def _check_mlflow(cluster, categories: list[str]) -> None:
    """The tracking server got each category live: per-epoch metrics stamped as they came,
    the data source and placement as tags, the evaluation as artifacts (in S3)."""
    import mlflow

    client = mlflow.MlflowClient(cluster["tracking"])
    (experiment,) = [e for e in client.search_experiments() if e.name == "skrd4ad-benchmark"]
    runs = client.search_runs([experiment.experiment_id], "tags.category != ''")
    by_cat = {r.data.tags["category"]: r for r in runs}
    for cat in categories:
        r = by_cat[cat]
        assert r.info.status == "FINISHED" and r.data.tags["data_source"] in (
            "remote",
            "node-cache",
        )
        assert {*METRIC_KEYS} <= set(r.data.metrics) and r.data.tags["node_id"]
        history = client.get_metric_history(r.info.run_id, "loss")
        assert [h.step for h in history] == [1, 2]
        assert history[0].timestamp < history[1].timestamp  # logged as each epoch ended
    listing = s3_client(cluster["endpoint"]).list_objects_v2(Bucket=BUCKET, Prefix="mlflow/")
    assert any(o["Key"].endswith("eval/metrics.json") for o in listing["Contents"])


def _intervals(metrics: dict, categories: list[str]) -> list[tuple[float, float]]:
    return [(metrics[c]["started_at"], metrics[c]["ended_at"]) for c in categories]


def test_quarter_gpus_pack_four_categories_onto_one_gpu_at_once(cluster):
    # Another seed: resources alone change no result, so the same settings would reuse the
    # first test's finished runs.
    _, metrics = benchmark(
        cluster, CATEGORIES, train={"seed": 2, "epochs": 1},
        resources={"gpus_per_worker": 0.25, "cpus_per_worker": 0.5},
    )  # fmt: skip
    node_a = cluster["ray"].node_ids()["a"]  # the one node with a GPU
    assert {metrics[c]["node_id"] for c in CATEGORIES} == {node_a}
    for cat in CATEGORIES:  # a quarter of GPU 0 each
        assert metrics[cat]["gpu_ids"] == ["0"] and metrics[cat]["resources"]["GPU"] == 0.25
    spans = _intervals(metrics, CATEGORIES)
    assert max(s for s, _ in spans) < min(e for _, e in spans), spans  # all four at once


def test_the_search_runs_through_ray_job_submit_with_results_in_s3_and_mlflow(cluster):
    project, env = cluster["project"], cluster["env"]
    search = project / "search"  # hidden from the nodes with the project
    search.mkdir()
    for item in ("pipelines", "skrd4ad", "tune_spaces"):
        shutil.copytree(REPO / item, search / item, ignore=shutil.ignore_patterns("__pycache__"))
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["default_dataset"].update(image_size=64, crop_size=128, n_train=8, n_test_good=2,
                                     n_test_defect=1)  # fmt: skip
    params["dataset"]["categories"] = ["brick"]
    params["runtime"]["device"] = "cpu"
    params["ray"]["storage_endpoint"] = cluster["endpoint"]
    (search / "params.yaml").write_text(yaml.safe_dump(params))
    space = yaml.safe_load((REPO / "tune_spaces" / "smoke.yaml").read_text())
    space.update(epochs=1, params={"loss.alpha": {"grid": [0.0, 1.0]}})  # 2 trials
    (search / "tune_spaces" / "smoke.yaml").write_text(yaml.safe_dump(space))
    runtime_env = {"env_vars": {**AWS, "MLFLOW_TRACKING_URI": cluster["tracking"]}}
    submit = [str(Path(sys.executable).parent / "ray"), "job", "submit", "--address",
              cluster["ray"].dashboard, "--working-dir", str(search), "--runtime-env-json",
              json.dumps(runtime_env), "--", "python", "-m", "pipelines.tune", "--space",
              "tune_spaces/smoke.yaml", "--storage-path", f"s3://{BUCKET}/tune"]  # fmt: skip
    done = run(submit, project, env)
    assert "best configs in s3://" in done.stdout, done.stdout[-3000:]
    body = s3_client(cluster["endpoint"]).get_object(Bucket=BUCKET, Key="tune/smoke/best.yaml")
    best = yaml.safe_load(body["Body"].read())
    assert set(best["best"]["brick"]["test"]) == set(METRIC_KEYS)
    import mlflow

    client = mlflow.MlflowClient(cluster["tracking"])
    (experiment,) = [e for e in client.search_experiments() if e.name == "skrd4ad-tune"]
    trials = client.search_runs([experiment.experiment_id], "tags.trial_name != ''")
    assert len(trials) == 2


def _training_node(cluster) -> str | None:
    """The name of the node a Ray Train worker runs on, once one does."""
    from ray.util.state import list_actors

    alive = [("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")]
    actors = list_actors(address=cluster["ray"].dashboard, filters=alive)
    ids = {v: k for k, v in cluster["ray"].node_ids().items()}
    return next((ids.get(a.node_id) for a in actors), None)


def test_a_lost_node_resumes_its_category_on_another_from_its_s3_checkpoint(cluster):
    proc = benchmark(
        cluster, ["gravel"], background=True, train={"epochs": 4, "seed": 5},
        resources={"gpus_per_worker": 0, "cpus_per_worker": 2, "max_failures": 3},
    )  # fmt: skip
    deadline, lost, log = time.monotonic() + 600, None, cluster["project"] / "run.log"
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            node = _training_node(cluster)
            # Epoch 2 reached the driver: its checkpoint is in S3 (reported with it).
            if node and "gravel: epoch 2/4" in log.read_text():
                lost = cluster["ray"].node_ids()[node]
                cluster["ray"].kill(node)
                break
            time.sleep(0.5)
        assert lost, "no checkpoint before the stage ended"
        proc.wait(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, log.read_text()[-5000:]
    entry = _results(cluster["project"])["gravel"]
    assert entry["node_id"] != lost  # finished on the node that was left
    assert entry["resumed_from_epoch"] >= 1  # from its S3 checkpoint, not epoch 0
    history = json.loads(
        (cluster["project"] / "results" / "benchmark" / "gravel" / "train_history.json").read_text()
    )
    assert [h["epoch"] for h in history] == list(range(1, 5))
