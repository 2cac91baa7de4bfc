"""--target-speedup prices candidates region by region (speedup.RegionPricer, onnx/regions.py): the
price must be the whole graph's, only cheaper to get."""
from __future__ import annotations

import random

import onnx
import pytest

from collapse_passes import speedup
from collapse_passes.algebra.cost import CostModel
from collapse_passes.calib import model_inputs
from collapse_passes.onnx.analysis import model_stats
from collapse_passes.onnx.driver import run_passes
from collapse_passes.onnx.graph import to_graph
from collapse_passes.onnx.patterns import find_activations


def _pricers(model, forced_count=0):
    acts = find_activations(to_graph(model))
    cm = CostModel()
    shapes = {k: d for k, d, _ in model_inputs(model)}
    forced = acts[:forced_count]
    calls = {"full": 0}

    def full(items):
        calls["full"] += 1
        m, ctx, _ = run_passes(model, {a.name for a in forced + list(items)}, cost_model=cm, input_shapes=shapes)
        return speedup.stats_cost(model_stats(m, graph=ctx.graph).as_dict(), cm)

    region = speedup.RegionPricer(model, acts, forced, full,
                                  lambda sub, names, sh: run_passes(sub, names, cost_model=cm, input_shapes=sh), cm)
    return acts[forced_count:], full, region, calls


