"""Adversarial round 15 (H10): run-time size arithmetic of models with a dynamic batch.

A TorchScript export with `dynamic_axes` on the batch writes ShuffleNet's channel shuffle
(`x.view(b, 2, c // 2, h, w)`, then `x.view(b, -1, h, w)`) as Shape -> Gather -> Div -> Concat -> Reshape.
ONNX inference loses the channel count at the Div and at the -1, and every shape after the next
torch.chunk: the merge planner saw "shapes unknown" and merged nothing behind a shuffle, although only
the batch is dynamic. fold_shapes now folds the sizes that read only static dims (and the -1 whose
dynamic dims are the input's own) for such models too; the batch stays dynamic.
A folded scalar (a Gather index computed from a shape) was written as a 1-element vector (np.ascontiguousarray
makes 0-d arrays 1-d): the result had another rank and failed verification.
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import collapse_passes as cp
from collapse_passes.core import runtime

torch = pytest.importorskip("torch")
nn = torch.nn


def _shuffle(x, groups=2):
    b, c, h, w = x.size()
    x = x.view(b, groups, c // groups, h, w).transpose(1, 2).contiguous()
    return x.view(b, -1, h, w)


class _Shuffled(nn.Module):
    """Two ShuffleNet-style units: shuffle, chunk, 1x1 conv -> ReLU -> 1x1 conv on one half."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 1)
        self.b, self.relu_b, self.c = nn.Conv2d(4, 4, 1), nn.ReLU(), nn.Conv2d(4, 4, 1)
        self.d, self.relu_d, self.e = nn.Conv2d(4, 4, 1), nn.ReLU(), nn.Conv2d(4, 4, 1)

    def forward(self, x):
        y = _shuffle(torch.relu(self.a(x)))
        y1, y2 = y.chunk(2, dim=1)
        y = _shuffle(torch.cat([y1, self.c(self.relu_b(self.b(y2)))], 1))
        y1, y2 = y.chunk(2, dim=1)
        return torch.cat([y1, self.e(self.relu_d(self.d(y2)))], 1)


@pytest.fixture(scope="module")
def shuffled(tmp_path_factory):
    torch.manual_seed(0)
    m = _Shuffled().eval()
    import copy
    path = str(tmp_path_factory.mktemp("shuffle") / "shuffle_dyn.onnx")
    torch.onnx.export(m, (torch.randn(1, 3, 8, 8),), path, dynamo=False, opset_version=17, input_names=["x"],
                      output_names=["y"], dynamic_axes={"x": {0: "N"}, "y": {0: "N"}})
    return copy.deepcopy(m), path


def test_chains_behind_a_channel_shuffle_merge_with_a_dynamic_batch(shuffled):
    m, path = shuffled
    r = cp.collapse(path, collapse=["relu_b", "relu_d"])
    assert not [n for n in r.report["notes"] if "shapes unknown" in n], r.report["notes"]
    assert len(r.report["merges"]) == 2, r.report["merges"]          # b+c and d+e, one conv each
    assert r.report["after"]["depth_ops"] < r.report["before"]["depth_ops"]
    assert r.model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"   # the batch stays dynamic
    x = np.random.default_rng(1).standard_normal((3, 3, 8, 8)).astype(np.float32)    # another batch than traced
    got = runtime.session(r.model).run(None, {"x": x})[0]
    m.relu_b, m.relu_d = nn.Identity(), nn.Identity()   # the requested semantics
    with torch.no_grad():
        want = m(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def _scalar_index_model(batch):
    """y = r[:, C - 1] with C read from Shape(r) at run time: a scalar Gather index made of shape arithmetic."""
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Shape", ["r"], ["s"]),
             helper.make_node("Gather", ["s", "one"], ["ch"]),
             helper.make_node("Sub", ["ch", "one"], ["last"]),
             helper.make_node("Gather", ["r", "last"], ["y"], axis=1)]
    w = np.random.default_rng(0).standard_normal((8, 3, 3, 3)).astype(np.float32)
    inits = [onnx.numpy_helper.from_array(w, "w"),
             onnx.numpy_helper.from_array(np.array(1, np.int64), "one")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 8, 8])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("batch", [2, "N"])
def test_a_folded_scalar_stays_a_scalar(batch):
    model = _scalar_index_model(batch)
    r = cp.collapse(model)
    assert any(n.startswith("fold_shapes") for n in r.report["notes"]), r.report["notes"]
    assert "Shape" not in [n.op_type for n in r.model.graph.node]
    x = np.random.default_rng(2).standard_normal((2, 3, 8, 8)).astype(np.float32)
    got = runtime.session(r.model).run(None, {"x": x})[0]
    want = runtime.session(model).run(None, {"x": x})[0]
    assert got.shape == want.shape == (2, 8, 8)
    np.testing.assert_array_equal(got, want)


def test_a_wildcard_whose_dims_are_not_the_inputs_stays_computed():
    """Reshape(x [N, 4, 6], Concat([2], [-1])): the -1 depends on N (not a constant); nothing is folded and
    the model takes any batch as before."""
    nodes = [helper.make_node("Relu", ["x"], ["r"]),
             helper.make_node("Concat", ["two", "neg"], ["t"], axis=0),
             helper.make_node("Reshape", ["r", "t"], ["y"])]
    inits = [onnx.numpy_helper.from_array(np.array([2], np.int64), "two"),
             onnx.numpy_helper.from_array(np.array([-1], np.int64), "neg")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 6])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, None])], inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    r = cp.collapse(model)
    assert not any(n.startswith("fold_shapes") for n in r.report["notes"])
    for n in (2, 4):
        x = np.random.default_rng(n).standard_normal((n, 4, 6)).astype(np.float32)
        assert runtime.session(r.model).run(None, {"x": x})[0].shape == (2, 12 * n)


def test_tvm_importer_value_error_is_one_line():
    """TVM's ONNX importer raises a plain ValueError ("Dynamic pads are not supported yet.") for a Pad whose
    sizes read a dynamic dim; it escaped tvm_integration as a traceback. It is now a TVMError (one line, and
    --target then compiles for the timed sizes, as for the importer's other refusals). The partial fold of
    dynamic models made TorchScript Swins with dynamic H/W reach it."""
    pytest.importorskip("tvm")
    from tvm_integration.compile import import_onnx
    from tvm_integration.errors import TVMError

    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("Gather", ["s", "two"], ["h"]),
             helper.make_node("Mod", ["h", "four"], ["r"]),
             helper.make_node("Concat", ["zeros6", "r", "zero1"], ["pads"], axis=0),
             helper.make_node("Pad", ["x", "pads"], ["y"])]
    ints = lambda name, v: onnx.numpy_helper.from_array(np.asarray(v, np.int64), name)  # noqa: E731
    inits = [ints("two", [2]), ints("four", [4]), ints("zeros6", [0] * 6), ints("zero1", [0])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, "H", None])], inits)
    with pytest.raises(TVMError, match="Dynamic pads"):
        import_onnx(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))
