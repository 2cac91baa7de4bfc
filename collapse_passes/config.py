"""One config object for a collapse run; the CLI fills it from flags, the API from keywords."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class CollapseConfig:
    scores: object = None            # dict key->score, {"scores": {...}}, or a path to such a JSON file
    threshold: float | None = None   # collapse activations with score <= threshold
    remove: int | None = None        # or collapse the N lowest-scored activations
    collapse: list = field(default_factory=list)  # or name the keys to collapse directly
    method: str | None = None        # compute scores: tlc, easier, prelu, lacoot
    merge: bool = True               # merge linear chains the collapse made consecutive
    allow_border_approx: bool = False
    approx_max_error: float | None = None   # with allow_border_approx: fail above this max abs error
    cost: str = "macs"               # macs | measured
    per_op_overhead: float | None = None    # MAC-equivalents charged per op by the cost model
    check: int = 3                   # random inputs for the verification gate
    calib: object = None             # calibration data (.npz / folder / dict) for the gate and scores
    calib_batches: int | None = None
    rtol: float = 1e-4
    atol: float = 1e-5
    force: bool = False              # write even when the gate fails
    seed: int = 0
    remove_blocks: float | None = None     # LaCoOT: replace residual blocks with score <= T by their skip