@pytest.mark.parametrize("name,dynamo,forced", [("mobilenet_v2", False, 0), ("resnet18", True, 2), ("swin_t", False, 1)])
def test_region_prices_equal_whole_graph_prices(exported, name, dynamo, forced):
    model = onnx.load(exported(name, dynamo))
    acts, full, region, calls = _pricers(model, forced)
    rng = random.Random(0)
    for size in (1, 2, 3, max(1, len(acts) // 2)):
        items = rng.sample(acts, min(size, len(acts)))
        assert region(items) == pytest.approx(full(items), rel=1e-9), [a.name for a in items]
    # the region prices ran without the whole graph (one base run, then regions only)
    calls["full"] = 0
    region(rng.sample(acts, min(2, len(acts))))
    assert calls["full"] == 0


def test_a_region_that_cannot_be_cut_out_is_priced_on_the_whole_graph(exported, monkeypatch):
    from collapse_passes.onnx import regions

    model = onnx.load(exported("mobilenet_v2", False))
    monkeypatch.setattr(regions, "region_model", lambda *a: (None, []))   # as for unnamed nodes
    acts, full, region, calls = _pricers(model)
    region([])
    calls["full"] = 0
    assert region(acts[:2]) == pytest.approx(full(acts[:2]), rel=1e-9)
    assert calls["full"] == 2   # the fallback and the reference


# ---------------------------------------------------------------- adversarial cases (hand-built, fast)

def _conv_chain_model(tail=(), outputs=("c2",), x_dims=(1, 8, 6, 6), extra_inputs=(), extra_inits=()):
    """x -> Relu(kept) -> conv1 1x1 -> Relu -> conv2 3x3 pad 1 (-> tail nodes): collapsing the Relu merges
    the convs into one with a bias map (conv1's bias seen through conv2's zero padding)."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = lambda n, *s: numpy_helper.from_array((rng.standard_normal(s) * 0.3).astype(np.float32), n)  # noqa: E731
    nodes = [helper.make_node("Relu", ["x"], ["x0"], name="relu0"),
             helper.make_node("Conv", ["x0", "W1", "B1"], ["c1"], name="conv1"),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "W2", "B2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]), *tail]
    inits = [w("W1", 8, 8, 1, 1), w("B1", 8), w("W2", 8, 8, 3, 3), w("B2", 8), *extra_inits]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_dims)), *extra_inputs],
                          [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _assert_same_prices(model, names_sets):
    acts, full, region, _ = _pricers(model)
    by_name = {a.name: a for a in acts}
    for names in names_sets:
        items = [by_name[n] for n in names]
        assert region(items) == pytest.approx(full(items), rel=1e-9), names


def test_bias_maps_carried_through_global_average_pool_are_priced_like_the_whole_graph():
    """The merged conv's bias map goes on through GlobalAveragePool -> Flatten into the Gemm's bias on the
    whole graph: the region must reach the Gemm too (it stopped at the pool: one Add too many)."""
    import numpy as np
    from onnx import helper, numpy_helper

    tail = [helper.make_node("GlobalAveragePool", ["c2"], ["p"], name="gap"),
            helper.make_node("Flatten", ["p"], ["f"], name="flat"),
            helper.make_node("Gemm", ["f", "G", "gb"], ["y"], name="fc", transB=1)]
    rng = np.random.default_rng(1)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 8)).astype(np.float32), "G"),
             numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "gb")]
    _assert_same_prices(_conv_chain_model(tail, ("y",), extra_inits=inits), [["relu1"]])


def test_weights_shared_through_identity_count_as_constants():
    """TorchScript shares equal initializers through an Identity node: x @ Identity(W) is as linear to the
    passes (graph.const_value) as x @ W, so the region must take that MatMul in."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    W = numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32), "W")
    nodes = [helper.make_node("Identity", ["W"], ["W_shared"], name="share"),
             helper.make_node("MatMul", ["x", "W_shared"], ["a"], name="mm_a"),
             helper.make_node("Relu", ["a"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "W"], ["b"], name="mm_b"),
             helper.make_node("Relu", ["b"], ["y"], name="relu_out")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [16, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [W])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    _assert_same_prices(model, [["relu"], ["relu", "relu_out"]])


def test_a_tensor_read_by_a_subgraph_stays_a_region_output():
    """conv1's output is read only inside an If's branches: the whole graph keeps conv1 (no merge), the
    region must too (it saw no reader outside and priced the merge)."""
    from onnx import TensorProto, helper

    def branch(op, out):
        return helper.make_graph([helper.make_node(op, ["c1"], [out], name=f"{op}_in_if")], op, [],
                                 [helper.make_tensor_value_info(out, TensorProto.FLOAT, [1, 8, 6, 6])])
    tail = [helper.make_node("If", ["cond"], ["z"], name="if", then_branch=branch("Sigmoid", "t"),
                             else_branch=branch("Tanh", "e"))]
    cond = helper.make_tensor_value_info("cond", TensorProto.BOOL, [])
    _assert_same_prices(_conv_chain_model(tail, ("c2", "z"), extra_inputs=[cond]), [["relu1"], ["relu1", "relu0"]])


def test_dynamic_spatial_input_is_not_sized_from_a_run():
    """With a dynamic H x W the whole graph plans no merge on unknown sizes; a region whose boundary shapes
    were read from a run on some H x W planned one (a price the whole graph never gives)."""
    model = _conv_chain_model(x_dims=("N", 8, "H", "W"))
    _assert_same_prices(model, [["relu1"], ["relu0", "relu1"]])


def test_residual_absorbed_only_into_a_conv_read_by_nothing_else():
    """x + conv(x) where conv's output is also read elsewhere: absorbing the skip into the conv's kernel
    left that reader without a producer (invalid model from the whole-graph run; the region priced it)."""
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n) for n, s in (("W", (4, 4, 1, 1)), ("B", (4,)))]
    nodes = [helper.make_node("Conv", ["x", "W", "B"], ["c"], name="conv"),
             helper.make_node("Add", ["c", "x"], ["s"], name="add"),
             helper.make_node("Relu", ["s"], ["y"], name="relu"),
             helper.make_node("Sigmoid", ["c"], ["z"], name="sig")]
    vi = lambda n: helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 4, 4, 4])  # noqa: E731
    model = helper.make_model(helper.make_graph(nodes, "g", [vi("x")], [vi("y"), vi("z")], inits),
                              opset_imports=[helper.make_opsetid("", 17)])
    out, _, _ = run_passes(model, set())
    x = rng.standard_normal((1, 4, 4, 4)).astype(np.float32)
    want = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})
    got = ort.InferenceSession(out.SerializeToString()).run(None, {"x": x})
    for a, b in zip(want, got):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_dead_readers_do_not_keep_a_region_tensor_alive():
    """conv1's output also feeds a node whose result nobody reads: the passes' first Cleanup drops that
    reader and the whole graph merges conv1 into conv2; the region kept conv1's output as an output."""
    from onnx import helper

    _assert_same_prices(_conv_chain_model([helper.make_node("Sigmoid", ["c1"], ["unused"], name="dead")]),
                        [["relu1"], ["relu0", "relu1"]])


def test_dynamic_batch_regions_are_priced_without_the_whole_graph(exported):
    """A symbolic batch stays the same symbol at a region's boundary: the passes know there what they
    know on the whole graph, so a dynamic-batch export keeps region prices (no whole-graph fallback)."""
    model = onnx.load(exported("mobilenet_v2", True))
    for vi in list(model.graph.input) + list(model.graph.output):
        vi.type.tensor_type.shape.dim[0].ClearField("dim_value")
        vi.type.tensor_type.shape.dim[0].dim_param = "batch"
    del model.graph.value_info[:]
    acts, full, region, calls = _pricers(model)
    region([])
    rng = random.Random(3)
    sets = [rng.sample(acts, k) for k in (1, 2, 2, 3)]
    calls["full"] = 0
    priced = [region(s) for s in sets]
    assert calls["full"] == 0
    assert priced == pytest.approx([full(s) for s in sets], rel=1e-9)
