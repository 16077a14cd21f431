"""The DVC + Ray Train + MLflow benchmark, end to end on the embedded default dataset."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from makefile import dvc_command
from servers import browse, kill_family, start_mlflow_ui

from pipelines.params import LOCAL_UI
from pipelines.report import EXP_SHOW
from skrd4ad.results import METRIC_KEYS

REPO = Path(__file__).resolve().parents[2]
COPY = [
    "pipelines",
    "skrd4ad",
    "dvc.yaml",
    "params.yaml",
    ".dvc/config",
    ".dvc/plots",
    ".dvcignore",
    ".gitignore",
]


def sh(cmd: list[str], cwd: Path, env: dict, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    if check and done.returncode:
        raise AssertionError(
            f"{cmd} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
        )
    return done


def new_project(root: Path, small: dict[str, dict]) -> dict[str, str]:
    """A git checkout of the pipeline at ``root`` with params.yaml updated by ``small``
    (section: values); returns the environment a user's shell gives it."""
    for item in COPY:
        src = REPO / item
        dst = root / item
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, dst)
    params = yaml.safe_load((root / "params.yaml").read_text())
    for section, values in small.items():
        params[section].update(values)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "PYTHONPATH": str(root),
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    for cmd in (
        ["git", "init", "-q"],
        ["git", "add", "-A"],
        ["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "init"],
    ):
        sh(cmd, root, env)
    return env


# The embedded default dataset, smaller: the same stages at a fraction of the time.
SMALL_DATA = {"image_size": 64, "crop_size": 128, "n_train": 8, "n_test_good": 2,
              "n_test_defect": 1}  # fmt: skip


# The quick start as `make demo` runs it (params.yaml's categories and epochs) on smaller
# images; the tests below read its outputs or run again on its prepared data.
QUICK_START = {"default_dataset": SMALL_DATA, "train": {"batch_size": 8, "image_size": 64}}


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """`make demo`'s own dvc command (read from the Makefile) in a fresh project, as a
    user's shell runs it (Ray's token auth on)."""
    root = tmp_path_factory.mktemp("project")
    env = new_project(root, QUICK_START)
    env.pop("RAY_AUTH_MODE", None)
    done = sh(dvc_command("demo"), root, env)
    repro_log(root).write_text(done.stdout + done.stderr)
    return root, env


def quick_start() -> tuple[list[str], int]:
    """The categories and epochs params.yaml gives the quick start."""
    from skrd4ad.data import DEFAULT_CATEGORIES

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    assert params["dataset"]["categories"] == "all"
    return list(DEFAULT_CATEGORIES), int(params["train"]["epochs"])


def repro_log(root: Path) -> Path:
    return root.with_name(root.name + "-repro.log")


def test_dvc_repro_writes_metrics_plots_and_report(project):
    from pipelines.benchmark import _threads_per_worker

    root, env = project
    categories, epochs = quick_start()
    metrics = json.loads((root / "metrics.json").read_text())
    assert metrics["failed"] == {} and set(metrics["categories"]) == set(categories)
    # metrics.json holds accuracy only; how and where each category ran is in runs.json.
    assert set(metrics) == {"dataset", "categories", "mean", "failed"}
    runs = json.loads((root / "results" / "runs.json").read_text())
    for cat in categories:
        assert set(metrics["categories"][cat]) == set(METRIC_KEYS)
        m = {**metrics["categories"][cat], **runs["categories"][cat]}
        assert all(0 <= m[k] <= 1 for k in METRIC_KEYS)
        # The final weights are stored once, as the MLflow model the results name; the
        # run storage keeps the same pointer instead of model.pt.
        assert not (root / "results" / "benchmark" / cat / "model.pt").exists()
        model = json.loads((root / "results" / "benchmark" / cat / "model.json").read_text())
        assert model["model"].startswith("models:/")
        storage = root / "results" / "ray"
        (stored,) = storage.glob(f"{cat}-*/checkpoint_*/final_metrics.json")
        assert json.loads((stored.parent / "model.json").read_text()) == model
        assert not list(storage.glob(f"{cat}-*/**/model.pt"))
        assert (root / "results" / "benchmark" / cat / "eval" / "metrics.json").is_file()
        # threads_per_worker auto for the worker's CPU share (its rule has its own test)
        want = _threads_per_worker("auto", m["resources"]["CPU"], 0)
        assert m["torch_threads"] == min(want, len(os.sched_getaffinity(0)))
        # Where it ran: the rank-0 worker's Ray node, in metrics.json and results/.
        placement = json.loads(
            (root / "results" / "benchmark" / cat / "placement.json").read_text()
        )
        assert m["node_id"] == placement["node_id"] and len(m["node_id"]) == 56
        assert m["host"] == placement["host"] == socket.gethostname()
    mean = metrics["mean"]["aupro"]
    assert mean == pytest.approx(
        sum(metrics["categories"][c]["aupro"] for c in categories) / len(categories)
    )
    assert set(metrics["mean"]) == set(METRIC_KEYS)
    report = (root / "report.md").read_text()
    assert "no published numbers exist" in report and "| brick |" in report
    assert "image F1-max" in report and "pixel F1-max" in report
    # The report shows the plots (PNG, readable offline), each category's top-scoring
    # test image, the data version and the settings; every image it links exists.
    for section in ("## Plots", "## Highest-scoring test image per category", "## Settings"):
        assert section in report, section
    links = re.findall(r"!\[[^]]*\]\(([^)]+)\)", report)
    assert "results/plots/loss.png" in links and "results/plots/per_category.png" in links
    assert sum("/eval/overlays/top_00_" in link for link in links) == len(categories)
    assert all((root / link).is_file() for link in links)
    assert f"`{runs['data_version']}`" in report and "backbone: resnet18" in report
    bars = (root / "results" / "plots" / "per_category.csv").read_text().splitlines()
    assert bars[0] == ",".join(["category", *METRIC_KEYS])
    loss = (root / "results" / "plots" / "loss.csv").read_text().splitlines()
    assert loss[0] == "category,epoch,loss" and len(loss) == 1 + len(categories) * epochs
    shown = sh([sys.executable, "-m", "dvc", "metrics", "show", "--json"], root, env).stdout
    assert all(k in shown for k in METRIC_KEYS)
    plots = json.loads(
        sh([sys.executable, "-m", "dvc", "plots", "show", "--json"], root, env).stdout
    )["data"]
    (loss_plot,) = plots["results/plots/loss.csv"]
    assert loss_plot["content"]["encoding"]["color"]["field"] == "category"  # a line each
    bars = {"image AUROC", "pixel AUROC", "AUPRO (FPR <= 0.3)", "image F1-max", "pixel F1-max"}
    assert bars <= set(plots)
    # Against the commit before the run, every metric is new: `dvc metrics diff` sees them.
    diff = json.loads(
        sh([sys.executable, "-m", "dvc", "metrics", "diff", "--json"], root, env).stdout
    )
    assert diff["metrics.json"]["mean.aupro"]["new"] == pytest.approx(mean)
    status = sh([sys.executable, "-m", "dvc", "status"], root, env).stdout
    assert "up to date" in status, status
    # Ray Train's placement-group cleaner asks the dashboard's State API about each
    # controller and warns once a second per category without it: the local Ray serves it.
    log = repro_log(root).read_text()
    assert "Failed to query Ray Train Controller" not in log
    assert "categories failed" not in log
    assert "mlflow ui --backend-store-uri sqlite:///mlflow.db" in log and "┃ category" in log


def test_the_quick_start_console_is_short(project):
    """The quick start's console is under 40 lines, with none of the libraries' noise."""
    root, _ = project
    log = repro_log(root).read_text()
    categories = json.loads((root / "metrics.json").read_text())["categories"]
    assert len(categories) == 3 and quick_start()[1] == 10  # what the quick start runs
    assert len(log.splitlines()) < 40, log
    for noise in ("SADeprecationWarning", "noload", "pickle", "INFO", "TrainingReport(",
                  "performance bottleneck", "Running stage", "git add"):  # fmt: skip
        assert noise not in log, noise
    assert log.count("'data' is empty") <= 1
    assert "┃ category" in log and "Next: the report is report.md" in log


def test_mlflow_parent_and_nested_runs(project, tmp_path):
    root, env = project
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    # The UI opens the experiment on its training runs, not MLflow 3's GenAI view.
    experiment = mlflow.get_experiment_by_name("skrd4ad-benchmark")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    runs = mlflow.search_runs(experiment_names=["skrd4ad-benchmark"], output_format="list")
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    categories, epochs = quick_start()
    assert len(parents) == 1 and len(children) == len(categories)
    assert {c.data.tags["category"] for c in children} == set(categories)
    for c in children:
        assert c.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert {"dataset", "git_commit", "dvc_data_hash"} <= set(c.data.tags)
        # the project was committed before the run: a clean tree at that commit
        assert c.data.tags["git_dirty"] == "false" and len(c.data.tags["git_commit"]) == 40
        assert {*METRIC_KEYS, "train_s", "loss", "cosine"} <= set(c.data.metrics)
        params = c.data.params  # the config in its sections, as params.yaml names them
        assert params["model.backbone"] == "resnet18" and params["loss.gamma"] == "0.05"
        assert c.data.tags["node_id"] and c.data.tags["host"]  # where it ran
        client = mlflow.tracking.MlflowClient()
        for series in ("loss", "images_per_s"):  # per-epoch values only, no final at step 0
            history = client.get_metric_history(c.info.run_id, series)
            assert [h.step for h in history] == list(range(1, epochs + 1)), series
        assert [h.step for h in client.get_metric_history(c.info.run_id, "aupro")] == [epochs]
    assert {f"mean_{k}" for k in METRIC_KEYS} <= set(parents[0].data.metrics)
    import torch

    uri_of = {}
    for c in children:  # each category's model: named, with its requirements, loadable
        cat = c.data.tags["category"]
        uri = json.loads((root / "results" / "benchmark" / cat / "model.json").read_text())
        uri_of[cat] = uri
        assert c.data.tags["mlflow.parentRunId"] and uri["mlflow_run"] == c.info.run_id
        # dst_path: MLflow otherwise downloads into a fresh /tmp folder it never removes.
        (tmp_path / cat).mkdir()
        detector = mlflow.pytorch.load_model(uri["model"], dst_path=str(tmp_path / cat))
        assert mlflow.get_logged_model(uri["model"].split("/")[-1]).name == (
            f"default-{cat}-resnet18-sk"
        )
        with torch.no_grad():
            maps, scores = detector(torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8))
        assert maps.shape == (2, 64, 64) and scores.shape == (2,)
        (requirements,) = (tmp_path / cat).rglob("requirements.txt")
        assert "skrd4ad==" in requirements.read_text()  # what loading it needs
    cat = children[0].data.tags["category"]
    _model_outside_and_rebuilt(root, env, tmp_path, cat, uri_of[cat])


