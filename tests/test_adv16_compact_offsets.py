"""Bias-map offsets kept as RunMaps (H13): the distinct slices of a map that is constant away from its border.

PropagateBiasMaps carried a full float64 offset for every tensor of a collapsed region (a collapsed
MobileNetV2 at 224: up to 77 MB per map). The RunMap operations must give the dense computation's numbers
bit for bit: conv (any stride, dilation, padding, groups, 1-3 spatial axes), per-channel scale, sums of
maps with different runs, the global mean and the spatially-constant test."""
import tracemalloc

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

import collapse_passes.algebra.conv as ca
import collapse_passes.algebra.runmap as rm
from collapse_passes.algebra.conv import ConvParams
from collapse_passes.algebra.runmap import RunMap

SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                      HealthCheck.function_scoped_fixture])


def _bits_equal(a, b) -> bool:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return a.shape == b.shape and np.array_equal(a.view(np.uint64), b.view(np.uint64))


def _dense(m):
    return m.dense() if isinstance(m, RunMap) else np.asarray(m)


@st.composite
def _map(draw, rng, c, sizes, constant=False):
    """(1, c, *sizes) float64 map: a per-channel value with a random border on some sides of each axis,
    sometimes zeros (-0.0 and 0.0 both), a NaN or an inf; the interior run may be empty."""
    x = np.broadcast_to(rng.standard_normal((1, c) + (1,) * len(sizes)), (1, c) + tuple(sizes)).copy()
    if constant:
        return x
    for a, n in enumerate(sizes):
        for side in (0, 1):
            w = draw(st.integers(0, min(3, n)))
            if w:
                sl = [slice(None)] * x.ndim
                sl[a + 2] = slice(0, w) if side == 0 else slice(n - w, n)
                x[tuple(sl)] = rng.standard_normal(x[tuple(sl)].shape)
    special = draw(st.sampled_from(["none", "none", "zeros", "nan", "inf"]))
    if special == "zeros":
        x[0, 0] = 0.0
        x[(0, 0) + tuple(n // 2 for n in sizes)] = -0.0
    elif special in ("nan", "inf"):
        x[(0, c - 1) + tuple(draw(st.integers(0, n - 1)) for n in sizes)] = np.nan if special == "nan" else np.inf
    return x


@st.composite
def _conv(draw, rng, cin, nd, sizes):
    g = draw(st.sampled_from([g for g in (1, 2, 3, cin) if cin % g == 0]))
    cout = g * draw(st.integers(1, 2))
    ks = [draw(st.integers(1, 4)) for _ in range(nd)]
    ds = [draw(st.integers(1, 2)) for _ in range(nd)]
    ss = [draw(st.integers(1, 3)) for _ in range(nd)]
    pads = [draw(st.integers(0, 3)) for _ in range(2 * nd)]
    for a, n in enumerate(sizes):   # the output must have at least one position
        if n + pads[a] + pads[a + nd] < ds[a] * (ks[a] - 1) + 1:
            pads[a + nd] += ds[a] * (ks[a] - 1) + 1 - n - pads[a] - pads[a + nd]
    w = rng.standard_normal((cout, cin // g) + tuple(ks))
    return ConvParams(weight=w, bias=None, strides=tuple(ss), dilations=tuple(ds), pads=tuple(pads), group=g)


@st.composite
def _program(draw):
    nd = draw(st.sampled_from([1, 2, 2, 3]))
    top = {1: 90, 2: 40, 3: 14}[nd]
    sizes = tuple(draw(st.integers(1, top)) for _ in range(nd))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    c = draw(st.integers(1, 4))
    x = draw(_map(rng, c, sizes, constant=draw(st.booleans()) and draw(st.booleans())))
    steps = []
    shape = (c,) + sizes
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["conv", "conv", "scale", "add", "sub"]))
        if kind == "conv":
            p = draw(_conv(rng, shape[0], nd, shape[1:]))
            steps.append(("conv", p))
            shape = (p.out_channels,) + p.output_spatial(shape[1:])
        elif kind == "scale":
            steps.append(("scale", rng.standard_normal((shape[0],) + (1,) * nd)))
        else:
            steps.append((kind, draw(_map(rng, shape[0], shape[1:]))))
    return x, steps


def _apply(m, step):
    kind, arg = step
    if kind == "conv":
        return ca.map_through_conv(m, arg)
    if kind == "scale":
        return ca.map_through_scale(m, arg)
    other = RunMap.from_dense(arg) if isinstance(m, RunMap) else arg
    return m + other if kind == "add" else (1.0 * m) - other   # the pass's residual: sign * offset sums


@pytest.fixture
def cut_everything(monkeypatch):
    """conv_nd cuts runs on maps of any size (not only from 1024 positions), and RunMap reductions work
    on one channel at a time: the small maps hypothesis draws take every path the 224 x 224 ones take."""
    monkeypatch.setattr(ca, "CUT_RUNS_MIN_SIZE", 1)
    monkeypatch.setattr(ca, "CHANNEL_CHUNK_BYTES", 1)
    monkeypatch.setattr(rm, "_CHUNK_BYTES", 1)


@settings(max_examples=300, **SETTINGS)
@given(_program())
def test_runmap_ops_equal_dense_ops_bit_for_bit(cut_everything, prog):
    x, steps = prog
    dense, compact = x, RunMap.from_dense(x)
    assert _bits_equal(compact.dense(), x)
    with np.errstate(all="ignore"):
        for step in steps:
            dense, compact = _apply(dense, step), _apply(compact, step)
            assert _bits_equal(_dense(compact), dense), step[0]
        assert isinstance(compact, RunMap)
        assert bool(compact.any()) == bool(np.any(dense))
        axes = range(2, dense.ndim)
        assert _bits_equal(ca.map_through_mean(compact, axes), ca.map_through_mean(dense, axes))
        a, b = ca.spatially_constant(compact), ca.spatially_constant(dense)
        assert (a is None) == (b is None) and (a is None or _bits_equal(a, b))
        assert _bits_equal(compact.astype(np.float32), dense.astype(np.float32))


def test_runmap_core_of_a_bias_map_at_224_is_small():
    """A depthwise 3x3 bias map at 224 x 224 through two more padded convs: the RunMap's core stays a few
    slices per axis (the dense float64 map is 224 x 224 per channel)."""
    rng = np.random.default_rng(0)
    dw = ConvParams(weight=rng.standard_normal((8, 1, 3, 3)), bias=None, pads=(1, 1, 1, 1), group=8)
    pw = ConvParams(weight=rng.standard_normal((16, 8, 1, 1)), bias=None)
    s2 = ConvParams(weight=rng.standard_normal((16, 1, 3, 3)), bias=None, strides=(2, 2), pads=(1, 1, 1, 1), group=16)
    m = ca.constant_through_conv(rng.standard_normal(8), dw, (224, 224))[None]
    dense, compact = m, RunMap.from_dense(m)
    for p in (pw, dw.replace(weight=rng.standard_normal((16, 1, 3, 3)), group=16), s2):
        dense, compact = ca.map_through_conv(dense, p), ca.map_through_conv(compact, p)
        assert _bits_equal(compact.dense(), dense)
        assert max(compact.core.shape[2:]) <= 16
    assert compact.shape == (1, 16, 112, 112)


def _collapsed_region(C=24, hw=224):
    """x -> Add(map) -> 1x1 -> Add(map) -> depthwise 3x3 -> 1x1 -> Relu: one linear region at 224 whose two
    map Adds become one at its exit."""
    rng = np.random.default_rng(3)
    dw = ConvParams(weight=rng.standard_normal((C, 1, 3, 3)), bias=None, pads=(1, 1, 1, 1), group=C)

    def bias_map(name):
        return numpy_helper.from_array(
            ca.constant_through_conv(rng.standard_normal(C), dw, (hw, hw))[None].astype(np.float32), name)

    inits = [bias_map("M1"), bias_map("M2"),
             numpy_helper.from_array(rng.standard_normal((C, C, 1, 1)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.standard_normal((C, 1, 3, 3)).astype(np.float32), "w2"),
             numpy_helper.from_array(rng.standard_normal((C, C, 1, 1)).astype(np.float32), "w3")]
    nodes = [helper.make_node("Add", ["x", "M1"], ["a"]),
             helper.make_node("Conv", ["a", "w1"], ["b"]),
             helper.make_node("Add", ["b", "M2"], ["b2"]),
             helper.make_node("Conv", ["b2", "w2"], ["c"], pads=[1, 1, 1, 1], group=C),
             helper.make_node("Conv", ["c", "w3"], ["d"]),
             helper.make_node("Relu", ["d"], ["y"])]
    g = helper.make_graph(nodes, "region", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, C, hw, hw])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, C, hw, hw])], inits)
    return onnx.shape_inference.infer_shapes(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))


