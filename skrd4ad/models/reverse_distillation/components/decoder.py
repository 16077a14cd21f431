"""The student decoder: a mirrored ResNet whose stages upsample with 2x2 transposed convs."""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.resnet import conv1x1, conv3x3

from .bottleneck import init_resnet_weights


def deconv2x2(in_planes: int, out_planes: int, stride: int = 2) -> nn.ConvTranspose2d:
    return nn.ConvTranspose2d(in_planes, out_planes, kernel_size=2, stride=stride, bias=False)


class DeBasicBlock(nn.Module):
    """torchvision's BasicBlock run backwards: stride 2 means upsampling."""

    expansion = 1

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        upsample: nn.Module | None = None,
        base_width: int = 64,
    ) -> None:
        super().__init__()
        self.conv1 = (
            deconv2x2(inplanes, planes, stride) if stride == 2 else conv3x3(inplanes, planes)
        )
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.upsample = upsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.upsample is None else self.upsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class DeBottleneck(nn.Module):
    """torchvision's Bottleneck run backwards: the 3x3 conv becomes a 2x2 transposed conv."""

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        upsample: nn.Module | None = None,
        base_width: int = 64,
    ) -> None:
        super().__init__()
        width = int(planes * (base_width / 64.0))
        self.conv1 = conv1x1(inplanes, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = deconv2x2(width, width, stride) if stride == 2 else conv3x3(width, width)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = conv1x1(width, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.upsample = upsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.upsample is None else self.upsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


DeBlock = type[DeBasicBlock] | type[DeBottleneck]


class Decoder(nn.Module):
    """Three upsampling stages mirroring the teacher's layer3, layer2, layer1.

    ``forward`` takes the bottleneck output and, per stage, an optional teacher feature
    that is added to that stage's input (the SK skip connections, see
    :mod:`skrd4ad.models.skip`). It returns the stage outputs [a, b, c] in stage order.
    """

    def __init__(
        self, block: DeBlock, layers: tuple[int, int, int], width_per_group: int = 64
    ) -> None:
        super().__init__()
        self.base_width = width_per_group
        self.inplanes = 512 * block.expansion
        self.relu = nn.ReLU()
        self.layer1 = self._make_layer(block, 256, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1])
        self.layer3 = self._make_layer(block, 64, layers[2])
        init_resnet_weights(self)

    def _make_layer(self, block: DeBlock, planes: int, blocks: int) -> nn.Sequential:
        upsample = nn.Sequential(
            deconv2x2(self.inplanes, planes * block.expansion, 2),
            nn.BatchNorm2d(planes * block.expansion),
        )
        layers: list[nn.Module] = [block(self.inplanes, planes, 2, upsample, self.base_width)]
        self.inplanes = planes * block.expansion
        for _ in range(1, blocks):
            layers.append(block(self.inplanes, planes, base_width=self.base_width))
        return nn.Sequential(*layers)

    def stages(self) -> list[nn.Module]:
        return [self.layer1, self.layer2, self.layer3]

    def forward(
        self, x: torch.Tensor, skips: dict[int, torch.Tensor] | None = None
    ) -> list[torch.Tensor]:
        skips = skips or {}
        outs = []
        for i, stage in enumerate(self.stages()):
            if i in skips:
                x = self.relu(x + skips[i])
            x = stage(x)
            outs.append(x)
        return outs
