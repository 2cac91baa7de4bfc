"""torchvision-layout Swin Transformer V2 (``torchvision.models.swin_v2_t``), written here: torchvision does
not install beside torch 2.13. Module paths equal torchvision's, so keys and scores files carry over.

What differs from V1 (models/swin_tv.py):

* ``SwinTransformerBlockV2`` is post-norm inside the residual: ``x + norm1(attn(x))``, ``x + norm2(mlp(x))``.
* ``ShiftedWindowAttentionV2``: cosine attention, ``normalize(q) @ normalize(k)^T * exp(min(logit_scale,
  log 100))``; the key part of the qkv bias is zeroed on every call; the relative position bias is
  ``16 * sigmoid(cpb_mlp(relative_coords_table))`` gathered with ``relative_position_index``, where
  ``cpb_mlp`` = Linear(2, 512), ReLU, Linear(512, heads, bias=False) runs on a constant, log-spaced table
  of relative coordinates (a ReLU whose input does not depend on the image).
* ``PatchMergingV2``: LayerNorm after the reduction (2C wide).
* qkv and proj are applied with ``F.linear`` on the modules' weights, and ``shifted_window_attention_v2``,
  ``_get_relative_position_bias`` and ``_patch_merging_pad`` are ``torch.fx.wrap``-ped, as torchvision does
  (``torch.fx.symbolic_trace`` works on the model; the attention is one leaf call in the traced graph).

At full size ``swin_v2_t()`` has 28,351,570 parameters, as torchvision's ``swin_v2_t``.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .efficientnet import StochasticDepth
from .swin_tv import SwinTransformerTV, _patch_merging_pad, masked_softmax_values, window_merge, window_partition

__all__ = ["PatchMergingV2", "ShiftedWindowAttentionV2", "SwinTransformerBlockV2", "SwinTransformerV2", "swin_v2_t"]


def _get_relative_position_bias(table: torch.Tensor, index: torch.Tensor, window: list[int]) -> torch.Tensor:
    """(1, heads, N, N) bias gathered from the per-offset ``table`` (offsets, heads)."""
    n = window[0] * window[1]
    return table[index].view(n, n, -1).permute(2, 0, 1).contiguous().unsqueeze(0)


class PatchMergingV2(nn.Module):
    """2x2 neighbourhood concat (C -> 4C), Linear 4C -> 2C without bias, then LayerNorm(2C)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(2 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.reduction(_patch_merging_pad(x)))


def shifted_window_attention_v2(x_in, qkv_weight, proj_weight, rel_bias, window, heads, shift, logit_scale,
                                qkv_bias=None, proj_bias=None):
    """torchvision's ``shifted_window_attention`` with ``logit_scale`` (cosine attention), no dropout; NHWC."""
    c = x_in.shape[3]
    x, ph, pw, shift, nw = window_partition(x_in, window, shift)
    if qkv_bias is not None:   # V2: no bias on the keys
        qkv_bias = qkv_bias.clone()
        length = qkv_bias.numel() // 3
        qkv_bias[length:2 * length].zero_()
    t = F.linear(x, qkv_weight, qkv_bias)
    t = t.reshape(x.size(0), x.size(1), 3, heads, c // heads).permute(2, 0, 3, 1, 4)
    q, k, v = t[0], t[1], t[2]
    attn = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)
    attn = attn * torch.clamp(logit_scale, max=math.log(100.0)).exp()
    attn = attn + rel_bias
    x = F.linear(masked_softmax_values(attn, v, x, ph, pw, window, shift, nw, heads), proj_weight, proj_bias)
    return window_merge(x, x_in, ph, pw, window, shift)


# as torchvision: torch.fx.symbolic_trace keeps these as leaf calls (their shape arithmetic cannot be traced)
torch.fx.wrap("_patch_merging_pad")
torch.fx.wrap("_get_relative_position_bias")
torch.fx.wrap("shifted_window_attention_v2")


