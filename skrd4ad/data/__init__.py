"""Datasets: layouts, decoding, the embedded default dataset and VisA conversion.

Names are imported from their modules on first use (PEP 562), so that the CLI reads the
default dataset's settings without importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_MODULES = {
    ".default_dataset": ("DEFAULT_CATEGORIES", "make_default_dataset"),
    ".images": ("IMAGE_EXTENSIONS", "MaskSizeWarning", "MaskValueWarning", "normalize"),
    ".layouts": ("LAYOUTS", "CategoryData", "Sample", "list_categories", "load_category"),
    ".tensors": ("TensorSet", "category_tensors", "decode", "decode_test_split"),
    ".visa": ("prepare_visa",),
}
_WHERE = {name: module for module, names in _MODULES.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
