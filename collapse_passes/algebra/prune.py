"""Exact algebra of channel removal: slicing weights and folding a removed constant channel into biases.

A channel whose value is a constant c (per position it does not vary with the input) can be removed
from every op that reads it if its contribution is added to that op's bias. For a linear layer that is
W[:, i] * c. For a conv it is the conv of a constant map, which differs near the border when the conv
zero-pads (the padding reads 0, not c): then the contribution is a per-position map, computed with the
same `constant_through_conv` rule the merge uses for its `bias_map` (exact, needs the input spatial size).

Pure numpy; conventions as in conv.py / linear.py (conv weight (O, I/group, *k), linear weight (out, in)).
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from ._common import AlgebraError, f64, out_dtype
from .conv import ConvParams, constant_through_conv
from .linear import LinearParams

__all__ = [
    "slice_conv",
    "slice_conv_transpose",
    "ConvTransposeParams",
    "slice_linear",
    "slice_vector",
    "fold_constant_inputs_conv",
    "fold_constant_inputs_linear",
    "filter_norms",
    "keep_count",
    "round_keep",
]


def _idx(keep, n: int, what: str) -> np.ndarray:
    keep = np.arange(n) if keep is None else np.asarray(keep, dtype=np.int64).reshape(-1)
    if keep.size and (keep.min() < 0 or keep.max() >= n):
        raise AlgebraError(f"{what}: keep indices out of range for {n} channels")
    if keep.size == 0:
        raise AlgebraError(f"{what}: pruning would remove all {n} channels (keep at least one)")
    return np.sort(keep)


def slice_vector(v, keep):
    """A per-channel vector (bias, BN parameter) restricted to the kept channels; None stays None."""
    if v is None:
        return None
    v = np.asarray(v)
    return v.reshape(-1)[_idx(keep, v.size, "vector")]


def slice_conv(p: ConvParams, keep_out=None, keep_in=None) -> ConvParams:
    """The conv restricted to kept output and input channels.

    Dense convs slice both axes independently. Depthwise convs (one input channel per group, multiplier
    1) keep in == out: the kept sets must be equal and the group count becomes the new channel count.
    Other grouped convs stay grouped with equal group sizes: the kept channels must be the same
    positions r in every group (output k*O/g + r, input k*I/g + r), which the channel graph guarantees
    (it couples those positions into one unit); the group count stays g.
    """
    O, I, g = p.out_channels, p.in_channels, p.group
    ko = _idx(keep_out, O, "conv outputs")
    ki = _idx(keep_in, I, "conv inputs")
    if g == 1:
        w = np.asarray(p.weight)[ko][:, ki]
        return p.replace(weight=w, bias=slice_vector(p.bias, ko), group=1)
    if g == I == O:
        if not np.array_equal(ko, ki):
            raise AlgebraError("depthwise conv: kept input and output channels must be the same")
        return p.replace(weight=np.asarray(p.weight)[ko], bias=slice_vector(p.bias, ko), group=int(ko.size))
    pos_in = _group_positions(ki, I, g, "inputs")
    _group_positions(ko, O, g, "outputs")
    w = np.asarray(p.weight)[ko][:, pos_in]
    return p.replace(weight=w, bias=slice_vector(p.bias, ko), group=g)


def _group_positions(keep: np.ndarray, n: int, g: int, what: str) -> np.ndarray:
    """The kept positions within one group of a grouped conv's n channels; the same in every group, or refused."""
    per = n // g
    pos = keep[keep < per]
    if keep.size != pos.size * g or not np.array_equal(keep, (np.arange(g)[:, None] * per + pos[None, :]).ravel()):
        raise AlgebraError(f"grouped conv (group={g}): kept {what} must be the same positions in every group "
                           "(equal group sizes)")
    return pos


@dataclasses.dataclass
class ConvTransposeParams:
    """A transposed conv's weight (I, O/group, *k) and bias (O,): its output channel k*O/g + r is column r of
    the input rows of group k. Only what channel pruning reads (slicing, filter norms, zero filters)."""
    weight: np.ndarray
    bias: np.ndarray | None
    group: int = 1

    @property
    def in_channels(self) -> int:
        return int(np.shape(self.weight)[0])

    @property
    def out_channels(self) -> int:
        return int(np.shape(self.weight)[1]) * self.group

    def filters(self) -> np.ndarray:
        """One row per output channel (O, I/group * prod(k)): the weights that write it."""
        w = np.asarray(self.weight)
        g, ci, co = self.group, self.in_channels // self.group, w.shape[1]
        return np.swapaxes(w.reshape(g, ci, co, -1), 1, 2).reshape(g * co, -1)


