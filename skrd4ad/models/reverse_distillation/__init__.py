"""SK-RD4AD and RD4AD (``skip="none"``): reverse distillation from a frozen ImageNet teacher.

As in anomalib's model folders: the torch model (:mod:`.torch_model`), its loss
(:mod:`.loss`), anomaly map (:mod:`.anomaly_map`), the training hooks (:mod:`.hooks`)
and the components (teacher, bottleneck, decoder, skip, BatchNorm folding), side by side.

Names are imported from their modules on first use (PEP 562), so that the tables the CLI
needs (backbones, skip topologies) come without importing torch.
"""

from __future__ import annotations

from ...lazy import lazy_names

_MODULES = {
    ".anomaly_map": ("anomaly_map", "gaussian_blur", "image_score"),
    ".backbones": ("BACKBONES", "Backbone"),
    ".components.bottleneck": ("OCBE",),
    ".components.decoder": ("Decoder",),
    ".components.skip": ("SKIP_TOPOLOGIES", "resolve_skip"),
    ".components.teacher": ("Teacher", "TeacherWeightsError", "build_teacher",
                            "imagenet_cache_file"),
    ".loss": ("SKRD4ADLoss",),
    ".published_weights": ("load_published_state",),
    ".torch_model": ("SKRD4AD", "Student", "build_model"),
}  # fmt: skip
__all__, __getattr__ = lazy_names(__name__, _MODULES)
