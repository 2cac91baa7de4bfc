"""Every merge record counts the batch, as the report's totals do, on both front ends (H60, 2026-11-29).

A conv merge record's MACs were one sample's while dense and pool-hoist records and the report's before / after
totals counted the batch; a residual record counted 0 MACs though absorbing a projection shortcut removes the
projection conv's. On a batch-2 model the records' savings now add up to the totals' difference."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

import collapse_passes as cp
from conftest import make_model, rnd, vinfo

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

B = 2


def _saved(rep) -> int:
    return sum(m["macs_before"] - m["macs_after"] for m in rep["merges"])


def _total_saved(rep) -> int:
    return rep["before"]["macs"] - rep["after"]["macs"]


class ConvDense(nn.Module):
    """c1 3x3 -> a1 -> c2 1x1 -> a2 (kept) -> flatten -> fc1 -> a3 -> fc2: a conv merge and a dense merge."""

    def __init__(self):
        super().__init__()
        self.c1, self.a1, self.c2, self.a2 = nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 6, 1), nn.ReLU()
        self.fc1, self.a3, self.fc2 = nn.Linear(6 * 64, 16), nn.ReLU(), nn.Linear(16, 4)

    def forward(self, x):
        return self.fc2(self.a3(self.fc1(torch.flatten(self.a2(self.c2(self.a1(self.c1(x)))), 1))))


def _conv_dense_onnx(m: ConvDense):
    t = lambda p: p.detach().numpy()   # noqa: E731
    inits = {"w1": t(m.c1.weight), "b1": t(m.c1.bias), "w2": t(m.c2.weight), "b2": t(m.c2.bias),
             "f1": t(m.fc1.weight), "g1": t(m.fc1.bias), "f2": t(m.fc2.weight), "g2": t(m.fc2.bias)}
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["h1"], name="c1", kernel_shape=[3, 3], pads=[1] * 4),
             helper.make_node("Relu", ["h1"], ["r1"], name="a1"),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["h2"], name="c2", kernel_shape=[1, 1]),
             helper.make_node("Relu", ["h2"], ["r2"], name="a2"),
             helper.make_node("Flatten", ["r2"], ["f"], name="flat", axis=1),
             helper.make_node("Gemm", ["f", "f1", "g1"], ["h3"], name="fc1", transB=1),
             helper.make_node("Relu", ["h3"], ["r3"], name="a3"),
             helper.make_node("Gemm", ["r3", "f2", "g2"], ["y"], name="fc2", transB=1)]
    return make_model(nodes, [vinfo("x", [B, 4, 8, 8])], [vinfo("y", [B, 4])], inits)


def test_conv_and_dense_records_count_the_batch_and_add_up_to_the_totals():
    torch.manual_seed(0)
    model = ConvDense().eval()
    reps = {"onnx": cp.collapse(_conv_dense_onnx(model), collapse=["a1", "a3"]).report,
            "torch": cp.collapse(model, collapse=["a1", "a3"], example_inputs=(torch.randn(B, 4, 8, 8),)).report}
    per_sample = 64 * 6 * 4 * 9 + 64 * 6 * 6   # c1 + c2 at 8x8
    for name, rep in reps.items():
        conv = [m for m in rep["merges"] if m["kind"] == "conv"]
        dense = [m for m in rep["merges"] if m["kind"] == "dense"]
        assert len(conv) == len(dense) == 1, (name, rep["merges"])
        assert conv[0]["macs_before"] == B * per_sample and conv[0]["macs_after"] == B * 64 * 6 * 4 * 9, name
        assert dense[0]["macs_before"] == B * (384 * 16 + 16 * 4) and dense[0]["macs_after"] == B * 384 * 4, name
        assert _saved(rep) == _total_saved(rep) > 0, (name, _saved(rep), _total_saved(rep))
    assert [(m["macs_before"], m["macs_after"]) for m in reps["onnx"]["merges"]] == \
        [(m["macs_before"], m["macs_after"]) for m in reps["torch"]["merges"]]


class Projection(nn.Module):
    """y = conv3x3(x) + conv1x1(x), both stride 2: the projection shortcut is absorbed into the 3x3."""

    def __init__(self):
        super().__init__()
        self.c, self.p = nn.Conv2d(4, 6, 3, stride=2, padding=1), nn.Conv2d(4, 6, 1, stride=2)

    def forward(self, x):
        return self.c(x) + self.p(x)


def _projection_onnx(m: Projection):
    t = lambda p: p.detach().numpy()   # noqa: E731
    inits = {"w": t(m.c.weight), "b": t(m.c.bias), "wp": t(m.p.weight), "bp": t(m.p.bias)}
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["z"], name="c", kernel_shape=[3, 3], pads=[1] * 4,
                              strides=[2, 2]),
             helper.make_node("Conv", ["x", "wp", "bp"], ["s"], name="p", kernel_shape=[1, 1], strides=[2, 2]),
             helper.make_node("Add", ["z", "s"], ["y"], name="skip")]
    return make_model(nodes, [vinfo("x", [B, 4, 8, 8])], [vinfo("y", [B, 6, 4, 4])], inits)


def test_an_absorbed_projection_shortcut_counts_the_macs_it_removes():
    torch.manual_seed(0)
    model = Projection().eval()
    reps = {"onnx": cp.collapse(_projection_onnx(model)).report,
            "torch": cp.collapse(model, collapse=[], example_inputs=(torch.randn(B, 4, 8, 8),)).report}
    main, proj = 16 * 6 * 4 * 9, 16 * 6 * 4   # per sample, at the 4x4 output
    for name, rep in reps.items():
        recs = [m for m in rep["merges"] if m["kind"] == "residual-projection"]
        assert len(recs) == 1, (name, rep["merges"])
        assert (recs[0]["macs_before"], recs[0]["macs_after"], recs[0]["ops_before"]) == \
            (B * (main + proj), B * main, 3), (name, recs[0])
        assert _saved(rep) == _total_saved(rep) == B * proj, name
    assert np.isfinite(reps["onnx"]["verification"]["against_requested"]["max_abs"])