def slice_conv_transpose(p: ConvTransposeParams, keep_out=None, keep_in=None) -> ConvTransposeParams:
    """The transposed conv restricted to kept output and input channels; a grouped one keeps equal groups (the
    same positions in every group, as slice_conv)."""
    O, I, g = p.out_channels, p.in_channels, p.group
    ko = _idx(keep_out, O, "conv-transpose outputs")
    ki = _idx(keep_in, I, "conv-transpose inputs")
    pos_out = ko if g == 1 else _group_positions(ko, O, g, "outputs")
    if g > 1:
        _group_positions(ki, I, g, "inputs")
    return ConvTransposeParams(np.asarray(p.weight)[ki][:, pos_out], slice_vector(p.bias, ko), g)


def slice_linear(p: LinearParams, keep_out=None, keep_in=None) -> LinearParams:
    ko = _idx(keep_out, p.out_features, "linear outputs")
    ki = _idx(keep_in, p.in_features, "linear inputs")
    return LinearParams(np.asarray(p.weight)[ko][:, ki], slice_vector(p.bias, ko))


def _constant_inputs(idx, values) -> tuple[np.ndarray, np.ndarray]:
    """(channel indices, their float64 values), one value per index."""
    idx = np.asarray(idx, dtype=np.int64).reshape(-1)
    values = f64(values).reshape(-1)
    if idx.size != values.size:
        raise AlgebraError(f"{idx.size} constant inputs but {values.size} values")
    return idx, values


def fold_constant_inputs_linear(p: LinearParams, idx, values) -> LinearParams:
    """Add the contribution of constant inputs x[idx] = values to the bias (the inputs stay in W; slice after)."""
    idx, values = _constant_inputs(idx, values)
    dtype = out_dtype(p.weight, p.bias)
    if not np.any(values):
        return p
    b = (f64(p.bias) if p.bias is not None else np.zeros(p.out_features)) + f64(p.weight)[:, idx] @ values
    return LinearParams(p.weight, b.astype(dtype))


def fold_constant_inputs_conv(p: ConvParams, idx, values, input_spatial=None):
    """(conv, bias_map or None): the conv whose bias holds the contribution of constant input channels.

    Input channel idx[k] is the constant values[k] everywhere. Without padding reads the contribution is
    the same at every output position and goes into the bias; with padding it is smaller near the border
    and comes back as a per-position `bias_map` (O, *out_spatial) that replaces the bias (needs
    input_spatial). The constant channels are still in the weight: slice them off afterwards.
    """
    idx, values = _constant_inputs(idx, values)
    dtype = out_dtype(p.weight, p.bias)
    if not np.any(values):
        return p, None
    const = np.zeros(p.in_channels)
    const[idx] = values
    if not any(p.pads):
        # every window reads real pixels only: conv of a constant map = per-channel weight sums
        g, O = p.group, p.out_channels
        Ig = p.in_channels // g
        sums = f64(p.weight).reshape(O, Ig, -1).sum(axis=2).reshape(g, O // g, Ig)
        contrib = np.einsum("goi,gi->go", sums, const.reshape(g, Ig)).reshape(O)
        b = (f64(p.bias) if p.bias is not None else 0.0) + contrib
        return p.replace(bias=b.astype(dtype)), None
    if input_spatial is None:
        raise AlgebraError("a constant channel read through zero padding needs the input spatial size "
                           "(its contribution differs on the border)")
    bias_map = constant_through_conv(const, p, input_spatial)
    flat = bias_map.reshape(bias_map.shape[0], -1)
    if np.all(flat == flat[:, :1]):  # no border effect after all (e.g. the border reads are all-zero taps)
        return p.replace(bias=flat[:, 0].astype(dtype)), None
    return p.replace(bias=None), bias_map.astype(dtype)


def filter_norms(weight, axis: int = 0, order: int = 1) -> np.ndarray:
    """L1 (order 1) or L2 (order 2) norm of each slice of `weight` along `axis` (one per channel)."""
    if order not in (1, 2):
        raise AlgebraError(f"importance norm must be L1 or L2, got L{order}")
    w = np.moveaxis(f64(weight), axis, 0).reshape(np.shape(weight)[axis], -1)
    return np.abs(w).sum(axis=1) if order == 1 else np.sqrt((w * w).sum(axis=1))


def keep_count(n: int, ratio: float, round_to: int = 1) -> int:
    """Channels kept when pruning a fraction `ratio` of n, rounded up to a multiple of round_to (<= n)."""
    if not 0.0 <= ratio < 1.0:
        raise AlgebraError(f"prune ratio must be in [0, 1), got {ratio}")
    return round_keep(n - int(math.floor(ratio * n + 1e-9)), n, round_to)


def round_keep(k: int, n: int, round_to: int = 1) -> int:
    """k rounded up to a multiple of round_to, but never above n (a layer keeps all it has)."""
    if round_to < 1:
        raise AlgebraError(f"round-to must be >= 1, got {round_to}")
    k = max(int(k), 0)
    r = int(math.ceil(k / round_to)) * round_to if k else 0
    return min(max(r, 0), n)
