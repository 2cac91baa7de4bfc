"""Exact algebra of fully connected layers (Gemm / MatMul with a constant weight).

Convention: weight (out_features, in_features), y = x @ W.T + b (torch.nn.Linear), applied to the last
axis of x. Composition runs in float64 and returns the inputs' dtype.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._common import AlgebraError, f64, is_zero, out_dtype, per_channel

__all__ = [
    "LinearParams",
    "from_gemm",
    "from_matmul_const",
    "to_gemm",
    "to_matmul",
    "compose_linear",
    "compose_linear_chain",
    "fold_affine_after",
    "fold_affine_before",
    "add_identity",
    "apply_linear",
]


@dataclass
class LinearParams:
    """y = x @ weight.T + bias; weight (out, in), bias (out,) or None."""

    weight: np.ndarray
    bias: np.ndarray | None = None

    def __post_init__(self):
        self.weight = np.asarray(self.weight)
        if self.weight.ndim != 2:
            raise AlgebraError(f"linear weight must be 2-D (out, in), got shape {self.weight.shape}")
        if self.bias is not None:
            self.bias = np.asarray(self.bias).reshape(-1)
            if self.bias.shape[0] != self.weight.shape[0]:
                raise AlgebraError(
                    f"linear bias has {self.bias.shape[0]} entries for {self.weight.shape[0]} outputs")

    @property
    def out_features(self) -> int:
        return int(self.weight.shape[0])

    @property
    def in_features(self) -> int:
        return int(self.weight.shape[1])


def apply_linear(x, p: LinearParams) -> np.ndarray:
    """Reference y = x @ W.T + b in float64 (for checks without torch)."""
    y = f64(x) @ f64(p.weight).T
    return y if p.bias is None else y + f64(p.bias)


def from_gemm(B, C=None, transB: int = 0, alpha: float = 1.0, beta: float = 1.0) -> LinearParams:
    """ONNX Gemm with transA=0 and constant B, C: y = alpha * A @ B' + beta * C.

    C must broadcast to one row: a scalar, (out,), (1, out), or a 2-D (rows, out) whose rows are all
    equal (the merged op then no longer depends on the row count). Other C raise.
    """
    B = np.asarray(B)
    if B.ndim != 2:
        raise AlgebraError(f"Gemm B must be 2-D, got shape {B.shape}")
    dtype = out_dtype(B, C)
    W = f64(B) if transB else f64(B).T  # (out, in)
    W = float(alpha) * W
    out = W.shape[0]
    bias = None
    if C is not None:
        c = f64(C)
        if c.ndim > 2:
            raise AlgebraError(f"Gemm C must be at most 2-D, got shape {c.shape}")
        if c.ndim == 2:
            if c.shape[0] > 1 and np.any(c != c[:1]):
                raise AlgebraError(
                    f"Gemm C of shape {c.shape} adds a different bias per row; only a per-output bias folds")
            c = c[:1]
        try:
            c = np.broadcast_to(c, (1, out) if c.ndim == 2 else (out,)).reshape(out)
        except ValueError:
            raise AlgebraError(f"Gemm C of shape {np.shape(C)} does not broadcast to ({out},)") from None
        if float(beta) != 0.0:
            bias = float(beta) * c
    return LinearParams(W.astype(dtype), None if bias is None else bias.astype(dtype))


def from_matmul_const(B) -> LinearParams:
    """y = x @ B with a constant 2-D B of shape (in, out)."""
    B = np.asarray(B)
    if B.ndim != 2:
        raise AlgebraError(f"MatMul constant must be 2-D (in, out) to be a linear layer, got shape {B.shape}")
    return LinearParams(np.ascontiguousarray(B.T), None)


def to_gemm(p: LinearParams):
    """(B, C, transB=1) for ONNX Gemm(A, B, C, transB=1); C is None when there is no bias."""
    return p.weight, p.bias, 1


def to_matmul(p: LinearParams, ignore_bias: bool = False) -> np.ndarray:
    """B = W.T for MatMul(x, B). A nonzero bias must be emitted separately (an Add), hence the check."""
    if not ignore_bias and not is_zero(p.bias):
        raise AlgebraError("linear has a bias; use to_gemm, or emit MatMul + Add (ignore_bias=True)")
    return np.ascontiguousarray(p.weight.T)


def compose_linear(first: LinearParams, second: LinearParams) -> LinearParams:
    """second(first(x)) = x @ (W2 W1).T + (W2 b1 + b2)."""
    if second.in_features != first.out_features:
        raise AlgebraError(
            f"cannot merge: second linear takes {second.in_features} features, first gives {first.out_features}")
    dtype = out_dtype(first.weight, first.bias, second.weight, second.bias)
    W2 = f64(second.weight)
    W = W2 @ f64(first.weight)
    if first.bias is None and second.bias is None:
        b = None
    else:
        b = (W2 @ f64(first.bias) if first.bias is not None else 0.0) + \
            (f64(second.bias) if second.bias is not None else 0.0)
        b = np.broadcast_to(b, (W.shape[0],))
    return LinearParams(W.astype(dtype), None if b is None else b.astype(dtype))


def compose_linear_chain(layers) -> LinearParams:
    """Compose linears applied in list order, in float64 throughout (one rounding at the end)."""
    layers = list(layers)
    if not layers:
        raise AlgebraError("empty linear chain")
    dtype = out_dtype(*[l.weight for l in layers], *[l.bias for l in layers])
    acc = LinearParams(f64(layers[0].weight), f64(layers[0].bias))
    for l in layers[1:]:
        acc = compose_linear(acc, LinearParams(f64(l.weight), f64(l.bias)))
    return LinearParams(acc.weight.astype(dtype), None if acc.bias is None else acc.bias.astype(dtype))


def fold_affine_after(p: LinearParams, scale=None, shift=None) -> LinearParams:
    """scale * linear(x) + shift per output feature."""
    dtype = out_dtype(p.weight, p.bias, scale, shift)
    sc = per_channel(scale, p.out_features, "scale", 1.0)
    sh = per_channel(shift, p.out_features, "shift", 0.0)
    W = f64(p.weight) * sc[:, None]
    b = (f64(p.bias) if p.bias is not None else 0.0) * sc + sh
    return LinearParams(W.astype(dtype), b.astype(dtype))


def fold_affine_before(p: LinearParams, scale=None, shift=None) -> LinearParams:
    """linear(scale * x + shift) per input feature, e.g. a LayerNorm's gamma/beta folded into the next
    linear: W' = W * gamma (columns), b' = b + W @ beta. Always exact (no padding in a linear)."""
    dtype = out_dtype(p.weight, p.bias, scale, shift)
    sc = per_channel(scale, p.in_features, "scale", 1.0)
    sh = per_channel(shift, p.in_features, "shift", 0.0)
    W = f64(p.weight)
    if p.bias is None and not np.any(sh):
        b = None
    else:
        b = (f64(p.bias) if p.bias is not None else 0.0) + W @ sh
    return LinearParams((W * sc[None, :]).astype(dtype), None if b is None else b.astype(dtype))


def add_identity(p: LinearParams) -> LinearParams:
    """linear(x) + x (a residual around a linear branch): W + I; square only."""
    if p.out_features != p.in_features:
        raise AlgebraError(
            f"identity residual needs a square linear, got {p.in_features}->{p.out_features}")
    dtype = out_dtype(p.weight, p.bias)
    W = f64(p.weight) + np.eye(p.in_features)
    return LinearParams(W.astype(dtype), p.bias)
