"""torchvision-layout Swin Transformer (Swin-T), written here: torchvision does not install beside torch 2.13.

Unlike ``models/swin.py`` (a global-attention ViT), this is the real Swin layout users export from
``torchvision.models.swin_t``: ``features`` = [patch embed (Conv2d k=s=4, Permute to NHWC, LayerNorm),
stage 1, PatchMerging, stage 2, PatchMerging, stage 3, PatchMerging, stage 4], then ``norm``,
``permute`` (to NCHW), ``avgpool``, ``flatten``, ``head``. Each ``SwinTransformerBlock`` is pre-norm::

    x = x + attn(norm1(x))         # ShiftedWindowAttention: pad to window multiple, torch.roll
    x = x + mlp(norm2(x))          # mlp = Sequential(Linear, GELU, Dropout, Linear, Dropout)

Windowed attention follows torchvision's ``shifted_window_attention``: the feature map is padded to a
multiple of the window (so small inputs work), the shift is dropped when the window covers the padded
map, odd blocks get the -100 attention mask, and the relative position bias is gathered from
``relative_position_bias_table`` with the registered ``relative_position_index`` buffer. Module paths
match torchvision (``features.1.0.mlp.0`` .. ``features.7.1.mlp.3``, ``features.2.reduction``), so
keys and scores files carry over. At full size ``swin_t_tv()`` has 28,288,354 parameters, as
torchvision's ``swin_t``.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Permute", "ShiftedWindowAttention", "SwinTransformerBlock", "PatchMerging", "SwinTransformerTV",
           "swin_t_tv"]


class Permute(nn.Module):
    """``torch.permute`` as a module (torchvision.ops.misc.Permute)."""

    def __init__(self, dims: Sequence[int]) -> None:
        super().__init__()
        self.dims = list(dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.permute(x, self.dims)


def _patch_merging_pad(x: torch.Tensor) -> torch.Tensor:
    h, w, _ = x.shape[-3:]
    x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
    x0 = x[..., 0::2, 0::2, :]
    x1 = x[..., 1::2, 0::2, :]
    x2 = x[..., 0::2, 1::2, :]
    x3 = x[..., 1::2, 1::2, :]
    return torch.cat([x0, x1, x2, x3], -1)


class PatchMerging(nn.Module):
    """2x2 neighbourhood concat (C -> 4C), LayerNorm, Linear 4C -> 2C without bias."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.reduction(self.norm(_patch_merging_pad(x)))


