"""HoistGlobalPool (onnx/passes/hoist_global_pool.py): a global average pool after a pointwise conv goes before it
(mean(W x + b) = W mean(x) + b), the conv then runs on one position and, flattened, is a Gemm the dense chain
planner merges with the classifier. Before it, a collapsed MobileNetV2 kept its 1x1 320->1280 conv at 7x7 (20 MMACs)
in front of GlobalAveragePool -> Flatten -> Gemm. Every small graph here is checked against onnxruntime on the
original; the structural asserts fail without the pass."""
from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from collapse_passes.cli import main
from collapse_passes.onnx.driver import run_passes


def _rnd(*shape, seed=0, scale=0.5):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


def _model(nodes, x_shape, outputs, inits, opset=17, dtype=TensorProto.FLOAT):
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", dtype, x_shape)],
                          [helper.make_tensor_value_info(n, dtype, None) for n in outputs],
                          [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    m = onnx.shape_inference.infer_shapes(m)   # the outputs' shapes (the checker wants one)
    del m.graph.value_info[:]
    onnx.checker.check_model(m)
    return m


def _pool(kind, src, dst, nd, keepdims=1, opset=17, axes=None):
    """(nodes, inits) of a global average pool of a rank nd+2 tensor spelled `kind`."""
    axes = list(range(2, nd + 2)) if axes is None else axes
    if kind == "gap":
        return [helper.make_node("GlobalAveragePool", [src], [dst], name="pool")], {}
    if opset >= 18:
        return ([helper.make_node("ReduceMean", [src, "axes"], [dst], name="pool", keepdims=keepdims)],
                {"axes": np.array(axes, np.int64)})
    return [helper.make_node("ReduceMean", [src], [dst], name="pool", axes=axes, keepdims=keepdims)], {}


def _head(pool="gap", keepdims=1, flatten="flatten", group=1, chain=1, nd=2, stride=1, pad=0, opset=17,
          batch=2, size=5, extra_reader=False, conv_out_is_output=False, axes=None, cin=8, cout=16, relu=False):
    """x -> 3x3 conv (not pointwise: where a hoist stops) [-> Relu] -> `chain` 1x1 convs -> pool -> flatten -> Gemm."""
    k3 = [3] * nd
    nodes = [helper.make_node("Conv", ["x", "w0", "b0"], ["t0c" if relu else "t0"], name="conv3", pads=[1] * (2 * nd))]
    if relu:   # no conv chain into the 1x1 convs
        nodes.append(helper.make_node("Relu", ["t0c"], ["t0"], name="conv3_relu"))
    inits = {"w0": _rnd(cin, cin, *k3, seed=1), "b0": _rnd(cin, seed=2)}
    c = cin
    for i in range(chain):
        o = cout if i == chain - 1 else c + 4
        g = group if i == chain - 1 else 1
        nodes.append(helper.make_node("Conv", [f"t{i}", f"w{i + 1}", f"b{i + 1}"], [f"t{i + 1}"], name=f"pw{i + 1}",
                                      strides=[stride] * nd, pads=[pad] * (2 * nd), group=g))
        inits[f"w{i + 1}"] = _rnd(o, c // g, *([1] * nd), seed=10 + i)
        inits[f"b{i + 1}"] = _rnd(o, seed=20 + i)
        c = o
    last = f"t{chain}"
    outputs = ["y"]
    if conv_out_is_output:
        outputs.append(last)
    pn, pi = _pool(pool, last, "p", nd, keepdims, opset, axes)
    nodes += pn
    inits.update(pi)
    if flatten == "flatten":
        nodes.append(helper.make_node("Flatten", ["p"], ["f"], name="flat", axis=1))
    elif flatten == "reshape":
        nodes.append(helper.make_node("Reshape", ["p", "shape"], ["f"], name="flat"))
        inits["shape"] = np.array([-1, c], np.int64)
    elif flatten == "none":   # keepdims=0 is flat already; else the pooled map goes on as a map
        nodes.append(helper.make_node("Identity", ["p"], ["f"], name="flat"))
    if flatten == "none" and keepdims:
        nodes.append(helper.make_node("Conv", ["f", "wc", "bc"], ["y"], name="cls"))
        inits["wc"], inits["bc"] = _rnd(5, c, *([1] * nd), seed=30), _rnd(5, seed=31)
    else:
        nodes.append(helper.make_node("Gemm", ["f", "wc", "bc"], ["y"], name="cls", transB=1))
        inits["wc"], inits["bc"] = _rnd(5, c, seed=30), _rnd(5, seed=31)
    if extra_reader:   # after the pool: its first reader is the pool
        nodes.append(helper.make_node("Relu", [last], ["side"], name="side"))
        outputs.append("side")
    return _model(nodes, [batch, cin] + [size] * nd, outputs, inits, opset)


def _run(model, x):
    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(None, {"x": x})


def _collapse(model, x_shape, **kw):
    out, ctx, _ = run_passes(model, set(), **kw)
    x = _rnd(*x_shape, seed=99, scale=1.0)
    for a, b in zip(_run(model, x), _run(out, x)):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)
    return out, ctx


def _ops(model):
    return [n.op_type for n in model.graph.node]


def _hoists(ctx) -> int:
    return sum(r["kind"] == "pool-hoist" for r in ctx.merges)


def _pool_reads_graph_conv3(model):
    """The pool now reads the 3x3 conv's output (every 1x1 conv hoisted past)."""
    by_out = {o: n for n in model.graph.node for o in n.output}
    pool = next(n for n in model.graph.node if n.op_type in ("GlobalAveragePool", "ReduceMean"))
    return by_out[pool.input[0]].name in ("conv3", "conv3_relu")


@pytest.mark.parametrize("pool,opset,keepdims,axes", [
    ("gap", 17, 1, None), ("rm", 13, 1, [2, 3]), ("rm", 13, 0, [-1, -2]), ("rm", 18, 1, [-2, -1]),
    ("rm", 18, 0, [3, 2]), ("rm", 18, 1, [2, -1])])
@pytest.mark.parametrize("flatten", ["flatten", "reshape"])
def test_pool_spellings_hoisted_to_gemm(pool, opset, keepdims, axes, flatten):
    if not keepdims:   # (N, C) already: the Gemm reads it
        flatten = "none"
    m = _head(pool=pool, opset=opset, keepdims=keepdims, axes=axes, flatten=flatten)
    out, ctx = _collapse(m, (2, 8, 5, 5))
    assert _pool_reads_graph_conv3(out), _ops(out)
    assert _ops(out).count("Conv") == 1 and "Reshape" not in _ops(out), _ops(out)
    # 1x1 8->16 then the classifier 16->5: merged into one Gemm 8->5
    gemms = [n for n in out.graph.node if n.op_type == "Gemm"]
    assert len(gemms) == 1 and any(r["kind"] == "pool-hoist" for r in ctx.merges), ctx.notes
    w = {t.name: t for t in out.graph.initializer}[gemms[0].input[1]]
    assert list(w.dims) == [5, 8]


@pytest.mark.parametrize("group", [2, 8])
def test_grouped_pointwise_densified(group):
    m = _head(group=group, cout=16, relu=True)
    out, ctx = _collapse(m, (2, 8, 5, 5))
    assert _pool_reads_graph_conv3(out) and _ops(out).count("Conv") == 1 and _hoists(ctx) == 1, _ops(out)


def test_grouped_conv_on_few_positions_stays_a_conv():
    """A depthwise 1x1 (16 groups) on 2x2: densified it would cost 16 x its MACs per position, more than the 4
    positions it saves; it runs as the same grouped conv on the 1x1 map instead."""
    m = _head(group=16, cin=16, cout=16, size=2, relu=True)
    out, ctx = _collapse(m, (2, 16, 2, 2))
    assert _pool_reads_graph_conv3(out), _ops(out)
    pw = next(n for n in out.graph.node if n.name == "pw1")
    assert pw.op_type == "Conv" and helper.get_attribute_value(next(a for a in pw.attribute if a.name == "group")) == 16


def test_chain_of_two_pointwise_convs_hoists_to_the_first_non_pointwise():
    m = _head(chain=2)
    out, ctx = _collapse(m, (2, 8, 5, 5))
    assert _pool_reads_graph_conv3(out) and _ops(out).count("Conv") == 1, _ops(out)
    assert sum(r["kind"] == "pool-hoist" for r in ctx.merges) == 2


def test_pooled_map_not_flattened_keeps_the_conv_on_one_position():
    m = _head(flatten="none", keepdims=1, relu=True)
    out, ctx = _collapse(m, (2, 8, 5, 5))
    assert _pool_reads_graph_conv3(out) and _hoists(ctx) == 1, _ops(out)
    assert _ops(out).count("Conv") >= 2   # the 1x1 conv (and the conv classifier) on the 1x1 map


@pytest.mark.parametrize("nd", [1, 3])
def test_1d_3d_convs(nd):
    m = _head(nd=nd, pool="rm", opset=18, keepdims=0, flatten="none", size=4, relu=True)
    out, ctx = _collapse(m, (2, 8) + (4,) * nd)
    assert _pool_reads_graph_conv3(out) and _hoists(ctx) == 1, _ops(out)
    m = _head(nd=nd, size=4, relu=True)
    out, ctx = _collapse(m, (2, 8) + (4,) * nd)
    assert _pool_reads_graph_conv3(out) and _hoists(ctx) == 1, _ops(out)


def test_dynamic_batch():
    m = _head(batch="N", flatten="reshape", relu=True)
    out, ctx = _collapse(m, (3, 8, 5, 5))
    assert _pool_reads_graph_conv3(out) and _hoists(ctx) == 1 and "Reshape" not in _ops(out), _ops(out)
    assert out.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"


@pytest.mark.parametrize("case", ["stride2", "padded", "two_readers", "graph_output", "partial_axes"])
def test_not_hoisted(case):
    kw = {"stride2": dict(stride=2), "padded": dict(pad=1), "two_readers": dict(extra_reader=True),
          "graph_output": dict(conv_out_is_output=True),
          "partial_axes": dict(pool="rm", opset=13, axes=[3], flatten="none", keepdims=1)}[case]
    m = _head(relu=True, **kw)   # the Relu keeps the 1x1 conv from merging into the 3x3
    out, ctx = _collapse(m, (2, 8, 5, 5))
    assert not _pool_reads_graph_conv3(out), _ops(out)
    assert not any(r["kind"] == "pool-hoist" for r in ctx.merges)


def test_not_hoisted_where_merging_pays_more():
    """A 3x3 3->64 expand then a 1x1 64->2 project merge into one 3x3 3->2 conv; hoisting the project would leave
    the wide expand at every position. The cost model keeps the pool where it is and says why."""
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], name="expand", pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["a", "w2"], ["b"], name="project"),
             helper.make_node("GlobalAveragePool", ["b"], ["p"], name="pool"),
             helper.make_node("Flatten", ["p"], ["y"], name="flat")]
    m = _model(nodes, [1, 3, 16, 16], ["y"], {"w1": _rnd(64, 3, 3, 3), "w2": _rnd(2, 64, 1, 1, seed=3)})
    out, ctx = _collapse(m, (1, 3, 16, 16))
    assert _ops(out) == ["Conv", "GlobalAveragePool", "Flatten"], _ops(out)
    assert any("pooling first would cost more" in n for n in ctx.notes), ctx.notes


