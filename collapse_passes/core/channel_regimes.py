"""Per-channel collapse (--channel-regimes, channel_regimes=True): each channel of a collapsed activation takes
the regime it was in on the calibration data, not the layer's linear regime for all of them.

Why: a layer whose channels are each either always off or always on scores entropy 0 under EASIER / TLC, and the
plain collapse (ReLU -> identity) revives its dead channels: they pass their negative inputs on (MobileNetV3's SE
ReLU: 25% dead, 75% linear, score 0, outputs far from the model's). Here a channel with p_off >= DEAD_P takes the
activation's *off* regime (ReLU, ReLU6, HardSwish: 0; Clip: its min; LeakyReLU / PReLU: the negative slope), the
channels always above an upper bound (ReLU6, Clip, HardSigmoid: p_above >= DEAD_P) the constant there, the
others the linear regime: a per-channel affine map, still linear, so it folds into the neighbouring conv exactly,
and the channels it sets to 0 are removed by the exact constant-channel pruning (TLC's own split: dead channels
pruned, the rest made linear). Kinds whose off side is curved (ELU / CELU / SELU, GELU, SiLU, Mish) have no exact
off regime: they keep the plain linear regime for every channel, and the report says so for each such site.

Front-end neutral (numpy only): a front end hands in its chosen sites and the scores' per-channel details.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import CollapseError
from .activations import DEAD_P, linear_regime, off_regime, reference, upper_bound

#: score methods whose details carry per-channel p_off
METHODS = ("easier", "tlc")


@dataclass
class ChannelRegime:
    """The per-channel map of one activation: y = scale[c]*x + shift[c] along `axis`."""
    key: str
    kind: str
    axis: int
    scale: np.ndarray    # (C,) float64
    shift: np.ndarray    # (C,) float64
    off: list            # channels in their off regime
    saturated: list      # channels always above the upper bound (ReLU6, Clip, HardSigmoid): its constant
    zero: int            # channels that become exactly 0 (then pruned; constant ones are pruned too, into biases)


def site_details(details: dict, keys) -> dict | None:
    """The score details of the first of `keys` that has per-channel p_off."""
    for k in keys:
        d = details.get(k)
        if isinstance(d, dict) and d.get("p_off") is not None:
            return d
    return None


def plan(sites, details: dict, warnings: list) -> tuple[dict, list]:
    """sites: (name, keys, kind, params[, rank of the activation's input]) of each chosen activation; details: the
    scores' per-key details. Returns ({name: ChannelRegime} for the sites that get a per-channel map, one report row
    per site)."""
    regimes, rows = {}, []
    revived = []
    for name, keys, kind, params, *rest in sites:
        rank = rest[0] if rest else None
        key = keys[0] if keys else name
        d = site_details(details, keys)
        row = {"key": key, "kind": kind}
        rows.append(row)
        if d is None:
            row.update(regime="linear", why="no per-channel statistics for this site")
            revived.append((key, "no statistics"))
            continue
        p_off = _per_channel_field(d, "p_off", key, np.nan)
        dead = p_off >= DEAD_P
        up = upper_bound(kind, params)
        p_above = None if d.get("p_above") is None else _per_channel_field(d, "p_above", key, 0.0)
        sat = (p_above >= DEAD_P if up is not None and p_above is not None and p_above.size == p_off.size
               else np.zeros_like(dead))
        row.update(channels=int(p_off.size), off_channels=int(dead.sum()), saturated_channels=int(sat.sum()), to_zero=0)
        off = off_regime(kind, params)
        axis = d.get("channel_axis", 1 if d.get("source") == "bn" else None)   # TLC's BN variant: the BN's axis 1
        if axis is not None and (isinstance(axis, bool) or not isinstance(axis, int) or axis < 0):
            raise CollapseError(_malformed(key, "channel_axis", axis, "a non-negative integer"))
        if not dead.any() and not sat.any():
            row.update(regime="linear", why="no channel always off or saturated")
            continue
        if off is None:
            row.update(regime="linear", why="no exact off regime (curved below the kink): every channel linear")
            revived.append((key, f"{int(dead.sum())} off channel(s), {kind}"))
            continue
        off_s = np.asarray(off[0], dtype=np.float64).reshape(-1)
        if axis is None or off_s.size not in (1, p_off.size):
            row.update(regime="linear", why="channels not matched to the activation's parameters")
            revived.append((key, "unmatched channels"))
            continue
        if not _along_axis(off[0], axis, rank):
            row.update(regime="linear", why=f"its slope {list(np.shape(off[0]))} broadcasts along another axis of its "
                                            f"rank-{rank} input than the statistics' channels (axis {axis})")
            revived.append((key, "slope along another axis"))
            continue
        lin_s, lin_b = linear_regime(kind, params)
        scale = np.full(p_off.size, lin_s)
        shift = np.full(p_off.size, lin_b)
        scale[dead] = np.broadcast_to(off_s, p_off.shape)[dead]
        shift[dead] = float(off[1])
        if sat.any():   # above the upper bound the output is the constant it reaches there (ReLU6: 6)
            scale[sat], shift[sat] = 0.0, float(reference(kind, np.asarray([up]), params)[0])
        zero = int(np.sum((dead | sat) & (scale == 0.0) & (shift == 0.0)))
        row.update(regime="per-channel", to_zero=zero)
        regimes[name] = ChannelRegime(key, kind, int(axis), scale, shift, [int(i) for i in np.flatnonzero(dead)],
                                      [int(i) for i in np.flatnonzero(sat)], zero)
    if revived:
        warnings.append(f"--channel-regimes: {len(revived)} site(s) collapsed to the linear regime on every channel "
                        f"({', '.join(f'{k}: {w}' for k, w in revived[:4])}{' ...' if len(revived) > 4 else ''}); "
                        "a channel that was always off there passes its inputs on (docs/scores.md, per-channel collapse)")
    return regimes, rows


def _along_axis(v, axis: int, rank: int | None) -> bool:
    """Whether an off-regime scale `v` (a PReLU slope, shaped as the file broadcasts it) varies along `axis` alone of a
    rank-`rank` input. ONNX broadcasts right-aligned: a (C,) slope on an NCHW tensor runs along W, and its C values
    are no per-channel slopes even when W == C (nor, on an NHWC tensor whose H == C, per-row ones). Rank unknown
    (the torch front end's nn.PReLU weight is per channel by definition): taken as given."""
    v = np.asarray(v)
    if v.size <= 1 or rank is None:
        return True
    if v.ndim > rank:
        return False
    shape = (1,) * (rank - v.ndim) + tuple(v.shape)
    return all(d == 1 for i, d in enumerate(shape) if i != axis)


def _malformed(key, field: str, value, want: str) -> str:
    return (f"--channel-regimes: the score details of {key} hold {field} = {str(value)[:60]}, not {want}: re-save "
            "the scores with --method easier / tlc --save-scores, or drop --channel-regimes (channel_regimes)")


def _per_channel_field(d: dict, field: str, key, none_as: float) -> np.ndarray:
    """d[field] as float64 (C,): a list of probabilities per channel (None: `none_as`). A scores file is editable:
    a scalar, a string or a nested list there was a traceback (np.asarray / iteration); CollapseError, one line."""
    import numbers

    v = d.get(field)
    if isinstance(v, (tuple, np.ndarray)):   # details handed in as a dict in-process
        v = list(np.asarray(v, dtype=object).reshape(-1)) if isinstance(v, np.ndarray) else list(v)
    ok = isinstance(v, list) and all(x is None or (isinstance(x, numbers.Real) and not isinstance(x, bool)) for x in v)
    if not ok:
        raise CollapseError(_malformed(key, field, v, "a list of numbers (one per channel)"))
    return np.asarray([none_as if x is None else x for x in v], dtype=np.float64)


def broadcast_shape(channels: int, axis: int, rank: int) -> tuple | None:
    """The shape of a per-channel constant along `axis` of a rank-`rank` tensor (C, 1, ..., 1), or None."""
    if rank is None or not 0 <= axis < rank:
        return None
    return (channels,) + (1,) * (rank - 1 - axis)


def regime_details(computed: dict | None, scores) -> dict:
    """The per-key score details the per-channel maps read: of this run's --method (as_dict()), else of a --scores
    file / dict saved by --method easier or tlc (--save-scores keeps them). CollapseError (one line) without any."""
    import json
    import os

    from ..errors import CollapseError

    src = computed
    if src is None and isinstance(scores, (str, os.PathLike)):
        try:
            with open(scores, encoding="utf-8") as f:
                src = json.load(f)
        except (OSError, ValueError):
            src = None   # read_scores has already named what is wrong with the file
    elif src is None and isinstance(scores, dict):
        src = scores
    method = src.get("method") if isinstance(src, dict) else None
    details = src.get("details") if isinstance(src, dict) else None
    if method not in METHODS or not isinstance(details, dict) or not details:
        why = ("" if method is None else f", and the scores are of {method}" if method not in METHODS
               else f"; these {method} scores carry no per-channel details")   # a file saved without them
        raise CollapseError(f"--channel-regimes (channel_regimes) needs the per-channel statistics of --method easier or "
                            f"tlc{why}: add --method easier / "
                            "tlc (with --calib data, or TLC's BatchNorm variant), give --scores a file they saved, or "
                            "drop it")
    return details