def test_mlflow_ui_opens_the_benchmark_on_its_training_runs(project, tmp_path):
    """The page the end of `dvc repro` names, in a real browser (headless Chromium) on
    `mlflow ui`: the experiment's training runs with the benchmark's run (MLflow 3's UI
    opens on GenAI traces otherwise). The screenshot is kept in test-artifacts/."""

    chromium = shutil.which("chromium")
    if chromium is None:  # CI installs it (.ci/run); a laptop may not have it
        if os.environ.get("CI"):
            pytest.fail("chromium is missing: .ci/run installs it (apt-get install chromium)")
        pytest.skip("needs Chromium: apt-get install chromium")
    root, _ = project
    where = json.loads((root / "results" / "runs.json").read_text())["mlflow"]
    assert f"open {where['url']}" in repro_log(root).read_text()  # what the console said
    (parent,) = [r for r in _runs(root) if "mlflow.parentRunId" not in r.data.tags]
    server, uri = start_mlflow_ui(root / "mlflow.db", tmp_path / "ui.log")
    try:
        shots = REPO / "test-artifacts"
        shots.mkdir(exist_ok=True)
        page = where["url"].replace(LOCAL_UI, uri)
        dom = browse(chromium, page, shots / "mlflow-experiment.png", tmp_path / "profile")
    finally:
        server.terminate()
        server.wait(30)
    assert parent.info.run_name in dom, dom[-3000:]  # the runs table, with the run in it
    assert "skrd4ad-benchmark" in dom


