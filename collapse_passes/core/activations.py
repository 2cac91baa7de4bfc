"""The activation catalogue: one definition of every activation kind, shared by all front ends.

For each kind it records
- the *linear regime*: the affine map y = scale*x + shift the activation follows when "always on".
  Collapsing an activation means substituting this map (identity for almost all; SELU's is
  gamma*x, HardSigmoid's alpha*x + beta). Exact on [kink, upper] for piecewise-linear kinds, the
  x -> +inf asymptote for smooth gates (GELU, SiLU, ...; for the non-collapsible ones too);
- the *kink*: the input where it switches from "off" to "on" (what the scores threshold at);
- the *band*: for an activation exactly off below one point and exactly on above another, with a curved
  stretch between (HardSwish: 0 for x <= -3, x for x >= 3, x(x+3)/6 between), the lower end of that
  stretch; the kink is then its upper end. The scores count an input in the band as neither regime
  (half on, half off). None: it switches straight from off to on at the kink;
- the *upper bound*: the input above which it leaves the linear regime again (ReLU6's 6), or None;
- a float64 numpy *reference* function (used to identify decomposed activations on probe points
  and by the tests against torch);
- whether it is *collapsible*. Softplus, Tanh and Sigmoid are known but never collapsed: they have
  no regime that is exactly linear on a half-line.

Params use one naming convention across front ends: leaky_relu {"alpha"}, prelu {"slope"},
clip {"min", "max"}, hardsigmoid {"alpha", "beta"}, elu/celu {"alpha"}, selu {"gamma", "alpha"},
softplus {"beta"}. Missing params take the defaults below (ONNX's defaults; torch's HardSigmoid is
alpha = 1/6, which torch_kinds passes explicitly).

Pure python/numpy: no onnx, no torch. Front ends map their ops to these kinds:
onnx/patterns.py (ONNX nodes), core/torch_kinds.py (torch modules, functions, aten ops),
tvm_integration/relax_pass.py (Relax ops).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

#: a channel is "always off" (dead) when its p_off >= DEAD_P and "always on" when p_off <= 1 - DEAD_P: the scores'
#: frac_dead / frac_linear (scores/_common.py) and the per-channel collapse's split (core/channel_regimes.py)
DEAD_P = 0.99

SELU_ALPHA = 1.6732632423543772
SELU_GAMMA = 1.0507009873554805
_SQRT1_2 = 1.0 / math.sqrt(2.0)
_SQRT_2_PI = math.sqrt(2.0 / math.pi)

_erf = np.vectorize(math.erf, otypes=[np.float64])


def _p(params: dict | None, defaults: dict) -> dict:
    out = dict(defaults)
    if params:
        out.update({k: v for k, v in params.items() if v is not None})
    return out


@dataclass(frozen=True)
class ActivationKind:
    """One catalogue entry; call the module-level helpers rather than these fields directly."""
    name: str
    reference: Callable      # (x float64 array, params dict with defaults filled) -> float64 array
    collapsible: bool = True
    defaults: dict = field(default_factory=dict)
    linear: Callable = lambda p: (1.0, 0.0)          # params -> (scale, shift) of the "on" regime
    kink: Callable = lambda p: 0.0                     # params -> input where off switches to on
    upper: Callable = lambda p: None                   # params -> input where on ends, or None
    band: Callable = lambda p: None                    # params -> lower end of a curved band below the kink, or None
    piecewise_linear: bool = True   # the linear regime holds exactly on [kink, upper]; False: only as x -> +inf
    description: str = ""
    fuses: bool = False   # runtimes compute it inside the conv / gemm before it (onnxruntime's FusedConv): no op of its own
    # params -> (scale, shift) of the "off" regime (input below the kink) where it is exactly affine (ReLU: 0,
    # LeakyReLU: alpha*x, Clip: its min); None where it is curved (ELU, the smooth gates): off_regime()
    off: Callable | None = None


def _where_pos(x, neg):
    return np.where(x >= 0, x, neg)


def _elu_neg(x, alpha):
    with np.errstate(over="ignore"):
        return alpha * np.expm1(np.minimum(x, 0.0))


def _hardsigmoid_off(p) -> tuple[float, float]:
    """The constant a HardSigmoid outputs below its linear range: 0 for alpha > 0, 1 for alpha < 0."""
    a, b = float(p["alpha"]), float(p["beta"])
    if a == 0.0:
        return 0.0, float(np.clip(b, 0.0, 1.0))
    return 0.0, float(np.clip(a * _hardsigmoid_breaks(p)[0] + b, 0.0, 1.0))


def _hardsigmoid_breaks(p) -> tuple[float, float | None]:
    """(kink, upper) of clip(alpha*x + beta, 0, 1): its linear range [kink, upper] whatever alpha's sign.
    With alpha < 0 the output is 1 below (1 - beta)/alpha and 0 above -beta/alpha: taken as written (kink
    -beta/alpha, above upper), every input in the linear range counted as both off and saturated, and a
    channel half linear, half at 0 scored 0.5 bits instead of 1. alpha = 0 is constant (linear everywhere)."""
    a, b = float(p["alpha"]), float(p["beta"])
    if a == 0.0:
        return -math.inf, None
    lo, hi = -b / a, (1.0 - b) / a
    return min(lo, hi), max(lo, hi)


CATALOGUE: dict[str, ActivationKind] = {k.name: k for k in [
    ActivationKind("relu", lambda x, p: np.maximum(x, 0.0), fuses=True, off=lambda p: (0.0, 0.0), description="max(x, 0)"),
    ActivationKind("relu6", lambda x, p: np.clip(x, 0.0, 6.0), upper=lambda p: 6.0, off=lambda p: (0.0, 0.0),
                   fuses=True, description="min(max(x, 0), 6)"),
    ActivationKind("clip", lambda x, p: np.clip(x, p["min"], np.inf if p.get("max") is None else p["max"]),
                   defaults={"min": 0.0, "max": None}, kink=lambda p: float(p["min"]), off=lambda p: (0.0, float(p["min"])),
                   upper=lambda p: None if p.get("max") is None else float(p["max"]),
                   fuses=True, description="min(max(x, min), max); ReLU6 when (0, 6)"),
    ActivationKind("leaky_relu", lambda x, p: _where_pos(x, p["alpha"] * x), defaults={"alpha": 0.01},
                   off=lambda p: (float(p["alpha"]), 0.0), fuses=True, description="x if x >= 0 else alpha*x"),
    ActivationKind("prelu", lambda x, p: _where_pos(x, np.asarray(p["slope"], np.float64) * x),
                   defaults={"slope": 0.25}, off=lambda p: (np.asarray(p["slope"], np.float64), 0.0),
                   description="x if x >= 0 else slope*x (slope per channel)"),
    ActivationKind("hardswish", lambda x, p: x * np.clip(x + 3.0, 0.0, 6.0) / 6.0, kink=lambda p: 3.0,
                   band=lambda p: -3.0, off=lambda p: (0.0, 0.0),
                   description="x*relu6(x+3)/6; off (0) for x <= -3, on (identity) for x >= 3, curved x(x+3)/6 "
                               "between: that band counts half on, half off in the scores"),
    ActivationKind("hardsigmoid", lambda x, p: np.clip(p["alpha"] * x + p["beta"], 0.0, 1.0),
                   defaults={"alpha": 0.2, "beta": 0.5}, linear=lambda p: (float(p["alpha"]), float(p["beta"])),
                   kink=lambda p: _hardsigmoid_breaks(p)[0], upper=lambda p: _hardsigmoid_breaks(p)[1],
                   off=_hardsigmoid_off,
                   fuses=True, description="clip(alpha*x + beta, 0, 1); linear regime alpha*x + beta"),
    ActivationKind("elu", lambda x, p: np.where(x > 0, x, _elu_neg(x, p["alpha"])), defaults={"alpha": 1.0},
                   piecewise_linear=True, description="x if x > 0 else alpha*(exp(x) - 1)"),
    ActivationKind("celu", lambda x, p: np.where(x > 0, x, _elu_neg(x / p["alpha"], p["alpha"])),
                   defaults={"alpha": 1.0}, description="x if x > 0 else alpha*(exp(x/alpha) - 1)"),
    ActivationKind("selu", lambda x, p: p["gamma"] * np.where(x > 0, x, _elu_neg(x, p["alpha"])),
                   defaults={"gamma": SELU_GAMMA, "alpha": SELU_ALPHA}, linear=lambda p: (float(p["gamma"]), 0.0),
                   description="gamma*(x if x > 0 else alpha*(exp(x) - 1)); linear regime gamma*x"),
    ActivationKind("gelu", lambda x, p: 0.5 * x * (1.0 + _erf(x * _SQRT1_2)), piecewise_linear=False,
                   description="x*Phi(x)"),
    ActivationKind("gelu_tanh", lambda x, p: 0.5 * x * (1.0 + np.tanh(_SQRT_2_PI * (x + 0.044715 * x ** 3))),
                   piecewise_linear=False, description="tanh approximation of GELU"),
    ActivationKind("silu", lambda x, p: x / (1.0 + np.exp(-x)), piecewise_linear=False,
                   description="x*sigmoid(x) (swish)"),
    ActivationKind("mish", lambda x, p: x * np.tanh(np.logaddexp(0.0, x)), piecewise_linear=False,
                   description="x*tanh(softplus(x))"),
    ActivationKind("softplus", lambda x, p: np.logaddexp(0.0, p["beta"] * x) / p["beta"], collapsible=False,
                   defaults={"beta": 1.0}, piecewise_linear=False,
                   description="log(1 + exp(beta*x))/beta; not collapsed: no exactly linear half-line"),
    ActivationKind("tanh", lambda x, p: np.tanh(x), collapsible=False, linear=lambda p: (0.0, 1.0),
                   piecewise_linear=False,
                   fuses=True, description="tanh(x); not collapsed (saturates on both sides)"),
    ActivationKind("sigmoid", lambda x, p: 1.0 / (1.0 + np.exp(-x)), collapsible=False, linear=lambda p: (0.0, 1.0),
                   piecewise_linear=False, fuses=True, description="1/(1 + exp(-x)); not collapsed (saturates on both sides)"),
]}

#: other spellings accepted by get(): the Relax pass's names and common synonyms
ALIASES = {"leakyrelu": "leaky_relu", "swish": "silu", "hard_swish": "hardswish", "hard_sigmoid": "hardsigmoid",
           "gelu_none": "gelu"}

#: kinds that exporters spell out as several elementwise nodes (found in ONNX by probing a region)
GATED_KINDS = ("gelu", "gelu_tanh", "silu", "hardswish", "mish")

#: kinds a pass may collapse
COLLAPSIBLE = tuple(k for k, v in CATALOGUE.items() if v.collapsible)


def canonical(kind: str) -> str:
    """The catalogue name of `kind` (aliases resolved); KeyError if unknown."""
    k = ALIASES.get(kind, kind)
    if k not in CATALOGUE:
        raise KeyError(f"unknown activation kind {kind!r}; known: {', '.join(CATALOGUE)}")
    return k


def get(kind: str) -> ActivationKind:
    return CATALOGUE[canonical(kind)]


def is_collapsible(kind: str) -> bool:
    k = ALIASES.get(kind, kind)
    return k in CATALOGUE and CATALOGUE[k].collapsible


def fuses(kind: str) -> bool:
    """True when runtimes compute `kind` inside the conv / gemm that feeds it (no op, no pass over
    memory of its own): what a cost model prices at zero. Unknown kinds: False."""
    k = ALIASES.get(kind, kind)
    return k in CATALOGUE and CATALOGUE[k].fuses


def params_with_defaults(kind: str, params: dict | None = None) -> dict:
    return _p(params, get(kind).defaults)


#: a lower-only clamp this small is a division guard, not a layer's activation
EPS_GUARD_MAX = 1e-4


def is_eps_guard(lo, hi) -> bool:
    """True for ``clamp_min(eps)`` / ``Clip(min=eps)`` with 0 < eps <= 1e-4 and no upper bound: what
    F.normalize, cosine similarity or a variance put before a division (Swin V2's cosine attention). It
    keeps a denominator off zero and removes no layer when collapsed, so no front end
    lists it as an activation (it stays in the graph as a nonlinear op)."""
    return hi is None and lo is not None and 0.0 < float(lo) <= EPS_GUARD_MAX


def linear_regime(kind: str, params: dict | None = None) -> tuple[float, float]:
    """(scale, shift) of the affine map a collapsed activation becomes: y = scale*x + shift."""
    e = get(kind)
    s, b = e.linear(_p(params, e.defaults))
    return float(s), float(b)


def off_regime(kind: str, params: dict | None = None):
    """(scale, shift) of the map an activation follows below its kink, where that map is exactly affine: ReLU,
    ReLU6, HardSwish (x <= -3) 0, a Clip its min, HardSigmoid its lower constant, LeakyReLU alpha*x, PReLU
    slope*x (scale per channel); None for the curved off sides (ELU / CELU / SELU, GELU, SiLU, Mish) and
    unknown kinds. What a channel that is always off becomes in a per-channel collapse (core/channel_regimes)."""
    return _catalogue_field(kind, params, "off", None, float_=False)


def _catalogue_field(kind: str, params: dict | None, field: str, unknown, float_: bool = True):
    """The catalogue entry's `field` (kink, band, upper, off) for `kind` with `params` over its defaults;
    `unknown` for a kind the catalogue does not know or an entry without one; a number as a float."""
    k = ALIASES.get(kind, kind)
    fn = getattr(CATALOGUE[k], field) if k in CATALOGUE else None
    if fn is None:
        return unknown
    v = fn(_p(params, CATALOGUE[k].defaults))
    return v if v is None or not float_ else float(v)


def activation_kink(kind: str, params: dict | None = None) -> float:
    """Input from which the activation is 'on' (in its linear regime): the threshold the scores use.

    0 for ReLU-like kinds, ELU/CELU/SELU and the smooth gates (GELU, SiLU, Mish: the papers' convention,
    they have no exactly linear range), 3 for HardSwish (identity from 3 on; band_start gives -3), the
    lower bound of a Clip, the lower end of a HardSigmoid's linear range (-beta/alpha for alpha > 0).
    Unknown kinds: 0."""
    return _catalogue_field(kind, params, "kink", 0.0)


def band_start(kind: str, params: dict | None = None) -> float | None:
    """Lower end of the curved band below the kink (HardSwish: -3), or None when the activation switches
    straight from off to on at its kink. Off is input <= band_start, the band band_start < input < kink.

    Why: taking HardSwish's kink at 0 like the gates counted a channel living in [0, 3) "always on"
    (score 0, collapsible), though x(x+3)/6 is far from the identity there; the training loop collapsed
    MobileNetV3's such sites first. Unknown kinds: None."""
    return _catalogue_field(kind, params, "band", None)


def upper_bound(kind: str, params: dict | None = None) -> float | None:
    """Input above which the activation leaves its linear regime again (ReLU6: 6), or None."""
    return _catalogue_field(kind, params, "upper", None)


def reference(kind: str, x, params: dict | None = None) -> np.ndarray:
    """The activation evaluated in float64 numpy (x broadcast against per-channel params)."""
    e = get(kind)
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        return np.asarray(e.reference(x, _p(params, e.defaults)), dtype=np.float64)


def identify(values: np.ndarray, probe: np.ndarray, kinds=GATED_KINDS, rtol: float = 1e-4,
             atol: float = 1e-5) -> str | None:
    """The kind (default params) whose reference matches `values` on `probe` best, among those within the
    tolerances, or None. Best, not first: at float16's tolerances GELU and its tanh form both match."""
    best, best_err = None, np.inf
    for k in kinds:
        ref = reference(k, probe)
        if np.allclose(values, ref, rtol=rtol, atol=atol):
            err = float(np.max(np.abs(values - ref)))
            if err < best_err:
                best, best_err = k, err
    return best
