"""Loading weights saved by the authors' published code.

Key names of the teacher, bottleneck and decoder are identical to the published ones.
The only mapping is that the published bottleneck's unused ``conv4``/``bn4`` keys are
dropped (see :class:`skrd4ad.models.bottleneck.OCBE`).
"""

from __future__ import annotations

import torch

from .torch_model import SKRD4AD

UNUSED_BOTTLENECK_PREFIXES = ("conv4.", "bn4.")


def load_published_state(
    model: SKRD4AD,
    bottleneck_state: dict[str, torch.Tensor],
    decoder_state: dict[str, torch.Tensor],
    encoder_state: dict[str, torch.Tensor] | None = None,
) -> None:
    """Load published state dicts (any float dtype) into ``model``, strictly."""
    bottleneck_state = {
        k: v.float() if v.is_floating_point() else v
        for k, v in bottleneck_state.items()
        if not k.startswith(UNUSED_BOTTLENECK_PREFIXES)
    }
    model.bottleneck.load_state_dict(bottleneck_state)
    model.decoder.load_state_dict(
        {k: v.float() if v.is_floating_point() else v for k, v in decoder_state.items()}
    )
    if encoder_state is not None:
        model.teacher.load_state_dict(
            {k: v.float() if v.is_floating_point() else v for k, v in encoder_state.items()}
        )