def _runs(root: Path) -> list:
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    return mlflow.search_runs(experiment_names=["skrd4ad-benchmark"], output_format="list")


def _model_outside_and_rebuilt(root: Path, env: dict, tmp_path: Path, cat: str, uri: dict) -> None:
    """The logged model loads outside this checkout, and model.pt rebuilt from it with
    `python -m pipelines.model_file` evaluates to the metrics recorded at training."""
    from skrd4ad.evaluate import evaluate

    # Loaded outside this checkout: skrd4ad as installed, neither the checkout nor the
    # project on sys.path.
    code = (
        "import sys, mlflow, mlflow.pytorch, torch\n"
        f"mlflow.set_tracking_uri({str('sqlite:///' + str(root / 'mlflow.db'))!r})\n"
        f"m = mlflow.pytorch.load_model({uri['model']!r}, dst_path=sys.argv[1])\n"
        "x = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)\n"
        "maps, scores = m(x)\n"
        "assert maps.shape == (2, 64, 64), maps.shape\n"
        # the python_function flavor (mlflow models serve): both outputs, by name, the same
        f"p = mlflow.pyfunc.load_model({uri['model']!r}, dst_path=sys.argv[1])\n"
        "out = p.predict({'images': x.numpy()})\n"
        "assert (out['anomaly_map'] == maps.detach().numpy()).all()\n"
        "assert (out['score'] == scores.detach().numpy()).all()\n"
        "sig = p.metadata.signature.to_dict()\n"
        "assert '\"uint8\", \"shape\": [-1, 3, 64, 64]' in sig['inputs'], sig\n"
        "assert '\"anomaly_map\"' in sig['outputs'] and '\"score\"' in sig['outputs'], sig\n"
        "example = p.metadata.load_input_example(sys.argv[1])\n"
        "assert example['images'].shape == (1, 3, 64, 64), example\n"
        "import os, skrd4ad\n"
        f"assert not {{os.path.abspath(p) for p in sys.path}} & {{{str(REPO)!r}, {str(root)!r}}}\n"
        "assert type(m).__module__ == 'skrd4ad.inference', type(m)\n"
    )
    away = {k: v for k, v in env.items() if k != "PYTHONPATH"}
    (tmp_path / f"{cat}-away").mkdir()
    sh([sys.executable, "-c", code, str(tmp_path / f"{cat}-away")], tmp_path, away)
    # The checkpoint rebuilt from it evaluates to the metrics recorded at training.
    rebuilt = tmp_path / f"{cat}.pt"
    command = [sys.executable, "-m", "pipelines.model_file", f"results/benchmark/{cat}"]
    sh([*command, "--out", str(rebuilt)], root, env)
    again = evaluate(rebuilt, root / "prepared" / "default", cat, tmp_path / f"{cat}-eval")
    recorded = json.loads(
        (root / "results" / "benchmark" / cat / "eval" / "metrics.json").read_text()
    )
    # (torch's thread count may differ from the worker's: float sums, not the model)
    assert {k: again[k] for k in METRIC_KEYS} == pytest.approx(
        {k: recorded[k] for k in METRIC_KEYS}, rel=1e-6
    )