def test_bias_map_between_conv_and_pool_is_carried_then_hoisted():
    """conv1x1 -> Add(per-position map) -> GAP: bias_maps carries the map through the pool into the Gemm's bias,
    and the next round of the fixed-point loop hoists the pool over the conv."""
    nodes = [helper.make_node("Conv", ["x", "w0"], ["t0c"], name="conv3", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["t0c"], ["t0"], name="conv3_relu"),
             helper.make_node("Conv", ["t0", "w1", "b1"], ["c"], name="pw1"),
             helper.make_node("Add", ["c", "map"], ["t1"], name="map_add"),
             helper.make_node("GlobalAveragePool", ["t1"], ["p"], name="pool"),
             helper.make_node("Flatten", ["p"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "wc"], ["y"], name="cls", transB=1)]
    m = _model(nodes, [2, 8, 5, 5], ["y"], {"w0": _rnd(8, 8, 3, 3), "w1": _rnd(16, 8, 1, 1, seed=1),
                                            "b1": _rnd(16, seed=2), "map": _rnd(1, 16, 5, 5, seed=3),
                                            "wc": _rnd(5, 16, seed=4)})
    out, ctx = _collapse(m, (2, 8, 5, 5))
    assert _pool_reads_graph_conv3(out) and "Add" not in _ops(out) and _hoists(ctx) == 1, _ops(out)


