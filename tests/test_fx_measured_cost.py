"""cost="measured" on the torch front end: the planner prices convs by their eager torch latency
(fx/measure.py), and those measurements decide the merges."""
from __future__ import annotations

import torch
from torch import nn

import collapse_passes as cp
from collapse_passes.fx import measure


class Bottleneck(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.r, self.b = nn.Conv2d(8, 32, 1), nn.ReLU(), nn.Conv2d(32, 8, 1)

    def forward(self, x):
        return self.b(self.r(self.a(x)))


def _run(monkeypatch, merged_seconds):
    """collapse with the merged 8->8 conv timed at `merged_seconds`, the two originals at 1 ms each."""
    seen = []

    def fake(fn, x, min_run_time=0.02):
        seen.append(tuple(x.shape))
        return merged_seconds if x.shape[1] == 8 and fn(x).shape[1] == 8 else 1e-3

    monkeypatch.setattr(measure, "time_op", fake)
    torch.manual_seed(0)
    m = Bottleneck().eval()
    x = torch.randn(1, 8, 16, 16)
    res = cp.collapse(m, collapse=["r"], cost="measured", example_inputs=(x,))
    assert res.passed and torch.allclose(res.model(x), m.b(m.a(x)), atol=1e-5)
    return res, seen


def test_measured_torch_latency_decides_the_merge(monkeypatch):
    fast, seen = _run(monkeypatch, 1e-4)      # merged op measured fast: merged
    assert seen and len(fast.report["merges"]) == 1 and fast.report["after"]["nodes"] == 1
    slow, _ = _run(monkeypatch, 1.0)          # measured slow: the planner keeps the two convs
    assert slow.report["merges"] == [] and slow.report["after"]["nodes"] == 2


def test_measured_cost_times_real_torch_ops():
    m = measure.TorchMeasuredCostModel(min_run_time=0.001)
    sig = ("Conv", 4, 4, (3, 3), (1, 1), (1, 1, 1, 0), (1, 1), 1, (8, 8))   # ONNX pads: W end 0
    c = m.op_cost("Conv", 1000, sig)
    assert sig in m.measured_seconds and 0 < m.measured_seconds[sig] < 1
    assert c == m.measured_seconds[sig] * m.macs_per_second
    fn, x = measure._conv(sig)
    assert tuple(fn(x).shape) == (1, 4, 8, 7)