def _stage_command(tmp_path: Path, project, categories, **settings) -> list[str]:
    """The benchmark stage on the project's data with other settings (params sections)."""
    root, _ = project
    params = yaml.safe_load((root / "params.yaml").read_text())
    for section, values in settings.items():
        params[section].update(values)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    info = json.loads((root / "prepared" / "dataset.json").read_text())
    (tmp_path / "prepared").mkdir()
    (tmp_path / "prepared" / "dataset.json").write_text(
        json.dumps({**info, "categories": categories})
    )
    stage = [sys.executable, "-m", "pipelines.benchmark", "--params", str(tmp_path / "params.yaml")]
    return stage + ["--prepared", str(tmp_path / "prepared"), "--out", "results", "--metrics",
                    "metrics.json"]  # fmt: skip


def rerun_benchmark(
    project, tmp_path, categories, *, resources, train, extra_env=(), check=True, read=()
):
    """Run the benchmark stage again on the project's prepared data with other categories
    and settings; returns the process, metrics.json and the JSON files named in ``read``,
    read before the DVC outputs this run overwrote are restored."""
    root, env = project
    stage = _stage_command(tmp_path, project, categories, resources=resources, train=train)
    run_env = {**env, **dict(extra_env)}
    try:
        done = sh(stage, root, run_env, check=check)
        files = {name: json.loads((root / name).read_text()) for name in read}
    finally:
        sh([sys.executable, "-m", "dvc", "checkout", "-f", "-q"], root, env, check=False)
    return done, json.loads((root / "metrics.json").read_text()), files


