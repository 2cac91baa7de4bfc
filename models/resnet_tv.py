"""torchvision-layout ResNet-18 (written here: torchvision does not install beside torch 2.13).

The layout users export from torchvision, with what the CIFAR variant (resnet.py) lacks:
a stride-2 7x7 stem with max-pool, ``downsample`` projection shortcuts, and one ``self.relu``
module per block called twice, as torchvision's ``BasicBlock`` does. So ``layer1.0.relu`` names
two activation call sites (keys ``layer1.0.relu:0`` and ``layer1.0.relu:1``).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["BasicBlockTV", "ResNetTV", "resnet18_tv"]


class BasicBlockTV(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN + shortcut, ReLU; one ReLU module used twice (as torchvision)."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class ResNetTV(nn.Module):
    def __init__(self, layers=(2, 2, 2, 2), num_classes: int = 1000, in_channels: int = 3, width: int = 64) -> None:
        super().__init__()
        self.inplanes = width
        self.conv1 = nn.Conv2d(in_channels, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        for i, n in enumerate(layers):
            setattr(self, f"layer{i + 1}", self._make_layer(width * 2 ** i, n, 1 if i == 0 else 2))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(self.inplanes, num_classes)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))
        layers = [BasicBlockTV(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        layers += [BasicBlockTV(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet18_tv(**kw) -> ResNetTV:
    """torchvision-layout ResNet-18. Keyword args: ``num_classes=1000, in_channels=3, width=64``."""
    return ResNetTV((2, 2, 2, 2), **kw)
