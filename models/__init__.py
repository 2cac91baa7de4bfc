"""Reference models for collapse_passes (plain PyTorch, no torchvision).

``MODELS`` maps a name to its builder; ``build(name, **kw)`` calls it.
See ``models/README.md`` for module-path naming, ONNX export and the
scikit-learn digits training helpers (``models.digits``).
"""

from __future__ import annotations

from torch import nn

from .mobilenet import mobilenet_v2
from .efficientnet import efficientnet_b0
from .efficientnet_v2 import efficientnet_v2_s
from .mobilenet_tv import mobilenet_v2_tv
from .mobilenet_v3 import mobilenet_v3_large, mobilenet_v3_small
from .resnet import resnet18
from .resnet_tv import resnet18_tv, resnet50_tv, resnext50_32x4d_tv, wide_resnet50_2_tv
from .swin import swin_t
from .swin_tv import swin_t_tv
from .swin_v2 import swin_v2_t
from .vgg import vgg16_bn

__all__ = ["MODELS", "build", "resnet18", "resnet18_tv", "mobilenet_v2", "mobilenet_v2_tv", "vgg16_bn", "swin_t",
           "swin_t_tv", "mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_b0", "resnet50_tv",
           "resnext50_32x4d_tv", "wide_resnet50_2_tv", "efficientnet_v2_s", "swin_v2_t"]

MODELS = {
    "resnet18": resnet18,
    "resnet18_tv": resnet18_tv,
    "resnet50_tv": resnet50_tv,
    "resnext50_32x4d_tv": resnext50_32x4d_tv,
    "wide_resnet50_2_tv": wide_resnet50_2_tv,
    "mobilenet_v2": mobilenet_v2,
    "mobilenet_v2_tv": mobilenet_v2_tv,
    "vgg16_bn": vgg16_bn,
    "swin_t": swin_t,
    "swin_t_tv": swin_t_tv,
    "mobilenet_v3_small": mobilenet_v3_small,
    "mobilenet_v3_large": mobilenet_v3_large,
    "efficientnet_b0": efficientnet_b0,
    "efficientnet_v2_s": efficientnet_v2_s,
    "swin_v2_t": swin_v2_t,
}


def build(name: str, **kw) -> nn.Module:
    """Build registry model ``name`` with keyword arguments ``kw``."""
    try:
        fn = MODELS[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known: {sorted(MODELS)}") from None
    return fn(**kw)
