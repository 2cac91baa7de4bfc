"""Parse once, infer shapes once: the shortcuts of one run give what the long way gave."""
from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest

from collapse_passes.onnx.analysis import model_stats
from collapse_passes.onnx.shapes import inferred_types, with_shapes


def _full(model):
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    return gs.import_onnx(inferred)


def _shapes(graph):
    return {n: (str(t.dtype), None if t.shape is None else list(t.shape))
            for n, t in graph.tensors().items() if isinstance(t, gs.Variable)}


@pytest.mark.parametrize("name,dynamo", [("resnet18", False), ("mobilenet_v2", True), ("swin_t", True)])
def test_light_shape_inference_equals_full_inference(exported, name, dynamo):
    model = onnx.load(exported(name, dynamo))
    assert _shapes(with_shapes(model)) == _shapes(_full(model))
    assert inferred_types(model)   # reached the intermediate tensors


@pytest.mark.slow
def test_model_stats_from_the_passes_graph_equals_a_fresh_inference(exported):
    import collapse_passes as cp

    path = exported("mobilenet_v2", True)
    keys = [r["key"] for r in cp.list_keys(path)]
    res = cp.collapse(path, collapse=keys[::2], check=1)
    fresh = model_stats(res.model).as_dict()
    assert res.report["after"] == fresh
    assert fresh["activations"] == len(keys) - len(keys[::2])


@pytest.mark.slow
def test_nothing_requested_verifies_against_the_input_itself(exported):
    import collapse_passes as cp
    from collapse_passes.onnx.driver import requested_semantics

    model = onnx.load(exported("resnet18", False))
    assert requested_semantics(model, set()) is model
    assert requested_semantics(model, {"x"}) is not model
    res = cp.collapse(model, check=1)
    assert res.requested is res.original and res.passed
    assert res.report["verification"]["against_requested"] == res.report["verification"]["against_original"]


def test_cleanup_infers_again_only_after_a_change(exported):
    from collapse_passes.onnx.context import OnnxContext
    from collapse_passes.onnx.graph import to_graph
    from collapse_passes.onnx.passes import cleanup as cl

    calls = []
    real = cl.infer_shapes

    def counting(g):
        calls.append(1)
        return real(g)

    cl.infer_shapes = counting
    try:
        ctx = OnnxContext(graph=to_graph(onnx.load(exported("resnet18", False))))
        cl.Cleanup()(ctx)
        cl.Cleanup()(ctx)
        assert len(calls) == 1
        conv = next(n for n in ctx.graph.nodes if n.op == "Conv")
        w = conv.inputs[1]
        conv.inputs[1] = gs.Constant(w.name + "_half", np.ascontiguousarray(w.values[: w.shape[0] // 2]))
        cl.Cleanup()(ctx)   # a weight of another shape: shapes must be inferred again
        assert len(calls) == 2
        assert ctx.graph.tensors()[conv.outputs[0].name].shape[1] == w.shape[0] // 2
    finally:
        cl.infer_shapes = real
