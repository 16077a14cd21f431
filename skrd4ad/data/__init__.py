"""Datasets: layouts, decoding, the embedded default dataset and VisA conversion.

Names are imported from their modules on first use (PEP 562), so that the CLI reads the
default dataset's settings without importing torch.
"""

from __future__ import annotations

from ..lazy import lazy_names

_MODULES = {
    ".default_dataset": ("DEFAULT_CATEGORIES", "make_default_dataset"),
    ".images": ("IMAGE_EXTENSIONS", "MaskSizeWarning", "MaskValueWarning", "normalize"),
    ".layouts": ("LAYOUTS", "CategoryData", "Sample", "list_categories", "load_category"),
    ".tensors": ("TensorSet", "category_tensors", "decode", "decode_test_split"),
    ".visa": ("prepare_visa",),
}
__all__, __getattr__ = lazy_names(__name__, _MODULES)
