"""CIFAR-style MobileNetV2.

Stem: 3x3 conv stride 1 (CIFAR) + BN + ReLU6 (``stem_act``), then the standard
inverted-residual configuration::

    (t, c, n, s) = (1,16,1,1), (6,24,2,1), (6,32,3,2), (6,64,4,2),
                   (6,96,3,1), (6,160,3,2), (6,320,1,1)

(the 24-channel stage uses stride 1 instead of 2 for 32x32 inputs), then a 1x1
conv to 1280 channels + BN + ReLU6 (``head_act``), global average pool,
dropout-free linear classifier.

Module paths: the stem is ``features.0`` and block ``k`` (1-based) is
``features.k``. Inside a block:

* ``features.k.expand`` / ``expand_bn`` / ``act1`` -- 1x1 expansion (absent when t == 1)
* ``features.k.dw`` / ``dw_bn`` / ``act2``         -- 3x3 depthwise
* ``features.k.project`` / ``project_bn``          -- 1x1 linear projection

Every ReLU6 is its own ``nn.ReLU6`` module. The residual add is used when the
stride is 1 and input/output channels agree.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["InvertedResidual", "MobileNetV2", "mobilenet_v2", "CIFAR_CFG"]

CIFAR_CFG = (
    (1, 16, 1, 1),
    (6, 24, 2, 1),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def _make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round channels to a multiple of ``divisor`` (standard MobileNet rule)."""
    min_value = divisor if min_value is None else min_value
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


class Stem(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.act = nn.ReLU6()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class InvertedResidual(nn.Module):
    """1x1 expand (+BN+ReLU6) -> 3x3 depthwise (+BN+ReLU6) -> 1x1 project (+BN)."""

    def __init__(self, cin: int, cout: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = int(round(cin * expand_ratio))
        self.use_residual = stride == 1 and cin == cout
        self.has_expand = expand_ratio != 1
        if self.has_expand:
            self.expand = nn.Conv2d(cin, hidden, 1, bias=False)
            self.expand_bn = nn.BatchNorm2d(hidden)
            self.act1 = nn.ReLU6()
        self.dw = nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False)
        self.dw_bn = nn.BatchNorm2d(hidden)
        self.act2 = nn.ReLU6()
        self.project = nn.Conv2d(hidden, cout, 1, bias=False)
        self.project_bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        if self.has_expand:
            out = self.act1(self.expand_bn(self.expand(out)))
        out = self.act2(self.dw_bn(self.dw(out)))
        out = self.project_bn(self.project(out))
        if self.use_residual:
            out = x + out
        return out


class MobileNetV2(nn.Module):
    """CIFAR MobileNetV2.

    Args:
        num_classes: classifier outputs.
        in_channels: input image channels.
        width_mult: channel multiplier (channels rounded to multiples of 8).
        cfg: inverted-residual settings ``(t, c, n, s)``.
        last_channels: channels of the final 1x1 conv (scaled by ``width_mult``
            when ``width_mult > 1``, as in the reference model).
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        width_mult: float = 1.0,
        cfg=CIFAR_CFG,
        last_channels: int = 1280,
    ) -> None:
        super().__init__()
        cin = _make_divisible(32 * width_mult)
        last = _make_divisible(last_channels * max(1.0, width_mult))
        layers: list[nn.Module] = [Stem(in_channels, cin)]
        for t, c, n, s in cfg:
            cout = _make_divisible(c * width_mult)
            for i in range(n):
                layers.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
        self.features = nn.Sequential(*layers)
        self.head_conv = nn.Conv2d(cin, last, 1, bias=False)
        self.head_bn = nn.BatchNorm2d(last)
        self.head_act = nn.ReLU6()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(last, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = self.head_act(self.head_bn(self.head_conv(x)))
        x = torch.flatten(self.avgpool(x), 1)
        return self.classifier(x)


def mobilenet_v2(**kw) -> MobileNetV2:
    """CIFAR MobileNetV2. Keyword args: ``num_classes=10, in_channels=3, width_mult=1.0``."""
    return MobileNetV2(**kw)
