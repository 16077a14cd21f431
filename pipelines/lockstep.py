"""Several categories trained in lockstep, one epoch each in turn, every one keeping its
whole state (decoded images, model, teacher-feature cache, optimizer) for the whole run.

A shared-scope search trial reports the mean over its categories after every epoch, so
that ASHA compares like with like. Calling skrd4ad's ``fit`` once per epoch per category
re-decoded the images, rebuilt the model and the cache, and validated twice each time. A
thread per category instead runs one ``fit`` for all its epochs; its epoch callback hands
the turn back, so only one category computes at a time.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

_FINISHED = object()


class _Stop(Exception):
    """Raised inside a category's fit when the run is abandoned (a stopped trial)."""


class Lockstep:
    """``run()`` yields {category: that epoch's metrics} once per epoch."""

    def __init__(self, fits: dict[str, Callable[[Callable[[dict], None]], Any]]) -> None:
        # fits[cat](callback) trains the category, calling callback(metrics) every epoch.
        self.fits = fits
        self.turn = {cat: threading.Event() for cat in fits}
        self.out: queue.Queue = queue.Queue()
        self.stopping = False

    def _category(self, cat: str) -> None:
        def handback(metrics: dict) -> None:
            self.out.put((cat, metrics))
            self._wait(cat)

        try:
            self._wait(cat)
            self.fits[cat](handback)
            self.out.put((cat, _FINISHED))
        except _Stop:
            pass
        except BaseException as exc:  # noqa: BLE001 - re-raised in the consumer's thread
            self.out.put((cat, exc))

    def _wait(self, cat: str) -> None:
        self.turn[cat].wait()
        self.turn[cat].clear()
        if self.stopping:
            raise _Stop

    def _step(self, cat: str) -> Any:
        self.turn[cat].set()
        who, what = self.out.get()
        assert who == cat, (who, cat)  # one category runs at a time
        if isinstance(what, BaseException):
            raise what
        return what

    def run(self) -> Iterator[dict[str, dict]]:
        threads = [
            threading.Thread(target=self._category, args=(cat,), name=f"fit-{cat}", daemon=True)
            for cat in self.fits
        ]
        for t in threads:
            t.start()
        try:
            while True:
                results = {cat: self._step(cat) for cat in self.fits}
                if all(r is _FINISHED for r in results.values()):
                    return
                if any(r is _FINISHED for r in results.values()):
                    raise RuntimeError(f"categories out of step: {sorted(results)}")
                yield results
        finally:
            self.stopping = True
            for event in self.turn.values():
                event.set()
            for t in threads:
                t.join(timeout=60)
