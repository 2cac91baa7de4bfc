"""The torch.export-based exporter writes aten.as_strided (AdaptiveAvgPool2d(1) on a channels-last map, as in
ConvNeXt's head) as Gather(Reshape(x, [-1]), arange(x.size).reshape(x.shape)): it reads x back whole. Those two
ops computed nothing and were counted: ConvNeXt-T's critical path was 186 ops on the dynamo export, 184 on the
TorchScript one and on the torch front end, and the result still ran both."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import collapse_passes as cp


def _model(indices, relu_first=True):
    """x -> Conv 1x1 -> Relu -> Reshape(-1) -> Gather(indices) -> Relu -> output (batch 1, 4 channels, 1x1)."""
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 4, 1, 1)).astype(np.float32), "w")
    flat = numpy_helper.from_array(np.array([-1], np.int64), "flat")
    idx = numpy_helper.from_array(np.asarray(indices, np.int64), "idx")
    out_shape = list(np.asarray(indices).shape)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             helper.make_node("Relu", ["c"], ["r"], name="relu0"),
             helper.make_node("Reshape", ["r", "flat"], ["f"], name="flatten"),
             helper.make_node("Gather", ["f", "idx"], ["g"], name="as_strided", axis=0),
             helper.make_node("Relu", ["g"], ["y"], name="relu1")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 1, 1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)], [w, flat, idx])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(model, x):
    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(None, {"x": x})[0]


def test_identity_gather_is_no_op_and_removed():
    model = _model(np.arange(4).reshape(1, 4, 1, 1))
    res = cp.collapse(model)
    # Conv, Relu, Relu: the flattening Reshape and the Gather compute nothing
    assert res.report["before"]["depth_ops"] == 3 and res.report["before"]["nodes"] == 3
    assert res.report["after"]["depth_ops"] == 3
    ops = [n.op_type for n in res.model.graph.node]
    assert "Gather" not in ops and "Reshape" not in ops, ops
    x = np.random.default_rng(1).standard_normal((1, 4, 1, 1)).astype(np.float32)
    np.testing.assert_allclose(_run(res.model, x), _run(model, x), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("indices", [np.arange(4)[::-1].reshape(1, 4, 1, 1),   # reorders: a real Gather
                                     np.arange(4),                               # in order, other shape
                                     np.arange(4).reshape(1, 1, 4, 1)])          # in order, other shape
def test_other_gathers_are_kept(indices):
    model = _model(indices)
    res = cp.collapse(model)
    assert res.report["before"]["depth_ops"] == 5   # Reshape and Gather are ops here
    assert "Gather" in [n.op_type for n in res.model.graph.node]
    x = np.random.default_rng(2).standard_normal((1, 4, 1, 1)).astype(np.float32)
    np.testing.assert_allclose(_run(res.model, x), _run(model, x), rtol=1e-6, atol=1e-6)


class _Head(torch.nn.Module):
    """ConvNeXt's pattern: a permuted branch added to the map (channels-last strides), AdaptiveAvgPool2d(1)."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.lin = torch.nn.Linear(8, 8)
        self.act = torch.nn.ReLU()
        self.pool = torch.nn.AdaptiveAvgPool2d(1)
        self.fc = torch.nn.Linear(8, 4)
        self.scale = torch.nn.Parameter(torch.rand(8, 1, 1))

    def forward(self, x):
        y = self.conv(x)
        z = self.act(self.lin(y.permute(0, 2, 3, 1))).permute(0, 3, 1, 2)
        return self.fc(self.pool(self.scale * z + y).flatten(1))


def test_both_exporters_and_torch_count_the_same_depth(tmp_path):
    torch.manual_seed(0)
    m = _Head().eval()
    x = torch.randn(1, 3, 8, 8)
    depths = {}
    for dynamo in (False, True):
        p = tmp_path / f"m{int(dynamo)}.onnx"
        torch.onnx.export(m, (x,), str(p), dynamo=dynamo, opset_version=18 if dynamo else 17)
        if dynamo:   # the pattern this test is about
            assert "Gather" in [n.op_type for n in onnx.load(str(p)).graph.node]
        res = cp.collapse(str(p), collapse=["act"])
        depths[dynamo] = (res.report["before"]["depth_ops"], res.report["after"]["depth_ops"])
        assert "Gather" not in [n.op_type for n in res.model.graph.node]
    tres = cp.collapse(m, collapse=["act"], example_inputs=(x,))
    assert depths[True] == depths[False] == (tres.report["before"]["depth_ops"], tres.report["after"]["depth_ops"])
