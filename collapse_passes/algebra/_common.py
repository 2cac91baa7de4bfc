"""Small helpers shared by the algebra modules (pure numpy, no graph code)."""
from __future__ import annotations

import numpy as np

from ..errors import CollapseError


class AlgebraError(CollapseError, ValueError):
    """A merge or fold that is impossible or not exact; a ValueError so pure-maths callers can catch it,
    a CollapseError so the CLI prints its one-line message."""


def out_dtype(*arrays) -> np.dtype:
    """The dtype to hand back: that of the (floating) inputs, so float32 models stay float32.

    Composition itself always runs in float64; only the result is cast back.
    """
    floats = [np.asarray(a).dtype for a in arrays if a is not None and np.asarray(a).dtype.kind == "f"]
    if not floats:
        return np.dtype(np.float64)
    return np.result_type(*floats)


def f64(a) -> np.ndarray | None:
    """float64 copy (or None): the working precision of every composition."""
    return None if a is None else np.asarray(a, dtype=np.float64)


def per_channel(v, n: int, name: str, default: float) -> np.ndarray:
    """Broadcast a scalar / (n,) vector (or None -> default) to a float64 (n,) vector."""
    if v is None:
        return np.full(n, default, dtype=np.float64)
    a = np.asarray(v, dtype=np.float64)
    if a.ndim == 0 or a.size == 1:
        return np.full(n, float(a.reshape(-1)[0]), dtype=np.float64)
    a = a.reshape(-1)
    if a.shape[0] != n:
        raise AlgebraError(f"{name} has {a.shape[0]} entries, expected {n} (one per channel)")
    return a


def is_zero(a) -> bool:
    """True for None or an all-zero array (a bias that contributes nothing)."""
    return a is None or not np.any(np.asarray(a))
