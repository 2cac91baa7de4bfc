"""Layer Folding (Ben Dror et al., BMVC 2022): how far each PReLU slope is from 1.

A PReLU with slope alpha = 1 is the identity. Score = mean over channels of |1 - alpha| (a scalar
slope is one channel); LeakyRelu counts as a PReLU with one fixed slope. Layer Folding folds
where alpha >= 0.9; details give that fraction. Data-free; other activation kinds get no score.
"""
from __future__ import annotations

from collections import Counter

import numpy as np

from ..errors import CollapseError
from ._acts import load_activations, per_site
from ._common import ScoreResult, rounded

#: Layer Folding folds a PReLU whose slope reached this value
FOLD_ALPHA = 0.9


def slope_details(kind: str, alpha) -> dict:
    alpha = np.asarray(alpha, dtype=np.float64).ravel()
    dist = np.abs(1.0 - alpha)
    return {"kind": kind, "score": float(dist.mean()) if dist.size else 0.0, "channels": int(alpha.size),
            "alpha": rounded(alpha), "alpha_mean": float(alpha.mean()) if alpha.size else 0.0,
            "frac_foldable": float(np.mean(alpha >= FOLD_ALPHA)) if alpha.size else 0.0}


def prelu_scores(model, calib=None, calib_batches=None, activations=None) -> ScoreResult:
    _, acts = load_activations(model, activations)
    scored = [a for a in acts if a.kind in ("prelu", "leaky_relu")]
    others = Counter(a.kind for a in acts if a.kind not in ("prelu", "leaky_relu"))
    if not scored:
        found = ", ".join(f"{k}: {n}" for k, n in others.items()) or "none"
        raise CollapseError(f"--method prelu scores PReLU / LeakyRelu slopes, and this model has none "
                            f"(activations: {found}); use --method easier or tlc")
    details_by_act = {id(a): slope_details(a.kind, a.params["slope"] if a.kind == "prelu" else [a.params["alpha"]])
                      for a in scored}
    scores, details = per_site(scored, details_by_act)
    notes = ["prelu: score = mean |1 - slope| per PReLU / LeakyRelu (0 = identity); data-free"]
    if others:
        notes.append("prelu: activations of other kinds get no score (" +
                     ", ".join(f"{k}: {n}" for k, n in sorted(others.items())) + ")")
    if calib is not None:
        notes.append("prelu: calibration data is not used by this method (only by verification)")
    return ScoreResult("prelu", "slopes", "activation", scores, details, notes)
