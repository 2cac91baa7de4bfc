"""mask_channels (the reference of a data-dependent channel removal: the channels forced to 0 by a Mul after the
tensor) names its masked tensor and Mul apart from what the model holds. It named them `<t>__masked` / `<t>__mask`
whatever the model held: a model with its own `r__masked` tensor got two tensors of one name (the onnx_adapter's
bias-map Add `<y>__pruned` / `<node>_bias_map` had the same pattern and gets the same fix, H71's leftover)."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto as TP, helper as h, numpy_helper as nh

from collapse_passes.pruning.onnx_prune import mask_channels


def _run(model, x):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})


def test_masked_tensor_does_not_take_a_name_the_model_holds():
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((4, 3, 1, 1)).astype(np.float32)
    w2 = rng.standard_normal((2, 4, 1, 1)).astype(np.float32)
    nodes = [h.make_node("Conv", ["x", "W1"], ["c"], name="conv1"), h.make_node("Relu", ["c"], ["r"], name="r"),
             h.make_node("Conv", ["r", "W2"], ["y"], name="conv2"),
             h.make_node("Neg", ["x"], ["r__masked"], name="r__mask")]
    g = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", TP.FLOAT, [1, 3, 4, 4])],
                     [h.make_tensor_value_info("y", TP.FLOAT, [1, 2, 4, 4]),
                      h.make_tensor_value_info("r__masked", TP.FLOAT, [1, 3, 4, 4])],
                     [nh.from_array(w1, "W1"), nh.from_array(w2, "W2")])
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 17)])
    m.ir_version = 8
    out = mask_channels(m, {"r": [1, 3]})
    onnx.checker.check_model(out, full_check=True)
    names = [n.name for n in out.graph.node]
    assert len(names) == len(set(names))
    x = rng.standard_normal((1, 3, 4, 4)).astype(np.float32)
    r = np.maximum(np.einsum("oc,nchw->nohw", w1[:, :, 0, 0], x), 0)
    r[:, [1, 3]] = 0
    y, side = _run(out, x)
    np.testing.assert_allclose(y, np.einsum("oc,nchw->nohw", w2[:, :, 0, 0], r), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(side, -x)


def test_pruning_bias_map_add_does_not_take_a_name_the_model_holds(tmp_path):
    """A removed constant channel read through c2's zero padding gives c2 a bias-map Add; its input was named
    `<y>__pruned` whatever the model held: with the model's own `y__pruned`, the collapse died in onnxruntime
    (an Add broadcasting 4 by 7) instead of writing the pruned model."""
    import torch

    import collapse_passes as cp
    from test_adv16_prune_bias_map_size import _model

    m = _model()
    path = tmp_path / "m.onnx"
    torch.onnx.export(m, (torch.randn(1, 3, 7, 7),), str(path), dynamo=False, input_names=["x"], output_names=["y"])
    om = onnx.load(str(path))
    om.graph.node.append(h.make_node("Neg", ["x"], ["y__pruned"], name="side"))
    om.graph.output.append(h.make_tensor_value_info("y__pruned", TP.FLOAT, [1, 3, 7, 7]))
    r = cp.collapse(om)
    assert r.report["pruning"]["removed_channels"] == 3
    assert any("bias map" in n for n in r.report["pruning"]["notes"])
    x = np.random.default_rng(0).standard_normal((1, 3, 7, 7)).astype(np.float32)
    y, side = _run(r.model, x)
    with torch.no_grad():
        np.testing.assert_allclose(y, m(torch.from_numpy(x)).numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(side, -x)
