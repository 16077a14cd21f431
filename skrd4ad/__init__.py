"""skrd4ad: SK-RD4AD anomaly detection (skip-connected reverse distillation)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .models import SKRD4AD, build_model

__version__ = "0.1.0"
__all__ = ["SKRD4AD", "__version__", "build_model"]


def __getattr__(name: str) -> Any:
    # Lazy, so that `import skrd4ad.errors` (the pipelines' drivers) does not pay for
    # importing torch and torchvision before it can start Ray.
    if name in ("SKRD4AD", "build_model"):
        from . import models

        return getattr(models, name)
    raise AttributeError(f"module 'skrd4ad' has no attribute {name!r}")
