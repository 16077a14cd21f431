"""SK-RD4AD modules: teacher, bottleneck (OCBE), decoder and skip topologies."""

from .bottleneck import OCBE
from .decoder import Decoder
from .published import load_published_state
from .skip import SKIP_TOPOLOGIES, resolve_skip
from .skrd4ad import ARCHS, SKRD4AD, build_model
from .teacher import BACKBONES, Teacher, TeacherWeightsError, build_teacher, imagenet_cache_file

__all__ = [
    "ARCHS",
    "BACKBONES",
    "OCBE",
    "SKIP_TOPOLOGIES",
    "SKRD4AD",
    "Decoder",
    "Teacher",
    "TeacherWeightsError",
    "build_model",
    "build_teacher",
    "imagenet_cache_file",
    "load_published_state",
    "resolve_skip",
]
