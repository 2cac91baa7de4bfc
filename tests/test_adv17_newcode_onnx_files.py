"""normalize_model against inputs its authors did not try (adversarial round 17): a Constant(sparse_value=...)
inside a local function was left sparse (only the top-level graph was densified); onnxruntime crashes the
process creating a session on such a file (segfault, exit 139: the check of the file as given), and after
inlining graphsurgeon would have dropped the value. Constants in functions and If/Loop bodies are densified."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto as TP, helper as h, numpy_helper as nh

import collapse_passes as cp
from collapse_passes.onnx.graph import normalize_model

C = 4


def _sparse(name, arr):
    idx = np.argwhere(arr)
    return h.make_sparse_tensor(nh.from_array(arr[arr != 0].astype(arr.dtype), name),
                                nh.from_array(idx.astype(np.int64), name + "_idx"), list(arr.shape))


def _model():
    rng = np.random.default_rng(0)
    w0, w1 = [(rng.standard_normal((C, C, 1, 1)) / 2).astype(np.float32) for _ in range(2)]
    sc = np.zeros((1, C, 1, 1), np.float32)
    sc[0, 1], sc[0, 3] = 2.0, -1.5
    body = [h.make_node("Constant", [], ["s"], sparse_value=_sparse("s", sc)), h.make_node("Mul", ["i", "s"], ["m"]),
            h.make_node("Relu", ["m"], ["o"])]
    f = h.make_function("loc", "ScaledRelu", ["i"], ["o"], body, [h.make_opsetid("", 17)])
    nodes = [h.make_node("Conv", ["x", "w0"], ["c0"], name="conv0"),
             h.make_node("ScaledRelu", ["c0"], ["a0"], domain="loc", name="sr"),
             h.make_node("Conv", ["a0", "w1"], ["y"], name="conv1")]
    g = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", TP.FLOAT, [1, C, 6, 6])],
                     [h.make_tensor_value_info("y", TP.FLOAT, [1, C, 6, 6])],
                     [nh.from_array(w0, "w0"), nh.from_array(w1, "w1")])
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 17), h.make_opsetid("loc", 1)], functions=[f])
    m.ir_version = 9
    onnx.checker.check_model(m)
    return m, w0, w1, sc


def test_sparse_constant_in_a_local_function_is_densified():
    m, *_ = _model()
    out = normalize_model(m)
    consts = [n for n in out.functions[0].node if n.op_type == "Constant"]
    assert [a.name for a in consts[0].attribute] == ["value"]


def test_collapse_of_a_function_with_a_sparse_constant_runs_and_is_right():
    m, w0, w1, sc = _model()
    res = cp.collapse(m, collapse=[])   # crashed the process (onnxruntime segfault) before
    x = np.random.default_rng(1).standard_normal((1, C, 6, 6)).astype(np.float32)
    import onnxruntime as ort
    got = ort.InferenceSession(res.model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    c0 = np.einsum("oi,nihw->nohw", w0[:, :, 0, 0], x)
    exp = np.einsum("oi,nihw->nohw", w1[:, :, 0, 0], np.maximum(c0 * sc, 0))
    np.testing.assert_allclose(got, exp, rtol=1e-4, atol=1e-5)


def _shadowing_model(domain, op):
    """conv - <domain>.<op> - conv, with a local function of that (domain, name) whose body is a Sigmoid."""
    rng = np.random.default_rng(2)
    w = (rng.standard_normal((C, C, 1, 1)) / 2).astype(np.float32)
    f = h.make_function(domain, op, ["i"], ["o"], [h.make_node("Sigmoid", ["i"], ["o"])], [h.make_opsetid("", 17)])
    nodes = [h.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             h.make_node(op, ["c"], ["a"], name="act", domain=domain),
             h.make_node("Conv", ["a", "w"], ["y"], name="conv1")]
    g = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", TP.FLOAT, [1, C, 6, 6])],
                     [h.make_tensor_value_info("y", TP.FLOAT, [1, C, 6, 6])], [nh.from_array(w, "w")])
    ops = [h.make_opsetid("", 17)] + ([h.make_opsetid(domain, 1)] if domain else [])
    m = h.make_model(g, opset_imports=ops, functions=[f])
    m.ir_version = 9
    return m


def test_local_function_named_as_a_runtime_op_is_not_inlined():
    """onnxruntime runs the op (Relu, com.microsoft's Gelu), not the function: inlining the Sigmoid body wrote
    another model, and the run passed (its check's reference was the inlined model) while 1.0 off the file."""
    import onnxruntime as ort

    x = np.random.default_rng(3).standard_normal((1, C, 6, 6)).astype(np.float32)
    for domain, op in (("", "Relu"), ("com.microsoft", "Gelu")):
        m = _shadowing_model(domain, op)
        ref = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
        res = cp.collapse(m, collapse=[])
        assert "Sigmoid" not in [n.op_type for n in res.model.graph.node]
        sess = ort.InferenceSession(res.model.SerializeToString(), providers=["CPUExecutionProvider"])
        got = sess.run(None, {"x": x})[0]
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)


def test_local_function_in_a_custom_domain_is_still_inlined():
    res = cp.collapse(_shadowing_model("loc", "Relu"), collapse=[])
    assert "Sigmoid" in [n.op_type for n in res.model.graph.node]
