"""The float64 second look's Conv (core/reference_conv): onnx's reference Conv with its im2col gather done through
strided windows. onnx's own gather built one full int64 index array per spatial axis: a fully collapsed
EfficientNet-B0 (TorchScript export, merge fallback: 7 reference runs) spent 47 of its 66 s in the reference Conv,
24 s of it in that gather. The outputs must stay onnx's bit for bit (the second look's verdicts and numbers are
reported)."""

import numpy as np
import onnx
import pytest
from hypothesis import given, settings, strategies as st
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator
from onnx.reference.ops import op_conv

from collapse_passes.core import reference_conv
from collapse_passes.verify import _reference_run, as_float64


@st.composite
def conv_case(draw):
    nd = draw(st.integers(1, 3))
    m = draw(st.integers(1, 2))
    g = draw(st.sampled_from([1, 2, 3]))
    cin, cout = g * draw(st.integers(1, 3)), g * draw(st.integers(1, 3))
    ks = [draw(st.integers(1, 4)) for _ in range(nd)]
    sp = [draw(st.integers(1, 8)) for _ in range(nd)]
    strides = [draw(st.integers(1, 3)) for _ in range(nd)]
    dil = [draw(st.integers(1, 2)) for _ in range(nd)]
    pads = [draw(st.integers(0, 3)) for _ in range(2 * nd)]
    auto_pad = draw(st.sampled_from(["NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER"]))
    bias = draw(st.sampled_from(["none", "one", "per_channel"]))
    seed = draw(st.integers(0, 2**16))
    return m, cin, cout, g, ks, sp, strides, dil, pads, auto_pad, bias, seed


@settings(max_examples=300, deadline=None)
@given(conv_case())
def test_conv_is_onnx_reference_conv_bit_for_bit(case):
    m, cin, cout, g, ks, sp, strides, dil, pads, auto_pad, bias, seed = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((m, cin, *sp))
    x[rng.random(x.shape) < 0.05] = -0.0
    w = rng.standard_normal((cout, cin // g, *ks))
    b = None if bias == "none" else rng.standard_normal(1 if bias == "one" else cout)
    args = (b, auto_pad, dil, g, ks, pads, strides)
    try:
        want = op_conv._conv_implementation(x, w, *args)
    except Exception as exc:   # noqa: BLE001 - a window larger than the input: the same error either way
        with pytest.raises(type(exc)):
            reference_conv.conv(x, w, *args)
        return
    got = reference_conv.conv(x, w, *args)
    assert got.shape == want.shape and got.dtype == want.dtype
    assert got.tobytes() == want.tobytes()


def _conv_model(group=4, k=5, hw=20, stride=1, pads=(2, 2, 2, 2), dilations=(1, 1)):
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((8, 8 // group, k, k)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "b")
    w2 = numpy_helper.from_array(rng.standard_normal((4, 8, 1, 1)).astype(np.float32), "w2")
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["h"], group=group, pads=list(pads), strides=[stride] * 2,
                              dilations=list(dilations)),
             helper.make_node("Sigmoid", ["h"], ["s"]),
             helper.make_node("Conv", ["s", "w2"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8, hw, hw])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w, b, w2])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("kw", [{}, {"group": 1, "k": 3, "pads": (1, 0, 2, 1), "stride": 2},
                                {"group": 8, "k": 3, "dilations": (2, 3), "pads": (2, 3, 2, 3)}])
def test_second_look_runs_our_conv_and_gets_onnx_outputs(monkeypatch, kw):
    """_reference_run (the second look's float64 evaluation) must not fall back to onnx's index-array gather,
    and gives exactly what onnx's own evaluator gives."""
    model = _conv_model(**kw)
    x = np.random.default_rng(1).standard_normal((2, 8, 20, 20))
    want = ReferenceEvaluator(as_float64(model)).run(None, {"x": x})[0]
    calls = []
    real = op_conv.im2col
    monkeypatch.setattr(op_conv, "im2col", lambda *a, **k: calls.append(1) or real(*a, **k))
    (got,), = _reference_run(model, [{"x": x}])
    assert calls == [], "onnx's im2col ran in the float64 second look"
    assert got.dtype == np.float64 and got.tobytes() == want.tobytes()


def test_conv_in_a_subgraph_uses_it_too(monkeypatch):
    """new_ops reaches If branches: a Conv inside one is evaluated the same way."""
    rng = np.random.default_rng(2)
    w = numpy_helper.from_array(rng.standard_normal((3, 3, 3, 3)).astype(np.float32), "w")
    then = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["t"], pads=[1, 1, 1, 1])], "then", [],
                             [helper.make_tensor_value_info("t", TensorProto.FLOAT, [1, 3, 6, 6])])
    other = helper.make_graph([helper.make_node("Identity", ["x"], ["e"])], "else", [],
                              [helper.make_tensor_value_info("e", TensorProto.FLOAT, [1, 3, 6, 6])])
    nodes = [helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
             helper.make_node("Constant", [], ["z"], value=numpy_helper.from_array(np.array(-1e9, np.float32))),
             helper.make_node("Greater", ["s", "z"], ["c"]),
             helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other)]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 6, 6])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 6, 6])], [w])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    x = rng.standard_normal((1, 3, 6, 6))
    want = ReferenceEvaluator(as_float64(model)).run(None, {"x": x})[0]
    calls = []
    real = op_conv.im2col
    monkeypatch.setattr(op_conv, "im2col", lambda *a, **k: calls.append(1) or real(*a, **k))
    (got,), = _reference_run(model, [{"x": x}])
    assert calls == [] and got.tobytes() == want.tobytes()
