"""How a Tune trial hands its Train run's reports to Tune: through the trial's own thread.

Ray 2.60's ``TuneReportCallback`` hands each report to the trial actor's main thread, which
reports it while the trial function's thread may report too: Tune's end-of-function marker,
or a failed run's error. Both write the one-slot result queue that the main thread alone
drains. When the function thread's write lands first (the driver was busy with another
trial's result or an MLflow upload while the run ended), the main thread blocks on its own
write for good and the trial never ends (tests/integration/test_orchestrate.py). Here the
controller's callback puts each report on a Ray queue, and the trial thread forwards them
in order, the only caller of ``tune.report``; the run's outcome follows its last report.
"""

from __future__ import annotations

import threading
from typing import Any

import ray
from ray import tune
from ray.train import UserCallback
from ray.util.queue import Queue
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from .orchestrate import CHECKPOINT_PATH


def report_queue() -> Queue:
    """A queue for one Train run's reports, on the trial's node (where Ray Train puts the
    run's controller too), so that only the loss of that node, which ends the trial anyway,
    can take it away. One slot: the controller waits for Tune as it did with Ray's callback."""
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    return Queue(maxsize=1, actor_options={"num_cpus": 0, "scheduling_strategy": here})


class ForwardReports(UserCallback):
    """On the Train controller: each report (rank 0's metrics, as Ray's TuneReportCallback
    forwards them, with the path of the checkpoint already stored under CHECKPOINT_PATH)
    onto the trial's queue."""

    def __init__(self, reports: Queue) -> None:
        self.reports = reports

    def after_report(self, run_context: Any, metrics: list[dict], checkpoint: Any) -> None:
        item = dict(metrics[0])
        if checkpoint is not None:
            item[CHECKPOINT_PATH] = checkpoint.path
        self.reports.put(item)


def fit_and_forward(trainer: Any, reports: Queue) -> Any:
    """``trainer.fit()`` in a thread of its own while this thread (the trial's) forwards
    each report to Tune; then its Result, or its error raised, after the last report."""
    outcome: dict[str, Any] = {}

    def fit() -> None:
        try:
            outcome["result"] = trainer.fit()
        except Exception as exc:  # noqa: BLE001 - raised in the trial's thread below
            outcome["error"] = exc
        finally:
            reports.put(None)  # after every report the controller put: fit() has returned

    threading.Thread(target=fit, name="train-run", daemon=True).start()
    while (item := reports.get()) is not None:
        tune.report(item)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]
