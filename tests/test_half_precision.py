"""float16 models: the gate's default tolerances follow the output type (config.with_tolerances)."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import collapse_passes as cp


def _fp16_model():
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array((rng.standard_normal((16, 3, 1, 1)) * 0.5).astype(np.float16), "w1"),
             numpy_helper.from_array((rng.standard_normal(16) * 0.1).astype(np.float16), "b1"),
             numpy_helper.from_array((rng.standard_normal((16, 16, 3, 3)) * 0.2).astype(np.float16), "w2")]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["a"], name="c1"), helper.make_node("Relu", ["a"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "w2"], ["y"], name="c2", pads=[1, 1, 1, 1])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [1, 3, 16, 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [1, 16, 16, 16])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def test_float16_model_is_verified_at_float16_tolerances():
    """The exact merge of a float16 model differs by float16 rounding (~1e-3): at float32's rtol 1e-4 every
    float16 collapse failed; the defaults now follow the output type, and the report says which it used."""
    res = cp.collapse(_fp16_model(), collapse=["relu"])
    v = res.report["verification"]
    assert res.passed and (v["rtol"], v["atol"]) == (1e-2, 1e-3)
    assert 1e-4 < v["against_requested"]["max_rel"] < 1e-2       # really float16 rounding, not exact
    assert any("float16 outputs" in n for n in res.report["notes"])
    assert sum(n.op_type == "Conv" for n in res.model.graph.node) == 1


def test_given_tolerances_win_and_float32_defaults_stay():
    # at the given rtol 1e-4 the merged float16 result fails; the unmerged one is written (api.collapse's fallback)
    res = cp.collapse(_fp16_model(), collapse=["relu"], rtol=1e-4, atol=1e-5)
    v = res.report["verification"]
    assert (v["rtol"], v["atol"]) == (1e-4, 1e-5) and res.report["merges"] == []
    assert any("merging refused after verification" in w for w in res.report["warnings"])
    m = _fp16_model()   # the same network in float32: float32 defaults
    for t in m.graph.initializer:
        t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float32), t.name))
    for vi in list(m.graph.input) + list(m.graph.output):
        vi.type.tensor_type.elem_type = TensorProto.FLOAT
    v = cp.collapse(m, collapse=["relu"]).report["verification"]
    assert (v["rtol"], v["atol"]) == (1e-4, 1e-5)


def test_float64_copy_of_a_float16_model_computes_in_float64():
    """The second look (and the TVM check's) evaluates a float16 model in float64 too."""
    from collapse_passes.verify import _reference_run, as_float64

    m = _fp16_model()
    m64 = as_float64(m)
    assert {t.data_type for t in m64.graph.initializer} == {TensorProto.DOUBLE}
    x = np.random.default_rng(1).standard_normal((1, 3, 16, 16)).astype(np.float16)
    y64 = _reference_run(m, [{"x": x.astype(np.float64)}])[0][0]
    assert y64.dtype == np.float64
    from collapse_passes.core.runtime import session

    y16 = session(m).run(None, {"x": x})[0]
    assert np.abs(y16.astype(np.float64) - y64).max() < 0.05 * np.abs(y64).max()
