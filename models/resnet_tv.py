"""torchvision-layout ResNets (written here: torchvision does not install beside torch 2.13).

The layouts users export from torchvision, with what the CIFAR variant (resnet.py) lacks:
a stride-2 7x7 stem with max-pool, ``downsample`` projection shortcuts, and one ``self.relu``
module per block called several times, as torchvision's blocks do. So ``layer1.0.relu`` names
two activation call sites in a ``BasicBlock`` (keys ``layer1.0.relu:0`` and ``layer1.0.relu:1``)
and three in a ``Bottleneck`` (``:0`` after conv1/bn1, ``:1`` after conv2/bn2, ``:2`` after the add).

``Bottleneck`` is torchvision's v1.5 block (stride on the 3x3 ``conv2``, ``groups`` / ``width_per_group``
for ResNeXt and Wide ResNet, expansion 4); ``resnet50_tv``, ``resnext50_32x4d_tv`` and
``wide_resnet50_2_tv`` take torchvision's constructor arguments. ``width`` (64 = torchvision) scales
the stem and every stage for tiny test models; the grouped width is torchvision's
``int(planes * width_per_group / 64) * groups`` with the scaled ``planes``, so a tiny ResNeXt also
needs fewer ``groups`` (``resnext50_32x4d_tv(width=8, groups=4, width_per_group=16)``).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["BasicBlockTV", "Bottleneck", "ResNetTV", "resnet18_tv", "resnet50_tv", "resnext50_32x4d_tv",
           "wide_resnet50_2_tv"]


class BasicBlockTV(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN + shortcut, ReLU; one ReLU module used twice (as torchvision)."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 groups: int = 1, base_width: int = 64) -> None:
        super().__init__()
        if groups != 1 or base_width != 64:
            raise ValueError("BasicBlockTV only supports groups=1 and width_per_group=64 (as torchvision)")
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


class Bottleneck(nn.Module):
    """torchvision's v1.5 bottleneck: 1x1 -> 3x3 (stride, groups) -> 1x1 (x4) + shortcut; one ReLU called 3x."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 groups: int = 1, base_width: int = 64) -> None:
        super().__init__()
        width = int(planes * (base_width / 64.0)) * groups
        if width < 1:
            raise ValueError(f"Bottleneck width int({planes} * {base_width} / 64) * {groups} is 0: "
                             "raise width_per_group or width, or lower groups")
        self.conv1 = nn.Conv2d(inplanes, width, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, planes * self.expansion, 1, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class ResNetTV(nn.Module):
    """torchvision's ResNet. ``tv_init`` applies torchvision's initialisation (Kaiming-normal fan-out convs,
    BN gamma 1 / beta 0); the Bottleneck builders use it, ``resnet18_tv`` keeps PyTorch's default init."""

    def __init__(self, layers=(2, 2, 2, 2), num_classes: int = 1000, in_channels: int = 3, width: int = 64,
                 block: type[nn.Module] = BasicBlockTV, groups: int = 1, width_per_group: int = 64,
                 tv_init: bool = False) -> None:
        super().__init__()
        self.inplanes = width
        self.groups = groups
        self.base_width = width_per_group
        self.conv1 = nn.Conv2d(in_channels, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        for i, n in enumerate(layers):
            setattr(self, f"layer{i + 1}", self._make_layer(block, width * 2 ** i, n, 1 if i == 0 else 2))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(self.inplanes, num_classes)
        if tv_init:
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                elif isinstance(m, nn.BatchNorm2d):
                    nn.init.constant_(m.weight, 1)
                    nn.init.constant_(m.bias, 0)

    def _make_layer(self, block, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        out = planes * block.expansion
        if stride != 1 or self.inplanes != out:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, out, 1, stride, bias=False), nn.BatchNorm2d(out))
        layers = [block(self.inplanes, planes, stride, downsample, self.groups, self.base_width)]
        self.inplanes = out
        layers += [block(out, planes, groups=self.groups, base_width=self.base_width) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet18_tv(**kw) -> ResNetTV:
    """torchvision-layout ResNet-18. Keyword args: ``num_classes=1000, in_channels=3, width=64``."""
    return ResNetTV((2, 2, 2, 2), **kw)


def _bottleneck_resnet(layers=(3, 4, 6, 3), groups: int = 1, width_per_group: int = 64, **kw) -> ResNetTV:
    kw.setdefault("tv_init", True)
    return ResNetTV(layers, block=Bottleneck, groups=groups, width_per_group=width_per_group, **kw)


def resnet50_tv(**kw) -> ResNetTV:
    """torchvision-layout ResNet-50 (v1.5). Keyword args: ``num_classes=1000, in_channels=3, width=64,
    layers=(3, 4, 6, 3), groups=1, width_per_group=64, tv_init=True``. 25,557,032 params at width 64."""
    return _bottleneck_resnet(**kw)


def resnext50_32x4d_tv(**kw) -> ResNetTV:
    """torchvision-layout ResNeXt-50 32x4d: ``groups=32, width_per_group=4`` (overridable for tiny models)."""
    kw.setdefault("groups", 32)
    kw.setdefault("width_per_group", 4)
    return _bottleneck_resnet(**kw)


def wide_resnet50_2_tv(**kw) -> ResNetTV:
    """torchvision-layout Wide ResNet-50-2: ``width_per_group=128`` (3x3 convs twice as wide)."""
    kw.setdefault("width_per_group", 64 * 2)
    return _bottleneck_resnet(**kw)
