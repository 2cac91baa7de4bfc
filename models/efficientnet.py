"""EfficientNet-B0 in torchvision's layout (``torchvision.models.efficientnet_b0``), written out here
because torchvision is not installable.

* ``features.0``      -- 3x3 conv stride 2 (3 -> 32) + BN + SiLU (``features.0.2``)
* ``features.1..7``   -- stages (Sequential) of ``MBConv``; ``features.s.i.block`` = Sequential of: 1x1
  expand CNA (absent when expand_ratio == 1), depthwise k x k CNA, ``SqueezeExcitation`` (squeeze =
  max(1, in // 4), SiLU inside, Sigmoid gate), 1x1 project conv + BN. Residual (with
  ``stochastic_depth``, identity in eval) when stride 1 and in == out.
* ``features.8``      -- 1x1 conv to 4*320 = 1280 + BN + SiLU
* ``avgpool``, ``classifier`` = Dropout + Linear.

Weights are initialised as torchvision's (``models.tv_init``; Linear U(-1/sqrt(out), 1/sqrt(out))) unless
``tv_init=False``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .mobilenet import _make_divisible
from .mobilenet_v3 import Conv2dNormActivation, SqueezeExcitation
from .tv_init import torchvision_init

__all__ = ["EfficientNet", "MBConv", "StochasticDepth", "efficientnet_b0"]

# expand_ratio, kernel, stride, input_channels, out_channels, num_layers
B0 = [(1, 3, 1, 32, 16, 1), (6, 3, 2, 16, 24, 2), (6, 5, 2, 24, 40, 2), (6, 3, 2, 40, 80, 3),
      (6, 5, 1, 80, 112, 3), (6, 5, 2, 112, 192, 4), (6, 3, 1, 192, 320, 1)]


class StochasticDepth(nn.Module):
    """torchvision.ops.StochasticDepth ("row"): drops whole samples in training, identity in eval."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = torch.empty(x.shape[0], *([1] * (x.ndim - 1)), device=x.device).bernoulli_(1 - self.p)
        return x * keep / (1 - self.p)


class MBConv(nn.Module):
    def __init__(self, expand_ratio, kernel, stride, cin, cout, sd_prob, norm=nn.BatchNorm2d):
        super().__init__()
        self.use_res_connect = stride == 1 and cin == cout
        expanded = _make_divisible(cin * expand_ratio, 8)
        layers: list[nn.Module] = []
        if expanded != cin:
            layers.append(Conv2dNormActivation(cin, expanded, 1, norm=norm, act=nn.SiLU))
        layers.append(Conv2dNormActivation(expanded, expanded, kernel, stride, groups=expanded, norm=norm, act=nn.SiLU))
        layers.append(SqueezeExcitation(expanded, max(1, cin // 4), activation=nn.SiLU))
        layers.append(Conv2dNormActivation(expanded, cout, 1, norm=norm, act=None))
        self.block = nn.Sequential(*layers)
        self.stochastic_depth = StochasticDepth(sd_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        if self.use_res_connect:
            y = self.stochastic_depth(y)
            y = y + x
        return y


class EfficientNet(nn.Module):
    def __init__(self, cfg=B0, width_mult=1.0, depth_mult=1.0, num_classes=1000, in_channels=3,
                 dropout=0.2, stochastic_depth_prob=0.2, tv_init=True):
        super().__init__()
        adj = lambda c: _make_divisible(c * width_mult, 8)  # noqa: E731
        reps = lambda n: int(math.ceil(n * depth_mult))  # noqa: E731
        layers: list[nn.Module] = [Conv2dNormActivation(in_channels, adj(cfg[0][3]), 3, 2, act=nn.SiLU)]
        total = sum(reps(c[5]) for c in cfg)
        bid = 0
        for e, k, s, cin, cout, n in cfg:
            stage = []
            for i in range(reps(n)):
                stage.append(MBConv(e, k, s if i == 0 else 1, adj(cin) if i == 0 else adj(cout), adj(cout),
                                    stochastic_depth_prob * bid / total))
                bid += 1
            layers.append(nn.Sequential(*stage))
        last_in = adj(cfg[-1][4])
        last_out = 4 * last_in
        layers.append(Conv2dNormActivation(last_in, last_out, 1, act=nn.SiLU))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(dropout, inplace=True), nn.Linear(last_out, num_classes))
        if tv_init:
            torchvision_init(self, linear="uniform")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.avgpool(self.features(x)), 1)
        return self.classifier(x)


def efficientnet_b0(num_classes=1000, in_channels=3, width_mult=1.0, depth_mult=1.0, **kw) -> EfficientNet:
    """torchvision-layout EfficientNet-B0 (``width_mult``/``depth_mult`` < 1 give tiny test variants)."""
    return EfficientNet(B0, width_mult, depth_mult, num_classes, in_channels, **kw)
