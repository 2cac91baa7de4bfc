"""A small "Swin-T-style" transformer classifier.

Despite the name, this is a plain **global-attention ViT** (no shifted windows,
no patch merging): it is the transformer reference model of the project, kept
small and export-friendly.

Pipeline: ``patch_embed`` conv (kernel = stride = ``patch``) -> tokens
``(B, N, C)`` (+ learned ``pos_embed``) -> ``depth`` pre-norm blocks::

    x = x + attn(norm1(x))
    x = x + mlp.fc2(mlp.act(mlp.fc1(norm2(x))))

-> final ``norm`` -> mean over tokens -> ``head`` Linear.

Attention is hand-written (``attn.qkv`` Linear, matmul, softmax, matmul,
``attn.proj`` Linear) rather than ``nn.MultiheadAttention`` so the exported
graph is simple. Module paths look like ``blocks.0.norm1``, ``blocks.0.attn.qkv``,
``blocks.0.mlp.fc1``, ``blocks.0.mlp.act`` (an ``nn.GELU()`` in exact erf form,
one instance per block) and ``blocks.0.mlp.fc2``.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["Attention", "Mlp", "Block", "SwinT", "swin_t"]


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim={dim} not divisible by heads={heads}")
        self.heads = heads
        self.head_dim = dim // heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.softmax = nn.Softmax(dim=-1)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # (B, H, N, D)
        attn = self.softmax(torch.matmul(q * self.scale, k.transpose(-2, -1)))
        out = torch.matmul(attn, v).transpose(1, 2).reshape(b, n, c)
        return self.proj(out)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        x = x + self.mlp(self.norm2(x))
        return x


class SwinT(nn.Module):
    """Global-attention ViT (named after Swin-T, see module docstring).

    Args:
        img_size: input height/width (must be divisible by ``patch``).
        patch: patch size (conv kernel and stride).
        in_channels: input image channels.
        dim: token width.
        depth: number of transformer blocks.
        heads: attention heads (``dim % heads == 0``).
        mlp_ratio: MLP hidden width / ``dim``.
        num_classes: classifier outputs.
    """

    def __init__(
        self,
        img_size: int = 32,
        patch: int = 4,
        in_channels: int = 3,
        dim: int = 96,
        depth: int = 4,
        heads: int = 3,
        mlp_ratio: float = 4,
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        if img_size % patch:
            raise ValueError(f"img_size={img_size} not divisible by patch={patch}")
        self.img_size = img_size
        self.patch = patch
        num_tokens = (img_size // patch) ** 2
        self.patch_embed = nn.Conv2d(in_channels, dim, kernel_size=patch, stride=patch)
        self.pos_embed = nn.Parameter(torch.zeros(1, num_tokens, dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.blocks = nn.Sequential(*[Block(dim, heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)  # (B, C, H/p, W/p)
        x = x.flatten(2).transpose(1, 2)  # (B, N, C)
        x = x + self.pos_embed
        x = self.blocks(x)
        x = self.norm(x)
        x = x.mean(dim=1)
        return self.head(x)


def swin_t(**kw) -> SwinT:
    """Small global-attention ViT ("swin_t" by name only; no windows/shifts).

    Keyword args: ``img_size=32, patch=4, in_channels=3, dim=96, depth=4,
    heads=3, mlp_ratio=4, num_classes=10``.
    """
    return SwinT(**kw)
