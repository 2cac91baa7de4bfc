"""Adversarial round 15 (H10): MACs of dims the torch.export-based exporter writes as expressions.

With a dynamic batch, a reshape that folds positions into the batch (MobileViT's patches, `(b*p*p, n, d)`;
a Linear over every position, `(b*h*w, c)`) gets dims such as `4*N` / `64*N` in the exported value_info.
analysis._dims counted any non-numeric dim as 1, so those MatMuls/Gemms counted 4-784x too few MACs: a
MobileViT's "before" MACs were 203M instead of 291M, and --target-speedup, pricing the input below its own
collapsed results, collapsed all 22 SiLUs for a predicted 0.99x. A dim is now its value at every dynamic
size 1 (`64*N` -> 64), as the static export counts it.
"""
from __future__ import annotations

import pytest

import collapse_passes as cp
from collapse_passes.onnx.analysis import _symbolic_dim

torch = pytest.importorskip("torch")
nn = torch.nn


class _PerPosition(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 1)
        self.fc1, self.act, self.fc2 = nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)

    def forward(self, x):
        y = self.conv(x)
        b = y.shape[0]
        y = y.permute(0, 2, 3, 1).reshape(b * 64, 8)        # every position a row: dim 64*N
        return self.fc2(self.act(self.fc1(y))).reshape(b, 256)


def _export(tmp_path, dynamic):
    torch.manual_seed(0)
    m = _PerPosition().eval()
    path = str(tmp_path / f"perpos_{int(dynamic)}.onnx")
    kw = {"dynamic_shapes": ({0: torch.export.Dim("N", min=1, max=64)},)} if dynamic else {}
    torch.onnx.export(m, (torch.randn(2, 3, 8, 8),), path, dynamo=True, opset_version=18, external_data=False,
                      input_names=["x"], output_names=["y"], **kw)
    return path


def test_macs_of_a_dynamic_batch_export_count_its_symbolic_dims(tmp_path):
    static = cp.collapse(_export(tmp_path, False)).report["before"]["macs"]
    dynamic = cp.collapse(_export(tmp_path, True)).report["before"]["macs"]
    # batch 2 traced statically; the dynamic export counts batch 1
    assert dynamic * 2 == static == 2 * (64 * 3 * 8 + 64 * 8 * 16 + 64 * 16 * 4)


def test_symbolic_dim_values():
    assert [_symbolic_dim(d) for d in ("N", "4*N", "784*N", "N*196", "2*s0 + 1", "unk__3", "?", "N-5", "")] == \
        [1, 4, 784, 196, 3, 1, 1, 1, 1]
    assert _symbolic_dim("N**100000") == 1 and _symbolic_dim("x" * 500) == 1   # no power, no huge parse
