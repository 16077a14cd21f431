"""Ray Tune search of the loss weights: smoke search, test-set isolation, MLflow, params
write-back, resume after interruption, `ray job submit`, and invalid space files."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from skrd4ad.results import METRIC_KEYS

pytest.importorskip("ray.tune")
pytest.importorskip("mlflow")

from pipelines.params import train_config  # noqa: E402
from pipelines.tune_space import load_space  # noqa: E402
from skrd4ad.errors import UserError  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
COPY = ["pipelines", "skrd4ad", "tune_spaces", "params.yaml", ".gitignore"]
SMOKE = REPO / "tune_spaces" / "smoke.yaml"


def _copy_project(root: Path) -> Path:
    for item in COPY:
        src, dst = REPO / item, root / item
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, dst)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["default_dataset"].update(
        image_size=64, crop_size=128, n_train=8, n_test_good=2, n_test_defect=1
    )
    params["dataset"]["categories"] = ["brick"]
    # ruamel must keep this comment when --write-params rewrites the file.
    text = "# a user's comment\n" + yaml.safe_dump(params, sort_keys=False)
    (root / "params.yaml").write_text(text)
    return root


def _env(root: Path, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "PYTHONPATH": str(root),
        "RAY_AUTH_MODE": "disabled",
        "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
        "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
        **extra,
    }


def _tune(root: Path, *args: str, env: dict[str, str], check: bool = True):
    cmd = [sys.executable, "-m", "pipelines.tune", "--storage-path", str(root / "store"), *args]
    done = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=900)
    if check and done.returncode:
        raise AssertionError(
            f"{cmd} -> {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
        )
    return done


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """One smoke search (4 trials, 2 epochs, 64 px) with every file open recorded."""
    root = _copy_project(tmp_path_factory.mktemp("tune"))
    log = root / "opens.log"
    env = _env(root, SKRD4AD_OPEN_LOG=str(log))
    done = _tune(root, "--space", "tune_spaces/smoke.yaml", "--write-params", env=env)
    return root, log, done


def test_smoke_search_finds_and_tests_a_best_config(smoke):
    root, _, done = smoke
    best = yaml.safe_load((root / "store" / "smoke" / "best.yaml").read_text())
    brick = best["best"]["brick"]
    assert brick["trials"] == 4 and brick["errors"] == 0
    assert set(brick["config"]) == {"loss.alpha", "loss.beta", "loss.gamma"}
    assert 0.0 <= brick["val_aupro"] <= 1.0
    # The one test-set evaluation, after the search.
    assert set(brick["test"]) == set(METRIC_KEYS)
    assert all(0.0 <= v <= 1.0 for v in brick["test"].values())
    assert "best configs in" in done.stdout
    # The live view: a line per trial and epoch with the objective (the log is no
    # terminal); no raw Ray reports. The concurrency limit is given once, so Ray does not
    # warn that one "will be ignored".
    console = done.stdout + done.stderr
    epochs = [line for line in done.stderr.splitlines() if ": epoch " in line]
    assert len({line.split(":")[0] for line in epochs}) == 4, console
    assert all(" val " in line for line in epochs), console
    assert "TrainingReport(" not in console and "will be ignored" not in console


def test_search_never_opens_the_test_split(smoke):
    root, log, _ = smoke
    opened = set(log.read_text().splitlines())
    data = root / "prepared" / "default" / "brick"
    assert any(p.startswith(str(data / "train" / "good")) for p in opened), opened
    leaked = [p for p in opened if "/test/" in p or "/ground_truth/" in p]
    assert leaked == []


def test_trial_params_reach_training_and_mlflow(smoke, tmp_path):
    import mlflow

    root, _, _ = smoke
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    client = mlflow.tracking.MlflowClient()
    runs = mlflow.search_runs(experiment_names=["skrd4ad-tune"], output_format="list")
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent = parents[0].info.run_id
    trials = [r for r in runs if r.data.tags.get("trial_name")]
    assert len(trials) == 4
    assert all(r.data.tags["mlflow.parentRunId"] == parent for r in trials)
    seen = set()
    for run in trials:
        alpha, gamma = (float(run.data.params[f"loss.{k}"]) for k in ("alpha", "gamma"))
        seen.add((alpha, gamma))
        history = {
            key: [m.value for m in client.get_metric_history(run.info.run_id, key)]
            for key in ("l2", "consistency", "cosine", "loss", "val_aupro", "epoch")
        }
        assert history["val_aupro"], "per-epoch validation metric missing"
        assert len(history["val_aupro"]) == len(history["epoch"])
        # A weight of 0 switches its term off; a weight > 0 shows the term.
        assert all((v == 0.0) == (alpha == 0.0) for v in history["l2"])
        assert all((v == 0.0) == (gamma == 0.0) for v in history["consistency"])
        for loss, l2, cos, cons in zip(
            history["loss"], history["l2"], history["cosine"], history["consistency"], strict=True
        ):
            assert loss == pytest.approx(alpha * l2 + cos + gamma * cons, rel=1e-5)
    assert seen == {(0.0, 0.0), (0.0, 0.05), (1.0, 0.0), (1.0, 0.05)}
    best = [r for r in runs if r.data.tags.get("best") == "true"]
    assert len(best) == 1 and best[0].data.tags["mlflow.parentRunId"] == parent
    assert {"test_aupro", "val_aupro"} <= set(best[0].data.metrics)
    # The best trial's model is registered under an alias (not a stage), and it is that
    # trial's model: its stored config holds the best loss weights.
    summary = yaml.safe_load((root / "store" / "smoke" / "best.yaml").read_text())["best"]
    assert summary["brick"]["registered_model"] == "models:/default-brick-resnet18-sk@best-smoke"
    version = client.get_model_version_by_alias("default-brick-resnet18-sk", "best-smoke")
    assert version.tags["search"] == "smoke" and version.run_id == best[0].info.run_id
    assert float(version.tags["val_aupro"]) == pytest.approx(summary["brick"]["val_aupro"])
    from pipelines.mlflow_model import CHECKPOINT_FILE

    local = mlflow.artifacts.download_artifacts(
        summary["brick"]["registered_model"], dst_path=str(tmp_path)
    )
    stored = json.loads((Path(local) / "extra_files" / CHECKPOINT_FILE).read_text())
    weights = {f"loss.{k}": stored["config"]["loss"][k] for k in ("alpha", "beta", "gamma")}
    assert weights == pytest.approx(summary["brick"]["config"])


def test_write_params_feeds_the_benchmark(smoke):
    root, _, _ = smoke
    text = (root / "params.yaml").read_text()
    assert text.startswith("# a user's comment")
    params = yaml.safe_load(text)
    best = yaml.safe_load((root / "store" / "smoke" / "best.yaml").read_text())
    written = params["loss"]["per_category"]["brick"]
    found = best["best"]["brick"]["config"]
    assert written == {k.removeprefix("loss."): pytest.approx(v) for k, v in found.items()}
    loss = train_config(params, "data", "brick", "mvtec")["loss"]
    assert (loss["alpha"], loss["beta"], loss["gamma"]) == pytest.approx(
        (written["alpha"], written["beta"], written["gamma"])
    )
    other = train_config(params, "data", "grass", "mvtec")["loss"]
    assert other["gamma"] == params["loss"]["gamma"]


def test_shared_optuna_search_trains_categories_in_lockstep(tmp_path):
    root = _copy_project(tmp_path)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["dataset"]["categories"] = ["brick", "grass"]
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    space = yaml.safe_load(SMOKE.read_text())
    space.update(name="shared", scope="shared", categories="all", epochs=2)
    space["search"].update(algorithm="optuna", num_samples=2, max_concurrent=2)
    space["scheduler"]["name"] = "fifo"
    space["params"] = {
        "loss.alpha": {"uniform": [0.0, 1.0]},
        "loss.gamma": {"loguniform": [0.01, 0.1]},
    }
    (root / "shared.yaml").write_text(yaml.safe_dump(space))
    _tune(root, "--space", "shared.yaml", "--write-params", env=_env(root))
    best = yaml.safe_load((root / "store" / "shared" / "best.yaml").read_text())
    assert set(best["best"]) == {"brick", "grass"}
    assert best["best"]["brick"]["config"] == best["best"]["grass"]["config"]
    assert set(best["best"]["grass"]["test"]) == set(METRIC_KEYS)
    trials = best["trials"]["shared"]
    assert len(trials) == 2 and all(t["epochs_run"] == 2 for t in trials)
    assert all(0.0 <= t["config"]["loss.alpha"] <= 1.0 for t in trials)
    # Each epoch's objective is the mean of the categories' validation metrics.
    results = _trial_results(root / "store")
    for lines in results.values():
        for r in lines:
            assert r["val_aupro"] == pytest.approx(
                (r["brick/val_aupro"] + r["grass/val_aupro"]) / 2
            )
    written = yaml.safe_load((root / "params.yaml").read_text())["loss"]
    assert written["gamma"] == pytest.approx(best["best"]["brick"]["config"]["loss.gamma"])


def _trial_results(store: Path) -> dict[str, list[dict]]:
    out = {}
    for result in store.glob("*/*/result.json"):
        lines = [json.loads(x) for x in result.read_text().splitlines() if x.strip()]
        out[result.parent.name] = lines
    return out


def test_interrupted_search_resumes_without_rerunning_finished_trials(tmp_path):
    root = _copy_project(tmp_path)
    space = yaml.safe_load(SMOKE.read_text())
    space.update(name="resume", epochs=2)
    space["search"]["max_concurrent"] = 1
    space["scheduler"]["name"] = "fifo"
    # 3 trials, one after the other: one finished before the interrupt, the rest after.
    space["params"].update({"loss.alpha": 0.0, "loss.gamma": {"grid": [0.0, 0.05, 0.1]}})
    (root / "resume.yaml").write_text(yaml.safe_dump(space))
    env = _env(root)
    cmd = [sys.executable, "-m", "pipelines.tune", "--space", "resume.yaml"]
    cmd += ["--storage-path", str(root / "store")]
    log = root / "search.log"
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.time() + 600
        try:
            # Interrupt once the first trial has ended: trials run one at a time here, so
            # that is when the second trial's folder appears.
            while len(list((root / "store").glob("*/brick_*"))) < 2:
                assert proc.poll() is None and time.time() < deadline, log.read_text()
                time.sleep(0.5)
            proc.send_signal(signal.SIGINT)  # what Ctrl+C does
            proc.wait(timeout=300)
        finally:
            if proc.poll() is None:
                proc.kill()
    output = log.read_text()
    assert proc.returncode == 130, output
    assert "--resume" in output
    assert not (root / "store" / "resume" / "best.yaml").exists()
    before = _trial_results(root / "store")
    finished = {t: r for t, r in before.items() if "_00000_" in t}
    assert [r["epoch"] for r in next(iter(finished.values()))] == [1, 2]
    assert len(before) < 3

    _tune(root, "--space", "resume.yaml", "--resume", env=env)
    after = _trial_results(root / "store")
    assert len(after) == 3
    for trial, results in finished.items():
        assert after[trial] == results, f"finished trial {trial} was run again"
    assert all(r[-1]["epoch"] == 2 for r in after.values())
    best = yaml.safe_load((root / "store" / "resume" / "best.yaml").read_text())
    assert best["best"]["brick"]["trials"] == 3


BAD_SPACES = [
    ({"params": {"loss.gamma": {"lognormal": [0.1, 1]}}}, "params.loss.gamma.lognormal"),
    ({"params": {"loss.gamma": {"loguniform": [-0.1, 0.5]}}}, "params.loss.gamma.loguniform"),
    ({"params": {"loss.alpha": {"uniform": [1.0, 0.5]}}}, "params.loss.alpha.uniform"),
    ({"params": {"optim.momentum": 0.9}}, "params.optim.momentum"),
    ({"params": {"alpha": 0.5}}, "params.alpha"),  # a setting is named section.field
    ({"params": {"model.skip": {"choice": ["sk", "dense"]}}}, "params.model.skip.choice"),
    ({"params": {"train.out": "elsewhere"}}, "params.train.out"),
    ({"config": {"train": {"epochz": 3}}}, "config"),
    (
        {"search": {"algorithm": "optuna", "num_samples": 2, "max_concurrent": 1}},
        "params.loss.alpha.grid",
    ),
    (
        {"search": {"algorithm": "hyperopt", "num_samples": 2, "max_concurrent": 1}},
        "search.algorithm",
    ),
    ({"scheduler": {"name": "pbt"}}, "scheduler.name"),
    ({"metric": "test_aupro"}, "metric"),
    ({"epochs": 0}, "epochs"),
]


@pytest.mark.parametrize(("change", "key"), BAD_SPACES)
def test_invalid_space_names_the_key(tmp_path, change, key):
    space = yaml.safe_load(SMOKE.read_text())
    space.update(change)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(space))
    with pytest.raises(UserError, match=rf"{path}: {key.replace('.', '[.]')}:"):
        load_space(path)


@pytest.mark.parametrize("missing", ["metric", "params", "search", "scheduler", "epochs"])
def test_missing_key_is_named(tmp_path, missing):
    space = yaml.safe_load(SMOKE.read_text())
    del space[missing]
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(space))
    with pytest.raises(UserError, match=rf"{missing}: missing"):
        load_space(path)


def test_bad_space_fails_before_any_trial(tmp_path):
    root = _copy_project(tmp_path)
    bad = SMOKE.read_text().replace("grid: [0.0, 0.05]", "lognormal: [0.1, 1]")
    (root / "bad.yaml").write_text(bad)
    done = _tune(root, "--space", "bad.yaml", env=_env(root), check=False)
    assert done.returncode == 2
    assert "params.loss.gamma.lognormal: unknown distribution" in done.stderr
    assert "Traceback" not in done.stderr
    # Failed before Ray started: no cluster, no dataset, no Tune state.
    assert "Ray" not in done.stdout + done.stderr
    assert not (root / "store").exists() and not (root / "prepared").exists()


def test_an_optuna_search_is_limited_to_max_concurrent_trials():
    """The space's max_concurrent reaches Optuna through Ray's ConcurrencyLimiter, the one
    limit (TuneConfig gets none, so Ray warns of nothing ignored)."""
    from ray.tune.search import ConcurrencyLimiter

    from pipelines.tune_space import search_algorithm

    spec = load_space(Path(__file__).resolve().parents[2] / "tune_spaces" / "loss_weights.yaml")
    assert spec.algorithm == "optuna" and spec.max_concurrent == 4
    searcher = search_algorithm(spec)
    assert isinstance(searcher, ConcurrencyLimiter) and searcher.max_concurrent == 4