def test_failed_category_is_reported_and_others_finish(project, tmp_path):
    done, metrics, _ = rerun_benchmark(
        project,
        tmp_path,
        ["brick", "tile"],
        resources={"max_failures": 0},
        train={"epochs": 1},
        check=False,
    )
    assert done.returncode == 1
    assert "categories failed: tile" in done.stderr
    assert "tile" in metrics["failed"] and "not found" in metrics["failed"]["tile"]
    assert metrics["categories"]["brick"]["aupro"] is not None


def _checkpoints(storage: Path, runs: set[str]) -> dict[str, str]:
    """{run: "final" or "epoch"} of the runs in ``storage`` not in ``runs`` that have a
    checkpoint Ray Train registered (its snapshot is written): a finished category's final
    one, or an epoch's last.pt."""
    seen = {}
    for run in sorted(p for p in storage.iterdir() if p.name not in runs):
        if not (run / "checkpoint_manager_snapshot.json").is_file():
            continue
        kinds = {
            "final" if (c / "final_metrics.json").is_file() else "epoch"
            for c in run.glob("checkpoint_*")
            if any((c / name).is_file() for name in ("last.pt", "model.pt", "model.json"))
        }
        if kinds:
            seen[run.name] = "final" if "final" in kinds else "epoch"
    return seen


def test_a_killed_driver_reruns_into_the_same_runs(project, tmp_path):
    """SIGKILL of the stage's driver and all it started (a lost head node), once one
    category has finished and the other has checkpointed; the same command again reuses the
    finished one and resumes the other from its checkpoint, not from epoch 0."""
    root, env = project
    storage = root / "results" / "ray"
    before = {p.name for p in storage.iterdir()}
    # 2 CPUs per worker on the 2-CPU Ray: the categories train one after the other.
    stage = _stage_command(tmp_path, project, ["brick", "gravel"],
                           resources={"cpus_per_worker": 2, "max_failures": 0},
                           train={"epochs": 4, "seed": 21, "checkpoint_every": 1},
                           ray={"num_cpus": 2})  # fmt: skip
    proc = subprocess.Popen(stage, cwd=root, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    deadline, state = time.monotonic() + 600, {}
    while time.monotonic() < deadline and proc.poll() is None:
        state = _checkpoints(storage, before)
        if sorted(state.values()) == ["epoch", "final"]:
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the stage ended before the kill"
    kill_family(proc.pid)
    (finished,) = [r.split("-")[0] for r, v in state.items() if v == "final"]
    (unfinished,) = [r.split("-")[0] for r, v in state.items() if v == "epoch"]
    try:
        sh(stage, root, env)
        metrics = json.loads((root / "results" / "runs.json").read_text())["categories"]
        history = json.loads(
            (root / "results" / "benchmark" / unfinished / "train_history.json").read_text()
        )
        # Each run keeps its final checkpoint only: no epoch checkpoint the kill left.
        for run in state:
            assert not list((storage / run).glob("*/last.pt")), run
            assert len([c for c in (storage / run).glob("checkpoint_*") if c.is_dir()]) == 1
    finally:
        sh([sys.executable, "-m", "dvc", "checkout", "-f", "-q"], root, env, check=False)
    assert metrics[finished]["reused"] is True
    assert metrics[unfinished]["reused"] is False
    assert metrics[unfinished]["resumed_from_epoch"] >= 1  # from a checkpoint, not epoch 0
    assert [h["epoch"] for h in history] == list(range(1, 5))


def test_dvc_exp_run_compares_a_setting(project):
    """`dvc exp run -S` (the README's way to compare settings) runs on DVC's rewrite of
    params.yaml, whose nulls it writes as empty values; the MLflow run is named after the
    experiment, and `dvc exp show` prints the means first."""
    import mlflow

    root, env = project
    dvc = [sys.executable, "-m", "dvc"]
    # A setting no category's training depends on: both are reused from the run storage.
    change = ["-n", "other-setting", "-S", "mlflow.experiment=skrd4ad-exp"]
    try:
        done = sh([*dvc, "exp", "run", *change], root, env)
        rewritten = (root / "params.yaml").read_text()
        shown = sh([*dvc, "exp", "show", "--json"], root, env).stdout
        # The README's command: the means, then the settings that differ.
        table = sh([sys.executable, "-m", *shlex.split(EXP_SHOW), "--csv"], root, env).stdout
    finally:
        sh(["git", "checkout", "--", "params.yaml"], root, env)
        sh([*dvc, "checkout", "-f", "-q"], root, env, check=False)
    assert re.search(r"^  address:[ ]*$", rewritten, re.M), rewritten  # null, rewritten
    assert "Ran experiment(s): other-setting" in done.stdout + done.stderr
    (exp,) = [e for r in json.loads(shown) for e in r.get("experiments") or [] if
              e.get("name") == "other-setting"]  # fmt: skip
    metrics = exp["revs"][0]["data"]["metrics"]["metrics.json"]["data"]
    assert set(metrics["mean"]) >= set(METRIC_KEYS)
    header = table.splitlines()[0].split(",")
    assert header[4:9] == [f"mean.{k}" for k in METRIC_KEYS], header
    assert "mlflow.experiment" in header and not any("categories" in h for h in header)
    assert EXP_SHOW in (REPO / "README.md").read_text()
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["skrd4ad-exp"], output_format="list")
    assert len(runs) == 1 + len(quick_start()[0])  # the benchmark's and each category's
    assert {r.data.tags["dvc_experiment"] for r in runs} == {"other-setting"}
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert parent.info.run_name == "benchmark-other-setting"
    assert len(parent.data.tags["dvc_baseline_rev"]) == 40


