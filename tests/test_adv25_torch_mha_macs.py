"""nn.MultiheadAttention's MACs on the torch front end: its projections and its two attention matmuls.

torch.fx keeps an nn.MultiheadAttention whole (a leaf module whose output is a tuple); graph_stats counted no
MACs for it, so a ViT block reported half the MACs its ExportedProgram and both ONNX exports do. The program is
the independent count here: torch.export writes the projections and matmuls as aten ops counted one by one.
"""
import pytest
import torch
from torch import nn

import collapse_passes as cp


class SelfAttention(nn.Module):
    def __init__(self, batch_first: bool):
        super().__init__()
        self.norm = nn.LayerNorm(16)
        self.attn = nn.MultiheadAttention(16, 4, batch_first=batch_first)
        self.fc = nn.Linear(16, 8)

    def forward(self, x):
        y = self.norm(x)
        return self.fc(torch.relu(x + self.attn(y, y, y, need_weights=False)[0]))


class CrossAttention(nn.Module):
    """Keys and values of other widths (kdim / vdim) and another length than the queries."""

    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(16, 2, kdim=12, vdim=20, batch_first=True)
        self.fc = nn.Linear(16, 8)

    def forward(self, q, k, v):
        return self.fc(torch.relu(self.attn(q, key=k, value=v, need_weights=False)[0]))


def _macs(model, inputs) -> tuple[int, int]:
    module = cp.collapse(model, example_inputs=inputs).report["before"]["macs"]
    program = cp.collapse(torch.export.export(model, inputs), example_inputs=inputs).report["before"]["macs"]
    return module, program


@pytest.mark.parametrize("batch_first, shape", [(True, (2, 7, 16)), (False, (7, 2, 16)), (True, (7, 16))])
def test_self_attention_macs_match_the_program(batch_first, shape):
    torch.manual_seed(0)
    model = SelfAttention(batch_first).eval()
    module, program = _macs(model, (torch.randn(*shape),))
    tokens = 7 * (2 if len(shape) == 3 else 1)
    attention = 4 * tokens * 16 * 16 + 2 * tokens * 7 * 16   # q, k, v, out projections; q @ k^T and attn @ v
    assert module == program
    assert module == attention + tokens * 16 * 8   # and the head Linear


def test_cross_attention_with_other_key_and_value_widths():
    torch.manual_seed(0)
    model = CrossAttention().eval()
    inputs = (torch.randn(2, 5, 16), torch.randn(2, 9, 12), torch.randn(2, 9, 20))
    module, program = _macs(model, inputs)
    assert module == program == 2 * 5 * 16 * 16 * 2 + 2 * 9 * (12 + 20) * 16 + 2 * (2 * 5 * 9 * 16) + 2 * 5 * 16 * 8
