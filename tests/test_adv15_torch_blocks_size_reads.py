"""Round-15 (H9): residual blocks whose branch reads a tensor's size (fx/blocks.py).

torch.export reads every batch size from the *model* input (sym_size(x, 0)), so a branch that reshapes with
x.shape[0] (a window attention) looked computed from another input than the block's and was no block: on Swin-T
through the torch front end LaCoOT found 12 of the 24 residuals the ONNX side finds, and named each MLP residual
by the bare block path. A size is no data: both residuals are blocks now, keyed as on ONNX."""
from __future__ import annotations

import types

import torch
from torch import nn

import collapse_passes as cp
from collapse_passes.fx.blocks import find_residual_blocks


class Block(nn.Module):
    def __init__(self, d=8):
        super().__init__()
        self.norm1, self.attn, self.norm2 = nn.LayerNorm(d), nn.Linear(d, d), nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 16), nn.GELU(), nn.Linear(16, d))

    def forward(self, x):
        b, n, d = x.shape
        x = x + self.attn(self.norm1(x).reshape(b * n, d)).reshape(b, n, d)   # reads the batch: sym_size
        return x + self.mlp(self.norm2(x))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Linear(4, 8)
        self.blocks = nn.Sequential(Block(), Block())
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)).mean(1))


def _program():
    torch.manual_seed(0)
    m = Net().eval()
    x = torch.randn(2, 5, 4)
    return m, x, torch.export.export(m, (x,), dynamic_shapes=({0: torch.export.Dim("N", min=1, max=64)},))


def test_branch_reading_the_batch_size_is_a_block():
    _, _, ep = _program()
    keys = [b.key for b in find_residual_blocks(ep.module())]
    assert keys == ["blocks.0/Add", "blocks.0/Add_1", "blocks.1/Add", "blocks.1/Add_1"]


def test_lacoot_removes_an_attention_residual_exactly():
    m, x, ep = _program()
    calib = [torch.randn(2, 5, 4) for _ in range(4)]
    scores = {b["key"]: b["score"] for b in cp.collapse(ep, method="lacoot", calib=calib, remove_blocks=0.0,
                                                         check=1).report["blocks"]}
    assert set(scores) == {"blocks.0/Add", "blocks.0/Add_1", "blocks.1/Add", "blocks.1/Add_1"}
    res = cp.collapse(ep, method="lacoot", calib=calib, remove_blocks=scores["blocks.1/Add"] + 1e-9, check=2)
    removed = [b["key"] for b in res.report["blocks"] if b["removed"]]
    assert "blocks.1/Add" in removed
    # my own reference: the listed residuals replaced by their skip, on the module itself
    for name in ("blocks.0", "blocks.1"):
        blk, attn, mlp = m.get_submodule(name), f"{name}/Add" not in removed, f"{name}/Add_1" not in removed

        def fwd(s, x, attn=attn, mlp=mlp):
            b, n, d = x.shape
            x = x + s.attn(s.norm1(x).reshape(b * n, d)).reshape(b, n, d) if attn else x
            return x + s.mlp(s.norm2(x)) if mlp else x
        blk.forward = types.MethodType(fwd, blk)
    x3 = torch.randn(3, 5, 4)   # another batch: the program's batch stays dynamic
    with torch.no_grad():
        torch.testing.assert_close(res.model.module()(x3), m(x3), rtol=1e-5, atol=1e-6)
