"""ONNX files users hand the tool that our own exports never produce (adversarial round 17):
an IR 3 model (opset <= 8 exporters: every initializer also a graph input) was refused on every run
("collapsed model: invalid ONNX model (w0 in initializer but not in graph input)"); pruning a model whose
If branch reads an outer tensor crashed in onnxruntime (exit 3); a file with a wrong intermediate
value_info crashed pruning (IndexError: the wrong channel count was trusted); activations inside local
functions (TorchScript's export_modules_as_functions) were invisible."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto as TP, helper as h, numpy_helper as nh

import collapse_passes as cp

C = 4


def _w(rng, *s):
    return (rng.standard_normal(s) / np.sqrt(np.prod(s[1:]))).astype(np.float32)


def _chain(rng, n=3, k=1, prefix=""):
    """conv - ReLU - conv - ReLU - conv (k x k, padded when k > 1) from x to y; (nodes, initializers)."""
    nodes, inits, cur = [], [], "x"
    for i in range(n):
        inits += [nh.from_array(_w(rng, C, C, k, k), f"w{i}"), nh.from_array(_w(rng, C) * 0.1, f"b{i}")]
        out = "y" if i == n - 1 else f"c{i}"
        nodes.append(h.make_node("Conv", [cur, f"w{i}", f"b{i}"], [out], name=f"conv{i}", pads=[k // 2] * 4))
        if i < n - 1:
            nodes.append(h.make_node("Relu", [out], [f"a{i}"], name=f"act{i}"))
            cur = f"a{i}"
    return nodes, inits


def _model(nodes, inits, opset=17, ir=9, extra_inputs=(), value_info=(), functions=(), domains=()):
    g = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", TP.FLOAT, [1, C, 6, 6]), *extra_inputs],
                     [h.make_tensor_value_info("y", TP.FLOAT, [1, C, 6, 6])], inits, value_info=list(value_info))
    m = h.make_model(g, opset_imports=[h.make_opsetid("", opset), *domains], functions=list(functions))
    m.ir_version = ir
    return m


def _run(model, x):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def _linearized(model, names):
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for n in m.graph.node:
        if n.name in names:
            n.op_type = "Identity"
    return m


def test_ir3_model_with_initializers_as_inputs_collapses_and_prunes():
    rng = np.random.default_rng(0)
    nodes, inits = _chain(rng, k=1)
    weights_in = [h.make_tensor_value_info(t.name, TP.FLOAT, list(t.dims)) for t in inits]
    m = _model(nodes, inits, opset=8, ir=3, extra_inputs=weights_in)
    onnx.checker.check_model(m)
    res = cp.collapse(m, collapse=["act0", "act1"])
    assert res.model.ir_version >= 4
    onnx.checker.check_model(res.model)
    x = rng.standard_normal((1, C, 6, 6)).astype(np.float32)
    np.testing.assert_allclose(_run(res.model, x), _run(_linearized(m, {"act0", "act1"}), x), rtol=1e-4, atol=1e-5)
    assert len(res.model.graph.node) == 1   # three 1x1 convs merged into one
    assert [i.name for i in res.model.graph.input] == ["x"]
    assert any("6 initializer(s) that were also graph inputs" in n for n in res.report["notes"])
    pruned = cp.collapse(m, prune_ratio=0.5)   # shape inference saw no weights under IR 3: nothing was prunable
    assert pruned.report["pruning"]["ratio"]["removed_channels"] > 0


def test_prune_keeps_channels_an_if_branch_reads():
    rng = np.random.default_rng(1)
    nodes, inits = _chain(rng, k=1)
    then_g = h.make_graph([h.make_node("Neg", ["c0"], ["t"], name="then_neg")], "then", [],
                          [h.make_tensor_value_info("t", TP.FLOAT, [1, C, 6, 6])])
    else_g = h.make_graph([h.make_node("Abs", ["c0"], ["e"], name="else_abs")], "else", [],
                          [h.make_tensor_value_info("e", TP.FLOAT, [1, C, 6, 6])])
    inits.append(nh.from_array(np.array(True), "cond"))
    nodes[-1].output[0] = "y0"
    nodes += [h.make_node("If", ["cond"], ["i0"], name="if0", then_branch=then_g, else_branch=else_g),
              h.make_node("Add", ["y0", "i0"], ["y"], name="add")]
    m = _model(nodes, inits)
    res = cp.collapse(m, prune_ratio=0.5)   # was: onnxruntime "Attempting to broadcast an axis by a dimension ..."
    assert res.report["pruning"]["ratio"]["removed_channels"] > 0   # conv1's channels still go
    w0 = next(t for t in res.model.graph.initializer if any(n.input[1] == t.name for n in res.model.graph.node
                                                          if n.name == "conv0"))
    assert w0.dims[0] == C   # c0, read by both branches, keeps its channels


def test_wrong_intermediate_value_info_is_not_trusted():
    rng = np.random.default_rng(2)
    nodes, inits = _chain(rng, k=1)
    wrong = [h.make_tensor_value_info("c0", TP.FLOAT, [1, 7, 3, 3]), h.make_tensor_value_info("a1", TP.FLOAT, [2, 2])]
    m = _model(nodes, inits, value_info=wrong)
    res = cp.collapse(m, prune_ratio=0.5)   # was: IndexError in pruning/graph.py (7 channels read from value_info)
    assert res.report["pruning"]["ratio"]["removed_channels"] > 0
    res = cp.collapse(m, collapse=["act0"])
    assert res.report["before"]["macs"] == 3 * C * C * 36   # MACs from the real shapes, not the declared ones


def test_activations_inside_local_functions_are_found():
    rng = np.random.default_rng(3)
    f = h.make_function("mydom", "ConvRelu", ["x", "w", "b"], ["y"],
                        [h.make_node("Conv", ["x", "w", "b"], ["c"], pads=[0] * 4),
                         h.make_node("Relu", ["c"], ["y"])], opset_imports=[h.make_opsetid("", 17)])
    inits = [nh.from_array(_w(rng, C, C, 1, 1), f"w{i}") for i in range(3)] + \
            [nh.from_array(_w(rng, C) * 0.1, f"b{i}") for i in range(3)]
    nodes = [h.make_node("ConvRelu", ["x", "w0", "b0"], ["a0"], name="blk0", domain="mydom"),
             h.make_node("ConvRelu", ["a0", "w1", "b1"], ["a1"], name="blk1", domain="mydom"),
             h.make_node("Conv", ["a1", "w2", "b2"], ["y"], name="conv2")]
    m = _model(nodes, inits, functions=[f], domains=[h.make_opsetid("mydom", 1)])
    keys = [k["key"] for k in cp.list_keys(m)]
    assert len(keys) == 2, keys   # was: [] (the ReLUs live in the function body)
    res = cp.collapse(m, collapse=keys)
    assert len(res.model.graph.node) == 1 and not res.model.functions
    x = rng.standard_normal((1, C, 6, 6)).astype(np.float32)
    truth = onnx.inliner.inline_local_functions(m)
    for n in truth.graph.node:
        if n.op_type == "Relu":
            n.op_type = "Identity"
    np.testing.assert_allclose(_run(res.model, x), _run(truth, x), rtol=1e-4, atol=1e-5)
    assert any("local functions inlined" in n for n in res.report["notes"])


def test_op_without_cpu_kernel_for_its_type_names_a_way_out():
    rng = np.random.default_rng(4)
    nodes, inits = _chain(rng, k=1)
    inits = [nh.from_array(nh.to_array(t).astype(np.float64), t.name) for t in inits]
    g = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", TP.DOUBLE, [1, C, 6, 6])],
                     [h.make_tensor_value_info("y", TP.DOUBLE, [1, C, 6, 6])], inits)
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 17)])
    m.ir_version = 9
    import pytest

    from collapse_passes.errors import CollapseError
    with pytest.raises(CollapseError, match=r"Conv.*give the model in float32"):   # onnxruntime has no float64 Conv
        cp.collapse(m, collapse=["act0"])


def test_list_keys_of_a_quantized_model_says_why_it_is_empty(tmp_path):
    """onnxruntime.quantization folds a conv's ReLU into the quantization range (QDQ): nothing to list, and
    the note says so instead of an empty, silent answer."""
    import subprocess
    import sys

    rng = np.random.default_rng(5)
    inits = [nh.from_array(rng.integers(-100, 100, (C, C, 1, 1)).astype(np.int8), "wq"),
             nh.from_array(np.array(0.01, np.float32), "s"), nh.from_array(np.array(0, np.int8), "z"),
             nh.from_array(np.array(0, np.uint8), "zu")]
    nodes = [h.make_node("DequantizeLinear", ["wq", "s", "z"], ["w"], name="dqw"),
             h.make_node("QuantizeLinear", ["x", "s", "zu"], ["xq"], name="qx"),
             h.make_node("DequantizeLinear", ["xq", "s", "zu"], ["xd"], name="dqx"),
             h.make_node("Conv", ["xd", "w"], ["c"], name="conv"),
             h.make_node("QuantizeLinear", ["c", "s", "zu"], ["cq"], name="qc"),
             h.make_node("DequantizeLinear", ["cq", "s", "zu"], ["y"], name="dqc")]
    path = tmp_path / "qdq.onnx"
    onnx.save(_model(nodes, inits, opset=13), path)
    p = subprocess.run([sys.executable, "-m", "collapse_passes", str(path), "--list-keys"], capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0 and p.stdout == ""
    assert "no activation to collapse (a quantized model" in p.stderr and len(p.stderr.strip().splitlines()) == 1


def test_sparse_initializer_weights():
    """graph.sparse_initializer (valid ONNX, some converters write pruned weights so): the result failed to load
    in onnxruntime (exit 3: the weight came out float64 and of the wrong shape)."""
    rng = np.random.default_rng(6)
    nodes, inits = _chain(rng, k=1)
    w1 = nh.to_array(inits[2])
    w1 = np.where(np.abs(w1) < 0.3, 0, w1).astype(np.float32)
    idx = np.flatnonzero(w1).astype(np.int64)
    sp = onnx.SparseTensorProto()
    sp.values.CopyFrom(nh.from_array(w1.reshape(-1)[idx], "w1"))
    sp.indices.CopyFrom(nh.from_array(idx, "w1_idx"))
    sp.dims.extend(w1.shape)
    m = _model(nodes, [t for t in inits if t.name != "w1"])
    m.graph.sparse_initializer.append(sp)
    onnx.checker.check_model(m)
    res = cp.collapse(m, collapse=["act0", "act1"])
    x = rng.standard_normal((1, C, 6, 6)).astype(np.float32)
    np.testing.assert_allclose(_run(res.model, x), _run(_linearized(m, {"act0", "act1"}), x), rtol=1e-4, atol=1e-5)
    assert len(m.graph.sparse_initializer) == 1   # the caller's proto is not changed


def test_sparse_constant_node_weight():
    """Constant(sparse_value=...) as a conv weight: graphsurgeon dropped the attribute (exit 3, "Constant node has
    no data attributes")."""
    rng = np.random.default_rng(7)
    nodes, inits = _chain(rng, n=2, k=1)
    w1 = nh.to_array(inits[2])
    idx = np.flatnonzero(np.abs(w1) >= 0.3).astype(np.int64)
    sp = onnx.SparseTensorProto()
    sp.values.CopyFrom(nh.from_array(w1.reshape(-1)[idx], "v"))
    sp.indices.CopyFrom(nh.from_array(idx, "i"))
    sp.dims.extend(w1.shape)
    m = _model([h.make_node("Constant", [], ["w1"], name="k_w1", sparse_value=sp), *nodes],
               [t for t in inits if t.name != "w1"])
    res = cp.collapse(m, collapse=["act0"])
    x = rng.standard_normal((1, C, 6, 6)).astype(np.float32)
    np.testing.assert_allclose(_run(res.model, x), _run(_linearized(m, {"act0"}), x), rtol=1e-4, atol=1e-5)


def test_graph_output_without_shape_is_read_and_written_with_its_shape(tmp_path):
    """onnx.checker refuses a graph output declared without a shape (make_tensor_value_info(name, type, None));
    onnxruntime runs it and shape inference gives it one: read (it was refused, exit 2), and written with it."""
    nodes, inits = _chain(np.random.default_rng(8), n=2, k=1)
    m = _model(nodes, inits)
    m.graph.output[0].type.tensor_type.ClearField("shape")
    onnx.save(m, tmp_path / "m.onnx")
    res = cp.collapse(str(tmp_path / "m.onnx"), collapse=["act0"])
    assert res.passed
    out = res.model.graph.output[0].type.tensor_type
    assert out.HasField("shape") and len(out.shape.dim) == 4
    onnx.checker.check_model(res.model)


def test_graph_input_without_shape_is_named(tmp_path):
    """The checker's "Field 'shape' of 'type' is required but missing" names no tensor: the refusal of the file
    does (an input needs its rank: the check's random inputs are drawn at its shape)."""
    import pytest

    from collapse_passes.errors import CollapseError
    nodes, inits = _chain(np.random.default_rng(8), n=2, k=1)
    m = _model(nodes, inits)
    m.graph.input[0].type.tensor_type.ClearField("shape")
    onnx.save(m, tmp_path / "m.onnx")
    with pytest.raises(CollapseError, match=r"graph input 'x': no shape declared.*make_tensor_value_info"):
        cp.collapse(str(tmp_path / "m.onnx"), collapse=["act0"])
