"""--round-to N rounds what every layer keeps, not only its channel group's total (H30, 2026-11-29).

An Inception-style concat (branches of 8, 16 and 4 channels read by one conv) is one group: pruned to 0.5 with
round_to 8 the group kept 16 channels as 1 + 11 + 4, so the branch convs had 1 and 11 filters, the counts that leave
onnxruntime's blocked (NCHWc) layout that --round-to exists to avoid, and no misalignment warning said so (the
group's row, 28 -> 16, looked aligned). Now each conv keeps a multiple of N or all it has, on both front ends.
"""
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import collapse_passes as cp
from models.export import export_onnx
from models.tv_init import calibrate_bn


def _cbr(i, o, k=3, s=1):
    return nn.Sequential(nn.Conv2d(i, o, k, s, k // 2, bias=False), nn.BatchNorm2d(o), nn.ReLU())


class _Inception(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = _cbr(3, 16, 3, 2)
        self.b1 = _cbr(16, 8, 1)
        self.b2 = nn.Sequential(_cbr(16, 12, 1), _cbr(12, 16, 3))
        self.b3 = _cbr(16, 4, 5)
        self.post = _cbr(28, 32, 1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = self.stem(x)
        x = self.post(torch.cat([self.b1(x), self.b2(x), self.b3(x)], 1))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


BEFORE = [16, 8, 12, 16, 4, 32]   # conv outputs, in graph order


def _onnx_convs(model):
    inits = {i.name: i for i in model.graph.initializer}
    return [int(inits[n.input[1]].dims[0]) for n in model.graph.node if n.op_type == "Conv"]


def _torch_convs(gm):
    return [gm.get_submodule(n.target).out_channels for n in gm.graph.nodes
            if n.op == "call_module" and isinstance(gm.get_submodule(n.target), nn.Conv2d)]


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_every_conv_keeps_a_multiple_of_round_to(tmp_path, scope):
    torch.manual_seed(0)
    m = _Inception()
    calibrate_bn(m, (2, 3, 32, 32))
    x = torch.randn(1, 3, 32, 32)
    path = export_onnx(m, tmp_path / "m.onnx", (1, 3, 32, 32), dynamo=False)
    kw = dict(prune_ratio=0.5, round_to=8, prune_scope=scope)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ro = cp.collapse(path, **kw)
        rt = cp.collapse(m, example_inputs=(x,), **kw)
    got_o, got_t = _onnx_convs(ro.model), _torch_convs(rt.model)
    assert got_o == got_t, (got_o, got_t)
    for before, after in zip(BEFORE, got_o):
        assert after % 8 == 0 or after == before, (BEFORE, got_o)   # was 1 and 11 for the 8- and 16-filter branches
    assert sum(got_o) < sum(BEFORE)
