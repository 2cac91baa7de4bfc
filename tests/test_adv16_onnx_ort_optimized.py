"""Files onnxruntime optimized and saved (SessionOptions.optimized_model_filepath): at ORT_ENABLE_EXTENDED the
activations sit inside com.microsoft FusedConv / FusedGemm / QuickGelu, and were invisible (a saved MobileNetV2:
"no recognised activations"; a ResNet: 16 of 49 ReLUs). They are written back as standard ops
(onnx/contrib.py) and the result is verified against the file as given. ORT_ENABLE_ALL's NCHWc layout ops are
refused with one line."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import collapse_passes as cp
from collapse_passes.errors import CollapseError


def _net(path):
    """conv-ReLU, conv-ReLU6, conv-SiLU (x*sigmoid(x)), conv + residual Add, Gemm-ReLU: what onnxruntime fuses."""
    rng = np.random.default_rng(0)
    w = lambda *s: numpy_helper.from_array((rng.standard_normal(s) * (2.0 / np.prod(s[1:])) ** 0.5).astype(np.float32))  # noqa: E731
    inits = []

    def init(name, arr):
        arr.name = name
        inits.append(arr)
        return name
    nodes = [
        helper.make_node("Conv", ["x", init("w1", w(8, 3, 3, 3)), init("b1", w(8))], ["c1"], name="/l1/conv/Conv", pads=[1] * 4),
        helper.make_node("Relu", ["c1"], ["a1"], name="/l1/act/Relu"),
        helper.make_node("Conv", ["a1", init("w2", w(8, 8, 1, 1)), init("b2", w(8))], ["c2"], name="/l2/conv/Conv"),
        helper.make_node("Clip", ["c2", init("lo", numpy_helper.from_array(np.array(0, np.float32))),
                                  init("hi", numpy_helper.from_array(np.array(6, np.float32)))], ["a2"], name="/l2/act/Clip"),
        helper.make_node("Conv", ["a2", init("w3", w(8, 8, 3, 3)), init("b3", w(8))], ["c3"], name="/l3/conv/Conv", pads=[1] * 4),
        helper.make_node("Sigmoid", ["c3"], ["s3"], name="/l3/act/Sigmoid"),
        helper.make_node("Mul", ["c3", "s3"], ["a3"], name="/l3/act/Mul"),
        helper.make_node("Conv", ["a3", init("w4", w(8, 8, 1, 1)), init("b4", w(8))], ["c4"], name="/l4/conv/Conv"),
        helper.make_node("Add", ["c4", "a1"], ["r4"], name="/l4/Add"),
        helper.make_node("Relu", ["r4"], ["a4"], name="/l4/act/Relu"),
        helper.make_node("GlobalAveragePool", ["a4"], ["p"], name="/pool"),
        helper.make_node("Flatten", ["p"], ["f"], name="/flat"),
        helper.make_node("Gemm", ["f", init("wf", w(16, 8)), init("bf", w(16))], ["g"], name="/fc1/Gemm", transB=1),
        helper.make_node("Relu", ["g"], ["ga"], name="/fc1/act/Relu"),
        helper.make_node("Gemm", ["ga", init("wf2", w(4, 16)), init("bf2", w(4))], ["y"], name="/fc2/Gemm", transB=1),
    ]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 12, 12])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, path)
    return m


def _ort_saved(src, dst, level):
    so = ort.SessionOptions()
    so.graph_optimization_level = level
    so.optimized_model_filepath = str(dst)
    ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"])
    return onnx.load(str(dst))


def _run(model, x):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_extended_level_file_keeps_its_activations(tmp_path):
    src, dst = tmp_path / "m.onnx", tmp_path / "m_ext.onnx"
    plain = _net(src)
    opt = _ort_saved(src, dst, ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED)
    fused = {n.op_type for n in opt.graph.node if n.domain == "com.microsoft"}
    assert {"FusedConv", "FusedGemm"} <= fused, fused   # what onnxruntime saved (the test's premise)
    kinds = lambda m: sorted(k["kind"] for k in cp.list_keys(m))   # noqa: E731
    assert kinds(opt) == kinds(plain) == ["relu", "relu", "relu", "relu6", "silu"]

    keys = [k["key"] for k in cp.list_keys(opt)]
    res = cp.collapse(opt, collapse=keys)
    assert res.passed and res.report["collapsed"] == 5
    assert not any(n.domain == "com.microsoft" for n in res.model.graph.node)   # standard ONNX written
    assert any("onnxruntime's fused ops" in n for n in res.report["notes"])
    # the written model computes the plain file with every activation replaced by identity
    lin = onnx.ModelProto()
    lin.CopyFrom(plain)
    for n in lin.graph.node:
        if n.op_type in ("Relu", "Clip"):
            n.op_type = "Identity"
            del n.input[1:]
        elif n.name == "/l3/act/Mul":
            n.op_type, n.input[1] = "Identity", n.input[0]
            del n.input[1:]
    x = np.random.default_rng(1).standard_normal((1, 3, 12, 12)).astype(np.float32)
    np.testing.assert_allclose(_run(res.model, x), _run(lin, x), rtol=1e-4, atol=1e-5)


def test_fused_conv_with_sum_and_quick_gelu_alpha():
    """FusedConv's Z input (added before the activation) and QuickGelu(alpha != 1), expanded, compute as
    onnxruntime's kernels do."""
    from collapse_passes.onnx.contrib import expand_contrib_ops

    rng = np.random.default_rng(2)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 4, 3, 3)).astype(np.float32) * 0.3, "w"),
             numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b")]
    nodes = [helper.make_node("FusedConv", ["x", "w", "b", "z"], ["c"], name="fc", domain="com.microsoft",
                              pads=[1] * 4, activation="LeakyRelu", activation_params=[0.2]),
             helper.make_node("QuickGelu", ["c"], ["y"], name="q", domain="com.microsoft", alpha=1.702)]
    vi = lambda n: helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 4, 6, 6])   # noqa: E731
    g = helper.make_graph(nodes, "g", [vi("x"), vi("z")], [vi("y")], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    m.ir_version = 8
    notes = []
    e = expand_contrib_ops(m, notes)
    assert not any(n.domain == "com.microsoft" for n in e.graph.node) and notes
    assert [n.op_type for n in m.graph.node] == ["FusedConv", "QuickGelu"]   # the caller's proto untouched
    f = {k: rng.standard_normal((1, 4, 6, 6)).astype(np.float32) for k in ("x", "z")}
    run = lambda mm: ort.InferenceSession(mm.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, f)[0]  # noqa: E731
    np.testing.assert_allclose(run(e), run(m), rtol=1e-5, atol=1e-6)


def test_nchwc_file_is_refused_in_one_line(tmp_path):
    m = _net(tmp_path / "m.onnx")
    n = m.graph.node[0]
    n.domain = "com.microsoft.nchwc"   # what ORT_ENABLE_ALL saves: blocked layouts for the CPU it ran on
    m.opset_import.append(helper.make_opsetid("com.microsoft.nchwc", 1))
    p = tmp_path / "all.onnx"
    onnx.save(m, p)
    out = tmp_path / "o.onnx"
    r = subprocess.run([sys.executable, "-m", "collapse_passes", str(p), "-o", str(out), "--collapse", "l1.act"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and not out.exists(), r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "NCHWc" in lines[0] and "ORT_ENABLE_EXTENDED" in lines[0]
    with pytest.raises(CollapseError, match="NCHWc"):
        cp.list_keys(m)


def test_fused_matmul_scale_is_counted():
    """FusedMatMul (alpha * A @ B: onnxruntime's MatMulScaleFusion in a Swin's attention) was no MatMul to the
    MAC count; written as MatMul and Mul it is, and computes the same."""
    from collapse_passes.onnx.contrib import expand_contrib_ops

    rng = np.random.default_rng(3)
    node = helper.make_node("FusedMatMul", ["a", "b"], ["y"], name="fmm", domain="com.microsoft", alpha=0.125)
    vi = lambda n, s: helper.make_tensor_value_info(n, TensorProto.FLOAT, s)   # noqa: E731
    g = helper.make_graph([node], "g", [vi("a", [2, 5, 6]), vi("b", [2, 6, 7])], [vi("y", [2, 5, 7])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    m.ir_version = 8
    e = expand_contrib_ops(m)
    assert [n.op_type for n in e.graph.node] == ["MatMul", "Mul"]
    f = {"a": rng.standard_normal((2, 5, 6)).astype(np.float32), "b": rng.standard_normal((2, 6, 7)).astype(np.float32)}
    run = lambda mm: ort.InferenceSession(mm.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, f)[0]  # noqa: E731
    np.testing.assert_allclose(run(e), run(m), rtol=1e-5, atol=1e-6)
    res = cp.collapse(m)
    assert res.passed and res.report["before"]["macs"] == 2 * 5 * 6 * 7


def test_clip_bounds_take_the_models_float_type():
    """A float16 FusedConv's Clip: its intermediate values have no declared type, so the bounds added take the
    weight's type (float32 bounds on float16 values would not load)."""
    from collapse_passes.onnx.contrib import expand_contrib_ops

    w = numpy_helper.from_array(np.ones((4, 4, 1, 1), np.float16), "w")
    nodes = [helper.make_node("Relu", ["x"], ["h"], name="r0"),
             helper.make_node("FusedConv", ["h", "w"], ["y"], name="fc", domain="com.microsoft",
                              activation="Clip", activation_params=[0.0, 6.0])]
    vi = lambda n: helper.make_tensor_value_info(n, TensorProto.FLOAT16, [1, 4, 3, 3])   # noqa: E731
    m = helper.make_model(helper.make_graph(nodes, "g", [vi("x")], [vi("y")], [w]),
                          opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    e = expand_contrib_ops(m)
    bounds = [t for t in e.graph.initializer if t.name != "w"]
    assert len(bounds) == 2 and all(t.data_type == TensorProto.FLOAT16 for t in bounds)
    assert [n.op_type for n in e.graph.node] == ["Relu", "Conv", "Clip"]
