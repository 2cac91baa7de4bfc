"""verify() collects dropped pass graphs before its onnxruntime sessions (H13).

onnx-graphsurgeon graphs are reference cycles (nodes and tensors point at each other): `ctx.graph = None`
left a collapsed MobileNetV2's graph, 33 MiB of weights, alive under the sessions' peak until the cycle
collector happened to run (docs/pass_runtime.md, 2026-11-29)."""
import gc
import weakref

from onnx import helper

import collapse_passes.verify as verify_mod
from collapse_passes.onnx.driver import requested_semantics, run_passes
from collapse_passes.onnx.graph import to_graph
from conftest import make_model, rnd, vinfo


def test_a_dropped_graph_is_freed_before_the_input_models_session(monkeypatch):
    model = make_model([helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1], name="c1"),
                        helper.make_node("Relu", ["a"], ["r"], name="relu"),
                        helper.make_node("Conv", ["r", "w2"], ["y"], name="c2")],
                       [vinfo("x", [1, 3, 8, 8])], [vinfo("y", [1, 4, 8, 8])],
                       {"w1": rnd(4, 3, 3, 3), "w2": rnd(4, 4, 1, 1, seed=1)})
    result, ctx, _ = run_passes(model, {"relu"})
    requested = requested_semantics(model, {"relu"})
    alive = {}
    inner = verify_mod.run_input_model

    def first_session(*a, **k):
        alive.setdefault("graph", ref() is not None)
        return inner(*a, **k)

    monkeypatch.setattr(verify_mod, "run_input_model", first_session)
    enabled = gc.isenabled()
    gc.disable()   # the collector must not run by chance: only verify's own collection may free the graph
    try:
        garbage = to_graph(model)
        ref = weakref.ref(garbage.nodes[0].inputs[1])   # a weight: its node and tensors are a cycle
        del garbage
        assert ref() is not None   # a cycle: dropping the last reference does not free it
        ver = verify_mod.verify(model, requested, result, [{"x": rnd(1, 3, 8, 8, seed=2)}], 1e-4, 1e-5, "one input")
    finally:
        if enabled:
            gc.enable()
    assert ver.against_requested.passed
    assert alive == {"graph": False}