class ShiftedWindowAttentionV2(nn.Module):
    """Window attention with cosine similarity and a continuous (MLP) relative position bias."""

    def __init__(self, dim: int, window_size: list[int], shift_size: list[int], num_heads: int) -> None:
        super().__init__()
        self.window_size = list(window_size)
        self.shift_size = list(shift_size)
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        wh, ww = self.window_size
        coords = torch.stack(torch.meshgrid(torch.arange(wh), torch.arange(ww), indexing="ij"))
        flat = torch.flatten(coords, 1)
        rel = (flat[:, :, None] - flat[:, None, :]).permute(1, 2, 0).contiguous()
        rel[:, :, 0] += wh - 1
        rel[:, :, 1] += ww - 1
        rel[:, :, 0] *= 2 * ww - 1
        self.register_buffer("relative_position_index", rel.sum(-1).flatten())
        self.logit_scale = nn.Parameter(torch.log(10 * torch.ones((num_heads, 1, 1))))
        self.cpb_mlp = nn.Sequential(nn.Linear(2, 512, bias=True), nn.ReLU(inplace=True),
                                     nn.Linear(512, num_heads, bias=False))
        with torch.no_grad():
            self.qkv.bias[dim:2 * dim].zero_()
        rh = torch.arange(-(wh - 1), wh, dtype=torch.float32)
        rw = torch.arange(-(ww - 1), ww, dtype=torch.float32)
        table = torch.stack(torch.meshgrid([rh, rw], indexing="ij")).permute(1, 2, 0).contiguous().unsqueeze(0)
        table[:, :, :, 0] /= max(wh - 1, 1)
        table[:, :, :, 1] /= max(ww - 1, 1)
        table *= 8   # to [-8, 8], then log-spaced
        table = torch.sign(table) * torch.log2(torch.abs(table) + 1.0) / 3.0
        self.register_buffer("relative_coords_table", table)

    def get_relative_position_bias(self) -> torch.Tensor:
        table = self.cpb_mlp(self.relative_coords_table).view(-1, self.num_heads)
        return 16 * torch.sigmoid(_get_relative_position_bias(table, self.relative_position_index, self.window_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return shifted_window_attention_v2(x, self.qkv.weight, self.proj.weight, self.get_relative_position_bias(),
                                           self.window_size, self.num_heads, self.shift_size, self.logit_scale,
                                           qkv_bias=self.qkv.bias, proj_bias=self.proj.bias)


class SwinTransformerBlockV2(nn.Module):
    """Post-norm block: ``x + norm1(attn(x))``, then ``x + norm2(mlp(x))`` (stochastic depth: identity in eval)."""

    def __init__(self, dim: int, num_heads: int, window_size: list[int], shift_size: list[int],
                 mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = ShiftedWindowAttentionV2(dim, window_size, shift_size, num_heads)
        self.stochastic_depth = StochasticDepth(0.0)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        # torchvision.ops.MLP: Linear, GELU, Dropout, Linear, Dropout
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(0.0), nn.Linear(hidden, dim),
                                 nn.Dropout(0.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.stochastic_depth(self.norm1(self.attn(x)))
        return x + self.stochastic_depth(self.norm2(self.mlp(x)))


class SwinTransformerV2(SwinTransformerTV):
    def __init__(self, patch_size: int = 4, embed_dim: int = 96, depths: Sequence[int] = (2, 2, 6, 2),
                 num_heads: Sequence[int] = (3, 6, 12, 24), window_size: int = 8, mlp_ratio: float = 4.0,
                 num_classes: int = 1000) -> None:
        super().__init__(patch_size, embed_dim, depths, num_heads, window_size, mlp_ratio, num_classes,
                         block=SwinTransformerBlockV2, downsample=PatchMergingV2)


def swin_v2_t(num_classes: int = 1000, embed_dim: int = 96, depths: Sequence[int] = (2, 2, 6, 2),
              num_heads: Sequence[int] = (3, 6, 12, 24), window_size: int = 8, **kw) -> SwinTransformerV2:
    """torchvision ``swin_v2_t`` layout; shrink ``embed_dim``/``depths``/``num_heads`` for fast tests."""
    return SwinTransformerV2(embed_dim=embed_dim, depths=depths, num_heads=num_heads, window_size=window_size,
                             num_classes=num_classes, **kw)
