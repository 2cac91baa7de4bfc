"""One config object for a collapse run; the CLI fills it from flags, the API from keywords."""
from __future__ import annotations

from dataclasses import dataclass, field, replace

#: the verification gate's default tolerances, float32 outputs (float64 too) ...
TOLERANCE = (1e-4, 1e-5)
#: ... and float16 / bfloat16 outputs: their rounding step is ~1e-3, and exact merges sum in another order
HALF_TOLERANCE = (1e-2, 1e-3)


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
    rtol: float | None = None        # verification tolerances; None: by output type (with_tolerances)
    atol: float | None = None
    force: bool = False              # write even when the gate fails
    seed: int = 0
    remove_blocks: float | None = None     # LaCoOT: replace residual blocks with score <= T by their skip
    prune: bool = True               # remove constant channels exactly (pruning/); --no-prune turns it off
    prune_ratio: float | None = None # also prune this fraction of channels (approximate, measured)
    prune_scope: str = "global"      # global ranking or per layer
    prune_importance: object = "l1"  # l1 | l2 | tlc | easier | {tensor or node: [per-channel scores]} | .json
    round_to: int = 1                # keep channel counts a multiple of this
    prune_calib_dead: bool = False   # also remove ReLU/ReLU6/HardSwish channels 0 on all calibration data (approximate, opt-in)
    prune_max_error: float | None = None   # refuse a ratio prune whose max abs error exceeds this (unless force)
    eval_data: object = None         # .npz / dict: model inputs + "labels": top-1 accuracy and latency in the report
    target_speedup: float | None = None    # pick lowest-scored activations that buy predicted speed-up until S
    input_shapes: object = None      # ONNX: {input: [dims]} (or "input:1,3,224,224" strings) for dynamic dims
    channel_regimes: bool = False    # per-channel collapse: channels always off take the off regime (0), the rest linear


def check_settings(cfg) -> None:
    """Refuse a config of the wrong type or numeric settings of the wrong type or value (CollapseError),
    before any work: the CLI's flags are checked by its parser and validate_args, the library's keyword
    arguments here, so `collapse(m, check="3")` is one clear line, not a TypeError from numpy."""
    import math
    import numbers

    import numpy as np

    from .errors import CollapseError

    if not isinstance(cfg, CollapseConfig):
        raise CollapseError(f"config must be a collapse_passes.config.CollapseConfig, got {type(cfg).__name__}; "
                            "or pass the settings as keyword arguments")

    def integer(name, low):   # numpy integers are taken, as Python ints
        v = getattr(cfg, name)
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Integral) or v < low:
            raise CollapseError(f"{name} must be an integer >= {low}, got {v!r}")
        setattr(cfg, name, int(v))

    def number(name):   # numpy floats are taken, as Python floats
        v = getattr(cfg, name)
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real) or not math.isfinite(float(v)) \
                or v < 0:
            raise CollapseError(f"{name} must be a finite number >= 0, got {v!r}")
        setattr(cfg, name, float(v))

    integer("check", 0 if cfg.calib is not None else 1)   # 0: the --calib data alone (no random inputs in its range)
    integer("seed", 0)
    if cfg.calib_batches is not None:
        integer("calib_batches", 1)
    for name in ("rtol", "atol", "per_op_overhead", "approx_max_error", "prune_max_error"):
        if getattr(cfg, name) is not None:
            number(name)
    # settings of the merge planner are read by nothing else: with merging off they would be ignored silently
    if not cfg.merge:
        for flag, given in (("--allow-border-approx (allow_border_approx)", cfg.allow_border_approx),
                            ("--cost measured (cost='measured')", cfg.cost == "measured"),
                            ("--per-op-overhead (per_op_overhead)",   # --target-speedup prices with it too
                             cfg.per_op_overhead is not None and cfg.target_speedup is None)):
            if given:
                raise CollapseError(f"{flag} has an effect only on merge planning, and --no-merge (merge=False) "
                                    "turns merging off: drop one of them")
    if cfg.approx_max_error is not None and not cfg.allow_border_approx:
        raise CollapseError("--approx-max-error (approx_max_error) has an effect only with --allow-border-approx "
                            "(allow_border_approx=True): add it or drop approx_max_error")
    if cfg.channel_regimes and cfg.method not in (None, "easier", "tlc"):
        raise CollapseError(f"--channel-regimes (channel_regimes) reads per-channel statistics of --method easier or tlc, "
                            f"and --method {cfg.method} has none: use --method easier / tlc, or drop it")
    if cfg.channel_regimes and cfg.method is None and cfg.scores is None:
        raise CollapseError("--channel-regimes (channel_regimes) needs per-channel statistics: add --method easier or tlc "
                            "(with --calib data, or TLC's BatchNorm variant), or --scores of a file they saved, or drop it")
    if cfg.channel_regimes and cfg.prune_ratio is not None:
        raise CollapseError("--channel-regimes (channel_regimes) and --prune-ratio (prune_ratio) do not combine: the ratio prune "
                            "removes channels the per-channel statistics describe; drop one of them")
    if cfg.prune_calib_dead and cfg.calib is None:
        raise CollapseError("--prune-calib-dead (prune_calib_dead) removes ReLU / ReLU6 / HardSwish channels that are 0 on the "
                            "calibration data: give --calib data (calib=), or drop it")
    if cfg.prune_calib_dead and not cfg.prune:
        raise CollapseError("--prune-calib-dead is a kind of channel removal, and --no-prune (prune=False) turns "
                            "channel removal off: drop one of them")
    # the ratio prune's settings are read by nothing else: without prune_ratio, collapse(m, round_to=8) ran and
    # pruned nothing without a word (the CLI refused the same flags)
    if cfg.prune_ratio is None:
        imp = cfg.prune_importance
        for flag, given in (("--round-to (round_to)", cfg.round_to != 1),
                            ("--prune-scope (prune_scope)", cfg.prune_scope != "global"),
                            ("--prune-importance (prune_importance)", not (isinstance(imp, str) and imp == "l1")),
                            ("--prune-max-error (prune_max_error)", cfg.prune_max_error is not None)):
            if given:
                raise CollapseError(f"{flag} has an effect only with --prune-ratio (prune_ratio): add prune_ratio=R "
                                    "or drop it")


def with_tolerances(cfg: CollapseConfig, half: bool | str = False, notes: list | None = None) -> CollapseConfig:
    """A copy of `cfg` with rtol / atol filled in where left at None: TOLERANCE, or HALF_TOLERANCE when
    the model computes in float16 / bfloat16 (`half`: true, or what says so, "outputs" / "weights"; said in
    `notes`). Given values are kept."""
    rtol, atol = HALF_TOLERANCE if half else TOLERANCE
    if half and notes is not None and (cfg.rtol is None or cfg.atol is None):
        notes.append(f"float16 {half if isinstance(half, str) else 'outputs'}: verification tolerances rtol {cfg.rtol if cfg.rtol is not None else rtol}, "
                     f"atol {cfg.atol if cfg.atol is not None else atol} (float16 rounding; --rtol / --atol set "
                     "them)")
    return replace(cfg, rtol=rtol if cfg.rtol is None else cfg.rtol, atol=atol if cfg.atol is None else cfg.atol)