def test_float16_model():
    m = _head(relu=True)
    for t in m.graph.initializer:
        if t.data_type == TensorProto.FLOAT:
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float16), t.name))
    for vi in list(m.graph.input) + list(m.graph.output):
        vi.type.tensor_type.elem_type = TensorProto.FLOAT16
    out, ctx, _ = run_passes(m, set())
    assert _pool_reads_graph_conv3(out) and _hoists(ctx) == 1, _ops(out)
    assert all(t.data_type == TensorProto.FLOAT16 for t in out.graph.initializer if t.data_type != TensorProto.INT64)
    x = _rnd(2, 8, 5, 5, seed=5).astype(np.float16)
    np.testing.assert_allclose(_run(out, x)[0].astype(np.float32), _run(m, x)[0].astype(np.float32), rtol=2e-2, atol=2e-2)


def test_no_merge_does_not_hoist():
    m = _head(relu=True)
    out, ctx = _collapse(m, (2, 8, 5, 5), merge=False)
    assert not _pool_reads_graph_conv3(out) and not _hoists(ctx)


def test_fallback_refuses_the_hoist_by_its_join():
    """A hoist is a merge record with a join key (core/merge_fallback): a rerun that refuses it leaves the pool."""
    m = _head()
    _, ctx = _collapse(m, (2, 8, 5, 5))
    rec = next(r for r in ctx.merges if r["kind"] == "pool-hoist")
    assert rec["joins"] == ["pw1>pool"] and rec["macs_before"] == 25 * rec["macs_after"]
    out, ctx2 = _collapse(m, (2, 8, 5, 5), merge_allowed=frozenset())
    assert not _pool_reads_graph_conv3(out) and not ctx2.merges


