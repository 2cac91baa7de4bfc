"""MobileNetV3-Small / -Large in torchvision's layout (``torchvision.models.mobilenet_v3_*``), written out
here because torchvision is not installable.

Module tree as torchvision's, so module paths (activation keys) match:

* ``features.0``  -- 3x3 conv stride 2 (3 -> 16) + BN + Hardswish (``features.0.2``)
* ``features.k``  -- ``InvertedResidual`` with ``block`` = Sequential of: 1x1 expand CNA (absent when
  expanded == input), depthwise k x k CNA (stride s), optional ``SqueezeExcitation`` (``avgpool``,
  ``fc1``, ``activation`` = ReLU, ``fc2``, ``scale_activation`` = Hardsigmoid, ``scale * x``), 1x1
  project conv + BN (no activation). Activation RE = ReLU, HS = Hardswish. Residual when stride 1 and
  in == out.
* last ``features.N`` -- 1x1 conv to 6*C + BN + Hardswish
* ``avgpool``, ``classifier`` = Linear, Hardswish, Dropout, Linear.

Weights are initialised as torchvision's (``models.tv_init``; Linear N(0, 0.01)) unless ``tv_init=False``.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from .mobilenet import _make_divisible
from .tv_init import torchvision_init

__all__ = ["MobileNetV3", "mobilenet_v3_large", "mobilenet_v3_small", "SqueezeExcitation", "Conv2dNormActivation"]

# input_c, kernel, expanded_c, out_c, use_se, activation, stride
LARGE = [
    (16, 3, 16, 16, False, "RE", 1), (16, 3, 64, 24, False, "RE", 2), (24, 3, 72, 24, False, "RE", 1),
    (24, 5, 72, 40, True, "RE", 2), (40, 5, 120, 40, True, "RE", 1), (40, 5, 120, 40, True, "RE", 1),
    (40, 3, 240, 80, False, "HS", 2), (80, 3, 200, 80, False, "HS", 1), (80, 3, 184, 80, False, "HS", 1),
    (80, 3, 184, 80, False, "HS", 1), (80, 3, 480, 112, True, "HS", 1), (112, 3, 672, 112, True, "HS", 1),
    (112, 5, 672, 160, True, "HS", 2), (160, 5, 960, 160, True, "HS", 1), (160, 5, 960, 160, True, "HS", 1),
]
SMALL = [
    (16, 3, 16, 16, True, "RE", 2), (16, 3, 72, 24, False, "RE", 2), (24, 3, 88, 24, False, "RE", 1),
    (24, 5, 96, 40, True, "HS", 2), (40, 5, 240, 40, True, "HS", 1), (40, 5, 240, 40, True, "HS", 1),
    (40, 5, 120, 48, True, "HS", 1), (48, 5, 144, 48, True, "HS", 1), (48, 5, 288, 96, True, "HS", 2),
    (96, 5, 576, 96, True, "HS", 1), (96, 5, 576, 96, True, "HS", 1),
]


class Conv2dNormActivation(nn.Sequential):
    """conv (no bias, 'same' padding) -> BN -> activation (omitted when ``act`` is None), as torchvision's."""

    def __init__(self, cin, cout, kernel=3, stride=1, groups=1, norm=nn.BatchNorm2d, act=nn.ReLU):
        layers = [nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False), norm(cout)]
        if act is not None:
            layers.append(act())
        super().__init__(*layers)


class SqueezeExcitation(nn.Module):
    """torchvision.ops.SqueezeExcitation: x * scale_act(fc2(act(fc1(avgpool(x)))))."""

    def __init__(self, cin, squeeze, activation=nn.ReLU, scale_activation=nn.Sigmoid):
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(cin, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, cin, 1)
        self.activation = activation()
        self.scale_activation = scale_activation()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.scale_activation(self.fc2(self.activation(self.fc1(self.avgpool(x)))))
        return s * x


class InvertedResidual(nn.Module):
    def __init__(self, cin, kernel, expanded, cout, use_se, act, stride, norm):
        super().__init__()
        self.use_res_connect = stride == 1 and cin == cout
        a = nn.Hardswish if act == "HS" else nn.ReLU
        layers: list[nn.Module] = []
        if expanded != cin:
            layers.append(Conv2dNormActivation(cin, expanded, 1, norm=norm, act=a))
        layers.append(Conv2dNormActivation(expanded, expanded, kernel, stride, groups=expanded, norm=norm, act=a))
        if use_se:
            layers.append(SqueezeExcitation(expanded, _make_divisible(expanded // 4, 8), scale_activation=nn.Hardsigmoid))
        layers.append(Conv2dNormActivation(expanded, cout, 1, norm=norm, act=None))
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return y + x if self.use_res_connect else y


class MobileNetV3(nn.Module):
    def __init__(self, cfg, last_channel, num_classes=1000, in_channels=3, width_mult=1.0, dropout=0.2,
                 tv_init=True):
        super().__init__()
        norm = partial(nn.BatchNorm2d, eps=0.001, momentum=0.01)
        adj = lambda c: _make_divisible(c * width_mult, 8)  # noqa: E731
        first = adj(cfg[0][0])
        layers: list[nn.Module] = [Conv2dNormActivation(in_channels, first, 3, 2, norm=norm, act=nn.Hardswish)]
        for cin, k, exp, cout, se, act, s in cfg:
            layers.append(InvertedResidual(adj(cin), k, adj(exp), adj(cout), se, act, s, norm))
        last_in = adj(cfg[-1][3])
        last_out = 6 * last_in
        layers.append(Conv2dNormActivation(last_in, last_out, 1, norm=norm, act=nn.Hardswish))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(last_out, last_channel), nn.Hardswish(), nn.Dropout(dropout),
                                        nn.Linear(last_channel, num_classes))
        if tv_init:
            torchvision_init(self, linear="normal")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.avgpool(self.features(x)), 1)
        return self.classifier(x)


def mobilenet_v3_large(num_classes=1000, in_channels=3, width_mult=1.0, last_channel=1280, **kw) -> MobileNetV3:
    """torchvision-layout MobileNetV3-Large; ``last_channel`` is scaled by ``width_mult`` like torchvision's."""
    return MobileNetV3(LARGE, _make_divisible(last_channel * width_mult, 8), num_classes, in_channels, width_mult, **kw)


def mobilenet_v3_small(num_classes=1000, in_channels=3, width_mult=1.0, last_channel=1024, **kw) -> MobileNetV3:
    """torchvision-layout MobileNetV3-Small."""
    return MobileNetV3(SMALL, _make_divisible(last_channel * width_mult, 8), num_classes, in_channels, width_mult, **kw)