def test_a_run_name_follows_every_setting_that_changes_a_result():
    from pipelines.benchmark import run_name

    dataset = {"data_version": "v1"}
    config = {"train": {"epochs": 2}, "loss": {"alpha": 0.0}}
    name = run_name("brick", config, dataset, overlays=2, num_workers=1)
    assert name == run_name(
        "brick", json.loads(json.dumps(config)), dataset, overlays=2, num_workers=1
    )
    assert name.startswith("brick-")
    for changed in (
        run_name("grass", config, dataset, overlays=2, num_workers=1),
        run_name("brick", {**config, "loss": {"alpha": 0.5}}, dataset, overlays=2, num_workers=1),
        run_name("brick", config, {"data_version": "v2"}, overlays=2, num_workers=1),
        run_name("brick", config, dataset, overlays=3, num_workers=1),
        run_name("brick", config, dataset, overlays=2, num_workers=2),
    ):
        assert changed != name


def test_unreachable_mlflow_warns_and_keeps_going(tmp_path, monkeypatch):
    from pipelines.tracking import Tracker

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # nothing listens there
    with pytest.warns(RuntimeWarning, match="unreachable"):
        tracker = Tracker("x")
    assert not tracker.ok
    tracker.start("bench", {"a": 1}, {})
    run = tracker.start_child("brick", {}, {})
    tracker.log_epoch(run, {"epoch": 1, "loss": 1.0})
    tracker.finish_child(run, {}, {}, tmp_path)
    tracker.fail_child(run, "error")
    tracker.finish({}, tmp_path / "metrics.json")  # no-ops, no exception


def test_two_worker_ddp_matches_single_worker_in_expectation(small_dataset, tmp_path):
    import ray

    from pipelines.benchmark import fit_categories, job
    from pipelines.orchestrate import trainer_settings

    base = {
        "data": {"root": str(small_dataset), "category": "grass"},
        "model": {"backbone": "resnet18", "teacher_weights": "none"},
        "runtime": {"device": "cpu"},
        "train": {
            "image_size": 64, "epochs": 2, "batch_size": 8, "val_fraction": 0,
            "checkpoint_every": 1, "seed": 3,
        },
    }  # fmt: skip
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    try:
        runs = {}
        for workers in (1, 2):
            settings = trainer_settings(
                num_workers=workers, cpus=1, gpus=0, storage_path=str(tmp_path / "ray"),
                storage_endpoint=None, max_failures=0,
            )  # fmt: skip
            jobs = [job("grass", base, f"ddp{workers}", overlays=0)]
            (runs[workers],) = fit_categories(jobs, settings, tmp_path / f"w{workers}").values()
    finally:
        ray.shutdown()
    # A finished run keeps only what it needs: its final checkpoint, without last.pt.
    (stored,) = [p for p in (tmp_path / "ray" / "ddp1").glob("checkpoint_*") if p.is_dir()]
    assert (stored / "model.pt").is_file() and not (stored / "last.pt").exists()
    histories = {}
    for workers, outcome in runs.items():
        assert "error" not in outcome, outcome
        histories[workers] = json.loads(
            (tmp_path / f"w{workers}" / "grass" / "train_history.json").read_text()
        )
        assert [h["epoch"] for h in histories[workers]] == [1, 2]
    single, ddp = (np.array([h["loss"] for h in histories[w]]) for w in (1, 2))
    # same model, same global batch, same data: the loss curves agree up to batch noise
    assert ddp[-1] < ddp[0]
    assert np.allclose(ddp, single, rtol=0.15), (single, ddp)


