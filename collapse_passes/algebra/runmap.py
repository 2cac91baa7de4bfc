"""RunMap: a per-position map stored as its distinct slices (bias maps are constant away from the border).

A bias map (1, C, *spatial) seen through zero-padded convs differs from its interior value only within a
few pixels of the border: along each spatial axis most slices are copies of one another. A RunMap keeps
`core` (1, C, *core_spatial) and, per spatial axis, `idx`: the full map is core taken at idx along every
spatial axis (full[..., i, j] = core[..., idx0[i], idx1[j]]). A 192 x 224 x 224 float64 offset (77 MB)
is then a few hundred KB. Every operation gives, element for element, the float64 value the dense
computation gives (the same operation on the same numbers): elementwise ops act on the core, sums of two
maps on the pairs of slices that occur, conv_nd on the same cut map as the dense map's
(algebra.conv._cut_runs). `idx` is kept onto (every core slice is read somewhere), so reductions over
the core see exactly the full map's set of values.
"""
from __future__ import annotations

import numpy as np

__all__ = ["RunMap"]


class RunMap:
    """full = core taken at idx[a] along spatial axis a + 2, for every a (see the module docstring)."""

    __array_ufunc__ = None   # ndarray (op) RunMap defers to RunMap's reflected operators

    def __init__(self, core: np.ndarray, idx=None):
        self.core = core
        self.idx = [np.arange(n) for n in core.shape[2:]] if idx is None else [np.asarray(i, np.intp) for i in idx]

    # ------------------------------------------------------------------ construction / materialization
    @classmethod
    def from_dense(cls, x, dtype=np.float64) -> "RunMap":
        """Consecutive bitwise-equal slices of x (N, C, *spatial) stored once; the core cast to dtype."""
        x = np.asarray(x)
        core, idx = x, []
        for a in range(2, x.ndim):
            n = core.shape[a]
            starts = np.ones(n, bool)
            if n > 1:
                starts[1:] = _differs_from_previous(core, a)
            idx.append(np.cumsum(starts) - 1)
            if not starts.all():
                core = np.compress(starts, core, axis=a)
        return cls(np.asarray(core, dtype=dtype), idx)

    @property
    def shape(self) -> tuple:
        return self.core.shape[:2] + tuple(len(i) for i in self.idx)

    @property
    def ndim(self) -> int:
        return self.core.ndim

    @property
    def dtype(self):
        return self.core.dtype

    def dense(self, dtype=None, channels=None) -> np.ndarray:
        """The full map (optionally in dtype, optionally only channels `channels`, a slice)."""
        y = self.core if channels is None else self.core[:, channels]
        if dtype is not None:
            y = y.astype(dtype)
        for a, i in enumerate(self.idx):
            if not (len(i) == y.shape[a + 2] and _is_identity(i)):
                y = np.take(y, i, axis=a + 2)
        return np.ascontiguousarray(y)

    def __array__(self, dtype=None, copy=None):
        return self.dense(dtype)

    def astype(self, dtype) -> np.ndarray:
        return self.dense(dtype)

    def reshape(self, *shape) -> np.ndarray:
        return self.dense().reshape(*shape)

    def any(self) -> bool:
        return bool(np.any(self.core))

    def onto(self) -> "RunMap":
        """The same map with the core slices no idx reads dropped."""
        core, idx = self.core, list(self.idx)
        for a, i in enumerate(idx):
            u = np.unique(i)
            if len(u) < core.shape[a + 2]:
                core = np.take(core, u, axis=a + 2)
                idx[a] = np.searchsorted(u, i)
        return RunMap(core, idx)

    # ------------------------------------------------------------------ arithmetic (element for element)
    def _spatially_flat(self, c) -> bool:
        """c (an array) broadcasts against the map without varying over its spatial axes."""
        s = np.shape(c)
        if len(s) > self.ndim:
            return False
        s = (1,) * (self.ndim - len(s)) + tuple(s)
        return all(d == 1 for d in s[2:])

    def _binary(self, other, op) -> "RunMap | np.ndarray":
        if isinstance(other, RunMap):
            if other.shape != self.shape:
                return op(self.dense(), other.dense())
            a, b = _aligned(self, other)
            return RunMap(op(a.core, b.core), a.idx)
        if np.isscalar(other) or self._spatially_flat(other):
            return RunMap(op(self.core, np.asarray(other) if not np.isscalar(other) else other), self.idx)
        if np.shape(other) == self.shape:
            return self._binary(RunMap(np.asarray(other)), op)
        return op(self.dense(), np.asarray(other))

    def __add__(self, other):
        return self._binary(other, lambda a, b: a + b)

    def __radd__(self, other):
        return self._binary(other, lambda a, b: b + a)

    def __sub__(self, other):
        return self._binary(other, lambda a, b: a - b)

    def __rsub__(self, other):
        return self._binary(other, lambda a, b: b - a)

    def __mul__(self, other):
        return self._binary(other, lambda a, b: a * b)

    def __rmul__(self, other):
        return self._binary(other, lambda a, b: b * a)

    def __neg__(self):
        return RunMap(-self.core, self.idx)

    def __repr__(self) -> str:
        return f"RunMap(shape={self.shape}, core={self.core.shape})"


def _differs_from_previous(x: np.ndarray, axis: int) -> np.ndarray:
    """(n - 1,) bool: slice i + 1 of x along axis differs in any bit from slice i (-0.0 and 0.0 are not
    merged, so a copy is the same bits). Compared a few channels at a time, on views: no copy of x."""
    others = tuple(i for i in range(x.ndim) if i != axis)
    lead = [slice(None)] * x.ndim
    prev = list(lead)
    lead[axis], prev[axis] = slice(1, None), slice(None, -1)
    out = np.zeros(x.shape[axis] - 1, bool)
    per = max(1, _CHUNK_BYTES // max(1, x[:, :1].nbytes))
    for c in range(0, x.shape[1], per):
        ch = x[:, c:c + per]
        out |= np.any(_bits(ch[tuple(lead)]) != _bits(ch[tuple(prev)]), axis=others)
    return out


#: from_dense compares this many bytes of the map at a time
_CHUNK_BYTES = 4 << 20


def _bits(a: np.ndarray) -> np.ndarray:
    if a.dtype.kind == "f" and a.dtype.itemsize in (2, 4, 8):
        return a.view(f"u{a.dtype.itemsize}")
    return a


def _is_identity(i: np.ndarray) -> bool:
    return bool(np.array_equal(i, np.arange(len(i))))


def _aligned(a: RunMap, b: RunMap) -> tuple[RunMap, RunMap]:
    """a and b on one idx: per axis, one core slice for each (a slice, b slice) pair that occurs."""
    ca, cb, idx = a.core, b.core, []
    for ax, (ia, ib) in enumerate(zip(a.idx, b.idx)):
        if ca.shape[ax + 2] == cb.shape[ax + 2] and np.array_equal(ia, ib):
            idx.append(ia)
            continue
        pairs, inv = np.unique(np.stack([ia, ib], axis=1), axis=0, return_inverse=True)
        ca = np.take(ca, pairs[:, 0], axis=ax + 2)
        cb = np.take(cb, pairs[:, 1], axis=ax + 2)
        idx.append(np.asarray(inv).reshape(-1))
    return RunMap(ca, idx), RunMap(cb, idx)
