"""The models skrd4ad trains, one folder each (anomalib's layout); SK-RD4AD is the one."""

from . import reverse_distillation
from .reverse_distillation import *  # noqa: F403 - the package's public names

__all__ = reverse_distillation.__all__
