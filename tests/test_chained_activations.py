"""A collapsed activation feeding another collapsed activation (relu -> relu, silu -> relu, with and without
fan-out): both are linearized, the graph stays valid and the result is exact (it used to be an invalid,
unsorted ONNX graph reported as bad input)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import collapse_passes as cp
from conftest import export_quiet


class Chain(nn.Module):
    def __init__(self, first, fan):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 4, 1), nn.Conv2d(4, 4, 1)
        self.act, self.r, self.fan = first(), nn.ReLU(), fan

    def forward(self, x):
        y = self.act(self.c1(x))
        return self.c2(y) + self.r(y) if self.fan else self.c2(self.r(y))


def _reference(m, x):
    with torch.no_grad():
        y = m.c1(x)
        return (m.c2(y) + y if m.fan else m.c2(y)).numpy()


@pytest.mark.parametrize("first", [nn.ReLU, nn.SiLU, nn.Hardswish])
@pytest.mark.parametrize("fan", [False, True])
@pytest.mark.parametrize("dynamo", [False, True])
def test_chained_collapsed_activations(first, fan, dynamo, tmp_path):
    torch.manual_seed(0)
    m = Chain(first, fan).eval()
    path = export_quiet(m, tmp_path / "m.onnx", (1, 3, 8, 8), dynamo=dynamo)
    keys = [k["key"] for k in cp.list_keys(path)]   # dynamo's optimizer folds relu(relu(x)) into one ReLU
    assert set(keys) <= {"act", "r"} and keys
    res = cp.collapse(path, collapse=keys)
    assert res.passed and res.report["after"]["activations"] == 0
    import onnxruntime as ort

    x = torch.randn(1, 3, 8, 8)
    s = ort.InferenceSession(res.model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = s.run(None, {s.get_inputs()[0].name: x.numpy()})[0]
    assert np.allclose(got, _reference(m, x), rtol=1e-4, atol=1e-5)
    if not dynamo:   # the torch front end, same keys
        rt = cp.collapse(m, collapse=["act", "r"], example_inputs=(x,))
        assert np.allclose(rt.model(x).detach().numpy(), _reference(m, x), rtol=1e-4, atol=1e-5)
