"""The callback protocol of a training run: what :func:`skrd4ad.train.fit` tells its
observers (Ray Train, Tune, a notebook). Imports no torch, so that orchestration code can
subclass it cheaply."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any


class Callback:
    """What a training run tells its observers; override the hooks you need. Each is
    called on every rank, except ``on_checkpoint``: only the rank that wrote the file."""

    def on_checkpoint(self, path: Path, epoch: int) -> None:
        """``path`` (last.pt) now holds the state after ``epoch``; called before that
        epoch's ``on_epoch_end``."""

    def on_epoch_end(self, metrics: dict[str, Any]) -> None:
        """The epoch's loss terms, throughput and validation metrics (``val_*``)."""


class OnEpochEnd(Callback):
    """A function of the epoch's metrics as a callback."""

    def __init__(self, fn: Callable[[dict[str, Any]], None]) -> None:
        self.fn = fn

    def on_epoch_end(self, metrics: dict[str, Any]) -> None:
        self.fn(metrics)
