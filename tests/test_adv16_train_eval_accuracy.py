"""--eval accuracy (collapse_passes.evaluation) must be the true top-1 of the model it names.

A row of NaN logits has argmax 0: the ONNX top-1 counted it right for every class-0 sample, so a --force'd
result whose outputs were all NaN (MobileNetV3 with its hard-sigmoids collapsed overflows) reported the
share of class 0 (7.5% on 200 digits) instead of 0%. train.accuracy() already counted such rows wrong.
uint64 labels above int64 were wrapped negative and the range error named numbers not in the file.
"""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from collapse_passes.errors import CollapseError
from collapse_passes.evaluation import eval_report, load_eval_data, top1


def _model(op: str) -> onnx.ModelProto:
    """(N, 4) -> (N, 4) logits: Identity, or Log (NaN for negative inputs)."""
    g = helper.make_graph([helper.make_node(op, ["input"], ["logits"])], "g",
                          [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 4])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def test_nan_logits_count_as_wrong():
    x = -np.ones((8, 4), np.float32)   # Log(-1) = NaN in every row
    x[:, 0] = -0.5                     # Identity: argmax 0
    labels = np.zeros(8, np.int64)     # every sample class 0: argmax(NaN row) == 0 scored them all right
    data = {"input": x, "labels": labels}
    feeds = load_eval_data(dict(data), _model("Identity"))
    assert top1(_model("Identity"), *feeds) == 1.0
    assert top1(_model("Log"), *feeds) == 0.0
    rep = eval_report(_model("Identity"), _model("Log"), dict(data))["accuracy"]
    assert rep["original"] == 1.0 and rep["result"] == 0.0
    assert rep["nonfinite_rows"] == {"original": 0, "result": 8}


def test_finite_rows_keep_their_accuracy():
    x = np.ones((4, 4), np.float32)
    x[:2, 0] = -1.0                    # rows 0, 1: NaN after Log; rows 2, 3: finite, argmax over equal logits -> 0
    x[2:, 2] = 5.0                     # rows 2, 3: argmax 2
    labels = np.array([0, 0, 2, 1], np.int64)
    rep = eval_report(_model("Log"), _model("Log"), {"input": x, "labels": labels})["accuracy"]
    assert rep["result"] == 0.25 and rep["nonfinite_rows"]["result"] == 2


def test_uint64_labels_beyond_int64_are_named_as_given():
    x = np.ones((2, 4), np.float32)
    with pytest.raises(CollapseError, match="9223372036854775808"):
        load_eval_data({"input": x, "labels": np.full(2, 2 ** 63, np.uint64)}, _model("Identity"))
