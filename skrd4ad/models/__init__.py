"""The models skrd4ad trains, one folder each (anomalib's layout); SK-RD4AD is the one."""

from __future__ import annotations

from typing import Any

from . import reverse_distillation

__all__ = reverse_distillation.__all__


def __getattr__(name: str) -> Any:
    # The package's names, each imported on first use (see reverse_distillation).
    if name in __all__:
        return getattr(reverse_distillation, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
