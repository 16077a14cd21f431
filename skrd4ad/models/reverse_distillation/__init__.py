"""SK-RD4AD and RD4AD (``skip="none"``): reverse distillation from a frozen ImageNet teacher.

As in anomalib's model folders: the torch model (:mod:`.torch_model`), its loss
(:mod:`.loss`), anomaly map (:mod:`.anomaly_map`), the training hooks (:mod:`.hooks`)
and the components (teacher, bottleneck, decoder, skip, BatchNorm folding), side by side.
"""

from .anomaly_map import anomaly_map, gaussian_blur, image_score
from .backbones import BACKBONES, Backbone
from .components.bottleneck import OCBE
from .components.decoder import Decoder
from .components.skip import SKIP_TOPOLOGIES, resolve_skip
from .components.teacher import Teacher, TeacherWeightsError, build_teacher, imagenet_cache_file
from .loss import SKRD4ADLoss
from .published_weights import load_published_state
from .torch_model import SKRD4AD, Student, build_model

__all__ = [
    "BACKBONES",
    "OCBE",
    "SKIP_TOPOLOGIES",
    "SKRD4AD",
    "Backbone",
    "Decoder",
    "SKRD4ADLoss",
    "Student",
    "Teacher",
    "TeacherWeightsError",
    "anomaly_map",
    "build_model",
    "build_teacher",
    "gaussian_blur",
    "image_score",
    "imagenet_cache_file",
    "load_published_state",
    "resolve_skip",
]
