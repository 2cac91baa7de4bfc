"""fold_shapes (onnx/passes/fold_static_shapes.py): run-time shape arithmetic of static models becomes
constants; models whose shapes may depend on data, or whose inputs are dynamic, are left alone."""
from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import collapse_passes as cp
from collapse_passes.onnx.passes import fold_static_shapes as fss
from conftest import export_quiet


def _ops(path_or_model):
    m = onnx.load(path_or_model, load_external_data=False) if isinstance(path_or_model, str) else path_or_model
    return [n.op_type for n in m.graph.node]


def _ort(model, x):
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    s = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return s.run(None, {s.get_inputs()[0].name: x})


@pytest.fixture(scope="module")
def swin_ts(tmp_path_factory):
    from test_swin_tv import SHAPE, _build

    return export_quiet(_build(), tmp_path_factory.mktemp("fold") / "swin_ts.onnx", SHAPE, False), SHAPE


def test_torchscript_swin_loses_its_shape_arithmetic_and_keeps_its_outputs(swin_ts, monkeypatch):
    """TorchScript Swin computes window sizes at run time (Shape/Gather/Concat...): with a static input
    they are folded, the graph shrinks by more than half, and the result equals the input model."""
    from collapse_passes.pipeline import PassResult

    path, shape = swin_ts
    with monkeypatch.context() as mp:
        mp.setattr(fss.FoldStaticShapes, "__call__", lambda self, ctx: PassResult(False))
        unfolded = cp.collapse(path)
    r = cp.collapse(path)
    assert any(n.startswith("fold_shapes: folded") for n in r.report["notes"])
    before, after = _ops(path), _ops(r.model)
    assert len(after) < len(before) / 2
    assert after.count("Shape") < before.count("Shape") / 4
    # sizes only: the float attention mask is still computed, so no parameter appears from nowhere
    assert r.report["after"]["params"] == unfolded.report["after"]["params"]
    assert r.report["after"]["macs"] == unfolded.report["after"]["macs"]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    for a, b in zip(_ort(onnx.load(path), x), _ort(r.model, x)):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)


def _flatten_by_size(tmp_path, dynamic):
    """x.view(x.size(0), -1) after a conv: Shape -> Gather -> Unsqueeze -> Concat -> Reshape."""
    import torch

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3)
            self.act = torch.nn.ReLU()
            self.fc = torch.nn.Linear(4 * 6 * 6, 5)

        def forward(self, x):
            y = self.act(self.conv(x))
            return self.fc(y.view(y.size(0), -1))

    torch.manual_seed(0)
    path = str(tmp_path / f"flat_{int(dynamic)}.onnx")
    torch.onnx.export(Net().eval(), (torch.randn(2, 3, 8, 8),), path, dynamo=False, input_names=["x"],
                      output_names=["y"], dynamic_axes={"x": {0: "batch"}} if dynamic else None)
    return path


def _flatten_by_shape_ops(path, batch=2):
    """conv -> relu -> Reshape(Concat(Unsqueeze(Gather(Shape(y), 0)), [-1])) -> Gemm, as exporters write
    x.view(x.size(0), -1) when they keep the size computation."""
    rng = np.random.default_rng(0)
    w = lambda name, *shape: onnx.numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)  # noqa: E731
    ints = lambda name, v: onnx.numpy_helper.from_array(np.asarray(v, np.int64), name)  # noqa: E731
    nodes = [helper.make_node("Conv", ["x", "cw", "cb"], ["c"], kernel_shape=[3, 3]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Shape", ["r"], ["s"]),
             helper.make_node("Gather", ["s", "zero"], ["b"], axis=0),
             helper.make_node("Unsqueeze", ["b", "axes"], ["bu"]),
             helper.make_node("Concat", ["bu", "neg"], ["target"], axis=0),
             helper.make_node("Reshape", ["r", "target"], ["f"]),
             helper.make_node("Gemm", ["f", "fw", "fb"], ["y"], transB=1)]
    inits = [w("cw", 4, 3, 3, 3), w("cb", 4), w("fw", 5, 144), w("fb", 5), ints("zero", 0), ints("axes", [0]),
             ints("neg", [-1])]
    g = helper.make_graph(nodes, "flat", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 5])], inits)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return str(path)


def test_sizes_inference_knows_are_folded_without_running_the_model(tmp_path, monkeypatch):
    """When ONNX inference gives every Shape input, the values come from a model of the arithmetic
    alone: the input model is not run for them (a full run at 224 costs a verification run)."""
    path = _flatten_by_shape_ops(tmp_path / "flat.onnx")

    def no_run(*a, **k):
        raise AssertionError("the whole model was run for values inference gives")

    monkeypatch.setattr(fss, "run_values", no_run)
    r = cp.collapse(path)
    ops = _ops(r.model)
    assert "Shape" not in ops and "Gather" not in ops and "Reshape" in ops
    reshape = next(n for n in r.model.graph.node if n.op_type == "Reshape")
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in r.model.graph.initializer}
    assert list(inits[reshape.input[1]]) == [2, -1]


