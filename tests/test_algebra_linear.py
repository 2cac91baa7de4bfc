"""Property tests of collapse_passes.algebra.linear against torch.nn.functional.linear (float64)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from collapse_passes.algebra import (
    LinearParams,
    add_identity,
    apply_linear,
    compose_linear,
    compose_linear_chain,
    fold_affine_after_linear,
    fold_affine_before_linear,
    from_gemm,
    from_matmul_const,
    to_gemm,
    to_matmul,
)

SETTINGS = dict(deadline=None)


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Tiny float64 ops are far slower with a contended intra-op thread pool; restore afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tlin(x, p: LinearParams) -> np.ndarray:
    b = None if p.bias is None else torch.as_tensor(np.asarray(p.bias, dtype=np.float64))
    return F.linear(torch.as_tensor(x), torch.as_tensor(np.asarray(p.weight, dtype=np.float64)), b).numpy()


def assert_close(a, b, tol=1e-9):
    assert a.shape == b.shape
    np.testing.assert_allclose(a, b, rtol=0, atol=tol * max(1.0, float(np.abs(b).max(initial=0.0))))


def rand_linear(rng, fin, fout, bias=True):
    return LinearParams(rng.standard_normal((fout, fin)), rng.standard_normal(fout) if bias else None)


dims = st.integers(1, 8)


@settings(max_examples=200, **SETTINGS)
@given(st.integers(0, 2**32 - 1), st.lists(dims, min_size=2, max_size=5), st.lists(st.booleans(), min_size=4, max_size=4),
       st.integers(1, 3))
def test_compose_chain(seed, widths, biases, lead):
    rng = np.random.default_rng(seed)
    layers = [rand_linear(rng, a, b, biases[i % 4]) for i, (a, b) in enumerate(zip(widths, widths[1:]))]
    x = rng.standard_normal((lead, 2, widths[0]))  # leading axes broadcast like torch
    ref = x
    for l in layers:
        ref = tlin(ref, l)
    merged = compose_linear_chain(layers)
    assert merged.weight.shape == (widths[-1], widths[0])
    assert_close(tlin(x, merged), ref)
    assert_close(apply_linear(x, merged), ref)
    if len(layers) >= 2:
        assert_close(tlin(x, compose_linear(layers[0], layers[1])), tlin(tlin(x, layers[0]), layers[1]))
    if not any(l.bias is not None for l in layers):
        assert merged.bias is None


@settings(max_examples=200, **SETTINGS)
@given(st.integers(0, 2**32 - 1), dims, dims, st.integers(0, 1), st.floats(-2, 2), st.floats(-2, 2),
       st.sampled_from(["none", "scalar", "vec", "row", "rows_equal", "col1"]))
def test_gemm_round_trip(seed, fin, fout, transB, alpha, beta, cshape):
    rng = np.random.default_rng(seed)
    rows = 3
    A = rng.standard_normal((rows, fin))
    B = rng.standard_normal((fout, fin) if transB else (fin, fout))
    c = rng.standard_normal(fout)
    C = {"none": None, "scalar": np.float64(1.5), "vec": c, "row": c[None, :],
         "rows_equal": np.repeat(c[None, :], rows, 0), "col1": np.full((1, 1), 0.7)}[cshape]
    Bp = B.T if transB else B
    ref = alpha * A @ Bp + (0.0 if C is None else beta * np.asarray(C))
    p = from_gemm(B, C, transB, alpha, beta)
    assert_close(tlin(A, p), ref)
    B2, C2, t2 = to_gemm(p)
    assert t2 == 1
    assert_close(A @ B2.T + (0.0 if C2 is None else C2), ref)
    if p.bias is None:
        assert_close(A @ to_matmul(p), ref)


def test_gemm_and_matmul_errors():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="per row"):
        from_gemm(rng.standard_normal((3, 4)), rng.standard_normal((5, 4)))
    with pytest.raises(ValueError, match="broadcast"):
        from_gemm(rng.standard_normal((3, 4)), rng.standard_normal(3))
    with pytest.raises(ValueError, match="2-D"):
        from_gemm(rng.standard_normal((2, 3, 4)))
    with pytest.raises(ValueError, match="2-D"):
        from_matmul_const(rng.standard_normal((2, 3, 4)))
    with pytest.raises(ValueError, match="bias"):
        to_matmul(rand_linear(rng, 3, 4))
    assert to_matmul(rand_linear(rng, 3, 4), ignore_bias=True).shape == (3, 4)
    with pytest.raises(ValueError, match="features"):
        compose_linear(rand_linear(rng, 3, 4), rand_linear(rng, 5, 2))
    with pytest.raises(ValueError, match="square"):
        add_identity(rand_linear(rng, 3, 4))
    with pytest.raises(ValueError, match="empty"):
        compose_linear_chain([])


@settings(max_examples=100, **SETTINGS)
@given(st.integers(0, 2**32 - 1), dims, dims)
def test_matmul_const(seed, fin, fout):
    rng = np.random.default_rng(seed)
    B = rng.standard_normal((fin, fout))
    x = rng.standard_normal((2, fin))
    p = from_matmul_const(B)
    assert_close(tlin(x, p), x @ B)
    assert np.array_equal(to_matmul(p), B)


@settings(max_examples=200, **SETTINGS)
@given(st.integers(0, 2**32 - 1), dims, dims, st.booleans(), st.floats(1e-6, 1e-3))
def test_layernorm_affine_into_next_linear(seed, fin, fout, bias, eps):
    rng = np.random.default_rng(seed)
    gamma, beta = rng.standard_normal((2, fin))
    p = rand_linear(rng, fin, fout, bias)
    x = rng.standard_normal((3, fin))
    xt = torch.as_tensor(x)
    ref = tlin(F.layer_norm(xt, (fin,), torch.as_tensor(gamma), torch.as_tensor(beta), eps).numpy(), p)
    normed = F.layer_norm(xt, (fin,), None, None, eps).numpy()
    assert_close(tlin(normed, fold_affine_before_linear(p, gamma, beta)), ref)


@settings(max_examples=150, **SETTINGS)
@given(st.integers(0, 2**32 - 1), dims, dims, st.booleans())
def test_affine_after_and_identity(seed, fin, fout, bias):
    rng = np.random.default_rng(seed)
    p = rand_linear(rng, fin, fout, bias)
    scale, shift = rng.standard_normal((2, fout))
    x = rng.standard_normal((4, fin))
    assert_close(tlin(x, fold_affine_after_linear(p, scale, shift)), tlin(x, p) * scale + shift)
    sq = rand_linear(rng, fin, fin, bias)
    assert_close(tlin(x, add_identity(sq)), tlin(x, sq) + x)


def test_dtype_preserved():
    rng = np.random.default_rng(1)
    a = LinearParams(rng.standard_normal((8, 4)).astype(np.float32), rng.standard_normal(8).astype(np.float32))
    b = LinearParams(rng.standard_normal((4, 8)).astype(np.float32), None)
    m = compose_linear(a, b)
    assert m.weight.dtype == np.float32 and m.bias.dtype == np.float32
    g = from_gemm(rng.standard_normal((4, 8)).astype(np.float32), np.ones(8, np.float32))
    assert g.weight.dtype == np.float32 and g.bias.dtype == np.float32
