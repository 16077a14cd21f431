"""The driver's live view of a benchmark or search: one row per trial (a category, or a
search's trial) with its state, epoch k/N, loss, img/s, the validation objective when
computed, and an ETA.

On a terminal the rows are a live rich table; otherwise (a log file, CI, ``dvc repro``
piped) each trial's epochs are plain lines, so a log reads as a history: about
``LOG_LINES`` per trial, and a line at least every ``LOG_EVERY_S`` seconds while any
trial reports (the log is never silent longer, however many categories run at once). Tune's own
progress reporter prints every config and metric key in wide tables; this one shows only
what a user watches a 200-epoch run for.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

from ray import tune

from .orchestrate import ERROR


@dataclass
class Row:
    """What the view shows of one trial."""

    name: str
    epochs: int
    state: str = "pending"
    epoch: int = 0
    loss: float | None = None
    images_per_s: float | None = None
    objective: float | None = None
    epoch_s: list[float] = field(default_factory=list)

    def eta_s(self) -> float | None:
        """Remaining epochs at the mean epoch time so far."""
        if not self.epoch_s or self.state != "running" or self.epoch >= self.epochs:
            return None
        return (self.epochs - self.epoch) * sum(self.epoch_s) / len(self.epoch_s)

    def cells(self) -> list[str]:
        def num(value: float | None, fmt: str) -> str:
            return "" if value is None else format(value, fmt)

        eta = self.eta_s()
        return [
            self.name, self.state, f"{self.epoch}/{self.epochs}", num(self.loss, ".4f"),
            num(self.images_per_s, ".1f"), num(self.objective, ".4f"),
            "" if eta is None else time.strftime("%H:%M:%S", time.gmtime(eta)),
        ]  # fmt: skip


HEADERS = ["trial", "state", "epoch", "loss", "img/s", "val", "ETA"]
# In a log: about this many epoch lines per trial, and a line at least this often.
LOG_LINES, LOG_EVERY_S = 5, 60.0


class Progress(tune.Callback):
    """Tune callback keeping one Row per trial and showing them.

    ``describe(trial)`` gives a trial's (name, epochs); ``objective`` is the validation
    metric shown (``val_aupro``)."""

    def __init__(
        self,
        describe: Callable[[Any], tuple[str, int]],
        objective: str = "val_aupro",
        out: TextIO | None = None,
    ) -> None:
        self.describe, self.objective = describe, objective
        self.out = out or sys.stderr
        self.rows: dict[str, Row] = {}
        self.live: Any = None
        self.logged = time.monotonic()  # when the last line went to a log
        if self.out.isatty():
            from rich.console import Console
            from rich.live import Live

            self.live = Live(self._table(), console=Console(file=self.out), auto_refresh=False)

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its callbacks into the experiment (tuner.pkl); the console stays.
        return {**self.__dict__, "out": None, "live": None}

    def row(self, trial: Any) -> Row:
        if trial.trial_id not in self.rows:
            name, epochs = self.describe(trial)
            self.rows[trial.trial_id] = Row(name, epochs)
        return self.rows[trial.trial_id]

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        row = self.row(trial)
        row.state = "running"
        self._show(row, "started")

    def on_trial_result(
        self, iteration: int, trials: list, trial: Any, result: dict, **info: Any
    ) -> None:
        row = self.row(trial)
        if ERROR in result:
            row.state = "failed"
            self._show(row, f"failed: {result[ERROR]}")
            return
        if "final" in result:
            row.state = "evaluated" if not result.get("reused") else "reused"
            self._show(row, row.state)
            return
        if "epoch" not in result:
            return
        row.epoch, row.loss = int(result["epoch"]), result.get("loss")
        row.images_per_s = result.get("images_per_s", row.images_per_s)
        row.objective = result.get(self.objective, row.objective)
        if "epoch_s" in result:
            row.epoch_s.append(float(result["epoch_s"]))
        self._show(row, None)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        row = self.row(trial)
        if row.state == "running":  # ended without a final report (a search's trial)
            row.state = "done"
            self._show(row, "done")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        row = self.row(trial)
        row.state = "failed"
        self._show(row, "failed")

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        row = self.row(trial)
        row.state = "restarting"
        self._show(row, "lost its process; restarting (its Train run resumes from storage)")

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        if self.live is not None:
            self.live.update(self._table(), refresh=True)
            self.live.stop()
            self.live = None

    def _show(self, row: Row, event: str | None) -> None:
        if self.live is not None:
            if not self.live.is_started:
                self.live.start()
            self.live.update(self._table(), refresh=True)
            return
        now = time.monotonic()
        if event is not None:
            self.logged = now
            print(f"{row.name}: {event}", file=self.out or sys.stderr, flush=True)
            return
        # A log reads as a history, not one line per epoch of a 200-epoch run; a silence
        # of a minute is broken by whichever trial reports next, not by each of them.
        step = -(-row.epochs // LOG_LINES)
        due = row.epoch % step == 0 or row.epoch >= row.epochs or now - self.logged >= LOG_EVERY_S
        if not due:
            return
        self.logged = now
        cells = dict(zip(HEADERS, row.cells(), strict=True))
        text = f"{row.name}: epoch {cells['epoch']} loss {cells['loss']}"
        text += f" ({cells['img/s']} img/s)" if cells["img/s"] else ""
        text += f" val {cells['val']}" if cells["val"] else ""
        text += f" ETA {cells['ETA']}" if cells["ETA"] else ""
        print(text, file=self.out or sys.stderr, flush=True)

    def _table(self) -> Any:
        from rich.table import Table

        table = Table(*HEADERS, box=None, pad_edge=False)
        for row in self.rows.values():
            table.add_row(*row.cells())
        return table
