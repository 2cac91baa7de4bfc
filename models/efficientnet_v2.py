"""EfficientNetV2-S in torchvision's layout (``torchvision.models.efficientnet_v2_s``), written out here
because torchvision is not installable. Module paths equal torchvision's, so keys carry over.

* ``features.0``      -- 3x3 conv stride 2 (3 -> 24) + BN + SiLU (``features.0.2``)
* ``features.1..3``   -- stages of ``FusedMBConv``: ``block`` = [k x k conv (stride s) + BN + SiLU to the
  expanded width, 1x1 project conv + BN] or, with expand_ratio 1, one k x k conv + BN + SiLU
  (``features.1.0.block.0.2``, ``features.2.0.block.0.2``).
* ``features.4..6``   -- stages of ``MBConv`` (models/efficientnet.py): 1x1 expand, depthwise 3x3, SE (SiLU
  inside, Sigmoid gate), 1x1 project.
* ``features.7``      -- 1x1 conv to 1280 + BN + SiLU; ``avgpool``; ``classifier`` = Dropout + Linear.

Residuals (with ``stochastic_depth``, identity in eval) when stride 1 and in == out. BatchNorm eps 1e-3 as
torchvision's V2. At full size ``efficientnet_v2_s()`` has 21,458,488 parameters, as torchvision's.
``width_mult``/``depth_mult`` scale channels (multiples of 8) and stage depths for tiny test variants.
"""

from __future__ import annotations

import math
from functools import partial

import torch
from torch import nn

from .efficientnet import MBConv, StochasticDepth
from .mobilenet import _make_divisible
from .mobilenet_v3 import Conv2dNormActivation

__all__ = ["EfficientNetV2", "FusedMBConv", "efficientnet_v2_s", "V2_S"]

# block, expand_ratio, kernel, stride, input_channels, out_channels, num_layers
V2_S = [("fused", 1, 3, 1, 24, 24, 2), ("fused", 4, 3, 2, 24, 48, 4), ("fused", 4, 3, 2, 48, 64, 4),
        ("mb", 4, 3, 2, 64, 128, 6), ("mb", 6, 3, 1, 128, 160, 9), ("mb", 6, 3, 2, 160, 256, 15)]


class FusedMBConv(nn.Module):
    """EfficientNetV2's fused block: the 1x1 expand and the depthwise conv of MBConv become one k x k conv."""

    def __init__(self, expand_ratio, kernel, stride, cin, cout, sd_prob, norm=nn.BatchNorm2d):
        super().__init__()
        self.use_res_connect = stride == 1 and cin == cout
        expanded = _make_divisible(cin * expand_ratio, 8)
        if expanded != cin:
            layers = [Conv2dNormActivation(cin, expanded, kernel, stride, norm=norm, act=nn.SiLU),
                      Conv2dNormActivation(expanded, cout, 1, norm=norm, act=None)]
        else:
            layers = [Conv2dNormActivation(cin, cout, kernel, stride, norm=norm, act=nn.SiLU)]
        self.block = nn.Sequential(*layers)
        self.stochastic_depth = StochasticDepth(sd_prob)
        self.out_channels = cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        if self.use_res_connect:
            y = self.stochastic_depth(y)
            y = y + x
        return y


class EfficientNetV2(nn.Module):
    def __init__(self, cfg=V2_S, width_mult=1.0, depth_mult=1.0, num_classes=1000, in_channels=3,
                 dropout=0.2, stochastic_depth_prob=0.2, last_channel=1280):
        super().__init__()
        norm = partial(nn.BatchNorm2d, eps=1e-3)
        adj = lambda c: _make_divisible(c * width_mult, 8)  # noqa: E731
        reps = lambda n: int(math.ceil(n * depth_mult))  # noqa: E731
        layers: list[nn.Module] = [Conv2dNormActivation(in_channels, adj(cfg[0][4]), 3, 2, norm=norm, act=nn.SiLU)]
        total = sum(reps(c[6]) for c in cfg)
        bid = 0
        for kind, e, k, s, cin, cout, n in cfg:
            stage = []
            for i in range(reps(n)):
                args = (e, k, s if i == 0 else 1, adj(cin) if i == 0 else adj(cout), adj(cout),
                        stochastic_depth_prob * bid / total)
                stage.append(FusedMBConv(*args, norm=norm) if kind == "fused" else MBConv(*args, norm=norm))
                bid += 1
            layers.append(nn.Sequential(*stage))
        last_in = adj(cfg[-1][5])
        last_out = last_channel if last_channel is not None else 4 * last_in
        layers.append(Conv2dNormActivation(last_in, last_out, 1, norm=norm, act=nn.SiLU))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(dropout, inplace=True), nn.Linear(last_out, num_classes))
        for m in self.modules():   # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                r = 1.0 / math.sqrt(m.out_features)
                nn.init.uniform_(m.weight, -r, r)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.avgpool(self.features(x)), 1)
        return self.classifier(x)


def efficientnet_v2_s(num_classes=1000, in_channels=3, width_mult=1.0, depth_mult=1.0, last_channel=1280,
                      **kw) -> EfficientNetV2:
    """torchvision-layout EfficientNetV2-S; ``width_mult``/``depth_mult``/``last_channel`` shrink it for tests."""
    return EfficientNetV2(V2_S, width_mult, depth_mult, num_classes, in_channels, last_channel=last_channel, **kw)