# ------------------------------------------------------------------------------------------- end to end

def _mobilenet_like(tmp_path, dynamo):
    torch = pytest.importorskip("torch")
    from torch import nn

    from conftest import export_quiet
    from models.tv_init import calibrate_bn

    class Net(nn.Module):   # MobileNetV2's tail: last block's project conv, 1x1 head conv (+BN, ReLU6), pool, Linear
        def __init__(self):
            super().__init__()
            self.block = nn.Sequential(nn.Conv2d(3, 24, 3, padding=1, bias=False), nn.BatchNorm2d(24), nn.ReLU6())
            self.head = nn.Sequential(nn.Conv2d(24, 128, 1, bias=False), nn.BatchNorm2d(128), nn.ReLU6())
            self.classifier = nn.Linear(128, 10)

        def forward(self, x):
            x = self.head(self.block(x))
            return self.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))

    torch.manual_seed(0)
    net = calibrate_bn(Net(), (4, 3, 16, 16))
    return export_quiet(net, tmp_path / f"m_{dynamo}.onnx", (1, 3, 16, 16), dynamo)


@pytest.mark.parametrize("dynamo", [False, True])
def test_cli_mobilenet_like_head_conv_gone(tmp_path, dynamo):
    src = _mobilenet_like(tmp_path, dynamo)
    out, rep = tmp_path / "out.onnx", tmp_path / "rep.json"
    assert main([src, "-o", str(out), "--collapse", "head.2", "--report", str(rep), "-q"]) == 0
    m = onnx.load(str(out))
    inits = {t.name: list(t.dims) for t in m.graph.initializer}
    convs = [inits[n.input[1]] for n in m.graph.node if n.op_type == "Conv"]
    assert convs == [[24, 3, 3, 3]], convs                # the 128-channel 1x1 conv is gone
    gemms = [inits[n.input[1]] for n in m.graph.node if n.op_type == "Gemm"]
    assert gemms == [[10, 24]], gemms                     # merged with the classifier: 24 -> 10
    report = json.loads(rep.read_text())
    assert report["verification"]["against_requested"]["passed"]
    assert any(g["kind"] == "pool-hoist" for g in report["merges"])
    assert report["after"]["macs"] < report["before"]["macs"] - 128 * 24 * 255


