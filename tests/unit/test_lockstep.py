"""Lockstep: categories take turns one epoch at a time, each in one fit for the run."""

from __future__ import annotations

import threading

import pytest

from pipelines.lockstep import Lockstep


def fake_fit(name: str, epochs: int, log: list, fail_at: int | None = None):
    def fit(callback) -> str:
        log.append((name, "setup"))  # once per run: decode, build, cache
        for epoch in range(1, epochs + 1):
            if epoch == fail_at:
                raise ValueError(f"{name} broke")
            log.append((name, epoch, threading.current_thread().name))
            callback({"epoch": epoch, "loss": 1.0 / epoch})
        log.append((name, "finalise"))
        return name

    return fit


def test_categories_take_turns_and_set_up_once():
    log: list = []
    runs = Lockstep({c: fake_fit(c, 3, log) for c in ("a", "b")}).run()
    epochs = [sorted(m) + [m["a"]["epoch"]] for m in runs]
    assert epochs == [["a", "b", 1], ["a", "b", 2], ["a", "b", 3]]
    steps = [e[:2] for e in log]
    assert steps == [
        ("a", "setup"),
        ("a", 1),
        ("b", "setup"),
        ("b", 1),
        ("a", 2),
        ("b", 2),
        ("a", 3),
        ("b", 3),
        ("a", "finalise"),
        ("b", "finalise"),
    ]
    assert {e[2] for e in log if len(e) == 3 and e[0] == "a"} == {"fit-a"}


def test_an_error_in_one_category_reaches_the_consumer():
    log: list = []
    runs = Lockstep({"a": fake_fit("a", 3, log), "b": fake_fit("b", 3, log, fail_at=2)}).run()
    next(runs)
    with pytest.raises(ValueError, match="b broke"):
        next(runs)


def test_an_abandoned_run_stops_every_thread():
    log: list = []
    runs = Lockstep({c: fake_fit(c, 50, log) for c in ("a", "b")}).run()
    next(runs)
    runs.close()
    assert not [t for t in threading.enumerate() if t.name in ("fit-a", "fit-b")]
    assert ("a", "finalise") not in log
