"""The critical path counts ops on values: size arithmetic and layout copies are no op of it, on both front ends.

A squeeze-excitation block written `y = x.mean((2, 3)).view(b, c)` ... `x * y.view(b, c, 1, 1)` (b, c from x.size())
exported by TorchScript with a dynamic batch keeps Shape -> Gather -> Unsqueeze -> Concat -> Reshape in the graph:
the four shape ops were counted on the critical path (a two-block SE ResNet: 36 ops against 30 static), and the
Reshape of `view(b, c)` to its input's own shape one more than the torch.export-based export, which drops it (30
against 28). The torch front end counted `c // 2` of `b, c, h, w = x.shape` and `.contiguous()`, which no export
writes as an op. All before 2026-11-30.
"""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
import torch.nn as nn  # noqa: E402

import collapse_passes as cp  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore")


class SE(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(c, c // 2), nn.Linear(c // 2, c)

    def forward(self, x):
        b, c, _, _ = x.size()
        y = x.mean((2, 3)).view(b, c)
        y = torch.sigmoid(self.fc2(torch.relu(self.fc1(y))))
        return x * y.view(b, c, 1, 1)


class Net(nn.Module):
    """conv, ReLU, SE, conv, ReLU, SE, channel shuffle (`c // 2`, contiguous), conv."""

    def __init__(self):
        super().__init__()
        self.c1, self.r1, self.se1 = nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), SE(8)
        self.c2, self.r2, self.se2 = nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), SE(8)
        self.c3 = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        x = self.se2(self.r2(self.c2(self.se1(self.r1(self.c1(x))))))
        b, c, h, w = x.shape
        x = x.view(b, 2, c // 2, h, w).transpose(1, 2).contiguous().view(b, c, h, w)
        return self.c3(x)


DEPTH = ("depth_ops", "depth_nonlinear")


def _depths(model, **kw) -> list:
    r = cp.collapse(model, collapse=["r1"], merge=False, **kw).report
    return [tuple(r[side][k] for k in DEPTH) for side in ("before", "after")]


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return Net().eval(), torch.randn(2, 3, 8, 8)


@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic_batch"])
def test_torchscript_export_depth_equals_the_torch_front_ends(net, tmp_path, dynamic):
    m, x = net
    path = tmp_path / "m.onnx"
    torch.onnx.export(m, (x,), str(path), dynamo=False, input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "N"}, "y": {0: "N"}} if dynamic else None)
    onnx_depths = _depths(str(path))
    assert onnx_depths == _depths(m, example_inputs=(x,)) == _depths(torch.export.export(m, (x,)))
    # by hand: c1 r1 | mean fc1 relu fc2 sigmoid view mul (SE) | c2 r2 | SE 7 | view transpose view c3
    assert onnx_depths[0] == (2 + 7 + 2 + 7 + 4, 6)


def test_shape_chain_is_off_the_path_but_its_reshape_is_on_it(tmp_path):
    """The Reshape that reads run-time sizes still counts: only the size arithmetic is free."""
    import onnx

    from collapse_passes.onnx.analysis import metadata_nodes, model_stats, measured_graph

    torch.manual_seed(0)
    m, x = SE(8).eval(), torch.randn(2, 8, 4, 4)
    path = tmp_path / "se.onnx"
    torch.onnx.export(m, (x,), str(path), dynamo=False, input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "N"}, "y": {0: "N"}})
    model = onnx.load(str(path))
    graph = measured_graph(model)
    meta = {n.op for n in graph.nodes if id(n) in metadata_nodes(graph)}
    assert "Shape" in meta and "Reshape" not in meta and "Mul" not in meta
    # mean, fc1, relu, fc2, sigmoid, view(b, c, 1, 1), mul: the view(b, c) of the mean is its own shape
    assert model_stats(model).depth_ops == 7
