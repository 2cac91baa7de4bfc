"""MobileNetV2 in torchvision's layout (ImageNet stem), written out here because torchvision is not
installable.

Same module tree as ``torchvision.models.mobilenet_v2`` so state dicts and module paths match:

* ``features.0``            -- 3x3 conv stride 2 (3 -> 32) + BN + ReLU6 (``features.0.2``)
* ``features.1..17``        -- inverted residuals, table (t, c, n, s) = (1,16,1,1), (6,24,2,2),
  (6,32,3,2), (6,64,4,2), (6,96,3,1), (6,160,3,2), (6,320,1,1). Inside ``features.k.conv``:
  with expansion ``0`` = 1x1 expand CBR, ``1`` = 3x3 depthwise CBR, ``2`` = 1x1 project, ``3`` = BN;
  without (t == 1) ``0`` = depthwise CBR, ``1`` = project, ``2`` = BN. The ReLU6 of a CBR ``j`` is
  ``features.k.conv.j.2``.
* ``features.18``           -- 1x1 conv to 1280 + BN + ReLU6 (``features.18.2``)
* global average pool, ``classifier`` = Dropout(0.2) + Linear(1280, num_classes).

The residual is used when stride == 1 and input channels == output channels. Weights are initialised as
torchvision's (``models.tv_init``) unless ``tv_init=False``.
"""

from __future__ import annotations

import torch
from torch import nn

from .mobilenet import _make_divisible
from .tv_init import torchvision_init

__all__ = ["TV_CFG", "ConvBNReLU6", "TvInvertedResidual", "MobileNetV2TV", "mobilenet_v2_tv"]

TV_CFG = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


class ConvBNReLU6(nn.Sequential):
    """conv (no bias, 'same' padding) -> BN -> ReLU6, as torchvision's Conv2dNormActivation."""

    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU6(),
        )


class TvInvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = int(round(cin * expand_ratio))
        self.stride = stride
        self.use_res_connect = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNReLU6(cin, hidden, kernel=1))
        layers += [ConvBNReLU6(hidden, hidden, stride=stride, groups=hidden),
                   nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)
        self.in_channels, self.out_channels = cin, cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2TV(nn.Module):
    def __init__(self, num_classes: int = 1000, in_channels: int = 3, width_mult: float = 1.0,
                 cfg=TV_CFG, last_channels: int = 1280, dropout: float = 0.2, tv_init: bool = True) -> None:
        super().__init__()
        cin = _make_divisible(32 * width_mult)
        last = _make_divisible(last_channels * max(1.0, width_mult))
        layers: list[nn.Module] = [ConvBNReLU6(in_channels, cin, stride=2)]
        for t, c, n, s in cfg:
            cout = _make_divisible(c * width_mult)
            for i in range(n):
                layers.append(TvInvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
        layers.append(ConvBNReLU6(cin, last, kernel=1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(last, num_classes))
        if tv_init:
            torchvision_init(self, linear="normal")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)
        return self.classifier(x)


def mobilenet_v2_tv(**kw) -> MobileNetV2TV:
    """torchvision-layout MobileNetV2. Keyword args: ``num_classes=1000, in_channels=3, width_mult=1.0,
    tv_init=True`` (torchvision's initialisation; False keeps PyTorch's default, whose random-weight outputs
    barely depend on the input)."""
    return MobileNetV2TV(**kw)
