"""--method without --threshold / --remove / --target-speedup collapses nothing; the warning said "scores given"
although the user gave no scores: it names the method that scored the activations."""
import onnx
from onnx import TensorProto, helper

import collapse_passes as cp


def _leaky() -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    return helper.make_model(helper.make_graph([helper.make_node("LeakyRelu", ["x"], ["y"], name="act", alpha=0.5)],
                                               "g", [x], [y]), opset_imports=[helper.make_opsetid("", 17)])


def test_method_without_a_selection_names_the_method():
    res = cp.collapse(_leaky(), method="prelu")
    assert any(w.startswith("--method prelu scored the activations without --threshold") for w in res.report["warnings"]), \
        res.report["warnings"]
    res = cp.collapse(_leaky(), scores={"act": 0.1})
    assert any(w.startswith("scores given without --threshold") for w in res.report["warnings"])
