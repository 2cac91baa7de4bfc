"""Shared pieces of the score methods: the result type, entropy, the normal CDF, per-channel
accumulators (streamed, float64) and the onnxruntime runner that exposes activation inputs.

Nothing here imports torch; the torch front end (torch_hooks.py) reuses the accumulators on
numpy copies of the hooked tensors.
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field

import numpy as np

from ..core.activations import activation_kink, band_start, upper_bound  # noqa: F401 (re-exported)
from ..errors import CollapseError

#: a channel counts as "always off" (dead) when p_off >= DEAD_P, "always on" (linear) when p_off <= 1 - DEAD_P
#: (defined with the catalogue: the per-channel collapse, core/channel_regimes.py, splits channels by it too)
from ..core.activations import DEAD_P  # noqa: E402,F401


@dataclass
class ScoreResult:
    """Scores of one method on one model: lower = more collapsed (0 = fully collapsed)."""
    method: str
    variant: str
    kind: str                                   # "activation" or "block"
    scores: dict = field(default_factory=dict)  # key -> float
    details: dict = field(default_factory=dict)  # key -> dict (per-channel lists, fractions, ...)
    notes: list = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"method": self.method, "variant": self.variant, "kind": self.kind,
                "scores": {k: float(v) for k, v in self.scores.items()},
                "details": _jsonable(self.details), "notes": list(self.notes)}

    def ranked(self) -> list[tuple[str, float]]:
        """(key, score) from the most collapsed to the least; ties keep model order."""
        keys = list(self.scores)
        return sorted(((k, self.scores[k]) for k in keys), key=lambda kv: (kv[1], keys.index(kv[0])))


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def rounded(values, digits: int = 6) -> list[float]:
    return [round(float(v), digits) for v in np.asarray(values, dtype=np.float64).ravel()]


# ----------------------------------------------------------------------------------- maths

def binary_entropy(p) -> np.ndarray:
    """H(p) in bits (log base 2); 0 at p = 0 or 1, 1 at p = 0.5."""
    p = np.clip(np.asarray(p, dtype=np.float64), 0.0, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -(p * np.log2(p) + (1.0 - p) * np.log2(1.0 - p))
    return np.nan_to_num(h, nan=0.0)


def normal_cdf(z) -> np.ndarray:
    """Phi(z) elementwise (via math.erfc: no scipy needed); +-inf map to 1 / 0."""
    z = np.asarray(z, dtype=np.float64)
    flat = [0.5 * math.erfc(-float(v) / math.sqrt(2.0)) if math.isfinite(v) else (1.0 if v > 0 else 0.0)
            for v in z.ravel()]
    return np.asarray(flat, dtype=np.float64).reshape(z.shape)


def gaussian_p_off(mu, sigma, kink: float = 0.0) -> np.ndarray:
    """P(x < kink) for x ~ N(mu, sigma^2) per channel; sigma = 0 gives a step (x == kink counts as on)."""
    mu = np.asarray(mu, dtype=np.float64)
    sigma = np.abs(np.asarray(sigma, dtype=np.float64))
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(sigma > 0, (kink - mu) / np.where(sigma > 0, sigma, 1.0), 0.0)
    p = normal_cdf(z)
    return np.where(sigma > 0, p, np.where(mu < kink, 1.0, 0.0))


def gaussian_p_above(mu, sigma, upper: float | None) -> np.ndarray | None:
    """P(x > upper) for x ~ N(mu, sigma^2) per channel (None without an upper bound); sigma = 0 gives a step."""
    if upper is None:
        return None
    return 1.0 - gaussian_p_off(mu, sigma, upper)


def gaussian_regimes(mu, sigma, kink: float = 0.0, upper: float | None = None, band: float | None = None):
    """(p_off, p_above, p_band) for x ~ N(mu, sigma^2) per channel, the arguments of layer_summary: off below
    the kink, or at / below `band` when the activation has a curved band (band, kink) (HardSwish: -3, 3);
    p_above None without an upper bound, p_band None without a band. sigma = 0 gives steps."""
    below_kink = gaussian_p_off(mu, sigma, kink)
    p_above = gaussian_p_above(mu, sigma, upper)
    if band is None:
        return below_kink, p_above, None
    mu = np.asarray(mu, dtype=np.float64)
    sigma = np.abs(np.asarray(sigma, dtype=np.float64))
    p_off = np.where(sigma > 0, gaussian_p_off(mu, sigma, band), np.where(mu <= band, 1.0, 0.0))
    return p_off, p_above, np.clip(below_kink - p_off, 0.0, 1.0)


def activation_gaussian_regimes(mu, sigma, kind: str, params: dict | None = None):
    """gaussian_regimes with `kind`'s thresholds from the catalogue (TLC's BatchNorm variant, both front ends)."""
    return gaussian_regimes(mu, sigma, activation_kink(kind, params), upper_bound(kind, params),
                            band_start(kind, params))


def layer_summary(p_off: np.ndarray, p_above: np.ndarray | None = None, p_band: np.ndarray | None = None) -> dict:
    """Per-layer numbers shared by EASIER and TLC from per-channel p_off (input in the off regime), for an
    activation with an upper bound (ReLU6, HardSigmoid) p_above (input above it: saturated, constant) and,
    for one with a curved band between off and on (HardSwish's (-3, 3)), p_band (input in that band).

    The channel score is the entropy in bits of the regime the input falls in: off / on without an upper
    bound (the methods' binary entropy), off / linear / saturated with one. As a two-state count, a ReLU6
    channel half in its linear range and half above 6 was "always on", scored 0 and was collapsed to the
    identity, wrong on every saturated input; here it scores 1 bit. A channel in one regime throughout
    scores 0 either way, and without saturation both counts give the same number.

    An input in the curved band is in neither regime: it counts half off, half on (linear), so a channel
    living in the band scores 1 bit like one split evenly between off and on (counted as on, HardSwish's
    [0, 3) scored 0 and was collapsed to the identity). The reported p_off / p_on include those halves
    (p_on = 1 - p_off; pruning ranks channels by it); frac_dead / frac_linear count the exact regimes only.
    """
    p_off = np.clip(np.asarray(p_off, dtype=np.float64).ravel(), 0.0, 1.0)
    band = np.zeros_like(p_off) if p_band is None else np.clip(np.asarray(p_band, dtype=np.float64).ravel(), 0.0, 1.0)
    above = np.zeros_like(p_off) if p_above is None else np.clip(np.asarray(p_above, dtype=np.float64).ravel(), 0.0, 1.0)
    p_lin = np.clip(1.0 - p_off - above - band, 0.0, 1.0)      # exactly in the linear regime
    off_eff = p_off + band / 2.0
    if p_above is None:
        h = binary_entropy(off_eff)
    else:
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = [np.nan_to_num(-p * np.log2(p), nan=0.0) for p in (off_eff, p_lin + band / 2.0, above)]
        h = terms[0] + terms[1] + terms[2]
    out = {
        "score": float(h.mean()) if h.size else 0.0,
        "channels": int(p_off.size),
        "frac_dead": float(np.mean(p_off >= DEAD_P)) if p_off.size else 0.0,
        "frac_linear": float(np.mean(p_lin >= DEAD_P)) if p_off.size else 0.0,
        "frac_mostly_off": float(np.mean(off_eff >= 0.5)) if p_off.size else 0.0,
        "p_off": rounded(off_eff),
        "p_on": rounded(1.0 - off_eff),
    }
    if p_above is not None:
        out["frac_saturated"] = float(np.mean(above >= DEAD_P)) if p_off.size else 0.0
        out["p_above"] = rounded(above)
    if p_band is not None:
        out["frac_curved"] = float(np.mean(band >= DEAD_P)) if p_off.size else 0.0
        out["p_band"] = rounded(band)
    return out


# activation_kink / band_start / upper_bound(kind, params): the thresholds the scores use, from the
# one activation catalogue (core/activations.py); re-exported here for the score methods.


# ------------------------------------------------------------------------------ accumulators

def _move_channels(arr: np.ndarray, axis: int | None) -> np.ndarray:
    """Reshape to (positions, channels) with channels on the last axis (None: one channel)."""
    a = np.asarray(arr)
    if axis is None or a.ndim < 2:
        return a.reshape(-1, 1)
    return np.moveaxis(a, axis, -1).reshape(-1, a.shape[axis])


class ChannelStats:
    """Streamed per-channel statistics of one tensor over calibration batches: count of entries at
    or above the kink (EASIER's p_on), above an optional upper bound, inside an optional curved band
    (band, kink) (HardSwish), and mean / variance (Chan's parallel update, float64) for TLC's empirical
    variant. regimes() gives layer_summary's arguments."""

    def __init__(self, axis: int | None, kink: float = 0.0, upper: float | None = None, moments: bool = True,
                 band: float | None = None):
        self.axis = axis
        self.kink = kink
        self.upper = upper
        self.band = band
        self.moments = moments
        self.n = 0              # entries per channel
        self.samples = 0
        self.on = None
        self.above = None
        self.in_band = None
        self.mean = None
        self.m2 = None
        self.shape = None

    @classmethod
    def for_activation(cls, axis: int | None, kind: str, params: dict | None, moments: bool) -> "ChannelStats":
        """Stats thresholded by the catalogue's kink, upper bound and band for `kind`: the one way every front
        end (ONNX taps, torch hooks) builds them, so both count the same regimes."""
        return cls(axis, activation_kink(kind, params), upper_bound(kind, params), moments=moments,
                   band=band_start(kind, params))

    def update(self, arr: np.ndarray) -> None:
        a = np.asarray(arr)
        if self.shape is None:
            self.shape = tuple(a.shape[1:])
        elif tuple(a.shape[1:]) != self.shape:
            raise CollapseError(f"activation input changed shape between batches ({self.shape} -> {a.shape[1:]})")
        self.samples += a.shape[0] if a.ndim else 1
        x = _move_channels(a, self.axis)
        n_b = x.shape[0]
        if n_b == 0:
            return
        on = np.count_nonzero(x >= self.kink, axis=0).astype(np.int64)
        self.on = on if self.on is None else self.on + on
        if self.upper is not None:
            ab = np.count_nonzero(x > self.upper, axis=0).astype(np.int64)
            self.above = ab if self.above is None else self.above + ab
        if self.band is not None:
            bd = np.count_nonzero((x > self.band) & (x < self.kink), axis=0).astype(np.int64)
            self.in_band = bd if self.in_band is None else self.in_band + bd
        if self.moments:
            xd = x.astype(np.float64, copy=False)
            mean_b = xd.mean(axis=0)
            m2_b = ((xd - mean_b) ** 2).sum(axis=0)
            if self.mean is None:
                self.mean, self.m2 = mean_b, m2_b
            else:
                n_a = self.n
                delta = mean_b - self.mean
                tot = n_a + n_b
                self.mean = self.mean + delta * (n_b / tot)
                self.m2 = self.m2 + m2_b + delta ** 2 * (n_a * n_b / tot)
        self.n += n_b

    @property
    def p_on(self) -> np.ndarray:
        return self.on / max(self.n, 1)

    @property
    def p_above(self) -> np.ndarray | None:
        """Fraction of entries above the upper bound (None without one)."""
        return None if self.above is None else self.above / max(self.n, 1)

    @property
    def p_band(self) -> np.ndarray | None:
        """Fraction of entries in the curved band (None without one)."""
        return None if self.in_band is None else self.in_band / max(self.n, 1)

    def regimes(self):
        """(p_off, p_above, p_band) counted on the data: layer_summary's arguments (EASIER)."""
        band = self.p_band
        return 1.0 - self.p_on - (0.0 if band is None else band), self.p_above, band

    def gaussian_regimes(self):
        """(p_off, p_above, p_band) of N(mean, std^2) per channel: layer_summary's arguments (TLC empirical)."""
        return gaussian_regimes(self.mean, self.std, self.kink, self.upper, self.band)

    @property
    def std(self) -> np.ndarray:
        return np.sqrt(self.m2 / max(self.n, 1))


def channel_axis_for_rank(rank: int, conv_like: bool) -> int | None:
    """Channel axis of an activation input: 1 for NC... conv tensors (and (B, C) vectors), the last
    axis for (B, N, C) token tensors; a rank-3 tensor counts as (B, C, L) only when a Conv feeds it."""
    if rank <= 1:
        return None
    if rank == 2:
        return 1
    if rank == 3:
        return 1 if conv_like else 2
    return 1


# ------------------------------------------------------------------------------ progress

def progress(iterable, desc: str, enabled: bool | None = None):
    """A tqdm bar on stderr, only on a terminal and only once a run takes over 2 seconds."""
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        return iterable
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        return iterable
    return tqdm(iterable, desc=desc, unit="batch", delay=2.0, leave=False, file=sys.stderr)


# ------------------------------------------------------------------------------ onnx taps

def require_calib(calib, method: str, why: str) -> None:
    if calib is None:
        raise CollapseError(f"--method {method} needs calibration data: {why}; give --calib FILE.npz (arrays named "
                            "after the model inputs, first axis = samples) or a folder of .npy files")


def tapped_batches(model, tensor_names: list[str], calib, calib_batches, min_samples: int, method: str):
    """Run the model on the calibration batches with `tensor_names` exposed as extra outputs; yield
    ({name: array}, batch_samples) per batch. The caller's model is never modified (a copy is run)."""
    import onnx

    from ..calib import feed_samples, iter_calibration
    from ..core.runtime import session

    graph_inputs = {i.name for i in model.graph.input}
    outs = {o.name for o in model.graph.output}
    types = _tensor_types(model)
    tapped = onnx.ModelProto()
    tapped.CopyFrom(model)
    wanted = list(dict.fromkeys(tensor_names))
    for name in wanted:
        if name in outs or name in graph_inputs:
            continue
        tapped.graph.output.append(onnx.helper.make_tensor_value_info(
            name, types.get(name, onnx.TensorProto.FLOAT), None))
        outs.add(name)
    sess = session(tapped, optimize=True)
    fetch = [n for n in wanted if n not in graph_inputs]
    batches = iter_calibration(calib, model, max_batches=calib_batches, min_samples=min_samples)
    for feed in progress(batches, f"{method}: calibration"):
        try:
            vals = sess.run(fetch, feed) if fetch else []
        except Exception as exc:
            msg = " ".join(str(exc).split())[:200]
            raise CollapseError(f"{method}: onnxruntime failed on a calibration batch ({msg})") from None
        got = dict(zip(fetch, vals))
        for n in wanted:
            if n in graph_inputs:
                got[n] = feed[n]
        yield got, feed_samples(feed)


def _tensor_types(model) -> dict:
    import onnx

    types = {}
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:
        inferred = model
    for vi in list(inferred.graph.value_info) + list(inferred.graph.output) + list(inferred.graph.input):
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
            types[vi.name] = vi.type.tensor_type.elem_type
    return types
