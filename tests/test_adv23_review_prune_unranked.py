"""A ratio prune whose per-channel scores rank none of the prunable channels says so (adversarial round 23, H71).

Round 22 refused a ratio prune with no candidate channel as "no channel of this model can be pruned ...; drop
--prune-ratio" (select.nothing_to_prune). Channels the importance leaves unscored (+inf: kept) are no candidates
either, so scores naming only the model's input said that too, of a model with a prunable layer: a false statement
and the wrong way out. It now names the prunable layers' tensors and says to score them or rank by l1."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto as TP, helper as h, numpy_helper as nh

import collapse_passes as cp
from collapse_passes.errors import CollapseError


def _model() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inits = [nh.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "W1"),
             nh.from_array(rng.standard_normal((4, 8, 1, 1)).astype(np.float32), "W2")]
    nodes = [h.make_node("Conv", ["x", "W1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             h.make_node("Relu", ["c1"], ["r"], name="act"), h.make_node("Conv", ["r", "W2"], ["y"], name="conv2")]
    vi = lambda n, s: h.make_tensor_value_info(n, TP.FLOAT, s)  # noqa: E731
    m = h.make_model(h.make_graph(nodes, "g", [vi("x", [1, 3, 8, 8])], [vi("y", [1, 4, 8, 8])], inits),
                     opset_imports=[h.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def test_scores_of_no_prunable_tensor_name_the_tensors_to_score():
    with pytest.raises(CollapseError) as info:
        cp.collapse(_model(), collapse=[], prune_ratio=0.25, prune_importance={"x": [1.0, 2.0, 3.0]})
    msg = str(info.value)
    assert "no channel of this model can be pruned" not in msg and "drop --prune-ratio" not in msg, msg
    assert "ranks none of the 1 prunable channel group(s)" in msg and "c1" in msg and "--prune-importance l1" in msg


def test_scores_of_the_prunable_tensor_still_prune():
    r = cp.collapse(_model(), collapse=[], prune_ratio=0.25, prune_importance={"r": list(np.arange(8.0))})
    assert r.report["pruning"]["ratio"]["removed_channels"] == 2
