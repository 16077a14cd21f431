"""skrd4ad: SK-RD4AD anomaly detection (skip-connected reverse distillation)."""

from .models import SKRD4AD, build_model

__version__ = "0.1.0"
__all__ = ["SKRD4AD", "__version__", "build_model"]
