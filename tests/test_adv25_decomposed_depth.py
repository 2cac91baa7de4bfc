"""A decomposed program's critical path is its program's: the parts of one decomposed op are one op on it.

ep.run_decompositions() writes a Linear on 3-D input as view, addmm, view and F.scaled_dot_product_attention as
~20 nodes (mul, expand, clone, view, bmm, softmax, a NaN guard, bmm, view); every one was counted on the path, so a
two-block ViT reported a critical path of 84 ops decomposed against 30 for the program it came from (before
2026-11-30). torch.fx records where each node came from (node.meta["from_node"]); the nodes of one op now count once.
"""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import collapse_passes as cp  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore")

B, N, D, H = 2, 6, 8, 2


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.n1, self.qkv, self.proj = nn.LayerNorm(D), nn.Linear(D, 3 * D), nn.Linear(D, D)
        self.n2, self.fc1, self.act, self.fc2 = nn.LayerNorm(D), nn.Linear(D, 2 * D), nn.GELU(), nn.Linear(2 * D, D)

    def forward(self, x):
        q, k, v = self.qkv(self.n1(x)).reshape(B, N, 3, H, D // H).permute(2, 0, 3, 1, 4).unbind(0)
        x = x + self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, N, D))
        return x + self.fc2(self.act(self.fc1(self.n2(x))))


def _depths(model, x) -> list:
    r = cp.collapse(model, collapse=["act"], example_inputs=(x,)).report
    return [(r[side]["depth_ops"], r[side]["depth_nonlinear"]) for side in ("before", "after")]


def test_decomposed_program_has_its_programs_depth():
    torch.manual_seed(0)
    m, x = Block().eval(), torch.randn(B, N, D)
    ep = torch.export.export(m, (x,))
    dec = ep.run_decompositions()
    assert any(n.target is torch.ops.aten.bmm.default for n in dec.graph_module.graph.nodes)   # SDPA decomposed
    plain = _depths(ep, x)
    assert _depths(dec, x) == plain == _depths(m, x)
    # n1 qkv unbind sdpa transpose reshape proj add | n2 fc1 gelu fc2 add (reshape/permute: unbind's input)
    assert plain[0][0] == 15 and plain[1][0] == plain[0][0] - 2   # gelu collapsed, fc1 and fc2 merged
