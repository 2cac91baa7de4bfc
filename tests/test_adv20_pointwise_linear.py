"""algebra.pointwise_as_linear: a 1x1 conv on a pooled (one-position) map is the dense layer it returns.

The pool-hoisting passes (ONNX and torch.fx) rely on this to turn the hoisted conv into a Gemm / Linear."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from collapse_passes.algebra import AlgebraError, ConvParams, conv_nd, pointwise_as_linear


@settings(max_examples=40, deadline=None)
@given(groups=st.sampled_from([1, 2, 3, 6]), mult=st.integers(1, 3), ndim=st.integers(1, 3),
       stride=st.integers(1, 3), bias=st.booleans(), seed=st.integers(0, 2**16))
def test_pooled_pointwise_conv_is_the_dense_layer(groups, mult, ndim, stride, bias, seed):
    rng = np.random.default_rng(seed)
    cin, cout = 6, 6 * mult
    p = ConvParams(rng.standard_normal((cout, cin // groups) + (1,) * ndim).astype(np.float32),
                   rng.standard_normal(cout).astype(np.float32) if bias else None,
                   strides=(stride,) * ndim, group=groups)
    x = rng.standard_normal((2, cin) + (1,) * ndim)
    lin = pointwise_as_linear(p)
    assert lin.weight.dtype == np.float32 and lin.weight.shape == (cout, cin)
    want = conv_nd(x, p).reshape(2, cout)
    got = x.reshape(2, cin) @ lin.weight.astype(np.float64).T + (0 if lin.bias is None else lin.bias)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    if groups > 1:   # the off-diagonal blocks are exact zeros, not values
        blocks = lin.weight.reshape(groups, cout // groups, groups, cin // groups)
        off = [blocks[a, :, b] for a in range(groups) for b in range(groups) if a != b]
        assert all(not b.any() for b in off)


@pytest.mark.parametrize("kernel,pads", [((3, 3), (0, 0, 0, 0)), ((1, 1), (1, 1, 1, 1)), ((1, 1), (0, 0, 1, 0))])
def test_kernels_or_padding_that_read_more_than_one_position_are_refused(kernel, pads):
    p = ConvParams(np.ones((4, 4) + kernel, np.float32), pads=pads)
    with pytest.raises(AlgebraError, match="1x1 conv without padding"):
        pointwise_as_linear(p)
