"""torchvision's weight initialisation for its MobileNet / EfficientNet families.

PyTorch's default init (Kaiming-uniform with a=sqrt(5), i.e. std 1/sqrt(3*fan_in)) shrinks the signal of
these deep BN-free-at-random-init stacks ~10x per block: a random-weight MobileNet or EfficientNet then
gives the same logits (to ~1e-8) for every input, so any output comparison on it passes whatever the
input-dependent part computes. torchvision's init (below, as in ``torchvision.models.mobilenetv2/v3`` and
``efficientnet``) keeps activations O(1) through the whole network.
"""

from __future__ import annotations

import math

from torch import nn

__all__ = ["torchvision_init"]


def torchvision_init(model: nn.Module, linear: str) -> nn.Module:
    """Re-initialise ``model`` in place as torchvision does, and return it.

    Conv2d: Kaiming-normal, fan_out (gain sqrt(2)), bias zeros. BatchNorm/GroupNorm: weight ones, bias zeros.
    Linear: ``linear="normal"`` -> N(0, 0.01) (MobileNetV2/V3), ``"uniform"`` -> U(-1/sqrt(out), 1/sqrt(out))
    (EfficientNet); bias zeros.
    """
    if linear not in ("normal", "uniform"):
        raise ValueError(f"linear must be 'normal' or 'uniform', not {linear!r}")
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)) and m.weight is not None:   # affine=False: nothing
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            if linear == "normal":
                nn.init.normal_(m.weight, 0, 0.01)
            else:
                r = 1.0 / math.sqrt(m.out_features)
                nn.init.uniform_(m.weight, -r, r)
            if m.bias is not None:   # Swin's qkv / fc layers may have none
                nn.init.zeros_(m.bias)
    return model


def calibrate_bn(model: nn.Module, input_shape, batches: int = 1, seed: int = 0, affine: bool = True) -> nn.Module:
    """Give every BatchNorm the running statistics of its own input, as training would; return ``model`` in eval.

    torchvision's init keeps a *training-mode* network O(1), but its fresh eval-mode BNs (mean 0, var 1) do not
    normalise anything: a depthwise conv's Kaiming fan-out std is sqrt(2 / (C k k)) (PyTorch's fan-out ignores
    groups), so each MobileNet / EfficientNet stage shrinks the signal ~10x and a random-weight model in eval mode
    again gives nearly the same logits for every input. Running ``batches`` random-normal batches of
    ``input_shape`` in training mode (cumulative average, no gradients) sets mean/var to what each BN actually
    sees. ``affine`` first draws gamma in [0.5, 1.5) and beta in [-0.5, 0.5) (seeded), so BN folding has
    something to fold and ReLUs see shifted inputs (a part of each channel below zero).
    """
    import torch

    g = torch.Generator().manual_seed(seed)
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    with torch.no_grad():
        for m in bns:
            if affine and m.affine:
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the calibration batches
        model.train()
        device = next(model.parameters()).device
        for _ in range(batches):
            model(torch.randn(*input_shape, generator=g).to(device))
    model.eval()
    return model
