"""EASIER (Quétu et al., ECML-PKDD 2024): entropy of each activation's on/off state on data.

Per channel, p_on = fraction of (sample, position) entries where the activation input is >= the
activation's kink (0 for ReLU-like and smooth gates; see _common.activation_kink). The channel
score is the binary entropy H(p_on) in bits; the layer score is the mean over channels. 0 means
every channel is always on (linear) or always off (dead): the activation can be removed. An activation
with an upper bound (ReLU6, HardSigmoid) has a third state, saturated; an entry in HardSwish's curved
band (-3, 3) counts half on, half off (_common.layer_summary).

Calibration batches are streamed (calib.iter_calibration): only per-channel counts are kept.
"""
from __future__ import annotations

from ..errors import CollapseError
from ._acts import conv_like, load_activations, per_site
from ._common import ChannelStats, ScoreResult, channel_axis_for_rank, layer_summary, require_calib, tapped_batches

#: EASIER needs at least two samples: one sample cannot tell a channel's on/off frequency from noise
MIN_SAMPLES = 2


def easier_scores(model, calib=None, calib_batches=None, activations=None) -> ScoreResult:
    require_calib(calib, "easier", "EASIER measures how often each activation input is >= 0")
    _, acts = load_activations(model, activations)
    if not acts:
        raise CollapseError("easier: the model has no recognised activations to score")
    stats = collect_stats(model, acts, calib, calib_batches, "easier", MIN_SAMPLES, moments=False)
    scores, details = per_site(acts, {id(a): activation_details(a, stats[id(a)]) for a in acts})
    samples = next(iter(stats.values())).samples
    notes = [f"easier: entropy of on/off (input >= 0; off/linear/saturated for ReLU6 and HardSigmoid; HardSwish's "
             f"curved band (-3, 3) counts half on, half off) per channel over {samples} calibration sample(s), mean "
             "over channels; 0 = always in one state"]
    return ScoreResult("easier", "empirical", "activation", scores, details, notes)


def collect_stats(model, acts, calib, calib_batches, method: str, min_samples: int, moments: bool) -> dict:
    """Stream the calibration set once; return id(activation) -> ChannelStats of its input."""
    stats: dict[int, ChannelStats] = {}
    for got, _ in tapped_batches(model, [a.input.name for a in acts], calib, calib_batches, min_samples, method):
        for a in acts:
            arr = got[a.input.name]
            st = stats.get(id(a))
            if st is None:
                axis = channel_axis_for_rank(arr.ndim, conv_like(a.input))
                st = stats[id(a)] = ChannelStats.for_activation(axis, a.kind, a.params, moments=moments)
            st.update(arr)
    if not stats:
        raise CollapseError(f"{method}: the calibration data holds no batches")
    return stats


def activation_details(a, st: ChannelStats) -> dict:
    d = {"kind": a.kind, "node": a.name, **layer_summary(*st.regimes()), "channel_axis": st.axis,
         "samples": st.samples, "positions_per_channel": int(st.n)}
    if st.above is not None:
        d["frac_above_upper_bound"] = float(st.above.sum() / max(st.n * st.above.size, 1))
    return d
