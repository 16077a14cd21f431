"""Skip CPython's last garbage collections when a command exits.

A process that imported torch and torchvision spends about 1.2 s finalising at exit, and
one that also imported Ray and MLflow about 2.3 s, nearly all of it collecting module-level
objects that the operating system reclaims anyway (measured on this project's 2-core CPU
machine with an atexit timestamp against the process's end). Freezing every object into
the permanent generation, after the other exit handlers have run, takes that to 0.2-0.3 s.
Nothing is skipped that writes data: open files are closed by reference counting during
module teardown, and exit handlers (MLflow's, Ray's) still run first.
"""

from __future__ import annotations

import atexit
import gc

_registered = False


def skip_exit_gc() -> None:
    """Register the freeze once; ``atexit`` runs handlers last-in first-out, so call this
    at the start of ``main`` and the handlers that libraries register later run before it."""
    global _registered
    if not _registered:
        atexit.register(gc.freeze)
        _registered = True
