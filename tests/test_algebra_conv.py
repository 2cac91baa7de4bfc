"""Property tests of collapse_passes.algebra.conv against torch (float64) as the reference."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from collapse_passes.algebra import (
    AlgebraError,
    ConvParams,
    add_identity_skip,
    add_pointwise_skip,
    bn_to_affine,
    compose_conv,
    compose_conv_chain,
    constant_through_conv,
    conv_nd,
    densify_weight,
    exact_output_region,
    fold_affine_after_conv,
    fold_affine_before_conv,
    max_block_diagonal_groups,
    regroup_weight,
    trim_unread_end_pads,
)

SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
TORCH_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Tiny float64 convs are ~200x slower with a contended intra-op thread pool; restore afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tconv(x, p: ConvParams) -> np.ndarray:
    """Reference ONNX Conv via torch: explicit (possibly asymmetric) zero padding, then conv."""
    pad = []
    for a in reversed(range(p.ndim)):  # F.pad wants the last axis first
        pad += [p.pads_begin[a], p.pads_end[a]]
    xt = F.pad(torch.as_tensor(np.asarray(x, dtype=np.float64)), pad)
    w = torch.as_tensor(np.asarray(p.weight, dtype=np.float64))
    b = None if p.bias is None else torch.as_tensor(np.asarray(p.bias, dtype=np.float64))
    return TORCH_CONV[p.ndim](xt, w, b, stride=p.strides, dilation=p.dilations, groups=p.group).numpy()


def merged_out(x, m) -> np.ndarray:
    y = tconv(x, m.params)
    return y if m.bias_map is None else y + m.bias_map[None]


def assert_close(a, b, tol=1e-9):
    assert a.shape == b.shape, (a.shape, b.shape)
    scale = max(1.0, float(np.abs(b).max(initial=0.0)))
    np.testing.assert_allclose(a, b, rtol=0, atol=tol * scale)


# -- strategies -------------------------------------------------------------------------------------

@st.composite
def channel_plan(draw):
    """(C0, C1, C2, g1, g2): dense, depthwise o depthwise, aligned grouped, or mixed group counts."""
    kind = draw(st.sampled_from(["dense", "depthwise", "grouped", "mixed"]))
    if kind == "dense":
        C0, C1, C2 = (draw(st.integers(1, 6)) for _ in range(3))
        return C0, C1, C2, 1, 1
    if kind == "depthwise":
        C = draw(st.integers(1, 6))
        return C, C, C, C, C
    if kind == "grouped":
        g = draw(st.integers(2, 3))
        return (g * draw(st.integers(1, 2)), g * draw(st.integers(1, 2)), g * draw(st.integers(1, 2)), g, g)
    C1 = draw(st.sampled_from([2, 3, 4, 6]))
    divs = [d for d in range(1, C1 + 1) if C1 % d == 0]
    g1, g2 = draw(st.sampled_from(divs)), draw(st.sampled_from(divs))
    C0 = g1 * draw(st.integers(1, max(1, 6 // g1)))
    C2 = g2 * draw(st.integers(1, max(1, 6 // g2)))
    return C0, C1, C2, g1, g2


def rand_conv(rng, cin, cout, group, kernel, strides, pads, dilations, with_bias=True):
    w = rng.standard_normal((cout, cin // group) + tuple(kernel))
    b = rng.standard_normal(cout) if with_bias else None
    return ConvParams(w, b, tuple(strides), tuple(pads), tuple(dilations), group)


@st.composite
def conv_pair(draw, pad_mode="any", ndim=None):
    """A pair of convs, an input size that fits both, and a random input.

    pad_mode: 'zero_p2' (second conv unpadded), 'pointwise_first' (k1 = 1), 'padded' (both convs
    padded, kernels > 1: the approximate case), 'any'.
    """
    n = ndim or draw(st.sampled_from([1, 2]))
    C0, C1, C2, g1, g2 = draw(channel_plan())
    ax = []
    for _ in range(n):
        k1 = 1 if pad_mode == "pointwise_first" else draw(st.integers(2 if pad_mode == "padded" else 1, 5))
        k2 = draw(st.integers(2 if pad_mode == "padded" else 1, 5))
        s1, s2 = draw(st.integers(1, 3)), draw(st.integers(1, 3))
        d1, d2 = draw(st.integers(1, 2)), draw(st.integers(1, 2))
        p1 = (draw(st.integers(0, 3)), draw(st.integers(0, 3)))
        if pad_mode == "zero_p2":
            p2 = (0, 0)
        elif pad_mode == "padded":
            p2 = (draw(st.integers(1, 3)), draw(st.integers(0, 3)))
        else:
            p2 = (draw(st.integers(0, 3)), draw(st.integers(0, 3)))
        # smallest input for which both outputs are >= 1
        D1, D2 = d1 * (k1 - 1) + 1, d2 * (k2 - 1) + 1
        n1_min = max(1, D2 - sum(p2))
        N_min = max(1, s1 * (n1_min - 1) + D1 - sum(p1))
        N = draw(st.integers(N_min, max(N_min, 12) + 2))
        ax.append(dict(k1=k1, k2=k2, s1=s1, s2=s2, d1=d1, d2=d2, p1=p1, p2=p2, N=N))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    b1 = draw(st.sampled_from(["rand", "none", "rand", "zero"]))
    first = rand_conv(rng, C0, C1, g1, [a["k1"] for a in ax], [a["s1"] for a in ax],
                      [a["p1"][0] for a in ax] + [a["p1"][1] for a in ax], [a["d1"] for a in ax],
                      with_bias=b1 != "none")
    if b1 == "zero":
        first.bias = np.zeros(C1)
    second = rand_conv(rng, C1, C2, g2, [a["k2"] for a in ax], [a["s2"] for a in ax],
                       [a["p2"][0] for a in ax] + [a["p2"][1] for a in ax], [a["d2"] for a in ax],
                       with_bias=draw(st.booleans()))
    spatial = tuple(a["N"] for a in ax)
    x = rng.standard_normal((draw(st.integers(1, 2)), C0) + spatial)
    return first, second, spatial, x


def check_structure(first, second, m):
    """Merged shape facts that hold in every case."""
    p = m.params
    assert p.strides == tuple(a * b for a, b in zip(first.strides, second.strides))
    assert p.effective_kernel == tuple(
        d1 * (k1 - 1) + s1 * d2 * (k2 - 1) + 1
        for d1, k1, s1, d2, k2 in zip(first.dilations, first.kernel_shape, first.strides,
                                       second.dilations, second.kernel_shape))
    assert p.group == math.gcd(first.group, second.group)
    assert p.in_channels == first.in_channels and p.out_channels == second.out_channels
    if first.is_depthwise and second.is_depthwise and first.in_channels == second.out_channels:
        assert p.group == first.in_channels  # depthwise o depthwise stays depthwise
    # structural group == the largest block-diagonal group count of the dense merged weight
    assert max_block_diagonal_groups(densify_weight(p.weight, p.group)) == p.group


# -- composition ------------------------------------------------------------------------------------

@settings(max_examples=400, **SETTINGS)
@given(conv_pair(pad_mode="zero_p2"))
def test_compose_second_unpadded_is_exact(case):
    first, second, spatial, x = case
    seq = tconv(tconv(x, first), second)
    for inp in (spatial, None):  # exactness must not depend on knowing the input size
        m = compose_conv(first, second, inp)
        assert m.exact, m.reason
        assert m.bias_map is None
        check_structure(first, second, m)
        assert_close(merged_out(x, m), seq)


@settings(max_examples=300, **SETTINGS)
@given(conv_pair(pad_mode="pointwise_first"))
def test_compose_pointwise_first_padded_second_is_exact_with_bias_map(case):
    first, second, spatial, x = case
    seq = tconv(tconv(x, first), second)
    m = compose_conv(first, second, spatial)
    assert m.exact, m.reason
    check_structure(first, second, m)
    assert_close(merged_out(x, m), seq)
    if first.bias is None or not np.any(first.bias):
        assert m.bias_map is None  # a plain bias is exact when the first bias is zero
    # without the input size a bias map cannot be built: exact only if none is needed
    m0 = compose_conv(first, second)
    if m0.exact:
        assert_close(merged_out(x, m0), seq)
    else:
        assert np.any(first.bias) and any(second.pads)


@settings(max_examples=400, **SETTINGS)
@given(conv_pair(pad_mode="padded"))
def test_compose_both_padded_interior_matches(case):
    first, second, spatial, x = case
    seq = tconv(tconv(x, first), second)
    m = compose_conv(first, second, spatial)
    check_structure(first, second, m)
    out = merged_out(x, m)
    assert out.shape == seq.shape  # output sizes match exactly even when values do not
    region = (slice(None), slice(None)) + exact_output_region(first, second, spatial)
    assert_close(out[region], seq[region])
    diff = np.abs(out - seq).max()
    if m.exact:
        assert diff <= 1e-9 * max(1.0, np.abs(seq).max())
    else:
        assert "approximate" in m.reason
        # the exactness test is tight: with random weights an inexact merge really differs
        assert diff > 1e-7
    m0 = compose_conv(first, second)  # the size-free rule may be more conservative, never wrong
    if m0.exact:
        assert m.exact
        assert_close(merged_out(x, m0), seq)


@settings(max_examples=300, **SETTINGS)
@given(conv_pair(pad_mode="any"))
def test_compose_any(case):
    first, second, spatial, x = case
    seq = tconv(tconv(x, first), second)
    m = compose_conv(first, second, spatial)
    check_structure(first, second, m)
    out = merged_out(x, m)
    region = (slice(None), slice(None)) + exact_output_region(first, second, spatial)
    assert_close(out[region], seq[region])
    if m.exact:
        assert_close(out, seq)
    else:
        assert np.abs(out - seq).max() > 1e-7


@settings(max_examples=60, **SETTINGS)
@given(st.integers(0, 2**32 - 1), st.integers(1, 2), st.booleans())
def test_compose_chain_of_three(seed, n, depthwise):
    rng = np.random.default_rng(seed)
    C = int(rng.integers(1, 5))
    g = C if depthwise else 1
    k = [int(v) for v in rng.integers(1, 4, size=3)]
    convs = [rand_conv(rng, C, C, g, [k[0]] * n, [int(rng.integers(1, 3))] * n, [1] * (2 * n), [1] * n),
             rand_conv(rng, C, C, g, [k[1]] * n, [1] * n, [0] * (2 * n), [int(rng.integers(1, 3))] * n),
             rand_conv(rng, C, C, g, [k[2]] * n, [int(rng.integers(1, 3))] * n, [0] * (2 * n), [1] * n)]
    spatial = (14,) * n
    x = rng.standard_normal((1, C) + spatial)
    seq = x
    for c in convs:
        seq = tconv(seq, c)
    m = compose_conv_chain(convs, spatial)
    assert m.exact
    assert m.params.group == g
    assert_close(merged_out(x, m), seq)


@settings(max_examples=100, **SETTINGS)
@given(st.integers(0, 2**32 - 1), st.integers(1, 2), st.booleans(), st.integers(1, 2), st.sampled_from([1, 3, 5]))
def test_chain_carries_bias_map(seed, n, depthwise, s, k):
    """MobileNetV2-style pw(bias) -> kxk 'same' (bias) -> pw(bias): exact as one conv + bias_map."""
    rng = np.random.default_rng(seed)
    C0, C1, C2 = (int(v) for v in rng.integers(1, 6, size=3))
    g = C1 if depthwise else 1
    p = (k - 1) // 2
    convs = [rand_conv(rng, C0, C1, 1, [1] * n, [s] * n, [0] * (2 * n), [1] * n),
             rand_conv(rng, C1, C1, g, [k] * n, [1] * n, [p] * (2 * n), [1] * n),
             rand_conv(rng, C1, C2, 1, [1] * n, [1] * n, [0] * (2 * n), [1] * n)]
    spatial = tuple(int(v) for v in rng.integers(1, 12, size=n))
    x = rng.standard_normal((2, C0) + spatial)
    seq = x
    for c in convs:
        seq = tconv(seq, c)
    m = compose_conv_chain(convs, spatial)
    assert m.exact, m.reason
    assert m.params.kernel_shape == (k,) * n and m.params.group == 1
    assert (m.bias_map is not None) == (k > 1)
    assert_close(merged_out(x, m), seq)


def test_known_merged_shapes():
    rng = np.random.default_rng(0)

    def c(k, s=1, p=0, d=1, cin=2, cout=2, g=1):
        return rand_conv(rng, cin, cout, g, [k, k], [s, s], [p] * 4, [d, d])

    m = compose_conv(c(3), c(3))
    assert m.params.kernel_shape == (5, 5) and m.params.strides == (1, 1)
    m = compose_conv(c(3, s=2), c(3))
    assert m.params.kernel_shape == (7, 7) and m.params.strides == (2, 2)
    m = compose_conv(c(3, s=2, p=1), c(1))  # strided conv then 1x1: no growth
    assert m.params.kernel_shape == (3, 3) and m.params.pads == (1,) * 4 and m.exact
    m = compose_conv(c(1, s=2), c(3))  # 1x1 s2 then 3x3: a dilated 3x3, no structural zeros stored
    assert m.params.kernel_shape == (3, 3) and m.params.dilations == (2, 2) and m.params.strides == (2, 2)
    m = compose_conv(c(3, d=2), c(3, d=2))  # a common dilation is kept
    assert m.params.kernel_shape == (5, 5) and m.params.dilations == (2, 2)
    m = compose_conv(c(3, g=2), c(3, g=2))
    assert m.params.group == 2 and m.params.weight.shape == (2, 1, 5, 5)
    m = compose_conv(c(3, p=1), c(3, p=1), (8, 8))
    assert not m.exact and "approximate" in m.reason
    assert m.params.pads == (2,) * 4 and m.params.output_spatial((8, 8)) == (8, 8)
    assert exact_output_region(c(3, p=1), c(3, p=1), (8, 8)) == (slice(1, 7), slice(1, 7))


def test_unread_end_padding_is_trimmed_and_exact():
    rng = np.random.default_rng(1)
    # first: 3-tap on 8 -> n1 = 6; second: 2-tap stride 2 with end pad 1 on 6 -> out 3, reads 0..5 only
    first = rand_conv(rng, 2, 3, 1, [3], [1], [0, 0], [1])
    second = rand_conv(rng, 3, 2, 1, [2], [2], [0, 1], [1])
    spatial = (8,)
    assert trim_unread_end_pads(second, (6,)).pads == (0, 0)
    assert trim_unread_end_pads(second, (7,)).pads == (0, 1)  # on 7 the pad is read
    m = compose_conv(first, second, spatial)
    assert m.exact and m.params.pads == (0, 0)
    x = rng.standard_normal((1, 2) + spatial)
    assert_close(merged_out(x, m), tconv(tconv(x, first), second))
    assert not compose_conv(first, second).exact  # without the size it cannot know


def test_float32_in_float32_out():
    rng = np.random.default_rng(2)
    a = rand_conv(rng, 3, 4, 1, [3, 3], [1, 1], [0] * 4, [1, 1])
    b = rand_conv(rng, 4, 2, 1, [1, 1], [1, 1], [0] * 4, [1, 1])
    a32 = ConvParams(a.weight.astype(np.float32), a.bias.astype(np.float32), a.strides, a.pads, a.dilations)
    b32 = ConvParams(b.weight.astype(np.float32), b.bias.astype(np.float32), b.strides, b.pads, b.dilations)
    m = compose_conv(a32, b32)
    assert m.params.weight.dtype == np.float32 and m.params.bias.dtype == np.float32
    m64 = compose_conv(a, b)
    assert np.abs(m.params.weight - m64.params.weight).max() < 1e-5


def test_compose_3d():
    rng = np.random.default_rng(3)
    a = rand_conv(rng, 2, 3, 1, [2, 3, 1], [1, 2, 1], [1, 0, 0, 0, 1, 0], [1, 1, 2])
    b = rand_conv(rng, 3, 2, 1, [3, 1, 2], [2, 1, 1], [0] * 6, [1, 1, 1])
    x = rng.standard_normal((1, 2, 7, 8, 6))
    m = compose_conv(a, b, (7, 8, 6))
    assert m.exact
    assert_close(merged_out(x, m), tconv(tconv(x, a), b))


@settings(max_examples=50, **SETTINGS)
@given(conv_pair(pad_mode="any"))
def test_conv_nd_matches_torch(case):
    first, _, _, x = case
    assert_close(conv_nd(x, first), tconv(x, first), 1e-12)


@settings(max_examples=60, **SETTINGS)
@given(conv_pair(pad_mode="any"), st.integers(0, 2 ** 31 - 1))
def test_constant_through_conv_equals_conv_of_the_constant_map(case, seed):
    """The separable rule for a per-channel constant (bias maps) is conv_nd of the broadcast map: padding,
    strides, dilations and groups included."""
    first, _, _, x = case
    values = np.random.default_rng(seed).standard_normal(first.in_channels)
    spatial = x.shape[2:]
    dense = np.broadcast_to(values.reshape((1, -1) + (1,) * len(spatial)), (1, len(values)) + spatial)
    assert_close(constant_through_conv(values, first, spatial), conv_nd(dense, first)[0], 1e-12)


def test_constant_through_conv_3d_grouped_asymmetric_pads():
    rng = np.random.default_rng(7)
    p = rand_conv(rng, 4, 6, 2, [3, 2, 3], [2, 1, 3], [1, 0, 2, 2, 1, 0], [1, 2, 1])
    values = rng.standard_normal(4)
    spatial = (7, 6, 9)
    dense = np.broadcast_to(values.reshape(1, 4, 1, 1, 1), (1, 4) + spatial)
    assert_close(constant_through_conv(values, p, spatial), conv_nd(dense, p)[0], 1e-12)


@st.composite
def map_with_runs(draw):
    """A conv and a (1, C, *spatial) map whose slices lo..hi-1 are equal along each axis (a bias map's
    shape: constant away from the border), the run anywhere, possibly empty or the whole axis."""
    n = draw(st.sampled_from([1, 2]))
    g = draw(st.sampled_from([1, 2, 3]))
    cin, cout = g * draw(st.integers(1, 2)), g * draw(st.integers(1, 2))
    ks = [draw(st.integers(1, 5)) for _ in range(n)]
    ds = [draw(st.integers(1, 3)) for _ in range(n)]
    ss = [draw(st.integers(1, 3)) for _ in range(n)]
    pads = [draw(st.integers(0, 4)) for _ in range(2 * n)]
    sizes = [draw(st.integers(max(1, d * (k - 1) + 1 - pads[a] - pads[a + n]), 80 if n == 1 else 48))
             for a, (k, d) in enumerate(zip(ks, ds))]
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    x = rng.standard_normal((1, cin) + tuple(sizes))
    for a, size in enumerate(sizes):
        lo = draw(st.integers(0, size - 1))
        hi = draw(st.integers(lo + 1, size))
        idx = [slice(None)] * x.ndim
        first = list(idx)
        idx[a + 2], first[a + 2] = slice(lo, hi), slice(lo, lo + 1)
        x[tuple(idx)] = x[tuple(first)]
    return rand_conv(rng, cin, cout, g, ks, ss, pads, ds), x


@settings(max_examples=150, **SETTINGS)
@given(map_with_runs())
def test_conv_nd_cutting_runs_of_equal_slices_is_exact(case):
    """conv_nd cuts most of a run of equal slices out before the conv and copies the output's run back:
    the same values as the conv of the whole map (torch), at every stride, dilation, padding and group."""
    import collapse_passes.algebra.conv as conv

    p, x = case
    old = conv.CUT_RUNS_MIN_SIZE
    conv.CUT_RUNS_MIN_SIZE = 1   # every map, not only large ones
    try:
        assert_close(conv_nd(x, p), tconv(x, p), 1e-12)
    finally:
        conv.CUT_RUNS_MIN_SIZE = old


def test_conv_nd_cuts_a_bias_map_at_224():
    """A MobileNetV2 bias map at 224 x 224 (a constant through a padded depthwise conv) is conved on a
    cut map of about 10 x 10 (was the whole 224 x 224 in float64: 0.5-0.8 s per map)."""
    import collapse_passes.algebra.conv as conv

    rng = np.random.default_rng(0)
    dw = rand_conv(rng, 8, 8, 8, [3, 3], [1, 1], [1, 1, 1, 1], [1, 1], with_bias=False)
    m = constant_through_conv(rng.standard_normal(8), dw, (224, 224))[None]
    small, take = conv._cut_runs(m, dw)
    assert small.shape[2:] == (10, 10) and [a for a, _ in take] == [2, 3]
    assert_close(conv_nd(m, dw), tconv(m, dw), 1e-12)


def test_compose_errors():
    rng = np.random.default_rng(4)
    a = rand_conv(rng, 2, 3, 1, [3, 3], [1, 1], [0] * 4, [1, 1])
    with pytest.raises(ValueError, match="input channels"):
        compose_conv(a, rand_conv(rng, 4, 2, 1, [3, 3], [1, 1], [0] * 4, [1, 1]))
    with pytest.raises(ValueError, match="1-D"):
        compose_conv(a, rand_conv(rng, 3, 2, 1, [3], [1], [0] * 2, [1]))
    with pytest.raises(ValueError, match="too small"):
        compose_conv(a, a.replace(weight=rng.standard_normal((3, 3, 3, 3))), (4, 4))
    with pytest.raises(ValueError, match="group"):
        ConvParams(rng.standard_normal((3, 1, 3)), None, (1,), (0, 0), (1,), 2)
    with pytest.raises(ValueError, match="pads"):
        ConvParams(rng.standard_normal((3, 1, 3)), None, (1,), (0,), (1,), 1)
    with pytest.raises(ValueError):
        ConvParams(rng.standard_normal((3, 1, 3)), None, (0,), (0, 0), (1,), 1)
    with pytest.raises(ValueError, match="block-diagonal"):
        regroup_weight(rng.standard_normal((4, 4, 1)), 2)
    assert isinstance(AlgebraError("x"), ValueError)


def test_params_properties():
    p = ConvParams(np.zeros((6, 2, 3, 5)), None, (2, 1), (1, 2, 0, 2), (1, 2), 3)
    assert (p.out_channels, p.in_channels, p.kernel_shape, p.ndim) == (6, 6, (3, 5), 2)
    assert not p.is_pointwise and p.effective_kernel == (3, 9)
    assert p.output_spatial((8, 10)) == tuple(
        tconv(np.zeros((1, 6, 8, 10)), p).shape[2:])
    assert ConvParams(np.zeros((4, 4, 1, 1))).is_pointwise
    assert not ConvParams(np.zeros((4, 4, 1, 1)), strides=(2, 2)).is_pointwise
    dw = ConvParams(np.ones((4, 1, 3)), group=4)
    assert dw.is_depthwise
    assert np.array_equal(regroup_weight(densify_weight(dw.weight, 4), 4), dw.weight)


# -- affine folds -----------------------------------------------------------------------------------

@settings(max_examples=100, **SETTINGS)
@given(conv_pair(pad_mode="any"), st.floats(1e-6, 1e-2), st.integers(0, 2**32 - 1))
def test_fold_bn_after(case, eps, seed):
    p, _, _, x = case
    rng = np.random.default_rng(seed)
    O = p.out_channels
    gamma, beta, mean = rng.standard_normal((3, O))
    var = rng.random(O) + 0.1
    ref = F.batch_norm(torch.as_tensor(tconv(x, p)), torch.as_tensor(mean), torch.as_tensor(var),
                       torch.as_tensor(gamma), torch.as_tensor(beta), training=False, eps=eps).numpy()
    scale, shift = bn_to_affine(gamma, beta, mean, var, eps)
    assert_close(tconv(x, fold_affine_after_conv(p, scale, shift)), ref)


@settings(max_examples=100, **SETTINGS)
@given(conv_pair(pad_mode="zero_p2"))
def test_fold_affine_before(case):
    _, p, _, x = case  # the second conv of a zero_p2 pair is unpadded
    x = np.random.default_rng(5).standard_normal((1, p.in_channels) + (12,) * p.ndim)
    assume(min(p.output_spatial(x.shape[2:])) >= 1)
    rng = np.random.default_rng(int(p.weight.size))
    scale, shift = rng.standard_normal((2, p.in_channels))
    bshape = (1, -1) + (1,) * p.ndim
    ref = tconv(x * scale.reshape(bshape) + shift.reshape(bshape), p)
    assert_close(tconv(x, fold_affine_before_conv(p, scale, shift)), ref)


def test_fold_affine_before_padding():
    rng = np.random.default_rng(6)
    p = rand_conv(rng, 4, 4, 2, [3, 3], [1, 1], [1] * 4, [1, 1])
    scale, shift = rng.standard_normal((2, 4))
    with pytest.raises(ValueError, match="pads"):
        fold_affine_before_conv(p, scale, shift)
    # a pure scale is exact even with padding
    x = rng.standard_normal((1, 4, 6, 6))
    ref = tconv(x * scale.reshape(1, -1, 1, 1), p)
    assert_close(tconv(x, fold_affine_before_conv(p, scale, None)), ref)
    with pytest.raises(ValueError, match="entries"):
        fold_affine_after_conv(p, np.ones(3), None)


# -- skips ------------------------------------------------------------------------------------------

@st.composite
def skip_case(draw):
    n = draw(st.sampled_from([1, 2]))
    g = draw(st.sampled_from([1, 2, 3, "dw"]))
    C = draw(st.integers(1, 6)) if g == "dw" else g * draw(st.integers(1, 2))
    g = C if g == "dw" else g
    ks = [draw(st.sampled_from([1, 3, 5])) for _ in range(n)]
    ds = [draw(st.integers(1, 2)) for _ in range(n)]
    pads = [d * (k - 1) // 2 for k, d in zip(ks, ds)]
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    p = rand_conv(rng, C, C, g, ks, [1] * n, pads + pads, ds, with_bias=draw(st.booleans()))
    x = rng.standard_normal((draw(st.integers(1, 2)), C) + tuple(draw(st.integers(1, 9)) for _ in range(n)))
    return p, x, rng


@settings(max_examples=150, **SETTINGS)
@given(skip_case())
def test_identity_skip(case):
    p, x, _ = case
    q = add_identity_skip(p)
    assert q.group == p.group
    assert_close(tconv(x, q), tconv(x, p) + x)


def test_identity_skip_even_kernel_and_errors():
    rng = np.random.default_rng(7)
    p = rand_conv(rng, 3, 3, 1, [2], [1], [0, 1], [1])  # even kernel, aligned via the first tap
    x = rng.standard_normal((1, 3, 7))
    assert_close(tconv(x, add_identity_skip(p)), tconv(x, p) + x)
    with pytest.raises(ValueError, match="in == out"):
        add_identity_skip(rand_conv(rng, 3, 4, 1, [3], [1], [1, 1], [1]))
    with pytest.raises(ValueError, match="stride 1"):
        add_identity_skip(rand_conv(rng, 3, 3, 1, [3], [2], [1, 1], [1]))
    with pytest.raises(ValueError, match="aligned"):
        add_identity_skip(rand_conv(rng, 3, 3, 1, [3], [1], [0, 1], [1]))  # output shrinks
    with pytest.raises(ValueError, match="aligned"):
        add_identity_skip(rand_conv(rng, 3, 3, 1, [3, 3], [1, 1], [1, 1, 0, 0], [1, 1]))
    with pytest.raises(ValueError, match="aligned"):
        add_identity_skip(rand_conv(rng, 3, 3, 1, [3], [1], [1, 1], [2]))  # dilated, pads too small


@settings(max_examples=150, **SETTINGS)
@given(st.integers(0, 2**32 - 1), st.integers(1, 2), st.sampled_from([1, 2, 3]), st.sampled_from([1, 3, 5]),
       st.sampled_from([1, 2, "dw"]), st.booleans())
def test_pointwise_skip(seed, n, s, k, g, skip_dense):
    """ResNet downsampling block with a linear branch: conv k s (BN folded) + 1x1 s projection (BN folded)."""
    rng = np.random.default_rng(seed)
    Cin = int(rng.integers(1, 4)) * 2
    Cout = Cin * int(rng.integers(1, 3))
    g = Cin if g == "dw" else g
    pad = (k - 1) // 2
    p = rand_conv(rng, Cin, Cout, g, [k] * n, [s] * n, [pad] * (2 * n), [1] * n)
    gs = 1 if skip_dense else g
    skip = rand_conv(rng, Cin, Cout, gs, [1] * n, [s] * n, [0] * (2 * n), [1] * n, with_bias=False)
    gamma, beta, mean = rng.standard_normal((3, Cout))
    skip = fold_affine_after_conv(skip, *bn_to_affine(gamma, beta, mean, rng.random(Cout) + 0.5, 1e-5))
    x = rng.standard_normal((1, Cin) + tuple(int(v) for v in rng.integers(4, 12, size=n)))
    q = add_pointwise_skip(p, skip)
    assert q.group == math.gcd(g, gs)
    assert_close(tconv(x, q), tconv(x, p) + tconv(x, skip))


def test_pointwise_skip_errors():
    rng = np.random.default_rng(8)
    p = rand_conv(rng, 4, 8, 1, [3, 3], [2, 2], [1] * 4, [1, 1])
    ok = rand_conv(rng, 4, 8, 1, [1, 1], [2, 2], [0] * 4, [1, 1])
    add_pointwise_skip(p, ok)
    with pytest.raises(ValueError, match="strides"):
        add_pointwise_skip(p, ok.replace(strides=(1, 1)))
    with pytest.raises(ValueError, match="1x1"):
        add_pointwise_skip(p, rand_conv(rng, 4, 8, 1, [3, 3], [2, 2], [1] * 4, [1, 1]))
    with pytest.raises(ValueError, match="channels"):
        add_pointwise_skip(p, rand_conv(rng, 4, 4, 1, [1, 1], [2, 2], [0] * 4, [1, 1]))
    with pytest.raises(ValueError, match="output sizes differ"):
        add_pointwise_skip(p.replace(pads=(1, 1, 2, 2)), ok)
    with pytest.raises(ValueError, match="misaligned"):
        add_pointwise_skip(p.replace(pads=(0, 0, 2, 2)), ok.replace(pads=(1, 1, 1, 1)))


def _same_but_values(full, shape):
    """A shape-only MergedConv agrees with the full one in everything a planner reads."""
    assert shape.shape_only and not full.shape_only
    assert (shape.exact, shape.reason) == (full.exact, full.reason)
    fp, sp = full.params, shape.params
    assert (sp.weight.shape, sp.weight.dtype) == (fp.weight.shape, fp.weight.dtype)
    assert (sp.strides, sp.pads, sp.dilations, sp.group) == (fp.strides, fp.pads, fp.dilations, fp.group)
    assert (sp.bias is None) == (fp.bias is None)
    if fp.bias is not None:
        np.testing.assert_allclose(sp.bias, fp.bias, rtol=1e-12, atol=1e-12)
    assert (shape.bias_map is None) == (full.bias_map is None)
    if full.bias_map is not None:
        assert shape.bias_map.shape == full.bias_map.shape
    assert not sp.weight.flags.writeable and sp.weight.strides == (0,) * sp.weight.ndim   # no memory


@settings(max_examples=200, **SETTINGS)
@given(conv_pair(pad_mode="any"))
def test_shape_only_compose_prices_like_the_full_one(case):
    """The planner prices segments with compose_conv(values=False): same shapes, bias, bias-map need,
    exactness and reason as the full composition, without its kernel products."""
    first, second, spatial, _ = case
    _same_but_values(compose_conv(first, second, spatial), compose_conv(first, second, spatial, values=False))


@settings(max_examples=60, **SETTINGS)
@given(st.integers(0, 2**32 - 1), st.integers(1, 2), st.booleans(), st.sampled_from([1, 3]))
def test_shape_only_chain_extension_matches(seed, n, depthwise, k):
    """Extending a shape-only prefix (a bias map carried included) stays in step with the full chain."""
    from collapse_passes.algebra.conv import MergedConv, extend_chain

    rng = np.random.default_rng(seed)
    C0, C1, C2 = (int(v) for v in rng.integers(1, 6, size=3))
    g = C1 if depthwise else 1
    p = (k - 1) // 2
    convs = [rand_conv(rng, C0, C1, 1, [1] * n, [1] * n, [0] * (2 * n), [1] * n),
             rand_conv(rng, C1, C1, g, [k] * n, [1] * n, [p] * (2 * n), [1] * n),
             rand_conv(rng, C1, C2, 1, [1] * n, [1] * n, [0] * (2 * n), [1] * n),
             rand_conv(rng, C2, C2, 1, [3] * n, [1] * n, [1] * (2 * n), [1] * n)]
    spatial = tuple(int(v) for v in rng.integers(3, 10, size=n))
    full = shape = MergedConv(convs[0], None, True, "single conv")
    for c in convs[1:]:
        full = extend_chain(full, c, spatial)
        shape = extend_chain(shape, c, spatial, values=False)
        _same_but_values(full, shape)