def test_dynamic_spatial_size_hoisted_unpriced():
    """H and W dynamic: nothing to price (the hoist saves the conv at every position but one), and no crash."""
    m = _head(relu=True)
    for d, name in zip(m.graph.input[0].type.tensor_type.shape.dim[2:], ("H", "W")):
        d.ClearField("dim_value")
        d.dim_param = name
    out, ctx, _ = run_passes(m, set())
    assert _pool_reads_graph_conv3(out) and _hoists(ctx) == 1, _ops(out)
    for side in (3, 7):
        x = _rnd(2, 8, side, side, seed=side, scale=1.0)
        np.testing.assert_allclose(_run(out, x)[0], _run(m, x)[0], rtol=1e-4, atol=1e-5)


def test_reshape_by_a_run_time_batch_is_a_flatten():
    """A Reshape whose target is computed at run time from a dynamic batch (Shape -> Slice -> Concat(n, -1): not
    folded) has no inferred (N, C) shape, but its target is (batch, -1): a flatten, and the Shape reads the batch
    only (no second reader of the pooled map); the conv becomes a Gemm (before 2026-11-29 it stayed on the 1x1 map,
    where the torch front end made it a Linear; tests/test_adv20_break_hoist.py)."""
    m = _head(relu=True, flatten="none", keepdims=1, batch="N")
    g = m.graph
    g.node.remove(g.node[-1])
    for name in ("wc", "bc"):
        g.initializer.remove(next(t for t in g.initializer if t.name == name))
    g.initializer.append(numpy_helper.from_array(_rnd(5, seed=31), "bc"))
    g.node.extend([helper.make_node("Shape", ["f"], ["fs"], name="shp"),
                   helper.make_node("Slice", ["fs", "s0", "s1"], ["n"], name="sl"),
                   helper.make_node("Concat", ["n", "m1"], ["tgt"], name="cat", axis=0),
                   helper.make_node("Reshape", ["f", "tgt"], ["f2"], name="flat2"),
                   helper.make_node("Gemm", ["f2", "wg", "bc"], ["y"], name="cls", transB=1)])
    g.initializer.extend([numpy_helper.from_array(np.array(v, np.int64), k) for k, v in
                          (("s0", [0]), ("s1", [1]), ("m1", [-1]))])
    g.initializer.append(numpy_helper.from_array(_rnd(5, 16, seed=30), "wg"))
    del g.output[:]
    g.output.append(helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5]))
    out, ctx = _collapse(m, (2, 8, 5, 5))
    assert _pool_reads_graph_conv3(out) and _hoists(ctx) == 1, _ops(out)
    assert "Reshape" not in _ops(out) and _ops(out).count("Conv") == 1, _ops(out)
