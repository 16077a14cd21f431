"""The one-class bottleneck embedding (OCBE) of RD4AD, as wired in the published code."""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, conv1x1, conv3x3

Block = type[BasicBlock] | type[Bottleneck]


def init_resnet_weights(module: nn.Module) -> None:
    """torchvision's ResNet initialisation, which the published bottleneck and decoder use."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d | nn.GroupNorm):
            nn.init.constant_(m.weight, 1)
            nn.init.constant_(m.bias, 0)


class OCBE(nn.Module):
    """Fuses E1, E2, E3 into one compact embedding for the student decoder.

    E1 passes two stride-2 3x3 conv+BN+ReLU (``conv1``/``bn1``, ``conv2``/``bn2``), E2 one
    (``conv3``/``bn3``); both are concatenated with E3 and go through ``bn_layer``, a
    stack of residual blocks of 512 planes whose first block has stride 2.

    Key names equal the published ones. The published module also holds ``conv4``/``bn4``
    (a 1x1 conv from 1024·expansion to 512·expansion channels and its BatchNorm), which
    its forward pass never uses; they are left out here, so for wide_resnet50_2 this
    module has 67,277,824 - 8,388,608 - 4,096 = 58,885,120 parameters instead of the
    published 67,277,824. :func:`skrd4ad.models.published.load_published_state` drops
    those keys when loading the authors' weights.
    """

    def __init__(self, block: Block, layers: int, width_per_group: int = 64) -> None:
        super().__init__()
        e = block.expansion
        self.base_width = width_per_group
        self.conv1 = conv3x3(64 * e, 128 * e, 2)
        self.bn1 = nn.BatchNorm2d(128 * e)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(128 * e, 256 * e, 2)
        self.bn2 = nn.BatchNorm2d(256 * e)
        self.conv3 = conv3x3(128 * e, 256 * e, 2)
        self.bn3 = nn.BatchNorm2d(256 * e)
        self.bn_layer = self._make_layer(block, 256 * e, 512, layers)
        init_resnet_weights(self)

    def _make_layer(self, block: Block, inplanes: int, planes: int, blocks: int) -> nn.Sequential:
        # The first block takes the three concatenated levels (3 x inplanes channels).
        downsample = nn.Sequential(
            conv1x1(inplanes * 3, planes * block.expansion, 2),
            nn.BatchNorm2d(planes * block.expansion),
        )
        layers: list[nn.Module] = [
            block(inplanes * 3, planes, 2, downsample, base_width=self.base_width)
        ]
        for _ in range(1, blocks):
            layers.append(block(planes * block.expansion, planes, base_width=self.base_width))
        return nn.Sequential(*layers)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        e1, e2, e3 = feats
        l1 = self.relu(self.bn2(self.conv2(self.relu(self.bn1(self.conv1(e1))))))
        l2 = self.relu(self.bn3(self.conv3(e2)))
        return self.bn_layer(torch.cat([l1, l2, e3], 1))
