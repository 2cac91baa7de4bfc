"""Run-time work cut from `python -m collapse_passes` without changing what it writes (H39, issue 10;
docs/pass_runtime.md 2026-11-29 13:34).

- compose_conv_chain carries a merge's bias map as a RunMap (its distinct slices) between the steps and makes it
  full once at the end: a CIFAR MobileNetV2 at 224 summed, cast, scanned and expanded a 192 x 224 x 224 float64
  map at every step;
- conv_nd cuts runs of equal slices from 256 positions on (the 28 x 28 maps were conved whole);
- the passes run numpy's OpenBLAS on one thread in our own process (core/blas).
Every number must be the dense computation's bit for bit: the written model is byte-identical."""
import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import collapse_passes.algebra.conv as ca
from collapse_passes.algebra.conv import ConvParams, MergedConv
from collapse_passes.algebra.runmap import RunMap

SETTINGS = dict(deadline=None, max_examples=150,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _bytes(a):
    return None if a is None else (np.asarray(a).dtype.str, np.shape(a), np.ascontiguousarray(a).tobytes())


def _dense_chain(convs, spatial):
    """compose_conv_chain as it was: every step's bias map a full array (extend_chain's dense branch)."""
    acc = MergedConv(convs[0], None, True, "single conv")
    for c in convs[1:]:
        acc = ca.extend_chain(acc, c, spatial)
    return acc


def _bias(rng, n, kind, dtype):
    if kind == "none":
        return None
    b = rng.standard_normal(n).astype(dtype)
    if kind == "zeros":   # -0.0 and 0.0 in one bias
        b[::2] = 0.0
        b[1::2] = -0.0
    elif kind == "inf":
        b[0] = np.inf
    return b


@st.composite
def _chain(draw):
    nd = draw(st.sampled_from([1, 2, 2, 3]))
    top = {1: 70, 2: 30, 3: 9}[nd]
    spatial = tuple(draw(st.integers(1, top)) for _ in range(nd))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    dtype = draw(st.sampled_from([np.float32, np.float32, np.float64]))
    cin = draw(st.integers(1, 4))
    convs, sizes = [], spatial
    for _ in range(draw(st.integers(2, 4))):
        g = draw(st.sampled_from([g for g in (1, 2, cin) if cin % g == 0]))
        cout = g * draw(st.integers(1, 3))
        ks = [draw(st.integers(1, 5)) for _ in range(nd)]
        ds = [draw(st.integers(1, 2)) for _ in range(nd)]
        ss = [draw(st.integers(1, 2)) for _ in range(nd)]
        pads = [draw(st.integers(0, 3)) for _ in range(2 * nd)]
        for a, n in enumerate(sizes):   # at least one output position
            need = ds[a] * (ks[a] - 1) + 1 - n - pads[a] - pads[a + nd]
            if need > 0:
                pads[a + nd] += need
        w = rng.standard_normal((cout, cin // g) + tuple(ks)).astype(dtype)
        if draw(st.booleans()):
            w[0] = 0.0   # a dead filter: sums of exact zeros (sign of zero)
        p = ConvParams(weight=w, bias=_bias(rng, cout, draw(st.sampled_from(["rand", "rand", "none", "zeros", "inf"])),
                                            dtype),
                       strides=tuple(ss), dilations=tuple(ds), pads=tuple(pads), group=g)
        convs.append(p)
        sizes = p.output_spatial(sizes)
        cin = cout
    return convs, spatial


@settings(**SETTINGS)
@given(_chain())
def test_compact_chain_is_the_dense_chain_bit_for_bit(case):
    convs, spatial = case
    try:
        ref = _dense_chain(convs, spatial)
    except ca.AlgebraError:
        return
    got = ca.compose_conv_chain(convs, spatial)
    assert isinstance(got.bias_map, (np.ndarray, type(None)))   # callers get a full array, as before
    assert (got.exact, got.reason, got.shape_only) == (ref.exact, ref.reason, ref.shape_only)
    for f in ("weight", "bias", "strides", "pads", "dilations", "group"):
        a, b = getattr(got.params, f), getattr(ref.params, f)
        assert (_bytes(a) == _bytes(b)) if isinstance(a, np.ndarray) or a is None else a == b, f
    assert _bytes(got.bias_map) == _bytes(ref.bias_map)


@settings(**SETTINGS)
@given(_chain())
def test_compact_constant_through_conv_is_the_dense_map(case):
    convs, spatial = case
    for c in convs[:-1]:   # the last conv's input size
        spatial = c.output_spatial(spatial)
    p, rng = convs[-1], np.random.default_rng(0)
    values = rng.standard_normal(p.in_channels)
    values[::3] = 0.0
    for v in (values, np.where(np.arange(len(values)) == 0, np.inf, values)):   # the non-finite path too
        dense = ca.constant_through_conv(v, p, spatial)
        compact = ca.constant_through_conv(v, p, spatial, compact=True)
        assert isinstance(compact, RunMap)
        assert _bytes(compact.dense()[0]) == _bytes(dense)


@pytest.mark.parametrize("size,k,stride,pad,dw", [(224, 3, 1, 1, True), (224, 3, 2, 1, True), (112, 5, 2, 2, True),
                                                   (57, 7, 1, 3, False), (28, 3, 1, 0, False), (14, 1, 1, 0, False),
                                                   (7, 5, 1, 2, True), (3, 3, 2, 1, False)])
def test_compact_constant_through_conv_at_network_sizes(size, k, stride, pad, dw):
    """The sizes a MobileNet / EfficientNet merge meets (a 2-D map, hundreds of channels, asymmetric pads):
    the compact map is the dense one bit for bit."""
    rng = np.random.default_rng(size + k)
    O = 144 if dw else 96
    p = ConvParams(weight=rng.standard_normal((O, 1 if dw else 24, k, k)).astype(np.float32),
                   bias=rng.standard_normal(O).astype(np.float32), strides=(stride, stride),
                   pads=(pad, pad, pad + 1, pad), dilations=(1, 1), group=O if dw else 1)
    v = rng.standard_normal(p.in_channels)
    dense = ca.constant_through_conv(v, p, (size, size + 1))
    compact = ca.constant_through_conv(v, p, (size, size + 1), compact=True)
    assert compact.core.size < dense.size or size <= 3
    assert _bytes(compact.dense()[0]) == _bytes(dense)


def test_cast_keeps_a_runmap_compact():
    core = np.array([[[[1.0, 2.5], [np.inf, -0.0]]]])
    m = RunMap(core, [np.array([0, 1, 1, 1]), np.array([0, 0, 1])])
    c = ca._cast(m, np.float32)
    assert isinstance(c, RunMap) and c.core.dtype == np.float32 and c.core.shape == core.shape
    assert _bytes(c.dense()) == _bytes(m.dense().astype(np.float32))
    a = np.arange(3.0)
    assert _bytes(ca._cast(a, np.float32)) == _bytes(a.astype(np.float32))


def test_mobilenet_block_merge_holds_no_full_float64_map():
    """expand 1x1 -> depthwise 3x3 (padded) -> project 1x1 at 224 x 224, biases on: the bias map through the
    chain was a full float64 (144, 224, 224) array (58 MB), with float32 and float64 copies of it at the next
    step (93 MB peak); only the final float32 (24, 224, 224) map (4.8 MB) needs to be full."""
    rng = np.random.default_rng(1)
    f32 = lambda *s: rng.standard_normal(s).astype(np.float32)   # noqa: E731
    conv = lambda w, b, pad, g: ConvParams(weight=w, bias=b, strides=(1, 1), pads=(pad,) * 4,   # noqa: E731
                                           dilations=(1, 1), group=g)
    convs = [conv(f32(144, 24, 1, 1), f32(144), 0, 1), conv(f32(144, 1, 3, 3), f32(144), 1, 144),
             conv(f32(24, 144, 1, 1), f32(24), 0, 1)]
    tracemalloc.start()
    try:
        m = ca.compose_conv_chain(convs, (224, 224))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert m.exact and m.bias_map is not None and m.bias_map.shape == (24, 224, 224)
    assert peak < 16 << 20, f"peak {peak / 2 ** 20:.1f} MiB while composing"
    assert _bytes(m.bias_map) == _bytes(_dense_chain(convs, (224, 224)).bias_map)


# ------------------------------------------------------------------ OpenBLAS on one thread in the passes (core/blas)

from collapse_passes.core import blas, runtime  # noqa: E402


@pytest.fixture
def two_blas_threads():
    """OpenBLAS set to 2 threads for the test (whatever OPENBLAS_NUM_THREADS says), put back after."""
    c = blas._control()
    if c is None:
        pytest.skip("numpy has no OpenBLAS here")
    before = c[1]()
    c[0](2)
    yield c
    c[0](before)


def test_single_threaded_blas_only_in_our_own_process_and_put_back(two_blas_threads, monkeypatch):
    monkeypatch.setattr(runtime, "OWN_PROCESS", False)
    with blas.single_threaded_blas():
        assert blas.blas_threads() == 2   # a library caller's threads are its own
    monkeypatch.setattr(runtime, "OWN_PROCESS", True)
    with pytest.raises(KeyError):
        with blas.single_threaded_blas():
            assert blas.blas_threads() == 1
            raise KeyError("x")
    assert blas.blas_threads() == 2


def test_passes_run_on_one_blas_thread_with_the_same_result(exported, two_blas_threads, monkeypatch):
    """run_passes under `python -m collapse_passes` runs its passes on one OpenBLAS thread (the worker threads'
    spinning tripled the passes' time on a loaded 2-core machine) and writes the same model bytes."""
    import onnx

    import collapse_passes as cp
    from collapse_passes.onnx import driver
    from collapse_passes.pipeline import PassManager

    path = exported("mobilenet_v2")
    model = onnx.load(str(path))
    chosen = {n.name for n in model.graph.node if n.op_type in ("Clip", "Relu")}
    assert chosen and cp.list_keys(str(path))
    seen = []
    run = PassManager.run

    def spy(self, ctx):
        seen.append(blas.blas_threads())
        return run(self, ctx)

    monkeypatch.setattr(PassManager, "run", spy)
    out = {}
    for own in (False, True):
        monkeypatch.setattr(runtime, "OWN_PROCESS", own)
        out[own] = driver.run_passes(model, chosen)[0].SerializeToString()
    assert seen == [2, 1]
    assert out[True] == out[False]
    assert blas.blas_threads() == 2


@pytest.mark.parametrize("k,stride,pad,dw", [(1, 1, 0, False), (3, 1, 1, True), (3, 1, 1, False), (5, 2, 2, True)])
def test_a_28x28_bias_map_is_cut_with_the_full_conv_numbers(k, stride, pad, dw, monkeypatch):
    """conv_nd cuts runs of equal slices from 16 x 16 positions on (was 32 x 32): the 28 x 28 bias maps of a
    MobileNetV2 at 224 (576-960 channels through 1x1 and 3x3 convs) were conved whole in float64. The cut
    conv's outputs are the whole conv's bit for bit."""
    rng = np.random.default_rng(k + pad)
    C = 576 if not dw else 160
    edge = np.zeros((2, 1, C, 28))   # a map constant away from a 2-pixel border, as a bias map is
    edge[:, :, :, :2], edge[:, :, :, -2:] = rng.standard_normal((2, 1, C, 2)), rng.standard_normal((2, 1, C, 2))
    x = rng.standard_normal((1, C, 1, 1)) + edge[0][..., :, None] + edge[1][..., None, :]
    O = C if dw else 160
    p = ConvParams(weight=rng.standard_normal((O, 1 if dw else C, k, k)), bias=None, strides=(stride, stride),
                   pads=(pad,) * 4, dilations=(1, 1), group=O if dw else 1)
    seen = []
    real = ca._conv_nd
    monkeypatch.setattr(ca, "_conv_nd", lambda a, q: seen.append(a.shape) or real(a, q))
    cut = ca.conv_nd(x, p)
    assert seen and seen[0][2] * seen[0][3] < 28 * 28 / 2, seen   # conved on a cut map
    assert _bytes(cut) == _bytes(real(x, p))
