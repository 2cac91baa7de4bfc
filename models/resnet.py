"""CIFAR-style ResNet-18.

Stem: 3x3 conv (stride 1, pad 1, no bias) + BN + ReLU (no max-pool), then four
stages of two :class:`BasicBlock` each (channels ``width * (1, 2, 4, 8)``,
strides 1, 2, 2, 2), global average pool and a linear classifier.

Every activation is its own ``nn.ReLU`` module (never ``F.relu`` and never a
shared instance), so that each ReLU maps to exactly one module path:

* ``relu``             -- stem
* ``layerS.B.relu1``   -- after the first conv+BN of a block
* ``layerS.B.relu2``   -- after the residual add of a block

That is 1 + 4 * 2 * 2 = 17 ReLU modules.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["BasicBlock", "ResNet", "resnet18"]


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus shortcut, then ReLU after the add."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = _conv3x3(planes, planes, 1)
        self.bn2 = nn.BatchNorm2d(planes)
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )
        else:
            self.shortcut = nn.Identity()
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = out + self.shortcut(x)
        return self.relu2(out)


class ResNet(nn.Module):
    """CIFAR-style ResNet built from :class:`BasicBlock`.

    Args:
        num_blocks: blocks per stage (``(2, 2, 2, 2)`` for ResNet-18).
        num_classes: classifier outputs.
        in_channels: input image channels.
        width: channels of the stem / first stage; stages use
            ``width * (1, 2, 4, 8)``.
    """

    def __init__(
        self,
        num_blocks=(2, 2, 2, 2),
        num_classes: int = 10,
        in_channels: int = 3,
        width: int = 64,
    ) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_channels, width, 1)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        in_planes = width
        strides = (1, 2, 2, 2)
        for i, (n, s) in enumerate(zip(num_blocks, strides)):
            planes = width * (2**i)
            blocks = []
            for j in range(n):
                blocks.append(BasicBlock(in_planes, planes, s if j == 0 else 1))
                in_planes = planes
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        x = self.layer4(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.fc(x)


def resnet18(**kw) -> ResNet:
    """CIFAR ResNet-18. Keyword args: ``num_classes=10, in_channels=3, width=64``."""
    return ResNet((2, 2, 2, 2), **kw)