def test_dynamic_batch_keeps_its_shape_arithmetic(tmp_path):
    path = _flatten_by_size(tmp_path, dynamic=True)
    r = cp.collapse(path)
    assert _ops(r.model).count("Shape") == _ops(path).count("Shape") == 1
    # only what reads static dims is folded (view(b, -1)'s -1 becomes 144); the batch stays read at run time
    assert all("dynamic input dims stay dynamic" in n for n in r.report["notes"] if n.startswith("fold_shapes"))
    x = np.random.default_rng(1).standard_normal((3, 3, 8, 8)).astype(np.float32)   # another batch runs
    np.testing.assert_allclose(_ort(r.model, x)[0], _ort(onnx.load(path), x)[0], rtol=1e-4, atol=1e-5)


def _graph(nodes, inits=()):
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 6])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], list(inits))
    return gs.import_onnx(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))


def test_a_shape_set_by_data_stops_the_fold():
    """Reshape to a shape computed from the input's values: a Shape after it depends on data."""
    nodes = [helper.make_node("ReduceMax", ["x"], ["m"], keepdims=0),
             helper.make_node("Cast", ["m"], ["mi"], to=TensorProto.INT64),
             helper.make_node("Reshape", ["mi", "one"], ["n"]),
             helper.make_node("Concat", ["n", "neg"], ["target"], axis=0),
             helper.make_node("Reshape", ["x", "target"], ["r"]),
             helper.make_node("Shape", ["r"], ["s"]),
             helper.make_node("Cast", ["s"], ["sf"], to=TensorProto.FLOAT),
             helper.make_node("ReduceSum", ["sf"], ["y"], keepdims=0)]
    inits = [onnx.numpy_helper.from_array(np.array([1], np.int64), "one"),
             onnx.numpy_helper.from_array(np.array([-1], np.int64), "neg")]
    assert fss.shape_arithmetic(_graph(nodes, inits)) is None
    # the same arithmetic on a shape set by constants is foldable
    ok = [helper.make_node("Reshape", ["x", "c"], ["r"]), helper.make_node("Shape", ["r"], ["s"]),
          helper.make_node("Cast", ["s"], ["sf"], to=TensorProto.FLOAT),
          helper.make_node("Mul", ["x", "sf0"], ["y"])]
    derived = fss.shape_arithmetic(_graph(ok, [onnx.numpy_helper.from_array(np.array([3, 4], np.int64), "c"),
                                                onnx.numpy_helper.from_array(np.ones(1, np.float32), "sf0")]))
    assert derived and len(derived) == 2   # s and sf


@pytest.mark.parametrize("op", ["NonZero", "Unique"])
def test_data_shaped_ops_stop_the_fold(op):
    nodes = [helper.make_node(op, ["x"], ["z"]), helper.make_node("Shape", ["z"], ["s"]),
             helper.make_node("Cast", ["s"], ["y"], to=TensorProto.FLOAT)]
    assert fss.shape_arithmetic(_graph(nodes)) is None


def test_shape_of_a_graph_input_is_folded_without_a_run(tmp_path, monkeypatch):
    """Shape(x) of the static graph input: its value is the declared shape (inference does not list
    graph inputs among its results)."""
    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("Reshape", ["x", "s"], ["r"]),
             helper.make_node("Relu", ["r"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 6])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 6])])
    path = str(tmp_path / "in.onnx")
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)
    monkeypatch.setattr(fss, "run_values", lambda *a, **k: (_ for _ in ()).throw(AssertionError("ran")))
    r = cp.collapse(path)
    assert "Shape" not in _ops(r.model)


def test_a_run_that_only_folds_shapes_says_so_not_nothing(tmp_path):
    """With no selection, the CLI said "collapsed, folded and merged nothing" although shape folding had
    shrunk the graph it wrote (8 -> 4 nodes here): the note now names the clean-up."""
    import subprocess
    import sys

    path = _flatten_by_shape_ops(tmp_path / "flat.onnx")
    out = tmp_path / "o.onnx"
    p = subprocess.run([sys.executable, "-m", "collapse_passes", path, "-o", str(out)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert len(_ops(str(out))) < len(_ops(path))
    assert "merged nothing" not in p.stderr and "only exact clean-ups ran (8 -> " in p.stderr, p.stderr