def window_partition(x_in: torch.Tensor, window: list[int], shift: list[int]):
    """Pad to whole windows, roll by the shift (none where one window covers the map), cut into windows:
    (windows (B * nw, N, C), padded height, padded width, the shift used, nw). torchvision's order of ops."""
    b, h, w, c = x_in.shape
    pad_r = (window[1] - w % window[1]) % window[1]
    pad_b = (window[0] - h % window[0]) % window[0]
    x = F.pad(x_in, (0, 0, 0, pad_r, 0, pad_b))
    _, ph, pw, _ = x.shape
    shift = list(shift)
    if window[0] >= ph:
        shift[0] = 0
    if window[1] >= pw:
        shift[1] = 0
    if sum(shift) > 0:
        x = torch.roll(x, shifts=(-shift[0], -shift[1]), dims=(1, 2))
    nw = (ph // window[0]) * (pw // window[1])
    x = x.view(b, ph // window[0], window[0], pw // window[1], window[1], c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(b * nw, window[0] * window[1], c), ph, pw, shift, nw


def window_mask(ph: int, pw: int, window: list[int], shift: list[int], like: torch.Tensor) -> torch.Tensor:
    """The -100 mask that keeps tokens rolled in from the other side of the map apart (nw, N, N)."""
    mask = like.new_zeros((ph, pw))
    h_slices = ((0, -window[0]), (-window[0], -shift[0]), (-shift[0], None))
    w_slices = ((0, -window[1]), (-window[1], -shift[1]), (-shift[1], None))
    count = 0
    for hs in h_slices:
        for ws in w_slices:
            mask[hs[0]:hs[1], ws[0]:ws[1]] = count
            count += 1
    nw = (ph // window[0]) * (pw // window[1])
    mask = mask.view(ph // window[0], window[0], pw // window[1], window[1])
    mask = mask.permute(0, 2, 1, 3).reshape(nw, window[0] * window[1])
    mask = mask.unsqueeze(1) - mask.unsqueeze(2)
    return mask.masked_fill(mask != 0, float(-100.0)).masked_fill(mask == 0, float(0.0))


def masked_softmax_values(attn, v, x, ph, pw, window, shift, nw, heads):
    """Add the shift mask (if any) to the attention logits, softmax, apply to v: (B * nw, N, C)."""
    if sum(shift) > 0:
        attn = attn.view(x.size(0) // nw, nw, heads, x.size(1), x.size(1))
        attn = attn + window_mask(ph, pw, window, shift, x).unsqueeze(1).unsqueeze(0)
        attn = attn.view(-1, heads, x.size(1), x.size(1))
    attn = F.softmax(attn, dim=-1)
    return attn.matmul(v).transpose(1, 2).reshape(x.size(0), x.size(1), x.size(2))


def window_merge(x: torch.Tensor, x_in: torch.Tensor, ph: int, pw: int, window: list[int], shift: list[int]):
    """The inverse of window_partition: windows back into the map, rolled back, cropped to x_in's size."""
    b, h, w, c = x_in.shape
    x = x.view(b, ph // window[0], pw // window[1], window[0], window[1], c)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(b, ph, pw, c)
    if sum(shift) > 0:
        x = torch.roll(x, shifts=(shift[0], shift[1]), dims=(1, 2))
    return x[:, :h, :w, :].contiguous()


def shifted_window_attention(x_in: torch.Tensor, qkv: nn.Linear, proj: nn.Linear, rel_bias: torch.Tensor,
                             window: list[int], heads: int, shift: list[int]) -> torch.Tensor:
    """torchvision's ``shifted_window_attention`` (no dropout, no logit scale), NHWC in and out."""
    c = x_in.shape[3]
    x, ph, pw, shift, nw = window_partition(x_in, window, shift)
    t = qkv(x)
    t = t.reshape(x.size(0), x.size(1), 3, heads, c // heads).permute(2, 0, 3, 1, 4)
    q, k, v = t[0], t[1], t[2]
    q = q * (c // heads) ** -0.5
    attn = q.matmul(k.transpose(-2, -1))
    attn = attn + rel_bias
    x = proj(masked_softmax_values(attn, v, x, ph, pw, window, shift, nw, heads))
    return window_merge(x, x_in, ph, pw, window, shift)


class ShiftedWindowAttention(nn.Module):
    """Window multi-head self-attention with relative position bias (torchvision layout)."""

    def __init__(self, dim: int, window_size: list[int], shift_size: list[int], num_heads: int) -> None:
        super().__init__()
        self.window_size = list(window_size)
        self.shift_size = list(shift_size)
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        wh, ww = self.window_size
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * wh - 1) * (2 * ww - 1), num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        coords = torch.stack(torch.meshgrid(torch.arange(wh), torch.arange(ww), indexing="ij"))
        flat = torch.flatten(coords, 1)
        rel = (flat[:, :, None] - flat[:, None, :]).permute(1, 2, 0).contiguous()
        rel[:, :, 0] += wh - 1
        rel[:, :, 1] += ww - 1
        rel[:, :, 0] *= 2 * ww - 1
        self.register_buffer("relative_position_index", rel.sum(-1).flatten())

    def get_relative_position_bias(self) -> torch.Tensor:
        n = self.window_size[0] * self.window_size[1]
        bias = self.relative_position_bias_table[self.relative_position_index].view(n, n, -1)
        return bias.permute(2, 0, 1).contiguous().unsqueeze(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return shifted_window_attention(x, self.qkv, self.proj, self.get_relative_position_bias(),
                                        self.window_size, self.num_heads, self.shift_size)


class SwinTransformerBlock(nn.Module):
    """Pre-norm block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))`` (stochastic depth is identity in eval)."""

    def __init__(self, dim: int, num_heads: int, window_size: list[int], shift_size: list[int],
                 mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = ShiftedWindowAttention(dim, window_size, shift_size, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        # torchvision.ops.MLP: Linear, GELU, Dropout, Linear, Dropout
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(0.0), nn.Linear(hidden, dim),
                                 nn.Dropout(0.0))
        for m in self.mlp.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.normal_(m.bias, std=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class SwinTransformerTV(nn.Module):
    """torchvision's SwinTransformer; `block` and `downsample` pick V1 (here) or V2 (models/swin_v2.py)."""

    def __init__(self, patch_size: int = 4, embed_dim: int = 96, depths: Sequence[int] = (2, 2, 6, 2),
                 num_heads: Sequence[int] = (3, 6, 12, 24), window_size: int = 7, mlp_ratio: float = 4.0,
                 num_classes: int = 1000, block=None, downsample=None) -> None:
        super().__init__()
        block = block or SwinTransformerBlock
        downsample = downsample or PatchMerging
        if len(depths) != len(num_heads):
            raise ValueError(f"depths {tuple(depths)} and num_heads {tuple(num_heads)} differ in length")
        win = [window_size, window_size]
        layers: list[nn.Module] = [nn.Sequential(
            nn.Conv2d(3, embed_dim, kernel_size=patch_size, stride=patch_size),
            Permute([0, 2, 3, 1]),
            nn.LayerNorm(embed_dim),
        )]
        for i, (depth, heads) in enumerate(zip(depths, num_heads)):
            dim = embed_dim * 2**i
            layers.append(nn.Sequential(*[
                block(dim, heads, win, [0 if j % 2 == 0 else w // 2 for w in win], mlp_ratio)
                for j in range(depth)
            ]))
            if i < len(depths) - 1:
                layers.append(downsample(dim))
        self.features = nn.Sequential(*layers)
        num_features = embed_dim * 2 ** (len(depths) - 1)
        self.norm = nn.LayerNorm(num_features)
        self.permute = Permute([0, 3, 1, 2])
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.head = nn.Linear(num_features, num_classes)
        for m in self.modules():   # torchvision's initialisation (V2's cpb_mlp included)
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.features(x))
        return self.head(self.flatten(self.avgpool(self.permute(x))))


def swin_t_tv(num_classes: int = 1000, embed_dim: int = 96, depths: Sequence[int] = (2, 2, 6, 2),
              num_heads: Sequence[int] = (3, 6, 12, 24), window_size: int = 7, **kw) -> SwinTransformerTV:
    """torchvision ``swin_t`` layout; shrink ``embed_dim``/``depths``/``num_heads`` for fast tests."""
    return SwinTransformerTV(embed_dim=embed_dim, depths=depths, num_heads=num_heads, window_size=window_size,
                             num_classes=num_classes, **kw)
