"""The driver's live view (pipelines/progress.py): a row per trial on a terminal, a line per
trial and epoch in a log, with state, epoch k/N, loss, img/s, validation metric and ETA."""

from __future__ import annotations

import io
import pickle
from types import SimpleNamespace

from pipelines.progress import Progress


def _describe(trial):
    return trial.config["name"], 4


def _run(view: Progress) -> None:
    brick = SimpleNamespace(trial_id="1", config={"name": "brick"})
    tile = SimpleNamespace(trial_id="2", config={"name": "tile"})
    view.on_trial_start(0, [], brick)
    view.on_trial_start(0, [], tile)
    for epoch in (1, 2):
        result = {"epoch": epoch, "loss": 1.0 / epoch, "images_per_s": 20.0, "epoch_s": 30.0}
        if epoch == 2:
            result["val_aupro"] = 0.75
        view.on_trial_result(0, [], brick, result)
    view.on_trial_result(0, [], tile, {"error": "UserError: tile: not found"})
    view.on_trial_complete(0, [], tile)
    view.on_trial_result(0, [], brick, {"final": 1.0, "aupro": 0.7})
    view.on_trial_complete(0, [], brick)
    view.on_experiment_end([])


class Log(io.StringIO):
    def isatty(self) -> bool:
        return False


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_gets_a_line_per_trial_and_epoch_with_eta():
    out = Log()
    _run(Progress(_describe, out=out))
    lines = out.getvalue().splitlines()
    assert lines == [
        "brick: started",
        "tile: started",
        "brick: epoch 1/4 loss 1.0000 (20.0 img/s) ETA 00:01:30",
        "brick: epoch 2/4 loss 0.5000 (20.0 img/s) val 0.7500 ETA 00:01:00",
        "tile: failed: UserError: tile: not found",
        "brick: evaluated",
    ]


def test_a_log_gets_about_five_epoch_lines_per_trial_and_one_a_minute(monkeypatch):
    import pipelines.progress as progress

    clock = [1000.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: clock[0])
    out = Log()
    view = Progress(lambda trial: ("brick", 10), out=out)
    brick = SimpleNamespace(trial_id="1", config={})
    view.on_trial_start(0, [], brick)
    for epoch in range(1, 11):
        clock[0] += 1.0 if epoch != 7 else 61.0  # epoch 7 took over a minute
        view.on_trial_result(0, [], brick, {"epoch": epoch, "loss": 0.5, "epoch_s": 1.0})
    epochs = [line.split()[2] for line in out.getvalue().splitlines() if " epoch " in line]
    assert epochs == ["2/10", "4/10", "6/10", "7/10", "8/10", "10/10"]


def test_a_silent_minute_gets_one_line_not_one_per_trial(monkeypatch):
    """Three categories whose first epochs end over a minute after they started: the log
    gets one line for the silence (the first to report), then each trial's due lines."""
    import pipelines.progress as progress

    clock = [1000.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: clock[0])
    out = Log()
    view = Progress(lambda trial: (trial.trial_id, 10), out=out)
    trials = [SimpleNamespace(trial_id=name, config={}) for name in ("a", "b", "c")]
    for trial in trials:
        view.on_trial_start(0, [], trial)
    clock[0] += 70.0
    for epoch in (1, 2):
        for trial in trials:
            clock[0] += 0.5
            view.on_trial_result(0, [], trial, {"epoch": epoch, "loss": 0.5, "epoch_s": 1.0})
    epochs = [line.split()[0] + line.split()[2] for line in out.getvalue().splitlines()
              if " epoch " in line]  # fmt: skip
    assert epochs == ["a:1/10", "a:2/10", "b:2/10", "c:2/10"]


def test_a_terminal_gets_one_live_row_per_trial():
    out = Terminal()
    _run(Progress(_describe, out=out))
    final = out.getvalue()
    for cells in (["brick", "evaluated", "2/4", "0.5000", "20.0", "0.7500"], ["tile", "failed"]):
        assert all(c in final for c in cells), final
    assert "epoch 1/4" not in final  # rows, not a line per epoch


def test_the_view_pickles_without_its_console():
    """Tune pickles its callbacks into the experiment state; the console stays behind."""
    view = Progress(_describe, out=Terminal())
    view.on_trial_start(0, [], SimpleNamespace(trial_id="1", config={"name": "brick"}))
    copy = pickle.loads(pickle.dumps(view))
    assert copy.out is None and copy.live is None and copy.rows["1"].state == "running"
