"""VGG-16 with batch norm, CIFAR style.

Feature config ``64,64,M,128,128,M,256,256,256,M,512,512,512,M,512,512,512,M``
(channels scaled by ``width / 64``); every conv is 3x3 pad 1 + BN + ReLU. An
adaptive average pool to 1x1 follows, then ``Linear(8 * width, num_classes)``.

``pools`` keeps only the first ``pools`` max-pools (default 5, the standard
model); use e.g. ``pools=3`` for 8x8 inputs. Dropped pools simply disappear.

Module paths: ``features.<i>`` is a flat ``nn.Sequential`` of
Conv2d / BatchNorm2d / ReLU / MaxPool2d, as in torchvision, e.g. the first ReLU
is ``features.2``; the classifier is ``classifier``. Each ReLU is its own
``nn.ReLU`` module (13 in total).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["VGG", "vgg16_bn", "VGG16_CFG"]

VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


class VGG(nn.Module):
    """VGG with BN.

    Args:
        cfg: list of channel counts (relative to 64) and ``"M"`` for max-pool.
        num_classes: classifier outputs.
        in_channels: input image channels.
        width: channels of the first stage (all stages scale by ``width / 64``).
        pools: number of max-pools kept (the first ``pools`` ones).
    """

    def __init__(
        self,
        cfg=VGG16_CFG,
        num_classes: int = 10,
        in_channels: int = 3,
        width: int = 64,
        pools: int = 5,
    ) -> None:
        super().__init__()
        if pools < 0:
            raise ValueError("pools must be >= 0")
        layers: list[nn.Module] = []
        cin = in_channels
        seen_pools = 0
        for v in cfg:
            if v == "M":
                if seen_pools < pools:
                    layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
                seen_pools += 1
                continue
            cout = max(1, int(v) * width // 64)
            layers += [
                nn.Conv2d(cin, cout, kernel_size=3, padding=1),
                nn.BatchNorm2d(cout),
                nn.ReLU(),
            ]
            cin = cout
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = torch.flatten(self.avgpool(x), 1)
        return self.classifier(x)


def vgg16_bn(**kw) -> VGG:
    """VGG-16-bn. Keyword args: ``num_classes=10, in_channels=3, width=64, pools=5``."""
    return VGG(VGG16_CFG, **kw)
