"""The pruning steps of api.collapse, kept here so the API only calls two functions.

prepare: validate the flags, prune to a ratio (an approximation, before everything else), and find the
ReLU channels always off on the calibration data. finish: measure the ratio prune's error against the
unpruned model (and top-1 accuracy with --eval data), refuse it above --prune-max-error unless forced.
"""
from __future__ import annotations

import onnx

from ..errors import CollapseError
from .select import check_ratio


def prepare_pruning(original: onnx.ModelProto, cfg, score_details=None, chosen=(),
                    remove_blocks=()) -> tuple[onnx.ModelProto, dict, dict]:
    """(model to collapse, data-dependent off channels, report dict).

    The off channels are found on the requested semantics (the chosen activations linearized, the
    removed blocks skipped): a kept ReLU after a collapsed one sees other values there than in the input
    model, and a channel off only in the input model would be removed wrongly (the gate, whose reference
    masks the same channels, could not tell)."""
    report: dict = {"exact_removal": bool(cfg.prune)}
    base = original
    if cfg.prune_ratio is not None:
        check_ratio(cfg.prune_ratio, cfg.round_to)
        if cfg.prune_scope not in ("global", "layer"):
            raise CollapseError(f"prune scope must be global or layer, got {cfg.prune_scope!r}")
    elif cfg.round_to != 1:
        check_ratio(0.0, cfg.round_to)
    if cfg.prune_ratio is not None:
        from ..onnx.analysis import model_stats
        from .onnx_prune import ratio_prune

        importance, channel_scores = _importance(original, cfg, score_details)
        base, info = ratio_prune(original, float(cfg.prune_ratio), scope=cfg.prune_scope, round_to=cfg.round_to,
                                 importance=importance, channel_scores=channel_scores)
        b, a = model_stats(original), model_stats(base)
        info.update(params_saved=b.params - a.params, macs_saved=b.macs - a.macs, approximate=True)
        report["ratio"] = info
    off = {}
    if cfg.prune and cfg.calib is not None:
        from .onnx_prune import always_off_channels

        from ..onnx.driver import requested_semantics

        off = always_off_channels(requested_semantics(base, set(chosen), remove_blocks=remove_blocks),
                                  cfg.calib, cfg.calib_batches)
    return base, off, report


def _importance(model, cfg, score_details):
    imp = cfg.prune_importance
    if isinstance(imp, str) and imp in ("l1", "l2"):
        return imp, None
    if isinstance(imp, str) and imp in ("tlc", "easier"):
        from ..onnx.graph import to_graph
        from .onnx_prune import channel_scores_from_details

        if not (score_details and score_details.get("method") == imp):
            from ..scores import compute_scores

            score_details = compute_scores(imp, model, calib=cfg.calib, calib_batches=cfg.calib_batches).as_dict()
        scores = channel_scores_from_details(score_details.get("details", {}), to_graph(model))
        if not scores:
            raise CollapseError(f"--prune-importance {imp}: the method gave no per-channel statistics for this model")
        return "scores", scores
    if isinstance(imp, dict):
        return "scores", imp
    if isinstance(imp, str) and imp.endswith(".json"):
        import json
        from pathlib import Path

        p = Path(imp)
        if not p.is_file():
            raise CollapseError(f"{imp}: per-channel scores file not found")
        try:
            data = json.loads(p.read_text())
        except RecursionError:
            raise CollapseError(f"{imp}: JSON nested too deeply; expected {{\"<tensor or node>\": [scores...]}}") from None
        except (ValueError, UnicodeDecodeError) as exc:
            raise CollapseError(f"{imp}: not valid JSON ({exc}); expected {{\"<tensor or node>\": [scores...]}}") from None
        data = data.get("channels", data) if isinstance(data, dict) else data
        if not isinstance(data, dict) or not all(isinstance(v, list) for v in data.values()):
            raise CollapseError(f"{imp}: expected {{\"<tensor or node>\": [one score per channel, ...]}}")
        _check_channel_scores(imp, data, model)
        return "scores", data
    raise CollapseError(f"unknown --prune-importance {imp!r}; use l1, l2, tlc, easier or a per-channel scores .json")


def _check_channel_scores(src: str, data: dict, model) -> None:
    """Each entry names a tensor or node of the model and holds finite numbers: a typo or a NaN would
    otherwise leave those channels unranked (kept) without a word."""
    known = {t for n in model.graph.node for t in (n.name, *n.output) if t}
    for k, v in data.items():
        if k not in known:
            raise CollapseError(f"{src}: {k!r} names no tensor or node of the model; use the names of the "
                                "model's nodes or of their output tensors")
        if not v or not all(_finite_number(x) for x in v):
            raise CollapseError(f"{src}: {k!r} must be a non-empty list of finite numbers (one score per channel)")


def _finite_number(x) -> bool:
    import math

    try:
        return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
    except OverflowError:   # an integer too large for a float
        return False


def finish_pruning(report: dict, ctx, original, base, feeds, cfg, warnings: list, passed: bool) -> bool:
    """Fill the report; returns whether the run still passes (a ratio prune may be refused)."""
    from ..verify import compare, run

    report.update({k: v for k, v in ctx.pruning.items()} if ctx.pruning else {})
    ratio = report.get("ratio")
    if ratio is not None:
        o, names = run(original, feeds)
        b, _ = run(base, feeds)
        c = compare(o, b, names, cfg.rtol, cfg.atol)
        ratio["error_vs_unpruned"] = {"max_abs": c.max_abs, "max_rel": c.max_rel}
        ev = getattr(cfg, "eval_data", None)
        if ev is not None:  # --eval: top-1 of the pruned model (before collapsing) and of the unpruned one
            from ..evaluation import load_eval_data, top1

            feeds_e, labels, _src = load_eval_data(ev, original)
            ratio["accuracy"] = {"unpruned": top1(original, feeds_e, labels, _src), "pruned": top1(base, feeds_e, labels, _src)}
        warnings.append(f"prune ratio {ratio['ratio']}: approximate, max abs error {c.max_abs:.3g} against the "
                        "unpruned model")
        if not ratio.get("removed_channels"):   # say why, rather than report a prune that did nothing
            warnings.append(f"prune ratio {ratio['ratio']} removed no channel: {ratio.get('prunable_groups', 0)} "
                            f"prunable group(s), {ratio.get('frozen_groups', 0)} frozen (report: pruning.ratio."
                            f"frozen_ops); --round-to {ratio.get('round_to', 1)} keeps multiples of it, a lower "
                            "value or a higher ratio removes more")
        limit = cfg.prune_max_error
        if limit is not None and c.max_abs > limit:
            report["refused"] = (f"ratio pruning error {c.max_abs:.3g} (max abs, against the unpruned model) exceeds "
                                 f"--prune-max-error {limit}; lower --prune-ratio or raise the limit")
            return False
    return passed