def test_auto_cpus_share_the_cluster_so_no_category_waits():
    from pipelines.orchestrate import cpus_per_worker

    share = cpus_per_worker("auto", {"CPU": 2.0}, 3, 0.0)
    assert share == pytest.approx(2 / 3, abs=1e-4) and round(share * 1e4) * 3 <= 2e4
    assert cpus_per_worker("auto", {"CPU": 64.0}, 4, 0.0) == 8.0  # capped
    assert cpus_per_worker("auto", {"CPU": 2.0}, 15, 0.0) == 0.5  # at most 2 per core
    assert cpus_per_worker("auto", {"CPU": 16.0, "GPU": 1.0}, 15, 0.25) == 1.0
    assert cpus_per_worker(3, {"CPU": 2.0}, 3, 0.0) == 3.0


def test_auto_gpus_give_each_worker_a_whole_gpu_and_as_many_run_as_fit():
    """With GPUs, auto is one whole GPU per worker, so one GPU trains one category at a
    time; fractions pack several onto one (the cluster test runs four on a quarter each)."""
    from pipelines.orchestrate import gpus_per_worker, max_concurrent

    assert gpus_per_worker("auto", {"CPU": 4.0, "GPU": 2.0}) == 1.0
    assert gpus_per_worker("auto", {"CPU": 4.0}) == 0.0
    assert gpus_per_worker(0.25, {"CPU": 4.0, "GPU": 1.0}) == 0.25
    assert max_concurrent({"CPU": 4.0, "GPU": 1.0}, 1, 1.0, 1.0) == 1
    assert max_concurrent({"CPU": 4.0, "GPU": 2.0}, 1, 1.0, 1.0) == 2
    assert max_concurrent({"CPU": 2.0, "GPU": 1.0}, 1, 0.5, 0.25) == 4
    assert max_concurrent({"CPU": 4.0, "GPU": 2.0}, 2, 1.0, 1.0) == 1  # DDP: 2 GPUs a run


def test_threads_per_worker_auto_doubles_the_cpu_share():
    from pipelines.benchmark import _threads_per_worker

    assert _threads_per_worker("auto", 2 / 3 - 1e-5, 0.0) == 2  # 3 categories, 2 cores
    assert _threads_per_worker("auto", 1.0, 0.0) == 2
    assert _threads_per_worker("auto", 8.0, 0.0) == 16
    assert _threads_per_worker("auto", 1.0, 0.5) is None  # GPU workers: Ray's default
    assert _threads_per_worker(3, 1.0, 0.0) == 3


def test_worker_threads_follow_the_setting_only_with_passive_openmp(monkeypatch):
    import torch

    from pipelines.ray_train import _set_torch_threads

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
        assert _set_torch_threads(2) == 1  # spinning OpenMP: oversubscription costs 3x
        monkeypatch.setenv("OMP_WAIT_POLICY", "passive")
        assert _set_torch_threads(2) == min(2, len(os.sched_getaffinity(0)))
        assert _set_torch_threads(10_000) == len(os.sched_getaffinity(0))
    finally:
        torch.set_num_threads(before)


def test_dvc_repro_works_in_a_fresh_clone(tmp_path):
    """The natural first command of a DVC user, with no `make data` and no remote: the
    default dataset's root is the code that makes it, so nothing is missing."""
    src = tmp_path / "src"
    for item in COPY:
        dst = src / item
        dst.parent.mkdir(parents=True, exist_ok=True)
        if (REPO / item).is_dir():
            shutil.copytree(REPO / item, dst, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(REPO / item, dst)
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "PYTHONPATH": str(tmp_path / "clone"),
    }
    sh(["git", "init", "-q"], src, env)
    sh(["git", "add", "-A"], src, env)
    sh(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "init"], src, env)
    sh(["git", "clone", "-q", str(src), str(tmp_path / "clone")], tmp_path, env)
    done = sh([sys.executable, "-m", "dvc", "repro", "prepare"], tmp_path / "clone", env)
    assert "missing" not in done.stdout + done.stderr
    assert (tmp_path / "clone" / "prepared" / "dataset.json").is_file()
