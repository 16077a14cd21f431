"""Skip topologies: which teacher level is added to which decoder stage's input.

A topology is data, a mapping ``{decoder stage: teacher level}`` with 0-based indices
(stages layer1, layer2, layer3; levels E1, E2, E3). A feature is added to a stage's input
and passed through ReLU before the stage runs. Only shape-compatible pairs exist: the
input of stage 1 (layer2) has E3's shape and the input of stage 2 (layer3) has E2's.
"""

from __future__ import annotations

from types import MappingProxyType

SKIP_TOPOLOGIES: MappingProxyType[str, MappingProxyType[int, int]] = MappingProxyType(
    {
        # RD4AD, the baseline: the decoder sees only the bottleneck embedding.
        "none": MappingProxyType({}),
        # The published SK-RD4AD wiring and the default: E3 feeds layer2, E2 feeds layer3.
        "sk": MappingProxyType({1: 2, 2: 1}),
        # Ablation: only the deep skip (E3 into layer2).
        "sk_deep": MappingProxyType({1: 2}),
        # Ablation: only the shallow skip (E2 into layer3).
        "sk_shallow": MappingProxyType({2: 1}),
    }
)

_COMPATIBLE = {1: 2, 2: 1}


def resolve_skip(skip: str | dict[int, int]) -> dict[int, int]:
    """Return the topology for a name in :data:`SKIP_TOPOLOGIES` or an explicit mapping."""
    if isinstance(skip, str):
        if skip not in SKIP_TOPOLOGIES:
            raise ValueError(
                f"unknown skip topology {skip!r}; choose one of {', '.join(SKIP_TOPOLOGIES)}"
            )
        return dict(SKIP_TOPOLOGIES[skip])
    topology = {int(k): int(v) for k, v in skip.items()}
    for stage, level in topology.items():
        if _COMPATIBLE.get(stage) != level:
            raise ValueError(
                f"skip from teacher level E{level + 1} into decoder stage {stage} has no "
                f"matching shape; allowed pairs (stage: level) are {_COMPATIBLE}"
            )
    return topology
