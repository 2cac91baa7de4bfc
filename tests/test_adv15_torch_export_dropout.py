"""Round-15 (H9): an ExportedProgram of an eval-mode model with nn.Dropout(inplace=True) (EfficientNet's classifier)
holds aten.dropout_(x, p, False), which writes nothing; models.export.view_writes counted it as an in-place write
through a view, so export_onnx(..., dynamo=False) refused every collapsed EfficientNet program."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

import collapse_passes as cp
from models.export import export_onnx, view_writes


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn, self.act = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.SiLU()
        self.drop, self.fc = nn.Dropout(0.2, inplace=True), nn.Linear(8, 4)

    def forward(self, x):
        x = torch.flatten(self.act(self.bn(self.conv(x))).mean((2, 3), keepdim=True), 1)   # flatten: a view
        return self.fc(self.drop(x))


def _run(path, x):
    s = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return s.run(None, {s.get_inputs()[0].name: x.numpy()})[0]


def test_collapsed_program_with_eval_inplace_dropout_exports_with_torchscript(tmp_path):
    torch.manual_seed(0)
    m, x = Net().eval(), torch.randn(1, 3, 8, 8)
    ep = torch.export.export(m, (x,))
    assert view_writes(ep.module()) == []
    res = cp.collapse(ep, collapse=["act"])
    p = export_onnx(res.model, tmp_path / "m.onnx", (1, 3, 8, 8), dynamo=False)
    with torch.no_grad():
        want = m.fc(torch.flatten(m.bn(m.conv(x)).mean((2, 3), keepdim=True), 1))   # act linearized: identity
    np.testing.assert_allclose(_run(p, x), want.numpy(), rtol=1e-4, atol=1e-5)


def test_a_real_write_through_a_view_is_still_refused(tmp_path):
    class W(nn.Module):
        def forward(self, x):
            y = x * 2
            y[:, :1].mul_(3)
            return y

    ep = torch.export.export(W().eval(), (torch.randn(1, 3, 4, 4),))
    assert view_writes(ep.module())
    with pytest.raises(ValueError, match="in-place writes through views"):
        export_onnx(ep, tmp_path / "w.onnx", (1, 3, 4, 4), dynamo=False)


def test_training_dropout_in_place_on_a_view_is_still_a_write():
    class D(nn.Module):
        def forward(self, x):
            y = x * 2
            torch.ops.aten.dropout_(y[:, :1], 0.5, True)
            return y

    gm = torch.fx.symbolic_trace(D())
    assert view_writes(gm)
