"""Reads of a tensor's metadata are no ops in the torch front end's counts.

`x.view(x.size(0), -1)` (the classic ResNet / VGG flatten) traced by symbolic_trace has a `size` node; it was
counted as an op of `nodes` and of the critical path, so the nn.Module reported one op more than its
ExportedProgram and both ONNX exports of it (which fold the size into the Reshape's constant). Before 2026-11-30.
"""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
import torch.nn as nn  # noqa: E402

import collapse_passes as cp  # noqa: E402


class Net(nn.Module):
    def __init__(self, flatten):
        super().__init__()
        self.flatten = flatten
        self.conv, self.act, self.fc = nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Linear(4 * 5 * 5, 2)

    def forward(self, x):
        x = self.act(self.conv(x))
        if self.flatten == "size":
            x = x.view(x.size(0), -1)
        else:
            x = x.reshape(x.shape[0], -1)
        return self.fc(x)


def _counts(model, **kw):
    r = cp.collapse(model, collapse=["act"], **kw).report
    return [(r[s]["nodes"], r[s]["depth_ops"]) for s in ("before", "after")]


@pytest.mark.parametrize("flatten", ["size", "shape"])
def test_metadata_reads_count_no_op(flatten, tmp_path):
    torch.manual_seed(0)
    m, x = Net(flatten).eval(), torch.randn(2, 3, 7, 7)
    module = _counts(m, example_inputs=(x,))
    assert module == _counts(torch.export.export(m, (x,)))
    path = tmp_path / "m.onnx"
    torch.onnx.export(m, (x,), str(path), dynamo=False)
    assert module == _counts(str(path))
    assert module == [(4, 4), (3, 3)]   # conv, relu, flatten, fc; the relu collapsed
