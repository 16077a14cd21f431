"""How a Tune trial hands its Train run's reports to Tune (pipelines/orchestrate.drive).

The cases are two trials of one real Tune run on an own local Ray, in a subprocess with a
time limit, so a deadlock fails the tests instead of hanging the session. A driver callback
that sleeps on each result stands in for a busy driver (MLflow uploads, several trials on
two cores): while it sleeps, the Train run reports again and then fails or ends.
"""

from __future__ import annotations

import json
import os
import sys
import textwrap
from pathlib import Path

import pytest
from servers import run

REPO = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent(
    """
    import json, sys, time

    import ray
    from ray import tune

    from pipelines.orchestrate import ERROR, drive, run_trials, trainer_settings

    storage = sys.argv[1]


    def train_func(config):
        import ray.train

        for step in range(config["reports"]):
            ray.train.report({"step": float(step)})
        if config["fail"]:
            raise RuntimeError("the run broke after its reports")


    def trial(config):
        settings = trainer_settings(
            num_workers=1, cpus=1, gpus=0, storage_path=storage, storage_endpoint=None,
            max_failures=0,
        )
        drive(config["case"], config, settings, train_func)


    class SlowDriver(tune.Callback):
        def __init__(self):
            self.seen = {}

        def on_trial_result(self, iteration, trials, trial, result, **info):
            seen = self.seen.setdefault(trial.config["case"], [])
            seen.append({k: result[k] for k in ("step", ERROR) if k in result})
            time.sleep(4)


    ray.init(address="local", num_cpus=2, include_dashboard=False)
    driver = SlowDriver()
    run_trials(
        trial,
        {"case": tune.grid_search(["fails", "ends"]),
         "reports": tune.sample_from(lambda spec: 2 if spec.config.case == "fails" else 3),
         "fail": tune.sample_from(lambda spec: spec.config.case == "fails")},
        name="trials", storage_path=storage, storage_endpoint=None,
        tune_config=tune.TuneConfig(), callbacks=[driver], trial_retries=0,
    )
    print("SEEN " + json.dumps(driver.seen))
    """
)


@pytest.fixture(scope="module")
def seen(tmp_path_factory) -> dict[str, list[dict]]:
    """The results the driver saw of each trial, in order; a run that does not end in time
    fails with the stacks of its processes."""
    tmp_path = tmp_path_factory.mktemp("trials")
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(REPO)}
    env.pop("RAY_ADDRESS", None)
    cmd = [sys.executable, "-c", SCRIPT, str(tmp_path / "ray")]
    out = run(cmd, tmp_path, env, timeout=240).stdout
    (line,) = [line for line in out.splitlines() if line.startswith("SEEN ")]
    return json.loads(line[len("SEEN ") :])


def test_a_run_that_fails_after_reports_it_has_not_delivered_ends_with_its_error(seen):
    # The second report waits in the channel while the driver sleeps on the first, and the
    # run fails before the driver asks again: Ray 2.60's TuneReportCallback with a trial-side
    # tune.report of the error deadlocked here (test_cluster's quarter-GPU hang).
    fails = seen["fails"]
    assert fails[:2] == [{"step": 0.0}, {"step": 1.0}] and len(fails) == 3, fails
    # Ray wraps the worker's error (WorkerGroupError: ...); the user reads the worker's.
    assert fails[2]["error"].endswith("RuntimeError: the run broke after its reports"), fails


def test_every_report_of_a_finished_run_reaches_tune_in_order(seen):
    # The last report waits in the channel while the function ends: Tune's end-of-function
    # marker deadlocked with it just the same.
    assert seen["ends"] == [{"step": 0.0}, {"step": 1.0}, {"step": 2.0}]
