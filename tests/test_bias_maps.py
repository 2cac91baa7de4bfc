"""Bias-map propagation: the maths (algebra), the placement helpers (planning), the graph pass on random
linear regions (same outputs, at most one map Add per region exit), the cost charged for a map Add, and
the torchvision-layout MobileNetV2 end to end with both exporters."""
import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import helper

from collapse_passes.algebra import conv as ca
from collapse_passes.algebra.cost import CostModel, elementwise_macs
from collapse_passes.onnx.context import OnnxContext
from collapse_passes.onnx.graph import to_graph, to_model
from collapse_passes.onnx.passes.propagate_bias_maps import PropagateBiasMaps, count_bias_map_adds
from collapse_passes.planning import cheapest_point, rewrite_pays
from conftest import make_model, rnd, vinfo

SETTINGS = dict(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _ort(model, feed):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    s = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return s.run(None, feed)


def _run_pass(model, cost_model=None):
    model = onnx.shape_inference.infer_shapes(model)
    ctx = OnnxContext(graph=to_graph(model), cost_model=cost_model)
    res = PropagateBiasMaps()(ctx)
    out = to_model(ctx.graph, model)
    onnx.checker.check_model(out)
    return out, res, ctx


def _map_adds(model) -> int:
    return count_bias_map_adds(to_graph(onnx.shape_inference.infer_shapes(model)))


# ----------------------------------------------------------------------------------------- algebra

@settings(**SETTINGS)
@given(k=st.sampled_from([1, 2, 3]), s=st.sampled_from([1, 2]), pb=st.integers(0, 2), pe=st.integers(0, 2),
       dw=st.booleans(), hw=st.integers(4, 8), seed=st.integers(0, 99))
def test_map_through_conv_is_the_difference_of_convs(k, s, pb, pe, dw, hw, seed):
    """conv(x + M) = conv(x) + map_through_conv(M): the map sees the same zero padding as x."""
    C = 4
    r = np.random.default_rng(seed)
    p = ca.ConvParams(weight=r.standard_normal((C, 1 if dw else C, k, k)), bias=r.standard_normal(C),
                      strides=(s, s), pads=(pb, pb, pe, pe), group=C if dw else 1)
    x = r.standard_normal((2, C, hw, hw))
    M = r.standard_normal((1, C, hw, hw))
    diff = ca.conv_nd(x + M, p) - ca.conv_nd(x, p)
    np.testing.assert_allclose(diff, np.broadcast_to(ca.map_through_conv(M, p), diff.shape), atol=1e-10)


def test_map_through_dense_scale_mean():
    r = np.random.default_rng(0)
    M, x, W = r.standard_normal((1, 3, 5)), r.standard_normal((2, 3, 5)), r.standard_normal((4, 5))
    np.testing.assert_allclose((x + M) @ W.T - x @ W.T, np.broadcast_to(ca.map_through_dense(M, W), (2, 3, 4)))
    s = r.standard_normal((3, 1))
    np.testing.assert_allclose(ca.map_through_scale(M, s), M * s)
    m4 = r.standard_normal((1, 3, 4, 4))
    np.testing.assert_allclose(ca.map_through_mean(m4, (2, 3))[0, :, 0, 0], m4.mean(axis=(2, 3))[0])


def test_spatially_constant():
    v = np.array([1.0, -2.0, 3.0])
    assert np.allclose(ca.spatially_constant(np.broadcast_to(v.reshape(1, 3, 1, 1), (1, 3, 4, 4))), v)
    m = np.broadcast_to(v.reshape(1, 3, 1, 1), (1, 3, 4, 4)).copy()
    m[0, 1, 0, 0] += 1e-3
    assert ca.spatially_constant(m) is None


def test_planning_helpers():
    assert cheapest_point([5.0, 3.0, 3.0, 4.0]) == 2  # ties go to the later place
    assert cheapest_point([1.0]) == 0
    assert rewrite_pays([10.0, 10.0], [15.0])
    assert not rewrite_pays([10.0], [10.0])  # equal cost: no rewrite (the fixed point terminates)
    with pytest.raises(ValueError):
        cheapest_point([])


def test_cost_model_charges_an_elementwise_pass():
    cm = CostModel(per_op_overhead_macs=100.0)
    assert elementwise_macs((4, 8, 8)) == 256
    assert cm.elementwise_cost("Add", (4, 8, 8)) == 256 * cm.element_price("Add") + 100.0   # priced elements + overhead
    assert cm.elementwise_cost("Add", (4, 16, 16)) > cm.elementwise_cost("Add", (4, 8, 8))


def test_measured_cost_model_times_a_map_add():
    from collapse_passes.onnx.measure import MeasuredCostModel

    cm = MeasuredCostModel(repeat=3)
    c = cm.elementwise_cost("Add", (4, 8, 8))
    assert c > 0 and ("Elementwise", "Add", (4, 8, 8)) in cm.measured_seconds


# ------------------------------------------------------------------------------ random linear regions

@st.composite
def linear_regions(draw):
    """A random linear region: convs (padded or not, strided, depthwise), map Adds, residual Adds, BN,
    ending in a kept Relu; optionally a mid-region tensor is a graph output too (a second exit)."""
    C = 4
    hw = draw(st.integers(6, 10))
    seed = draw(st.integers(0, 10_000))
    r = np.random.default_rng(seed)
    inits, nodes = {}, []
    cur, shape = "x", (C, hw, hw)
    seen = [(cur, shape)]
    n_ops = draw(st.integers(2, 7))
    maps = 0
    for i in range(n_ops):
        kind = draw(st.sampled_from(["conv", "conv", "map", "map", "res", "bn"]))
        if kind == "conv":
            k = draw(st.sampled_from([1, 3]))
            pad = draw(st.sampled_from([0, k // 2]))
            s = draw(st.sampled_from([1, 1, 2]))
            dw = draw(st.booleans())
            out = ((shape[1] + 2 * pad - k) // s + 1, (shape[2] + 2 * pad - k) // s + 1)
            if min(out) < 2:
                continue
            inits[f"w{i}"] = rnd(C, 1 if dw else C, k, k, seed=seed + i)
            inits[f"b{i}"] = rnd(C, seed=seed + 100 + i)
            nodes.append(helper.make_node("Conv", [cur, f"w{i}", f"b{i}"], [f"t{i}"], name=f"conv{i}",
                                          kernel_shape=[k, k], pads=[pad] * 4, strides=[s, s], group=C if dw else 1))
            shape = (C,) + out
        elif kind == "map":
            inits[f"m{i}"] = (r.standard_normal((1,) + shape) * 0.5).astype(np.float32)
            nodes.append(helper.make_node("Add", [cur, f"m{i}"], [f"t{i}"], name=f"map{i}"))
            maps += 1
        elif kind == "res":
            same = [n for n, sh in seen[:-1] if sh == shape]
            if not same:
                continue
            other = draw(st.sampled_from(same))
            nodes.append(helper.make_node("Add", [cur, other], [f"t{i}"], name=f"res{i}"))
        else:
            for nm, v in (("g", r.random(C) + 0.5), ("be", r.random(C) - 0.5), ("mu", r.random(C) - 0.5),
                          ("var", r.random(C) + 0.5)):
                inits[f"{nm}{i}"] = v.astype(np.float32)
            nodes.append(helper.make_node("BatchNormalization", [cur, f"g{i}", f"be{i}", f"mu{i}", f"var{i}"],
                                          [f"t{i}"], name=f"bn{i}"))
        cur = f"t{i}"
        seen.append((cur, shape))
    nodes.append(helper.make_node("Relu", [cur], ["y"], name="act"))
    outputs = [vinfo("y", [2, *shape])]
    extra = draw(st.booleans()) and len(seen) > 2
    if extra:  # a mid-region tensor that is also a graph output: a second exit
        name, sh = seen[len(seen) // 2]
        if name != "x":
            outputs.append(vinfo(name, [2, *sh]))
        else:
            extra = False
    model = make_model(nodes, [vinfo("x", [2, C, hw, hw])], outputs, inits)
    return model, maps, 1 + int(extra)


@settings(**SETTINGS)
@given(linear_regions())
def test_propagated_region_equals_original_with_one_add_per_exit(case):
    model, maps, exits = case
    out, res, _ = _run_pass(model)
    feed = {"x": np.random.default_rng(1).standard_normal((2, 4) + tuple(
        d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[2:])).astype(np.float32)}
    for a, b in zip(_ort(model, feed), _ort(out, feed)):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4)
    after = _map_adds(out)
    assert after <= exits
    if res.modified:  # it only rewrites when it lowers the count or the tensor the Adds run over
        assert after <= maps


def _chain(maps_at, widen=False, hw=8, C=4):
    """x -> [conv3x3 (+ map)] * len(maps_at) [-> 1x1 conv C -> 4C] -> Relu."""
    inits, nodes, cur = {}, [], "x"
    for i, has_map in enumerate(maps_at):
        inits[f"w{i}"], inits[f"b{i}"] = rnd(C, C, 3, 3, seed=i), rnd(C, seed=10 + i)
        nodes.append(helper.make_node("Conv", [cur, f"w{i}", f"b{i}"], [f"c{i}"], kernel_shape=[3, 3], pads=[1] * 4))
        cur = f"c{i}"
        if has_map:
            inits[f"m{i}"] = rnd(1, C, hw, hw, seed=20 + i)
            nodes.append(helper.make_node("Add", [cur, f"m{i}"], [f"a{i}"], name=f"map{i}"))
            cur = f"a{i}"
    co = C
    if widen:
        co = 4 * C
        inits["wh"] = rnd(co, C, 1, 1, seed=99)
        nodes.append(helper.make_node("Conv", [cur, "wh"], ["h"], kernel_shape=[1, 1]))
        cur = "h"
    nodes.append(helper.make_node("Relu", [cur], ["y"]))
    return make_model(nodes, [vinfo("x", [1, C, hw, hw])], [vinfo("y", [1, co, hw, hw])], inits)


def _same(a, b):
    feed = {"x": np.random.default_rng(3).standard_normal((1, 4, 8, 8)).astype(np.float32)}
    for u, v in zip(_ort(a, feed), _ort(b, feed)):
        np.testing.assert_allclose(v, u, rtol=1e-4, atol=1e-4)


def test_maps_sum_into_one_add_before_a_widening_1x1():
    m = _chain([True, True, True], widen=True)
    out, res, _ = _run_pass(m)
    assert res.modified and _map_adds(m) == 3 and _map_adds(out) == 1
    add = next(n for n in out.graph.node if n.op_type == "Add")
    reader = next(n for n in out.graph.node if add.output[0] in n.input)
    assert reader.op_type == "Conv"
    w = next(i for i in out.graph.initializer if i.name == reader.input[1])
    assert list(w.dims)[:2] == [16, 4]  # the Add runs on 4 channels, before the 1x1 widens to 16
    _same(m, out)


def test_single_map_already_in_place_is_left_alone():
    m = _chain([False, True], widen=True)
    out, res, _ = _run_pass(m)
    assert not res.modified and _map_adds(out) == 1


def test_map_through_global_pool_folds_into_the_classifier_bias():
    C, hw = 4, 6
    inits = {"w": rnd(C, C, 3, 3, seed=1), "b": rnd(C, seed=2), "m": rnd(1, C, hw, hw, seed=3),
             "fw": rnd(3, C, seed=4), "fb": rnd(3, seed=5)}
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], kernel_shape=[3, 3], pads=[1] * 4),
             helper.make_node("Add", ["c", "m"], ["a"]),
             helper.make_node("GlobalAveragePool", ["a"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"], axis=1),
             helper.make_node("Gemm", ["f", "fw", "fb"], ["y"], transB=1)]
    m = make_model(nodes, [vinfo("x", [1, C, hw, hw])], [vinfo("y", [1, 3])], inits)
    out, res, _ = _run_pass(m)
    assert res.modified and "Add" not in [n.op_type for n in out.graph.node]
    feed = {"x": np.random.default_rng(0).standard_normal((1, C, hw, hw)).astype(np.float32)}
    np.testing.assert_allclose(_ort(out, feed)[0], _ort(m, feed)[0], rtol=1e-4, atol=1e-5)


def test_fan_out_to_two_nonlinearities_keeps_one_add_each():
    C, hw = 4, 8
    inits = {"w": rnd(C, C, 3, 3, seed=1), "m": rnd(1, C, hw, hw, seed=3), "w2": rnd(C, C, 3, 3, seed=4),
             "m2": rnd(1, C, hw, hw, seed=5)}
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[3, 3], pads=[1] * 4),
             helper.make_node("Add", ["c", "m"], ["a"]),
             helper.make_node("Relu", ["a"], ["y1"]),
             helper.make_node("Conv", ["a", "w2"], ["c2"], kernel_shape=[3, 3], pads=[1] * 4),
             helper.make_node("Add", ["c2", "m2"], ["a2"]),
             helper.make_node("Sigmoid", ["a2"], ["y2"])]
    m = make_model(nodes, [vinfo("x", [1, C, hw, hw])], [vinfo("y1", [1, C, hw, hw]), vinfo("y2", [1, C, hw, hw])], inits)
    out, _, _ = _run_pass(m)
    assert _map_adds(out) <= 2
    _same(m, out)


def test_planner_charges_the_map_add_it_creates():
    """A merge that needs a map must pay for its Add: with an expensive Add the merge is refused."""
    from collapse_passes.onnx.driver import run_passes

    C, hw = 4, 8
    inits = {"w1": rnd(C, C, 1, 1, seed=1), "b1": rnd(C, seed=2), "w2": rnd(C, 1, 3, 3, seed=3)}
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["h"], kernel_shape=[1, 1], name="c1"),
             helper.make_node("Relu", ["h"], ["r"], name="act"),
             helper.make_node("Conv", ["r", "w2"], ["y"], kernel_shape=[3, 3], pads=[1] * 4, group=C, name="c2")]
    m = make_model(nodes, [vinfo("x", [1, C, hw, hw])], [vinfo("y", [1, C, hw, hw])], inits)
    # separate: 1024 + 2304 MACs, two ops; merged: 9216 MACs, one op, plus a map Add over 4x8x8 = 256 elements
    # at the Add's element price (depthwise MACs at 1 here, to keep the arithmetic plain)
    add = 256 * CostModel().element_price("Add")
    cheap, _, _ = run_passes(m, {"act"}, cost_model=CostModel(20_000, per_kind_overhead_macs={"Add": 0},
                                                                depthwise_factor=1.0))
    assert [n.op_type for n in cheap.graph.node].count("Conv") == 1 and _map_adds(cheap) == 1
    # one op overhead of 6000 saves 6000 - (9216 - 3328) = 112 MACs: less than the Add's pass over 256 elements
    dear, _, _ = run_passes(m, {"act"}, cost_model=CostModel(6_000, per_kind_overhead_macs={"Add": 0},
                                                               depthwise_factor=1.0))
    assert [n.op_type for n in dear.graph.node].count("Conv") == 2 and _map_adds(dear) == 0
    # without the map's pass it would merge (the same 112 saved, nothing charged)
    free, _, _ = run_passes(m, {"act"}, cost_model=CostModel(6_000, per_kind_overhead_macs={"Add": -add},
                                                               depthwise_factor=1.0))
    assert [n.op_type for n in free.graph.node].count("Conv") == 1
    _same(cheap, dear)


