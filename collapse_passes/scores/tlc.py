"""TLC (Liao et al., AAAI 2025): how often each activation's input is off, modelled as a Gaussian.

Per channel the pre-activation is taken as N(mu, sigma^2) and p_off = Phi((kink - mu) / sigma)
(kink 0 for ReLU-like and smooth gates); the channel score is the binary entropy of p_off in bits,
the layer score the mean over channels. With an upper bound (ReLU6, HardSigmoid) p_above = P(x > upper)
is a third state, saturated; HardSwish is off for x <= -3 and on for x >= 3, and the probability of its
curved band (-3, 3) counts half on, half off: p_on = P(x >= 3) + P(-3 < x < 3)/2 (_common.layer_summary).

- variant "bn" (data-free, the paper's): mu = beta, sigma = |gamma| of the BatchNormalization that
  feeds the activation directly (through Identity nodes at most).
- variant "empirical" (TLC's code for VGG / Swin / BERT): mu, sigma = per-channel mean and std of the
  activation input on calibration data. Both torch exporters fold BN into Conv in eval mode, so an
  exported CNN usually needs this; so do LayerNorm models (GELU after a Linear).
- variant "mixed": BN where one feeds the activation, empirical for the rest (needs --calib).

A channel is reported dead ("always off") when p_off >= 0.99 and linear ("always on") when
p_off <= 0.01; frac_mostly_off is TLC's own split (beta <= 0 channels are pruned, the rest linear).
"""
from __future__ import annotations

import numpy as np

from ..errors import CollapseError
from ..core.selection import display_key
from ._acts import load_activations, per_site
from ._common import ScoreResult, activation_gaussian_regimes, layer_summary

#: the empirical variant needs a standard deviation: at least two samples
MIN_SAMPLES = 2


def _through_identity(t):
    while t.inputs and t.inputs[0].op == "Identity" and t.inputs[0].inputs:
        t = t.inputs[0].inputs[0]
    return t


def _const(t):
    from ..onnx.graph import const_value

    v = const_value(t)
    if v is None:
        v = const_value(_through_identity(t))
    return v


def bn_feeding(a):
    """(gamma, beta, node name) of the BatchNormalization directly feeding activation `a`, or None."""
    t = _through_identity(a.input)
    if not t.inputs or t.inputs[0].op != "BatchNormalization":
        return None
    bn = t.inputs[0]
    if len(bn.inputs) < 3:
        return None
    gamma, beta = _const(bn.inputs[1]), _const(bn.inputs[2])
    if gamma is None or beta is None:
        return None
    return np.asarray(gamma, np.float64).ravel(), np.asarray(beta, np.float64).ravel(), bn.name


def tlc_scores(model, calib=None, calib_batches=None, variant: str = "auto", activations=None) -> ScoreResult:
    """variant "auto" (BN where one feeds the activation, empirical elsewhere), or force "empirical"
    (every activation from calibration statistics; e.g. to compare with the BN variant)."""
    if variant not in ("auto", "empirical"):
        raise CollapseError(f"tlc: unknown variant {variant!r}; use auto or empirical")
    _, acts = load_activations(model, activations)
    if not acts:
        raise CollapseError("tlc: the model has no recognised activations to score")
    bns = {id(a): (bn_feeding(a) if variant == "auto" else None) for a in acts}
    rest = [a for a in acts if bns[id(a)] is None]
    if rest and calib is None:
        if variant == "empirical":
            raise CollapseError("--method tlc (empirical variant) needs calibration data: give --calib FILE.npz")
        if len(rest) == len(acts):
            raise CollapseError(
                "--method tlc: no BatchNormalization feeds the activations (torch exporters fold BN into Conv in "
                "eval mode; LayerNorm models have none), so TLC needs the empirical statistics of the activation "
                "inputs: give calibration data with --calib FILE.npz")
        ex = ", ".join(repr(display_key(a)) for a in rest[:3])
        raise CollapseError(
            f"--method tlc: {len(rest)} of {len(acts)} activations have no BatchNormalization right before them "
            f"(e.g. {ex}); give --calib FILE.npz for their empirical statistics (the others use BN, data-free)")
    variant = "bn" if not rest else ("empirical" if len(rest) == len(acts) else "mixed")
    per_act: dict[int, dict] = {}
    for a in acts:
        if bns[id(a)] is not None:
            gamma, beta, name = bns[id(a)]
            per_act[id(a)] = {"kind": a.kind, "node": a.name, "source": "bn", "bn": name,
                              **layer_summary(*activation_gaussian_regimes(beta, gamma, a.kind, a.params)),
                              "channel_axis": 1}   # BatchNormalization's channels (what --channel-regimes reads)
    samples = 0
    if rest:
        from .easier import collect_stats

        stats = collect_stats(model, rest, calib, calib_batches, "tlc", MIN_SAMPLES, moments=True)
        for a in rest:
            st = stats[id(a)]
            samples = st.samples
            per_act[id(a)] = {"kind": a.kind, "node": a.name, "source": "empirical",
                              **layer_summary(*st.gaussian_regimes()),
                              "channel_axis": st.axis, "samples": st.samples}
    scores, details = per_site(acts, per_act)
    if variant == "bn":
        notes = [f"tlc: variant bn (data-free): p_off = Phi(-beta/|gamma|) from the BatchNormalization before each "
                 f"of the {len(acts)} activation(s)"]
    elif variant == "empirical" and any(bn_feeding(a) for a in acts):
        notes = [f"tlc: variant empirical (requested): p_off = Phi(-mean/std) of each activation input per channel on "
                 f"{samples} calibration sample(s), BatchNormalization parameters ignored"]
    elif variant == "empirical":
        notes = [f"tlc: variant empirical: no BatchNormalization feeds the activations (folded into Conv by the "
                 f"exporter, or a LayerNorm model), so p_off = Phi(-mean/std) of each activation input per channel "
                 f"on {samples} calibration sample(s)"]
    else:
        notes = [f"tlc: variant mixed: {len(acts) - len(rest)} activation(s) from their BatchNormalization "
                 f"(data-free), {len(rest)} from per-channel mean/std on {samples} calibration sample(s) "
                 "(no BN right before them)"]
    return ScoreResult("tlc", variant, "activation", scores, details, notes)
