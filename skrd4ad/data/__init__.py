"""Datasets: layouts, decoding, the embedded default dataset and VisA conversion."""

from .default_dataset import DEFAULT_CATEGORIES, make_default_dataset
from .images import IMAGE_EXTENSIONS, MaskSizeWarning, MaskValueWarning, normalize
from .layouts import LAYOUTS, CategoryData, Sample, list_categories, load_category
from .tensors import TensorSet, category_tensors, decode, decode_test_split
from .visa import prepare_visa

__all__ = [
    "DEFAULT_CATEGORIES",
    "IMAGE_EXTENSIONS",
    "LAYOUTS",
    "CategoryData",
    "MaskSizeWarning",
    "MaskValueWarning",
    "Sample",
    "TensorSet",
    "category_tensors",
    "decode",
    "list_categories",
    "load_category",
    "make_default_dataset",
    "normalize",
    "prepare_visa",
    "decode_test_split",
]