def test_bias_map_pass_does_not_hold_a_float64_map_per_tensor():
    """The pass over a 5-op region at 224 x 224 allocates less than three float64 maps at its peak (15 MiB:
    the float32 map it adds at the exit, the graph's maps read; it held a float64 map per tensor of the
    region plus the convs' copies: 64 MiB); its result is the same computation."""
    import onnxruntime as ort

    from collapse_passes.onnx.context import OnnxContext
    from collapse_passes.onnx.graph import to_graph, to_model
    from collapse_passes.onnx.passes.propagate_bias_maps import PropagateBiasMaps, count_bias_map_adds

    C, hw = 24, 224
    model = _collapsed_region(C, hw)
    ctx = OnnxContext(graph=to_graph(model))
    tracemalloc.start()
    try:
        res = PropagateBiasMaps()(ctx)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert res.modified
    out = to_model(ctx.graph, model)
    assert count_bias_map_adds(to_graph(onnx.shape_inference.infer_shapes(out))) == 1
    assert peak < 3 * C * hw * hw * 8, f"peak {peak / 2**20:.1f} MiB"
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    x = {"x": np.random.default_rng(0).standard_normal((1, C, hw, hw)).astype(np.float32)}
    a, b = (ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, x)[0]
            for m in (model, out))
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4 * float(np.abs(a).max()))