# ---------------------------------------------------------------------- torchvision layout, end to end

@pytest.mark.slow
@pytest.mark.parametrize("dynamo", [False, True])
def test_torchvision_layout_mobilenet_one_map_add(tmp_path, dynamo):
    import torch

    import collapse_passes as cp
    from conftest import export_quiet
    from models import build
    from models.tv_init import calibrate_bn

    torch.manual_seed(0)   # BN statistics from data: with fresh ones the logits barely depend on the input
    model = calibrate_bn(build("mobilenet_v2_tv", width_mult=0.25, num_classes=10), (8, 3, 32, 32))
    path = export_quiet(model, tmp_path / "tv.onnx", (1, 3, 32, 32), dynamo)
    keys = [k["key"] for k in cp.list_keys(path)]
    blocks = [k for k in keys if k.startswith("features.") and not k.startswith(("features.0.", "features.18."))]
    assert len(blocks) == 33  # 16 blocks with two ReLU6, block 1 with one
    res = cp.collapse(path, collapse=blocks, check=1)
    assert res.report["verification"]["against_requested"]["passed"]
    # one linear region from the stem's ReLU6 to the head's, so one exit; at 32x32 it is 1x1 spatially,
    # so the summed map is a per-channel constant and folds into a conv bias: no map Add at all
    assert _map_adds(res.model) == 0
    assert any("bias-map Add(s) carried to 1 region exit(s)" in n for n in res.report["notes"]), res.report["notes"]
    ops = [n.op_type for n in res.model.graph.node]
    assert ops.count("Clip") + ops.count("Relu") == 2  # stem and head ReLU6 kept
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    np.testing.assert_allclose(_ort(res.model, {"input": x})[0], _ort(res.requested, {"input": x})[0],
                               rtol=1e-3, atol=1e-4)
