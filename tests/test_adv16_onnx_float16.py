"""float16 files as converters write them (onnxconverter-common's convert_float_to_float16): a GELU's constants
stored in float16 (x / 1.4140625, not sqrt(2)) was no GELU to the probe identification (a float16 Swin-T had no
activations), and a float16 model with float32 inputs/outputs (keep_io_types=True) was checked at float32's
tolerances, so every fold and merge of it was refused after verification."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import collapse_passes as cp


def _gelu_mlp(dtype=np.float16):
    rng = np.random.default_rng(0)
    t = TensorProto.FLOAT16 if dtype == np.float16 else TensorProto.FLOAT
    c = lambda name, v: numpy_helper.from_array(np.asarray(v, dtype), name)   # noqa: E731
    inits = [numpy_helper.from_array((rng.standard_normal((8, 16)) * 0.3).astype(dtype), "w1"),
             numpy_helper.from_array((rng.standard_normal((16, 8)) * 0.3).astype(dtype), "w2"),
             c("sqrt2", np.sqrt(2.0)), c("one", 1.0), c("half", 0.5)]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="/fc1/MatMul"),
             helper.make_node("Div", ["h", "sqrt2"], ["d"], name="/act/Div"),
             helper.make_node("Erf", ["d"], ["e"], name="/act/Erf"),
             helper.make_node("Add", ["e", "one"], ["a"], name="/act/Add"),
             helper.make_node("Mul", ["h", "a"], ["m"], name="/act/Mul"),
             helper.make_node("Mul", ["m", "half"], ["g"], name="/act/Mul_1"),
             helper.make_node("MatMul", ["g", "w2"], ["y"], name="/fc2/MatMul")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", t, [4, 8])],
                          [helper.make_tensor_value_info("y", t, [4, 8])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def test_float16_gelu_is_found_and_collapsed():
    assert [k["kind"] for k in cp.list_keys(_gelu_mlp(np.float32))] == ["gelu"]
    keys = cp.list_keys(_gelu_mlp())
    assert [(k["key"], k["kind"]) for k in keys] == [("act", "gelu")]
    res = cp.collapse(_gelu_mlp(), collapse=["act"])
    assert res.passed and res.report["collapsed"] == 1
    assert sum(n.op_type == "MatMul" for n in res.model.graph.node) == 1   # fc1 and fc2 merged


def test_float16_tanh_gelu_is_still_tanh_gelu():
    """At float16's identification tolerance both GELU forms match a tanh-GELU: the closer one is taken."""
    from collapse_passes.core import activations as catalogue, gates

    x = gates.PROBE
    tanh_gelu = catalogue.reference("gelu_tanh", x)
    assert gates.identify_region(tanh_gelu, "float16") == "gelu_tanh"
    assert gates.identify_region(catalogue.reference("gelu", x), "float16") == "gelu"


def _keep_io_conv():
    """float32 in and out, float16 inside (Casts at both ends), as keep_io_types=True writes it."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array((rng.standard_normal((16, 3, 1, 1)) * 0.5).astype(np.float16), "w1"),
             numpy_helper.from_array((rng.standard_normal(16) * 0.1).astype(np.float16), "b1"),
             numpy_helper.from_array((rng.standard_normal((16, 16, 3, 3)) * 0.2).astype(np.float16), "w2")]
    nodes = [helper.make_node("Cast", ["x"], ["xh"], to=TensorProto.FLOAT16, name="cast_in"),
             helper.make_node("Conv", ["xh", "w1", "b1"], ["a"], name="c1"),
             helper.make_node("Relu", ["a"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "w2"], ["yh"], name="c2", pads=[1, 1, 1, 1]),
             helper.make_node("Cast", ["yh"], ["y"], to=TensorProto.FLOAT, name="cast_out")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 16, 16])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def test_float16_weights_with_float32_io_use_float16_tolerances():
    res = cp.collapse(_keep_io_conv(), collapse=["relu"])
    v = res.report["verification"]
    assert res.passed and (v["rtol"], v["atol"]) == (1e-2, 1e-3)
    assert any(n.startswith("float16 weights") for n in res.report["notes"])
    assert res.report["merges"] and "merge_fallback" not in res.report
    assert sum(n.op_type == "Conv" for n in res.model.graph.node) == 1


def test_float32_model_keeps_float32_tolerances():
    m = _keep_io_conv()
    for t in m.graph.initializer:   # same net in float32
        arr = numpy_helper.to_array(t).astype(np.float32)
        t.CopyFrom(numpy_helper.from_array(arr, t.name))
    del m.graph.node[0]
    del m.graph.node[-1]
    m.graph.node[0].input[0] = "x"
    m.graph.node[-1].output[0] = "y"
    res = cp.collapse(m, collapse=["relu"])
    assert (res.report["verification"]["rtol"], res.report["verification"]["atol"]) == (1e-4, 1e-5)
