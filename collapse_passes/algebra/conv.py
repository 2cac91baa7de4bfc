"""Exact algebra of convolutions: folding affine maps, composing two convs, adding skips.

Conventions are ONNX's (torch's are the same): weight (O, I/group, *kernel); cross-correlation
y[o, t] = sum_{i,k} W[o, i, k] * x[i, s*t + d*k - pad_begin] + b[o]; `pads` is
(begin_1..begin_n, end_1..end_n); every spatial rank n >= 1 is supported.

Everything is composed in float64 and returned in the dtype of the inputs, so that a float32 model
stays float32 and rounding happens once.

Exactness of `compose_conv` (derivation, per spatial axis; k, s, d, p are that axis's values,
D = d*(k-1)+1 the dilated extent, n1 the first conv's output length, N the input length):

* The merged conv reads x at s1*(s2*u + d2*k2 - p2b) + d1*k1 - p1b, i.e. kernel offset
  s1*d2*k2 + d1*k1 (a full convolution of the two dilated kernels), stride s1*s2, begin pad
  p1b + s1*p2b. The end pad p1e + s1*p2e gives exactly the sequential output size, because for
  integers floor(floor(a/s1)/s2) == floor(a/(s1*s2)).
* The only difference: where the second conv reads its zero padding (y position t < 0 or t >= n1),
  the merged conv applies W1 to x instead. That is still zero when the first conv's window at every
  such t lies entirely in x's zero padding, i.e. x indices s1*t - p1b + d1*j (j < k1) all outside
  [0, N). With N known the read positions are enumerated (necessary and sufficient for generic
  weights). Without N: begin side checked at the read t < 0 closest to the image (t = -1 when
  d2 = 1: D1 <= s1 + p1b); end side needs p1e >= D1 - 1 (worst case over N).
  A first conv with k1 = 1 (any stride, any pads) always passes. The first conv's *bias* is missing
  at those positions in the sequential result, so when b1 != 0 it is supplied as a per-position
  `bias_map` (needs the input size).
* Otherwise (e.g. 3x3 'same' then 3x3 'same') the merged conv differs on an outer ring of the
  output; `exact_output_region` gives the part that still matches.
* End padding the second conv never reads (floor division drops it) is trimmed first when the input
  size is known, which can turn a padded case into an exact one.
* Groups: the merged conv has gcd(g1, g2) groups (the connected components of the two aligned
  partitions of the middle channels), so depthwise o depthwise stays depthwise.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from ._common import AlgebraError, f64, is_zero, out_dtype, per_channel
from .runmap import RunMap

__all__ = [
    "ConvParams",
    "auto_pads",
    "MergedConv",
    "bn_to_affine",
    "fold_affine_after",
    "fold_affine_before",
    "compose_conv",
    "compose_conv_chain",
    "extend_chain",
    "merge_is_exact",
    "merge_exactness",
    "exact_output_region",
    "trim_unread_end_pads",
    "add_identity_skip",
    "add_pointwise_skip",
    "conv_nd",
    "constant_through_conv",
    "densify_weight",
    "regroup_weight",
    "max_block_diagonal_groups",
    "map_through_conv",
    "map_through_dense",
    "map_through_scale",
    "map_through_mean",
    "spatially_constant",
    "pointwise_as_linear",
]


def _int_tuple(v, name: str) -> tuple:
    try:
        return tuple(int(x) for x in v)
    except TypeError as e:  # a scalar
        raise AlgebraError(f"{name} must be a sequence of ints, got {v!r}") from e


@dataclass
class ConvParams:
    """One convolution's constants and attributes, in ONNX conventions (see module docstring).

    Empty strides/pads/dilations mean the ONNX defaults (1, 0, 1); lists are normalised to tuples.
    """

    weight: np.ndarray
    bias: np.ndarray | None = None
    strides: tuple = ()
    pads: tuple = ()
    dilations: tuple = ()
    group: int = 1

    def __post_init__(self):
        self.weight = np.asarray(self.weight)
        if self.weight.ndim < 3:
            raise AlgebraError(
                f"conv weight must be (O, I/group, *kernel) with at least one spatial axis, "
                f"got shape {self.weight.shape}")
        n = self.weight.ndim - 2
        self.strides = _int_tuple(self.strides, "strides") or (1,) * n
        self.pads = _int_tuple(self.pads, "pads") or (0,) * (2 * n)
        self.dilations = _int_tuple(self.dilations, "dilations") or (1,) * n
        self.group = int(self.group)
        if len(self.strides) != n or len(self.dilations) != n or len(self.pads) != 2 * n:
            raise AlgebraError(
                f"conv with {n} spatial axes needs {n} strides, {n} dilations and {2 * n} pads; got "
                f"strides={self.strides}, dilations={self.dilations}, pads={self.pads}")
        if min(self.strides) < 1 or min(self.dilations) < 1 or min(self.pads) < 0:
            raise AlgebraError(
                f"strides and dilations must be >= 1 and pads >= 0; got strides={self.strides}, "
                f"dilations={self.dilations}, pads={self.pads}")
        if self.group < 1 or self.weight.shape[0] % self.group:
            raise AlgebraError(
                f"group={self.group} must divide the {self.weight.shape[0]} output channels")
        if self.bias is not None:
            self.bias = np.asarray(self.bias).reshape(-1)
            if self.bias.shape[0] != self.weight.shape[0]:
                raise AlgebraError(
                    f"conv bias has {self.bias.shape[0]} entries for {self.weight.shape[0]} output channels")

    # -- shape facts -----------------------------------------------------------------------------
    @property
    def out_channels(self) -> int:
        return int(self.weight.shape[0])

    @property
    def in_channels(self) -> int:
        return int(self.weight.shape[1]) * self.group

    @property
    def kernel_shape(self) -> tuple:
        return tuple(int(k) for k in self.weight.shape[2:])

    @property
    def ndim(self) -> int:
        """Number of spatial axes."""
        return self.weight.ndim - 2

    @property
    def pads_begin(self) -> tuple:
        return self.pads[: self.ndim]

    @property
    def pads_end(self) -> tuple:
        return self.pads[self.ndim:]

    @property
    def effective_kernel(self) -> tuple:
        """Dilated extent d*(k-1)+1 per axis: how much input one output reads."""
        return tuple(d * (k - 1) + 1 for d, k in zip(self.dilations, self.kernel_shape))

    @property
    def is_pointwise(self) -> bool:
        """1x1, stride 1, no padding: a per-position channel mix."""
        return (all(k == 1 for k in self.kernel_shape) and all(s == 1 for s in self.strides)
                and not any(self.pads))

    @property
    def is_depthwise(self) -> bool:
        """One input channel per group (channel multiplier = out/in)."""
        return self.group == self.in_channels and self.group > 1

    def output_spatial(self, input_spatial) -> tuple:
        """ONNX/torch output size: floor((n + pb + pe - D) / s) + 1 per axis (may be <= 0 if too small)."""
        input_spatial = _int_tuple(input_spatial, "input_spatial")
        if len(input_spatial) != self.ndim:
            raise AlgebraError(f"input_spatial {input_spatial} has {len(input_spatial)} axes, conv has {self.ndim}")
        return tuple(
            (n + pb + pe - D) // s + 1
            for n, pb, pe, D, s in zip(input_spatial, self.pads_begin, self.pads_end,
                                       self.effective_kernel, self.strides))

    def replace(self, **changes) -> "ConvParams":
        return dataclasses.replace(self, **changes)


@dataclass
class MergedConv:
    """Result of composing two convs.

    `bias_map` (shape (O, *out_spatial)), when not None, replaces `params.bias` (which is then None):
    it is added after the conv because the first conv's bias reaches the border with less weight.
    `exact` says whether merged == sequential everywhere; `reason` says why (or why not).
    """

    params: ConvParams
    bias_map: np.ndarray | None
    exact: bool
    reason: str
    #: True for compose_conv(..., values=False): shapes, bias and exactness are real, but the weight and
    #: the bias map are read-only zero placeholders of the right shape (for pricing, never for use)
    shape_only: bool = False


# -- affine folds -----------------------------------------------------------------------------------

def bn_to_affine(gamma, beta, mean, var, eps: float = 1e-5):
    """Eval-mode BatchNorm as y = scale*x + shift per channel (scale = gamma/sqrt(var+eps))."""
    dtype = out_dtype(gamma, beta, mean, var)
    gamma, beta, mean, var = (np.asarray(a, dtype=np.float64).reshape(-1) for a in (gamma, beta, mean, var))
    scale = gamma / np.sqrt(var + float(eps))
    shift = beta - mean * scale
    return scale.astype(dtype), shift.astype(dtype)


def fold_affine_after(p: ConvParams, scale=None, shift=None) -> ConvParams:
    """scale*conv(x) + shift per output channel (a BN or Mul/Add after the conv) as one conv."""
    dtype = out_dtype(p.weight, p.bias, scale, shift)
    O = p.out_channels
    sc = per_channel(scale, O, "scale", 1.0)
    sh = per_channel(shift, O, "shift", 0.0)
    w = f64(p.weight) * sc.reshape((O,) + (1,) * (p.weight.ndim - 1))
    b = (f64(p.bias) if p.bias is not None else 0.0) * sc + sh
    return p.replace(weight=w.astype(dtype), bias=b.astype(dtype))


def _weight_times_constant(weight, group: int, vec: np.ndarray) -> np.ndarray:
    """Output of a conv (no bias, no padding effects) on a spatially constant input `vec` (per in channel)."""
    w = f64(weight)
    O, Ig = w.shape[:2]
    sums = w.reshape(O, Ig, -1).sum(axis=2).reshape(group, O // group, Ig)
    return np.einsum("goi,gi->go", sums, vec.reshape(group, Ig)).reshape(O)


def fold_affine_before(p: ConvParams, scale=None, shift=None) -> ConvParams:
    """conv(scale*x + shift) per input channel as one conv.

    The shift is folded as conv-of-a-constant, which is what the conv sees only where it reads no
    zero padding; so a nonzero shift with nonzero pads is refused. A pure scale is always exact
    (scaled zero padding is still zero).
    """
    dtype = out_dtype(p.weight, p.bias, scale, shift)
    I, O, g = p.in_channels, p.out_channels, p.group
    sc = per_channel(scale, I, "scale", 1.0)
    sh = per_channel(shift, I, "shift", 0.0)
    if any(p.pads) and np.any(sh):
        raise AlgebraError(
            f"cannot fold a per-channel shift into a conv with pads={p.pads}: its zero padding would need "
            f"the shift too (fold it after the previous op, or keep the Add)")
    Ig = I // g
    k = p.kernel_shape
    w = f64(p.weight).reshape((g, O // g, Ig) + k) * sc.reshape((g, 1, Ig) + (1,) * len(k))
    w = w.reshape(p.weight.shape)
    b = (f64(p.bias) if p.bias is not None else np.zeros(O)) + _weight_times_constant(p.weight, g, sh)
    if p.bias is None and not np.any(sh):
        b = None
    return p.replace(weight=w.astype(dtype), bias=None if b is None else b.astype(dtype))


# -- group structure --------------------------------------------------------------------------------

def _dense_blocks(weight, group: int, G: int) -> np.ndarray:
    """Grouped weight (O, I/group, *k) as G dense diagonal blocks (G, O/G, I/G, *k), float64.

    G must divide group; each block is itself block-diagonal over group/G sub-groups.
    """
    if group % G:
        raise AlgebraError(f"internal: {G} groups do not divide group={group}")
    w = f64(weight)
    O, Ig = w.shape[:2]
    k = w.shape[2:]
    r, Og = group // G, O // group
    w = w.reshape((G, r, Og, Ig) + k)
    out = np.zeros((G, r, Og, r, Ig) + k)
    for a in range(r):
        out[:, a, :, a] = w[:, a]
    return out.reshape((G, r * Og, r * Ig) + k)


def densify_weight(weight, group: int) -> np.ndarray:
    """Grouped conv weight (O, I/group, *k) as the equivalent dense (O, I, *k) weight."""
    return _dense_blocks(weight, int(group), 1)[0].astype(out_dtype(weight))


def regroup_weight(dense, group: int) -> np.ndarray:
    """Dense (O, I, *k) weight as a grouped (O, I/group, *k) one; raises if it is not block-diagonal."""
    dense = np.asarray(dense)
    O, I = dense.shape[:2]
    if O % group or I % group:
        raise AlgebraError(f"group={group} does not divide {O} out / {I} in channels")
    Og, Ig = O // group, I // group
    blocks = dense.reshape((group, Og, group, Ig) + dense.shape[2:])
    off = blocks.copy()
    idx = np.arange(group)
    off[idx, :, idx] = 0
    if np.any(off):
        raise AlgebraError(f"weight is not block-diagonal for group={group}")
    return np.ascontiguousarray(blocks[idx, :, idx].reshape((O, Ig) + dense.shape[2:]))


def max_block_diagonal_groups(dense) -> int:
    """Largest group count for which a dense (O, I, *k) weight is block-diagonal (value-based: exact zeros).

    `compose_conv` uses the structural answer gcd(g1, g2) instead, so results do not depend on which
    weights happen to be zero; this helper is for callers that want to exploit pruned weights.
    """
    dense = np.asarray(dense)
    O, I = dense.shape[:2]
    nz = np.any(dense.reshape(O, I, -1) != 0, axis=2)
    for g in sorted((g for g in range(1, math.gcd(O, I) + 1) if O % g == 0 and I % g == 0), reverse=True):
        Og, Ig = O // g, I // g
        rows = np.arange(O) // Og
        cols = np.arange(I) // Ig
        if not np.any(nz & (rows[:, None] != cols[None, :])):
            return g
    return 1


# -- reference conv (for bias maps and for callers without torch) -----------------------------------

def conv_nd(x, p: ConvParams):
    """Plain numpy ONNX Conv of x (N, C, *spatial), float64. Used for bias maps.

    A bias map is constant away from the border (a run of equal slices along each axis): the conv then
    runs on the map with most of that run cut out and the output's own run is put back (_cut_runs),
    exactly; a MobileNetV2 map at 224 x 224 costs a few percent of the whole conv. x may be a RunMap
    (bias maps carried by PropagateBiasMaps): the cut map is then taken from its core, the same array
    the dense map gives, and the result is a RunMap of the conv of it (never the full map)."""
    compact = isinstance(x, RunMap)
    if not compact:
        x = f64(x)
    if x.ndim != p.ndim + 2 or x.shape[1] != p.in_channels:
        raise AlgebraError(f"input shape {x.shape} does not fit conv with {p.in_channels} in channels, "
                           f"{p.ndim} spatial axes")
    cut = _cut_runs(x.core, p, x.idx) if compact else _cut_runs(x, p)
    if cut is None:
        y = _conv_nd(x.dense() if compact else x, p)
        return RunMap(y) if compact else y
    small, take = cut
    y = _conv_nd(small, p)
    if compact:
        idx = [np.arange(n) for n in y.shape[2:]]
        for axis, i in take:
            idx[axis - 2] = i
        return RunMap(y, idx).onto()
    for axis, idx in take:
        y = np.take(y, idx, axis=axis)
    return y


#: spatial size from which conv_nd looks for runs of equal slices to cut (below it the conv is cheap). 256: the
#: 28 x 28 maps of a MobileNetV2 at 224 (up to 960 channels, 5-30 ms each in float64) are cut too (was 1024)
CUT_RUNS_MIN_SIZE = 256


def _cut_runs(x: np.ndarray, p: ConvParams, idx=None):
    """(the map with most of each run of equal slices cut out, [(axis, output index map)]) or None.

    Along an axis, slices lo..hi-1 (the run around the middle) are equal; window w = d(k-1)+1, stride s.
    Cutting D slices (a multiple of s) out of the run after its first K = w + s keeps a run of
    2K..2K+s-1 slices. An output whose window starts before the run reads the same slices in the cut
    map at the same index; one whose window ends after the run reads them D/s outputs earlier; one whose
    window lies inside the run reads only run slices, as does the first output of the cut map whose window
    starts in the run. So every output is one output of the conv of the cut map, copied: exact.

    idx (a RunMap's): x is its core and the map is x taken at idx[a] along spatial axis a. Slices of the
    map are equal exactly when the core slices they read are (idx reads every core slice), so the runs,
    the cut and the cut map's values are those of the dense map."""
    spatial = tuple(len(i) for i in idx) if idx is not None else x.shape[2:]
    if int(np.prod(spatial)) < CUT_RUNS_MIN_SIZE:
        return None
    if idx is None:
        idx = [np.arange(n) for n in spatial]
    take, kept = [], []
    out_sp = p.output_spatial(spatial)   # of the whole map: the sizes the outputs are copied back to
    for a, (n, k, d, s, b, m) in enumerate(zip(spatial, p.kernel_shape, p.dilations, p.strides, p.pads_begin,
                                                out_sp)):
        axis = a + 2
        ia = idx[a]
        mid = n // 2
        others = tuple(i for i in range(x.ndim) if i != axis)
        eq = np.all(x == np.take(x, [ia[mid]], axis=axis), axis=others)[ia]
        lo, hi = mid, mid + 1
        while lo > 0 and eq[lo - 1]:
            lo -= 1
        while hi < n and eq[hi]:
            hi += 1
        w = d * (k - 1) + 1
        keep = w + s
        D = (hi - lo - 2 * keep) // s * s
        if D <= 0:
            kept.append((axis, ia))
            continue
        x = np.take(x, np.delete(ia, np.s_[lo + keep:lo + keep + D]), axis=axis)
        start = np.arange(m) * s - b          # first slice each output's window reads
        inside = -(-(lo + b) // s)            # the cut map's first output whose window starts in the run
        idx_out = np.where(start < lo, np.arange(m), np.where(start + w > hi, np.arange(m) - D // s, inside))
        take.append((axis, idx_out))
    if not take:
        return None
    for axis, ia in kept:   # axes without a run to cut: the map's own slices
        if not (len(ia) == x.shape[axis] and np.array_equal(ia, np.arange(len(ia)))):
            x = np.take(x, ia, axis=axis)
    return x, take


def _conv_nd(x: np.ndarray, p: ConvParams) -> np.ndarray:
    N = x.shape[0]
    out_sp = p.output_spatial(x.shape[2:])
    if min(out_sp) < 1:
        raise AlgebraError(f"input spatial {x.shape[2:]} too small for this conv (output {out_sp})")
    xp = np.pad(x, [(0, 0), (0, 0)] + list(zip(p.pads_begin, p.pads_end)))
    g, O = p.group, p.out_channels
    Ig, Og = p.in_channels // g, O // g
    w = f64(p.weight).reshape((g, Og, Ig) + p.kernel_shape)
    P = int(np.prod(out_sp))
    depthwise = Ig == 1 and Og == 1   # one channel in, one out: a multiply-add per tap (batched 1x1 matmuls: 8x slower)
    y = np.zeros((N, O) + out_sp) if depthwise else np.zeros((N, g, Og, P))
    for idx in np.ndindex(*p.kernel_shape):
        sl = tuple(slice(d * i, d * i + s * (n - 1) + 1, s)
                   for i, d, s, n in zip(idx, p.dilations, p.strides, out_sp))
        patch = xp[(slice(None), slice(None)) + sl]
        if depthwise:
            y += w[(Ellipsis,) + idx].reshape((1, O) + (1,) * p.ndim) * patch
        else:
            y += np.matmul(w[(Ellipsis,) + idx], patch.reshape(N, g, Ig, P))  # (g, Og, Ig) @ (N, g, Ig, P)
    y = y.reshape((N, O) + out_sp)
    if p.bias is not None:
        y += f64(p.bias).reshape((1, O) + (1,) * p.ndim)
    return y


def constant_through_conv(values, p: ConvParams, input_spatial, compact: bool = False):
    """conv_nd of a map holding values[c] at every position of channel c (input size `input_spatial`),
    float64, shape (O, *out_spatial): what a per-channel constant (a bias) becomes through a conv with
    zero padding. Exact and cheap: the input is constant, so output (o, y) = sum over taps k of
    V[o, k] * prod_a inside_a(k_a, y_a), with V the taps' weights summed against the constants and
    inside_a(k, y) = 1 when tap k of output y reads a real pixel along axis a. conv_nd on the broadcast
    map (a float64 copy of the padded map per tap) took 0.8 s and ~80 MB per MobileNetV2 merge at 224.

    compact=True: the map as a RunMap (1, O, *out_spatial), the dense map's bits. Along every axis but the
    last, positions whose taps read the same real pixels (every interior one) are kept once, as rows of
    the later products: each BLAS call keeps its sums (K) and columns (N) and only loses rows (M). The last
    axis is summed at every position: given fewer columns BLAS may sum one differently (a 1-D 4-tap conv
    summed on its one distinct column: 2 ulp apart), and the map written must be the dense computation's.
    A CIFAR MobileNetV2 at 224 wrote a 77 MB float64 map here per merge."""
    values = f64(values).reshape(-1)
    if values.shape[0] != p.in_channels:
        raise AlgebraError(f"{values.shape[0]} constants for a conv with {p.in_channels} in channels")
    out_sp = p.output_spatial(tuple(input_spatial))
    if min(out_sp) < 1:
        raise AlgebraError(f"input spatial {tuple(input_spatial)} too small for this conv (output {out_sp})")
    if not np.all(np.isfinite(values)):
        # inf * (tap reads padding: 0) is NaN in the separable sum, while the conv adds weight * 0 there
        shape = (1, p.in_channels) + tuple(input_spatial)
        y = conv_nd(np.broadcast_to(values.reshape((1, -1) + (1,) * p.ndim), shape), p)
        return RunMap.from_dense(y) if compact else y[0]
    g, O = p.group, p.out_channels
    Ig = p.in_channels // g
    w = f64(p.weight).reshape((g, O // g, Ig) + p.kernel_shape)
    out = np.einsum("goi...,gi->go...", w, values.reshape(g, Ig)).reshape((O,) + p.kernel_shape)
    idx = []
    for a, (k, d, s, b, n, m) in enumerate(zip(p.kernel_shape, p.dilations, p.strides, p.pads_begin, input_spatial,
                                               out_sp)):
        read = np.arange(m)[None, :] * s - b + np.arange(k)[:, None] * d   # (k, m): input index read
        inside = (read >= 0) & (read < n)
        out = np.tensordot(out, inside.astype(np.float64), axes=([1], [0]))
        if compact and a < p.ndim - 1:
            # positions whose taps read the same real pixels hold the same numbers from here on: the later
            # products take the distinct ones as rows (M), their sums and N the dense map's
            _, first, inv = np.unique(inside, axis=1, return_index=True, return_inverse=True)
            if out.size // m * len(first) // out.shape[1] > 1:   # a matrix still (numpy takes a vector to gemv)
                out = np.take(out, first, axis=out.ndim - 1)
                idx.append(inv.reshape(-1))
                continue
        idx.append(np.arange(m))
    if p.bias is not None:
        out += f64(p.bias).reshape((O,) + (1,) * p.ndim)
    return RunMap(out[None], idx) if compact else out


def auto_pads(auto_pad: str, input_spatial, kernel_shape, strides=(), dilations=()) -> tuple | None:
    """ONNX Conv's `auto_pad` as explicit pads (begin_1..begin_n, end_1..end_n) for a known input size.

    VALID: no padding. SAME_UPPER / SAME_LOWER: output ceil(n / s), total pad
    max((ceil(n/s) - 1)*s + D - n, 0) with D = d*(k-1)+1, split evenly, the odd one at the end (UPPER)
    or at the begin (LOWER). NOTSET: None (the `pads` attribute holds them); an unknown mode: None."""
    mode = auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad)
    n = len(kernel_shape)
    if mode == "VALID":
        return (0,) * (2 * n)
    if mode not in ("SAME_UPPER", "SAME_LOWER"):
        return None
    strides = _int_tuple(strides, "strides") or (1,) * n
    dilations = _int_tuple(dilations, "dilations") or (1,) * n
    begin, end = [], []
    for size, k, s, d in zip(_int_tuple(input_spatial, "input_spatial"), kernel_shape, strides, dilations):
        total = max((-(-size // s) - 1) * s + d * (int(k) - 1) + 1 - size, 0)
        small, big = total // 2, total - total // 2
        begin.append(small if mode == "SAME_UPPER" else big)
        end.append(big if mode == "SAME_UPPER" else small)
    return tuple(begin) + tuple(end)


# -- composition ------------------------------------------------------------------------------------

def trim_unread_end_pads(p: ConvParams, input_spatial) -> ConvParams:
    """Drop end padding that no output reads (floor division discards it); same output, fewer pads."""
    out = p.output_spatial(input_spatial)
    ends = []
    for n, no, pb, pe, D, s in zip(input_spatial, out, p.pads_begin, p.pads_end, p.effective_kernel, p.strides):
        last_read = s * (no - 1) + D - 1 - pb  # in unpadded coordinates
        ends.append(min(pe, max(0, last_read - (n - 1))))
    return p.replace(pads=tuple(p.pads_begin) + tuple(ends))


def exact_output_region(first: ConvParams, second: ConvParams, input_spatial) -> tuple:
    """Slices of the merged output where merged == sequential even when the merge is inexact.

    Conservative: the output positions whose second-conv window reads no padding of the first's output.
    """
    n1 = first.output_spatial(input_spatial)
    n2 = second.output_spatial(n1)
    region = []
    for N1, N2, pb, D2, s2 in zip(n1, n2, second.pads_begin, second.effective_kernel, second.strides):
        lo = -(-pb // s2)
        hi = (N1 - D2 + pb) // s2  # last u with s2*u + D2 - 1 - pb <= N1 - 1
        lo, hi = max(lo, 0), min(hi, N2 - 1)
        region.append(slice(lo, max(lo, hi + 1)))
    return tuple(region)


def _tap_products(first: ConvParams, second: ConvParams, G: int):
    """For each tap of the second kernel: the (G, O/G, I/G, *k1) product of its channel matrix with W1.

    Computed per group structure, never by densifying a grouped weight: within a G-block one of the
    two convs is dense (r = 1) in the common cases (pointwise/depthwise mixes), and the product is a
    batched matmul over the other's sub-groups -- O*M*(I/g1)*K1 work instead of O*M*I*K1.
    """
    w1, w2 = f64(first.weight), f64(second.weight)
    r1, r2 = first.group // G, second.group // G
    O, M = second.out_channels, first.out_channels
    Ob, Mb, Ib = O // G, M // G, first.in_channels // G
    k1, k2 = first.kernel_shape, second.kernel_shape
    K1 = int(np.prod(k1))
    if r2 == 1:
        # second dense within the block: columns of each first sub-group a are W2[:, mids(a)] @ W1[a]
        M1, I1 = Mb // r1, Ib // r1
        B = w1.reshape(G, r1, M1, I1 * K1)
        for idx2 in np.ndindex(*k2):
            A = w2[(Ellipsis,) + idx2].reshape(G, Ob, r1, M1).transpose(0, 2, 1, 3)   # (G, r1, Ob, M1)
            C = np.matmul(A, B)                                                         # (G, r1, Ob, I1*K1)
            yield idx2, C.reshape((G, r1, Ob, I1) + k1).transpose((0, 2, 1, 3) + tuple(range(4, 4 + len(k1)))) \
                .reshape((G, Ob, Ib) + k1)
    elif r1 == 1:
        # first dense within the block: rows of each second sub-group b are W2[b] @ W1[mids(b)]
        O2, M2 = Ob // r2, Mb // r2
        B = w1.reshape(G, r2, M2, Ib * K1)
        for idx2 in np.ndindex(*k2):
            A = w2[(Ellipsis,) + idx2].reshape(G, r2, O2, M2)
            yield idx2, np.matmul(A, B).reshape((G, Ob, Ib) + k1)
    else:  # both grouped with co-prime sub-partitions: rare, densify within the block
        W1b = _dense_blocks(first.weight, first.group, G)
        W2b = _dense_blocks(second.weight, second.group, G)
        B = W1b.reshape(G, Mb, Ib * K1)
        for idx2 in np.ndindex(*k2):
            yield idx2, np.matmul(W2b[(Ellipsis,) + idx2], B).reshape((G, Ob, Ib) + k1)


def _composed_kernel_shape(first: ConvParams, second: ConvParams):
    """(merged kernel shape, merged dilation): _compose_kernels' geometry without the products."""
    k1, k2 = first.kernel_shape, second.kernel_shape
    km, mdil = [], []
    for a in range(first.ndim):
        step2 = first.strides[a] * second.dilations[a]
        step1 = first.dilations[a]
        gm = math.gcd(step2 if k2[a] > 1 else 0, step1 if k1[a] > 1 else 0) or 1
        mdil.append(gm)
        km.append((step2 * (k2[a] - 1) + step1 * (k1[a] - 1)) // gm + 1)
    return tuple(km), tuple(mdil)


def _compose_kernels(first: ConvParams, second: ConvParams, G: int):
    """Merged dense-block kernel (G, O/G, I/G, *km) and its dilation.

    Offset of tap pair (k1, k2) is s1*d2*k2 + d1*k1; the merged dilation is the gcd of the two steps
    (1 in general, d when both convs share dilation d and s1 = 1), so no structural zeros are stored
    when a common dilation exists.
    """
    k1, k2 = first.kernel_shape, second.kernel_shape
    step2 = [s1 * d2 for s1, d2 in zip(first.strides, second.dilations)]
    step1 = list(first.dilations)
    mdil, km, st1, st2 = [], [], [], []
    for a in range(first.ndim):
        gm = math.gcd(step2[a] if k2[a] > 1 else 0, step1[a] if k1[a] > 1 else 0) or 1
        mdil.append(gm)
        km.append((step2[a] * (k2[a] - 1) + step1[a] * (k1[a] - 1)) // gm + 1)
        st1.append(step1[a] // gm if k1[a] > 1 else 1)
        st2.append(step2[a] // gm if k2[a] > 1 else 1)
    out = np.zeros((G, second.out_channels // G, first.in_channels // G) + tuple(km))
    for idx2, contrib in _tap_products(first, second, G):
        sl = tuple(slice(i * st2[a], i * st2[a] + st1[a] * (k1[a] - 1) + 1, st1[a]) for a, i in enumerate(idx2))
        out[(slice(None),) * 3 + sl] += contrib
    return out, tuple(mdil)


def _check_chain(first: ConvParams, second: ConvParams):
    if first.ndim != second.ndim:
        raise AlgebraError(f"cannot merge a {first.ndim}-D conv with a {second.ndim}-D conv")
    if second.in_channels != first.out_channels:
        raise AlgebraError(
            f"cannot merge: the second conv expects {second.in_channels} input channels but the first "
            f"produces {first.out_channels}")


def _padding_read_check(first: ConvParams, second: ConvParams, a: int, input_spatial, n1, n2):
    """(begin_bad, end_bad, begin_read, end_read, any_real) for spatial axis a.

    *_read: the second conv reads its zero padding on that side; *_bad: at some such read the first
    conv's window would see a real input pixel along this axis; any_real: some read position's window
    sees a real pixel along this axis at all. With the input size known the reads are enumerated
    exactly; without it the begin side assumes any output length, the end side uses the all-N
    condition p1e >= D1 - 1, and any_real is assumed.
    """
    s1, d1, k1, p1b, p1e = first.strides[a], first.dilations[a], first.kernel_shape[a], \
        first.pads_begin[a], first.pads_end[a]
    s2, d2, k2, p2b, p2e = second.strides[a], second.dilations[a], second.kernel_shape[a], \
        second.pads_begin[a], second.pads_end[a]
    D1 = first.effective_kernel[a]
    if n1 is None:
        b_read, e_read = p2b > 0, p2e > 0
        b_bad = False
        if b_read:
            u = np.arange(-(-p2b // s2) + 1)
            T = (s2 * u[:, None] + d2 * np.arange(k2)[None, :] - p2b).ravel()
            t = T[T < 0].max()  # the read padded position closest to the image is the worst
            b_bad = s1 * t - p1b + D1 - 1 >= 0
        e_bad = e_read and p1e < D1 - 1
        return b_bad, e_bad, b_read, e_read, True
    N, N1, N2 = input_spatial[a], n1[a], n2[a]
    T = np.unique((s2 * np.arange(N2)[:, None] + d2 * np.arange(k2)[None, :] - p2b).ravel())
    taps = d1 * np.arange(k1)[None, :]

    def sees_real(ts):
        idx = s1 * ts[:, None] - p1b + taps
        return bool(np.any((idx >= 0) & (idx < N)))

    tb, te = T[T < 0], T[T >= N1]
    return sees_real(tb), sees_real(te), tb.size > 0, te.size > 0, sees_real(T)


def _chain_sizes(first: ConvParams, second: ConvParams, input_spatial):
    """(input_spatial, n1, n2, second with unread end pads trimmed); sizes None when unknown."""
    if input_spatial is None:
        return None, None, None, second
    input_spatial = _int_tuple(input_spatial, "input_spatial")
    n1 = first.output_spatial(input_spatial)
    if min(n1) < 1:
        raise AlgebraError(f"input {input_spatial} is too small for the first conv (output {n1})")
    n2 = second.output_spatial(n1)
    if min(n2) < 1:
        raise AlgebraError(f"input {input_spatial} is too small for the second conv (output {n2})")
    return input_spatial, n1, n2, trim_unread_end_pads(second, n1)


def _border_reads(first: ConvParams, second_t: ConvParams, input_spatial, n1, n2):
    """(bad sides, whether the second conv reads padding at all): the shape-only exactness test.

    Every position of the first conv's output that the second conv reads as zero padding must have a
    first-conv window lying entirely in x's zero padding. A read position contributes real pixels only
    if its window sees one along *every* axis, so an axis whose reads never see a real pixel makes the
    whole weight part vanish (exact, bias only).
    """
    bad, padded_read, all_axes_real = [], False, True
    for a in range(first.ndim):
        b_bad, e_bad, b_read, e_read, any_real = _padding_read_check(first, second_t, a, input_spatial, n1, n2)
        padded_read = padded_read or b_read or e_read
        all_axes_real = all_axes_real and any_real
        if b_bad:
            bad.append(f"axis {a} begin")
        if e_bad:
            bad.append(f"axis {a} end")
    return ([] if not all_axes_real else bad), padded_read


def _exactness(bad: list, padded_read: bool, has_first_bias: bool, size_known: bool) -> tuple[bool, str]:
    """(exact, reason) of a merge from its border reads; the single source of the reason texts."""
    if bad:
        return False, ("approximate: the second conv zero-pads the first conv's output but the merged conv "
                       f"sees real input pixels there ({', '.join(bad)}); the outer ring of the output differs "
                       "(merge only as an opt-in approximation, or move the padding to the first conv)")
    if padded_read and has_first_bias:
        if not size_known:
            return False, ("approximate: the first conv's bias reaches the padded border with less weight; "
                           "pass input_spatial to get an exact per-position bias_map")
        return True, "exact with a per-position bias_map (first conv's bias is smaller on the border)"
    return True, ("exact: the second conv reads no padding" if not padded_read else
                  "exact: the first conv's windows at the second's padding read only zero padding")


def merge_exactness(first: ConvParams, second: ConvParams, input_spatial=None) -> tuple[bool, str]:
    """(exact, reason) that compose_conv(first, second) would give, from shapes alone (no weight maths).

    Lets a planner reject inexact segments before paying for the kernel composition.
    """
    _check_chain(first, second)
    input_spatial, n1, n2, second_t = _chain_sizes(first, second, input_spatial)
    bad, padded_read = _border_reads(first, second_t, input_spatial, n1, n2)
    return _exactness(bad, padded_read, not is_zero(first.bias), input_spatial is not None)


def merge_is_exact(first: ConvParams, second: ConvParams, input_spatial=None) -> bool:
    return merge_exactness(first, second, input_spatial)[0]


def _placeholder(shape, dtype) -> np.ndarray:
    """A read-only array of zeros of `shape` that takes no memory (a shape for pricing, not values)."""
    return np.broadcast_to(np.zeros((), dtype), tuple(shape))


def compose_conv(first: ConvParams, second: ConvParams, input_spatial=None, values: bool = True,
                 compact: bool = False) -> MergedConv:
    """second(first(x)) with nothing nonlinear between, as one conv (see module docstring for exactness).

    input_spatial (the first conv's input size) enables end-pad trimming, exact bias maps and the
    exact end-side check; without it the checks assume any input size. values=False skips the kernel
    composition and the bias map's values (the costly parts): the result is shape_only, enough for
    a planner to price the merge and know whether it needs a bias map. compact=True (compose_conv_chain's
    steps): a bias map is a RunMap (1, O, *out_spatial), the same numbers as the dense one.
    """
    _check_chain(first, second)
    dtype = out_dtype(first.weight, second.weight, first.bias, second.bias)
    input_spatial, n1, n2, second_t = _chain_sizes(first, second, input_spatial)

    G = math.gcd(first.group, second.group)
    if values:
        wb, mdil = _compose_kernels(first, second, G)
        weight = wb.reshape((second.out_channels, first.in_channels // G) + wb.shape[3:])
    else:
        km, mdil = _composed_kernel_shape(first, second)
        weight = _placeholder((second.out_channels, first.in_channels // G) + km, np.float64)

    s1 = first.strides
    strides = tuple(a * b for a, b in zip(s1, second.strides))
    pads = tuple(p1 + s * p2 for p1, s, p2 in zip(first.pads_begin, s1, second_t.pads_begin)) + \
        tuple(p1 + s * p2 for p1, s, p2 in zip(first.pads_end, s1, second_t.pads_end))

    b1 = None if is_zero(first.bias) else f64(first.bias)
    bias = None
    if b1 is not None:
        bias = _weight_times_constant(second.weight, second.group, b1)
    if second.bias is not None:
        bias = f64(second.bias) if bias is None else bias + f64(second.bias)

    bad, padded_read = _border_reads(first, second_t, input_spatial, n1, n2)
    exact, reason = _exactness(bad, padded_read, b1 is not None, input_spatial is not None)
    bias_map = None
    if exact and padded_read and b1 is not None:  # exact only because the bias goes in as a map
        if values:
            bias_map = constant_through_conv(b1, second_t, n1, compact=compact)
        else:
            bias_map = _placeholder((second.out_channels,) + tuple(n2), np.float64)
        bias = None

    cast = (lambda a: _cast(a, dtype)) if values else (lambda a: _placeholder(a.shape, dtype))
    params = ConvParams(weight=cast(weight), bias=None if bias is None else bias.astype(dtype),
                        strides=strides, pads=pads, dilations=mdil, group=G)
    if n2 is not None and params.output_spatial(input_spatial) != n2:  # the floor identity guarantees this
        raise AlgebraError(f"internal: merged output {params.output_spatial(input_spatial)} != sequential {n2}")
    return MergedConv(params=params, bias_map=None if bias_map is None else cast(bias_map),
                      exact=exact, reason=reason, shape_only=not values)


def _cast(a, dtype):
    """a in dtype; a RunMap stays one (its core cast: element for element the dense map's cast)."""
    return RunMap(a.core.astype(dtype), a.idx) if isinstance(a, RunMap) else a.astype(dtype)


def compose_conv_chain(convs, input_spatial=None) -> MergedConv:
    """Fold a list of convs (applied in order) left to right; exact only if every step is.

    A bias_map from an earlier step is carried through each later conv exactly: the later conv is
    linear, so its image of the map (with its own zero padding, via conv_nd) is the new map, while the
    weights compose as if the earlier bias were zero. So pointwise -> depthwise(padded) -> pointwise
    (a MobileNetV2 block with BN folded) merges exactly into one conv plus a bias_map.

    The map is carried as a RunMap (compact=True: its distinct slices, the dense map's numbers) and made
    full once, at the end: a CIFAR MobileNetV2 at 224 summed, cast, scanned and expanded 192 x 224 x 224
    float64 maps at every step (docs/pass_runtime.md, 2026-11-29 13:34).
    """
    convs = list(convs)
    if not convs:
        raise AlgebraError("empty conv chain")
    acc = MergedConv(convs[0], None, True, "single conv")
    for c in convs[1:]:
        acc = extend_chain(acc, c, input_spatial, compact=True)
    if isinstance(acc.bias_map, RunMap):
        acc = dataclasses.replace(acc, bias_map=acc.bias_map.dense()[0])
    return acc


def extend_chain(acc: MergedConv, c: ConvParams, input_spatial=None, values: bool = True,
                 compact: bool = False) -> MergedConv:
    """One step of compose_conv_chain: acc (a merged prefix) followed by conv c.

    A planner that scores every segment of a chain extends prefixes instead of recomposing them
    (values=False: shape-only, see compose_conv; a shape-only prefix gives a shape-only result).
    compact=True: bias maps as RunMaps (1, O, *spatial) (compose_conv_chain densifies the last one).
    """
    values = values and not acc.shape_only
    if acc.bias_map is None:
        m = compose_conv(acc.params, c, input_spatial, values, compact)
    else:
        m = compose_conv(acc.params, c.replace(bias=None), input_spatial, values, compact)
        if values and isinstance(acc.bias_map, RunMap):   # the dense branch below, on the map's distinct slices
            carried = conv_nd(RunMap(f64(acc.bias_map.core), acc.bias_map.idx),
                              c.replace(weight=f64(c.weight), bias=f64(c.bias)))
            if m.bias_map is not None:  # cannot happen (first bias is None), kept for safety
                carried = carried + RunMap(f64(m.bias_map.core), m.bias_map.idx)
            if m.params.bias is not None:
                carried = carried + f64(m.params.bias).reshape((-1,) + (1,) * c.ndim)
            carried = _cast(carried, m.params.weight.dtype)
        elif values:
            carried = conv_nd(f64(acc.bias_map)[None], c.replace(weight=f64(c.weight), bias=f64(c.bias)))[0]
            if m.bias_map is not None:  # cannot happen (first bias is None), kept for safety
                carried = carried + f64(m.bias_map)
            if m.params.bias is not None:
                carried = carried + f64(m.params.bias).reshape((-1,) + (1,) * c.ndim)
            carried = carried.astype(m.params.weight.dtype)
        else:
            out = c.output_spatial(acc.bias_map.shape[1:])
            carried = _placeholder((c.out_channels,) + tuple(out), m.params.weight.dtype)
        m = MergedConv(m.params.replace(bias=None), carried, m.exact,
                       m.reason if not m.exact else "exact with a per-position bias_map carried through",
                       shape_only=not values)
    approx = [r for r in (acc.reason, m.reason) if r.startswith("approximate")]
    return MergedConv(m.params, m.bias_map, acc.exact and m.exact, "; ".join(approx) or m.reason,
                      shape_only=not values)


# -- skips ------------------------------------------------------------------------------------------

def add_pointwise_skip(p: ConvParams, skip: ConvParams) -> ConvParams:
    """conv(x) + conv1x1(x) as one conv: the 1x1 weights (and bias) are added at the tap that reads the
    same input pixel.

    Needs equal strides, a tap t with d*t = pad_begin - skip_pad_begin, and equal output sizes for every
    input size (pb + pe - D == skip_pb + skip_pe - 1); the skip may carry a folded BN.
    """
    if skip.ndim != p.ndim:
        raise AlgebraError(f"skip is {skip.ndim}-D but the conv is {p.ndim}-D")
    if any(k != 1 for k in skip.kernel_shape):
        raise AlgebraError(f"skip conv must be 1x1, has kernel {skip.kernel_shape}")
    if (skip.in_channels, skip.out_channels) != (p.in_channels, p.out_channels):
        raise AlgebraError(
            f"skip maps {skip.in_channels}->{skip.out_channels} channels but the conv maps "
            f"{p.in_channels}->{p.out_channels}")
    if skip.strides != p.strides:
        raise AlgebraError(f"skip strides {skip.strides} differ from the conv's {p.strides}")
    taps = []
    for a in range(p.ndim):
        off = p.pads_begin[a] - skip.pads_begin[a]
        d, k = p.dilations[a], p.kernel_shape[a]
        if off < 0 or off % p.dilations[a] or off // d >= k:
            raise AlgebraError(
                f"axis {a}: no kernel tap reads the skip's pixel (pad_begin {p.pads_begin[a]} vs skip "
                f"{skip.pads_begin[a]}, dilation {d}, kernel {k}); outputs are misaligned")
        if p.pads_begin[a] + p.pads_end[a] - p.effective_kernel[a] != skip.pads_begin[a] + skip.pads_end[a] - 1:
            raise AlgebraError(
                f"axis {a}: output sizes differ (conv pads {p.pads_begin[a]},{p.pads_end[a]} with extent "
                f"{p.effective_kernel[a]} vs skip pads {skip.pads_begin[a]},{skip.pads_end[a]})")
        taps.append(off // d)
    dtype = out_dtype(p.weight, p.bias, skip.weight, skip.bias)
    G = math.gcd(p.group, skip.group)
    wb = _dense_blocks(p.weight, p.group, G)
    sb = _dense_blocks(skip.weight, skip.group, G)
    wb[(Ellipsis,) + tuple(taps)] += sb[(Ellipsis,) + (0,) * p.ndim]
    weight = wb.reshape((p.out_channels, p.in_channels // G) + p.kernel_shape)
    if p.bias is None and skip.bias is None:
        bias = None
    else:
        bias = (f64(p.bias) if p.bias is not None else 0.0) + (f64(skip.bias) if skip.bias is not None else 0.0)
        bias = np.broadcast_to(bias, (p.out_channels,)).astype(dtype)
    return p.replace(weight=weight.astype(dtype), bias=bias, group=G)


def add_identity_skip(p: ConvParams) -> ConvParams:
    """conv(x) + x as one conv: a delta at the tap that reads the output's own pixel (the kernel centre
    for an odd kernel with pads d*(k-1)/2 on both sides).

    Needs in == out channels, stride 1 and output size == input size with that tap aligned
    (pad_begin divisible by the dilation, pad_begin + pad_end == d*(k-1)). Groups are kept: the delta
    lies on the diagonal of each group block.
    """
    if p.in_channels != p.out_channels:
        raise AlgebraError(f"identity skip needs in == out channels, conv maps {p.in_channels}->{p.out_channels}")
    if any(s != 1 for s in p.strides):
        raise AlgebraError(f"identity skip needs stride 1, conv has strides {p.strides}")
    C, n = p.in_channels, p.ndim
    ident = ConvParams(weight=np.ones((C, 1) + (1,) * n, dtype=p.weight.dtype), bias=None,
                       strides=p.strides, pads=(0,) * (2 * n), dilations=(1,) * n, group=C)
    try:
        return add_pointwise_skip(p, ident)
    except AlgebraError as e:
        raise AlgebraError(
            f"identity skip needs the output aligned with the input (odd kernel, pads d*(k-1)/2 each side): {e}"
        ) from None


# -- bias maps (constant per-position offsets) -------------------------------------------------------
#
# A merge whose first conv has a bias and whose second conv reads zero padding leaves a constant
# per-position `bias_map` M added after the merged conv. Every op between there and the next kept
# nonlinearity is linear, so L(x + M) = L(x) + L0(M) with L0 the op's linear part (no bias):
# maps can be pushed to the end of a linear region, summed, and added once. These functions give
# L0(M); maps carry a leading batch axis of 1 ((1, C, *spatial)) so they broadcast over any batch.

def map_through_conv(bias_map, p: ConvParams):
    """conv(x + M) - conv(x), float64: the conv's weights applied to M with its own zero padding (exact:
    the padded border of x + M is zero, as is that of x and of M). A RunMap M gives a RunMap (conv_nd)."""
    m = bias_map if isinstance(bias_map, RunMap) else f64(bias_map)
    if m.ndim != p.ndim + 2 or m.shape[0] != 1:
        raise AlgebraError(f"bias map must be (1, C, *spatial) for a {p.ndim}-D conv, got shape {m.shape}")
    return conv_nd(m, p.replace(weight=f64(p.weight), bias=None))


def map_through_dense(bias_map, weight) -> np.ndarray:
    """(x + M) @ W.T - x @ W.T = M @ W.T for a linear layer with weight (out, in) on the last axis."""
    return f64(bias_map) @ f64(weight).T


def map_through_scale(bias_map, scale):
    """scale * (x + M) + shift - (scale * x + shift) = scale * M; `scale` broadcasts like the op's constant
    (a per-channel BN/affine scale is passed as shape (C, 1, ..., 1)). A RunMap M gives a RunMap when the
    scale does not vary over space."""
    if isinstance(bias_map, RunMap):
        return bias_map * f64(scale)
    return f64(bias_map) * f64(scale)


def map_through_mean(bias_map, axes) -> np.ndarray:
    """mean(x + M) - mean(x) = mean(M) over `axes` (global average pooling: the spatial axes), an array
    also for a RunMap M (summed from its full map, a few channels at a time: the dense map's numbers)."""
    axes = tuple(axes)
    if isinstance(bias_map, RunMap):
        if axes != tuple(range(2, bias_map.ndim)):
            return bias_map.dense().mean(axis=axes, keepdims=True)
        return _by_channels(bias_map, lambda m: m.mean(axis=axes, keepdims=True))
    return f64(bias_map).mean(axis=axes, keepdims=True)


#: a RunMap's per-channel reductions are computed on its full map this many bytes at a time
CHANNEL_CHUNK_BYTES = 8 << 20


def _by_channels(m: RunMap, reduce) -> np.ndarray:
    """reduce (a per-channel reduction over the spatial axes) of m's full map, computed a few channels at a
    time: each channel's numbers are summed as the dense map's are (the same values in the same order),
    without the whole full map in memory."""
    per = max(1, CHANNEL_CHUNK_BYTES // (8 * max(1, int(np.prod(m.shape[2:])))))
    return np.concatenate([reduce(m.dense(channels=slice(c, c + per))) for c in range(0, m.shape[1], per)], axis=1)


def spatially_constant(bias_map, rtol: float = 1e-12) -> np.ndarray | None:
    """Per-channel vector (C,) if the (1, C, *spatial) map has the same value at every position (then it is
    an ordinary bias and folds into the producing op), else None. rtol absorbs float64 rounding only."""
    compact = isinstance(bias_map, RunMap)
    m = bias_map.core if compact else f64(bias_map)   # a RunMap's core holds the same set of values
    if m.ndim < 2 or m.shape[0] != 1:
        return None
    flat = m.reshape(m.shape[1], -1)
    spread = flat.max(axis=1) - flat.min(axis=1)
    if np.all(spread <= rtol * max(1.0, float(np.abs(flat).max(initial=0.0)))):
        if compact:   # the mean of the full map's numbers, as the dense map gives it
            return _by_channels(bias_map, lambda d: d.reshape(d.shape[1], -1).mean(axis=1)[None])[0]
        return flat.mean(axis=1)
    return None


def pointwise_as_linear(p: ConvParams):
    """A 1x1 conv without padding (any groups and strides) on a map pooled to one position per channel, as
    the dense layer it then is: weight (O, I) (a grouped conv's blocks on the diagonal), same bias.

    Global average pooling commutes with a pointwise conv (mean(W x + b) = W mean(x) + b), so a pool after a
    1x1 conv can go before it; the conv then runs on one position and, after a flatten, is a Gemm that the
    dense chain planner can merge with the classifier. Padding would add border positions of bias only, so
    it is refused. No arithmetic: the weights are copied (a grouped conv's off-diagonal blocks are zeros)."""
    from .linear import LinearParams

    if any(k != 1 for k in p.kernel_shape) or any(p.pads):
        raise AlgebraError(f"only a 1x1 conv without padding acts on one position as a dense layer; got "
                           f"kernel {p.kernel_shape}, pads {p.pads}")
    w = densify_weight(p.weight, p.group).reshape(p.out_channels, p.in_channels)
    return LinearParams(np.ascontiguousarray(w), None if p.bias is None else np.array(p.bias))
