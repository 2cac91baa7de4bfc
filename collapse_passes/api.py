"""collapse(model, ...) -> CollapseResult: the library entry point behind the CLI.

load -> resolve keys -> score -> choose -> passes -> verify -> (caller writes).
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import onnx

from .config import CollapseConfig, check_settings, with_tolerances
from .core.runtime import collector_skips_older_objects
from .errors import CollapseError, VerificationError, random_model_error
from .onnx.analysis import model_stats
from .onnx.passes.fold_static_shapes import shared_runs
from .onnx.graph import (ONNX_FLOAT_TYPES, as_model, node_key_names, optional_values, random_nodes, save_model_atomic,
                         subgraphs, to_graph)
from .report import activation_row, build_report
from .core.selection import (COLLAPSED_META, KeyIndex, assign_scores, block_scores_given, blocks_to_remove,
                             check_selection, choose, collapsed_before, display_key, read_scores, record_collapsed)
from .onnx.keys import never_collapsed_keys, resolve_keys
from .onnx.patterns import find_activations, unknown_nonlinear_nodes


@dataclass
class CollapseResult:
    model: onnx.ModelProto
    report: dict
    requested: onnx.ModelProto | None = None
    passed: bool = True
    original: onnx.ModelProto | None = None   # the input as loaded (external data resolved)
    source: Path | None = None                # the input model's file, when it was given as a path
    # how the gate drew its random inputs: dynamic dims' sizes (core/runtime.check_shapes; empty: as 1, or --calib)
    # and the float distribution; the TVM hand-off's output check draws its input the same way
    check_shapes: dict = field(default_factory=dict)
    check_dist: str = "normal"

    def save(self, path) -> Path:
        if not isinstance(self.model, onnx.ModelProto):   # a torch result (GraphModule / ExportedProgram)
            raise CollapseError("save() writes ONNX results; for a torch result use torch.export.save(ep, path) or "
                                "models.export.export_onnx(result.model, path, input_shape)")
        from .onnx.graph import needs_external_data
        from .outputs import OutputPlan

        external = needs_external_data(self.model)   # over 2 GiB: the weights go to <path>.data
        # the CLI's checks for -o, also for a result of a ModelProto (no input file): a path naming a folder,
        # a NUL byte or an overlong name are one CollapseError, not a ValueError/OSError from the write
        plan = OutputPlan()
        if self.source is not None:   # never over the input model or its external data (as the CLI's -o)
            plan.add_model_input(self.source)
        plan.add_output("model", "save()", path)
        if external:
            plan.add_model_data("save()'s data file")
        plan.check()
        save_model_atomic(self.model, plan.path("model"), external=external)   # the checked file (links resolved)
        return Path(path)


# ------------------------------------------------------------------------------------ collapse

#: CLI flags whose keyword is not the flag's name (README, Python API)
_FLAG_KEYWORDS = {"no_merge": "merge=False", "no_prune": "prune=False", "input_shape": "input_shapes=",
                  "eval": "eval_data="}


def _keyword_hint(k: str) -> str:
    """'; did you mean ...' for a keyword guessed from a CLI flag (input_shape=) or misspelt."""
    import dataclasses
    import difflib

    if k in _FLAG_KEYWORDS:
        return f"; the keyword for --{k.replace('_', '-')} is {_FLAG_KEYWORDS[k]}"
    near = difflib.get_close_matches(k, [f.name for f in dataclasses.fields(CollapseConfig)], n=3)
    return f"; did you mean {', '.join(map(repr, near))}?" if near else ""


def make_config(config: CollapseConfig | None, scores=None, threshold=None, remove=None, caller: str = "collapse",
                **kwargs) -> CollapseConfig:
    """A copy of `config` (or a default one) with the keyword arguments of collapse() / torch_backend()
    applied; the caller's config object is not changed."""
    if config is not None and not isinstance(config, CollapseConfig):
        check_settings(config)   # names the type in one line (a dict, say), before any attribute is set
    cfg = replace(config) if config is not None else CollapseConfig()
    if scores is not None:
        cfg.scores = scores
    if threshold is not None:
        cfg.threshold = threshold
    if remove is not None:
        cfg.remove = remove
    for k, v in kwargs.items():
        if not hasattr(cfg, k):
            raise TypeError(f"{caller}() got an unexpected keyword argument {k!r}{_keyword_hint(k)}")
        setattr(cfg, k, v)
    check_selection(cfg)
    return cfg


@collector_skips_older_objects()   # the caller's heap (torch loaded: ~0.5 s CPU a full collection) is not walked
@shared_runs()   # the input's size values, run once for the report's "before" and the passes (fold_static_shapes)
def collapse(model, scores=None, threshold: float | None = None, remove: int | None = None,
             config: CollapseConfig | None = None, **kwargs) -> CollapseResult:
    """Collapse the chosen activations of an ONNX model (ModelProto or path) and verify the result.

    Raises CollapseError on bad input and VerificationError when the result does not match the
    requested semantics (unless force=True, then result.passed is False).
    """
    example_inputs = kwargs.pop("example_inputs", None)   # torch models: shapes for planning, inputs for the gate
    cfg = make_config(config, scores, threshold, remove, "collapse", **kwargs)
    if _is_torch_module(model):   # nn.Module, fx.GraphModule, torch.export.ExportedProgram
        if cfg.input_shapes is not None:
            raise CollapseError("input_shapes is for ONNX models; a torch model takes its shapes from "
                                "example_inputs=(...)")
        if cfg.eval_data is not None or cfg.target_speedup is not None:
            raise CollapseError("eval_data / target_speedup apply to ONNX models; for a torch model use "
                                "collapse_passes.train.iterative_collapse(..., target_speedup=S) or export it first")
        from .fx.api import collapse_torch

        return collapse_torch(model, cfg, example_inputs)
    if example_inputs is not None:
        if callable(model) and not isinstance(model, (str, os.PathLike)):   # a function: neither front end's
            raise CollapseError(f"collapse() takes an ONNX model (onnx.ModelProto or a path) or a torch nn.Module, "
                                f"fx.GraphModule or ExportedProgram, got {type(model).__name__}: wrap the function "
                                "in an nn.Module (its forward calling it)")
        raise CollapseError("example_inputs is for torch models; ONNX models are verified on check= random "
                            "inputs or calib= data")
    t0 = time.perf_counter()
    given, path = as_model(model, expand=False)
    notes: list[str] = []
    from .onnx.contrib import expand_contrib_ops

    # onnxruntime's fused ops as standard ops (their activations seen); the result is checked against `given`
    original = expand_contrib_ops(given, notes)
    rand = random_nodes(original)
    if rand:
        raise random_model_error(rand, "export it in eval mode (model.eval(), and training=TrainingMode.EVAL for the "
                                 "TorchScript exporter), or remove the random ops")
    opt = optional_values(original)
    if opt:
        shown = ", ".join(opt[:2]) + (" ..." if len(opt) > 2 else "")
        raise CollapseError(f"the model uses ONNX optional values ({shown}), which the graph rewriter "
                            "(onnx-graphsurgeon) cannot write back; export it with plain tensors (return the tensor "
                            "itself, not an Optional of it)")
    if cfg.input_shapes is not None:
        from .onnx.shapes import fix_input_shapes, input_shapes_text, parse_input_shapes

        # a proto read from a path here is ours to change; the caller's ModelProto is copied
        original = fix_input_shapes(original, parse_input_shapes(cfg.input_shapes), in_place=path is not None)
        notes.append(f"input shapes fixed (--input-shape): {input_shapes_text(original)}; the model written takes "
                     "these sizes only (a dim given by name stays dynamic)")
    eval_set = None
    if cfg.eval_data is not None:
        from .evaluation import load_eval_data

        eval_set = load_eval_data(cfg.eval_data, original)
    if cfg.threshold is not None and cfg.remove is not None:
        raise CollapseError("give either threshold or remove, not both")
    warnings: list[str] = []
    cfg = with_tolerances(cfg, half_precision(original), notes)
    batch_bn = [n.name or n.output[0] for n in original.graph.node if n.op_type == "BatchNormalization"
                and any(a.name == "training_mode" and a.i for a in n.attribute)]
    if batch_bn:   # deterministic, so verified honestly, but nothing folds and the user likely forgot eval()
        warnings.append(f"{len(batch_bn)} BatchNormalization node(s) in training mode (e.g. {batch_bn[0]}): they "
                        "normalize with each batch's own statistics, so none is folded and the outputs depend on the "
                        "batch; export after model.eval() (training=TrainingMode.EVAL) to fold them")

    graph = to_graph(original)
    acts = find_activations(graph)
    meta = node_key_names(original)
    unknown = unknown_nonlinear_nodes(graph, acts)
    index = KeyIndex(resolve_keys(acts, meta), never_collapsed_keys(unknown, meta), collapsed_before(original),
                     _nested_nodes(original.graph))

    raw_scores: dict[str, float] = {}
    block_scores: dict[str, float] = {}
    score_details = None
    if cfg.method:
        from .scores import compute_scores

        computed = compute_scores(cfg.method, original, calib=cfg.calib, calib_batches=cfg.calib_batches,
                                  activations=(graph, acts))   # found once above, only read by the scores
        if computed.kind == "block":
            block_scores = dict(computed.scores)
        else:
            raw_scores = dict(computed.scores)
        score_details = computed.as_dict()
        notes.extend(computed.notes)
    saved_blocks = None if cfg.method or cfg.scores is None else block_scores_given(cfg.scores)
    if saved_blocks is not None:   # --save-scores of a lacoot run: block keys, checked against the model's blocks
        from .onnx.blocks import find_residual_blocks

        known = {k for b in find_residual_blocks(graph, meta) for k in b.keys}   # the graph read above
        gone = [k for k in saved_blocks if k not in known and k in index.before]   # removed by an earlier run
        if gone:
            notes.append(f"{len(gone)} block score key(s) name residual blocks an earlier collapse_passes run removed "
                         f"(the model's metadata, {COLLAPSED_META}): skipped ({', '.join(gone[:4])}"
                         f"{' ...' if len(gone) > 4 else ''})")
            saved_blocks = {k: v for k, v in saved_blocks.items() if k not in gone}
        bad = [k for k in saved_blocks if k not in known]
        if bad:
            raise CollapseError(f"{cfg.scores}: {bad[0]!r} names no residual block of this model (block scores, "
                                f"saved after --method lacoot); its blocks are: {', '.join(sorted(known)[:12]) or 'none'}")
        block_scores = saved_blocks
    elif cfg.scores is not None:
        raw_scores.update(read_scores(cfg.scores))
    blocks_removed = blocks_to_remove(block_scores, cfg.remove_blocks, warnings)
    src = str(cfg.scores) if isinstance(cfg.scores, (str, os.PathLike)) else "scores"
    act_scores = assign_scores(acts, index, raw_scores, src, notes) if raw_scores else {}

    skipped = index.skipped_before(raw_scores)   # a --collapse key among them is refused (core.selection.lookup)
    if skipped:
        notes.append(f"{len(skipped)} score key(s) name activations an earlier collapse_passes run collapsed (the "
                     f"model's metadata, {COLLAPSED_META}): skipped ({', '.join(skipped[:4])}"
                     f"{' ...' if len(skipped) > 4 else ''})")
    chosen = choose(acts, index, act_scores, cfg, warnings)
    speedup_rows = stats_before = None
    cost_model = _cost_model(cfg, original)   # one per run: a measured one times each signature once
    pruned = None   # the ratio prune, done first when --target-speedup plans on its result
    if cfg.target_speedup is not None:
        from .pruning.api_hook import prune_to_ratio
        from .speedup import onnx_target_choice

        stats_before = model_stats(original)   # the planner's base and the report's "before", computed once
        pruned = prune_to_ratio(original, cfg, score_details, blocks_removed)   # what the passes get
        chosen, speedup_rows = onnx_target_choice(pruned[0], acts, index, act_scores, chosen, cfg, notes,
                                                  stats_before, cost_model, reference=original, warnings=warnings)
    if not raw_scores and not cfg.collapse and not block_scores:
        notes.append("no scores given: nothing collapsed; only the exact clean-ups (folding, merging) ran")
    regimes, regime_rows = {}, None   # --channel-regimes: per-channel maps of the chosen sites (core/channel_regimes)
    if cfg.channel_regimes:
        from .core.channel_regimes import plan, regime_details

        from .onnx.shapes import inferred_types

        types = inferred_types(original) or {}   # the input ranks: a PReLU slope's broadcast axis (channel_regimes)
        ranks = {n: len(vi.type.tensor_type.shape.dim) for n, vi in types.items() if vi.type.tensor_type.HasField("shape")}
        ranks.update({t.name: len(t.shape) for t in graph.inputs if t.shape is not None})
        regimes, regime_rows = plan([(a.name, [display_key(a), *a.keys], a.kind, a.params, ranks.get(a.input.name))
                                     for a in chosen],
                                    regime_details(score_details, cfg.scores), warnings)

    from .onnx.driver import requested_semantics, run_passes
    from .onnx.shapes import dynamic_inputs
    from .pruning.api_hook import finish_pruning, prepare_pruning

    if stats_before is None and (chosen or blocks_removed):
        # its MAC count reads every conv weight: done now, with the input the only model held, not later on top
        # of the requested semantics and the result (docs/pass_runtime.md, 2026-11-28 13:40)
        stats_before = model_stats(original)
    base, prune_off, prune_report = prepare_pruning(original, cfg, score_details, chosen={a.name for a in chosen},
                                                    remove_blocks=blocks_removed, pruned=pruned,
                                                    channel_regimes=regimes)
    collapsed_outputs = {a.output.name for a in chosen}   # a collapsed ReLU is no longer "always off"
    prune_off = {t: c for t, c in prune_off.items() if t not in collapsed_outputs}
    input_shapes = _input_shapes(original)
    result_model, ctx, pm = run_passes(base, {a.name for a in chosen}, merge=cfg.merge,
                                       allow_border_approx=cfg.allow_border_approx, cost_model=cost_model,
                                       input_shapes=input_shapes, remove_blocks=blocks_removed,
                                       prune=cfg.prune, prune_off=prune_off, channel_regimes=regimes)
    requested = requested_semantics(base, {a.name for a in chosen}, remove_blocks=blocks_removed,
                                    constant_channels=ctx.pruning.get("data_dependent_channels"),
                                    channel_regimes=regimes)
    stats_after = model_stats(result_model, graph=ctx.graph)   # shapes inferred by the last Cleanup
    overridable = _overridable_weights(original, result_model)
    if overridable:
        notes.append(f"{len(overridable)} initializer(s) that were also graph inputs ({', '.join(overridable[:3])}"
                     f"{', ...' if len(overridable) > 3 else ''}: an old exporter's overridable weights) are read as "
                     "the constants they hold and are no longer inputs of the model written")
    dynamic = dynamic_inputs(original)
    if dynamic:
        notes.append(f"dynamic input size: {', '.join(dynamic)}; MACs and the merge planner count those dims "
                     "as 1 and chains of unknown size are not merged; --input-shape NAME:D0,D1,... gives real sizes")
    ctx.graph = None   # its arrays duplicate the result's weights: not held through verification

    from .core.merge_fallback import unfolded
    from .verify import InputModelRunError, accept_conditioned, random_inputs, verify

    ladder: list = [{}]   # the sizes tried for dynamic dims, in order (core/runtime.check_size_ladder)
    ranges: dict = {}   # the check's integer inputs' ranges: token ids over the whole table (core/runtime.index_ranges)
    if cfg.calib is not None:
        from .calib import calibration_feeds, feed_samples

        from .core.runtime import random_in_range

        feeds = calibration_feeds(cfg.calib, original, limit=cfg.calib_batches or 8)
        samples = sum(feed_samples(f) for f in feeds)
        if _identical_samples(feeds):
            warnings.append(f"the {samples} samples of --calib (calib=) checked are all the same input: scores from data (easier, lacoot, "
                            "tlc's empirical variant) see one input, so every channel looks always on or off, and the "
                            "check runs one input; give varied samples")
        # the requested semantics holds on every input: --check random inputs in the data's range are checked too
        # (a calibration set of one blank image exercised no weight, and a wrong fold passed)
        extra = random_in_range(original, feeds, cfg.check, cfg.seed)
        data_feeds = len(feeds)   # the user's data first: the price of the collapse is also said on it alone
        feeds = feeds + extra
        desc = (f"calibration data ({samples} samples) + {len(extra)} random input(s) in its range, seed {cfg.seed}"
                 if extra else f"calibration data ({samples} samples) alone (--check 0)")
    else:
        if cfg.check < 1:
            raise CollapseError("--check must be at least 1: every result is verified")
        from .core.runtime import check_size_ladder, index_ranges

        ladder, ranges = check_size_ladder(original), index_ranges(original)
        feeds = random_inputs(original, cfg.check, cfg.seed, shapes=ladder[0], ranges=ranges)
        desc = _random_desc(cfg, feeds, ladder[0], bool(dynamic), ranges=ranges)
        data_feeds = 0
    shapes = ladder[0]
    reference_cache: dict = {}   # the request's float64 outputs, evaluated once for every verify below

    def check(model, feeds, desc, normalized=original):
        return verify(given, requested, model, feeds, cfg.rtol, cfg.atol, desc, seed=cfg.seed,
                      reference_cache=reference_cache, normalized=normalized, data_feeds=data_feeds)

    try:
        ver = check(result_model, feeds, desc)
    except InputModelRunError:
        if len(ladder) < 2:
            raise
        # the input model runs only at other sizes: the next rung (aligned sizes, then every dynamic dim as 1, said;
        # a model that runs at none fails as before, naming --calib / --input-shape)
        for sizes in ladder[1:]:
            feeds = random_inputs(original, cfg.check, cfg.seed, shapes=sizes, ranges=ranges)
            desc = _random_desc(cfg, feeds, sizes, bool(dynamic), ranges=ranges)
            if not sizes:
                warnings.append(f"the input model does not run at the check's size for its dynamic dims "
                                f"({_shapes_text(ladder[0])}); checked at 1, where a 3x3 kernel reads only its centre "
                                "tap and wrong kernel borders pass: give --input-shape NAME:D0,D1,... or --calib data "
                                "of a real size")
            reference_cache.clear()   # of other feeds
            try:
                ver = check(result_model, feeds, desc)
            except InputModelRunError:
                if not sizes:
                    raise
                continue
            shapes = sizes
            break
    check_dist = "normal"
    if cfg.calib is None and ver.input_nonfinite:
        # NaN/Inf outputs of the input model on standard normal inputs (a Log, a Sqrt of the input) compare as equal
        # wherever the result has them too, so those values verify nothing: inputs in (0, 1] (images,
        # probabilities, what a Log reads) are tried, and kept when the input model is finite on more of them
        alt = random_inputs(original, cfg.check, cfg.seed, shapes={k: list(v.shape) for k, v in feeds[0].items()},
                            dist="unit", ranges=ranges)
        alt_desc = _random_desc(cfg, alt, shapes, bool(dynamic), unit=True, ranges=ranges)
        v = check(result_model, alt, alt_desc)
        if v.input_nonfinite < ver.input_nonfinite:
            warnings.append(f"the input model itself outputs non-finite values (NaN/Inf) in {ver.input_nonfinite} "
                            "values on standard normal check inputs; checked on inputs uniform in (0, 1] instead, "
                            f"where it outputs {v.input_nonfinite}")
            feeds, desc, ver = alt, alt_desc, v
            check_dist = "unit"
    merge_fallback = fold_fallback = None
    if not ver.against_requested.passed and ctx.merges and not ctx.approximations and not ver.normalization_failed:
        # merged kernels of an ill-conditioned stack (every SiLU of EfficientNetV2-S collapsed: outputs ~1e22)
        # can be off where the layers one by one are not: the merged weights, rounded to float32, err in a
        # direction the later layers amplify (the float64 look then disagrees too). The merges that break it are
        # searched (core/merge_fallback: the same passes with some merges refused, each trial verified) and only
        # those refused; a result that verifies is written, with the refused merges and their numbers said.
        from .core.merge_fallback import search

        def trial(allowed):
            m, c, p = run_passes(base, {a.name for a in chosen}, merge=bool(allowed), cost_model=cost_model,
                                 allow_border_approx=cfg.allow_border_approx, input_shapes=input_shapes,
                                 remove_blocks=blocks_removed, prune=cfg.prune, prune_off=prune_off,
                                 merge_allowed=allowed, channel_regimes=regimes)
            c.graph = None   # its arrays duplicate the trial's weights: not held through the search
            v = replace(check(m, feeds, desc, normalized=None), normalization=ver.normalization)
            return (m, c, p, v), v.against_requested, c.merges

        fb = search(ctx.merges, trial, failed=ver.against_requested)
        if fb is not None:
            warnings.append(fb.warning(ver.against_requested, len(ctx.merges)))
            merge_fallback = fb.as_dict()
            result_model, ctx, pm, ver = fb.payload
            stats_after = model_stats(result_model)
    if not ver.against_requested.passed and not ver.against_requested.conditioned and ctx.folds \
            and not ctx.approximations and not ver.normalization_failed:
        # the merges refused and still off: the folds' float32 weights (BatchNorm into a conv) are what an
        # ill-conditioned request amplifies. The activations linearized and nothing folded is the request's
        # own ops: a result that verifies, the collapse kept, the folding given up (onnxruntime folds
        # BatchNorm when it loads anyway)
        m, c, p = run_passes(base, {a.name for a in chosen}, merge=False, fold=False, cost_model=cost_model,
                             input_shapes=input_shapes, remove_blocks=blocks_removed, prune=cfg.prune,
                             prune_off=prune_off, channel_regimes=regimes)
        v = replace(check(m, feeds, desc, normalized=None), normalization=ver.normalization)
        if v.against_requested.passed:
            line, fold_fallback = unfolded(ver.against_requested, len(ctx.folds), len(ctx.merges))
            warnings.append(line)
            result_model, ctx, pm, ver = m, c, p, v
            c.graph = None
            stats_after = model_stats(result_model)
    written_speedup = None
    if cfg.target_speedup is not None and (merge_fallback or fold_fallback) and stats_before is not None:
        # the plan priced its candidates with every merge (and fold) made; the result written has fewer
        from .speedup import model_cost, speedup_ratio

        written_speedup = speedup_ratio(model_cost(original, stats_before.as_dict(), cost_model),
                                        model_cost(result_model, stats_after.as_dict(), cost_model))
        warnings.append(f"--target-speedup {cfg.target_speedup}: the merges{' and folds' if fold_fallback else ''} the "
                        f"check refused were part of the plan; the result written predicts {written_speedup:.3f}x, "
                        "not the speed-up planned above")
    ver = accept_conditioned(ver, approximate=bool(ctx.approximations))
    warnings.extend(ver.warnings)
    if ver.against_requested.passed and ver.against_requested.why:   # passed on the float64 second look
        warnings.append(f"verification: {ver.against_requested.why}")

    passed = ver.against_requested.passed
    passed = finish_pruning(prune_report, ctx, original, base, feeds, cfg, warnings, passed,
                            requested=requested, chosen={a.name for a in chosen}, remove_blocks=blocks_removed)
    approx = bool(ctx.approximations)
    if approx and not passed:
        from .verify import border_approximation_gate

        ver, passed, line = border_approximation_gate(ver, cfg.approx_max_error, "--allow-border-approx")
        warnings.append(line)

    chosen_ids = {id(a) for a in chosen}
    report = build_report(
        input=str(path) if path else None,
        activations=[activation_row(display_key(a), a.keys, a.kind, a.node_names, act_scores.get(id(a)),
                                    id(a) in chosen_ids, module=a.module_path) for a in acts],
        blocks=[{"key": k, "score": v, "removed": k in blocks_removed} for k, v in block_scores.items()],
        before=(stats_before or model_stats(original)).as_dict(), after=stats_after.as_dict(), verification=ver.as_dict(),
        passed=passed, approximations=ctx.approximations, folds=ctx.folds, merges=ctx.merges,
        passes=[{"name": r.name, "runs": r.runs, "changes": r.changes, "seconds": round(r.seconds, 4)}
                for r in pm.records.values()],
        left_alone=[n.op for n in unknown], left_alone_nodes=[n.name for n in unknown],
        notes=notes + ctx.notes, warnings=warnings, score_details=score_details, pruning=prune_report, started=t0)
    if merge_fallback is not None:
        report["merge_fallback"] = merge_fallback
    if fold_fallback is not None:
        report["fold_fallback"] = fold_fallback
    if regime_rows is not None:   # per site: channels set to their off regime; the price: the check vs the input
        report["channel_regimes"] = {"sites": regime_rows, "against_original": ver.against_original.as_dict()}
    if speedup_rows is not None:
        report["target_speedup"] = {"target": cfg.target_speedup, "tried": speedup_rows}
        if written_speedup is not None:   # a fallback refused merges the plan counted on
            report["target_speedup"]["predicted_written"] = written_speedup
    if eval_set is not None:
        from .evaluation import eval_report

        report.update(eval_report(original, result_model, eval_set))
    collapsed_keys = [k for a in report.get("activations", []) if a.get("collapsed") for k in [a["key"], *a["keys"]]]
    if blocks_removed:   # the removed blocks, and the activations that went with them (their nodes are gone)
        left = {n.name for n in result_model.graph.node}
        collapsed_keys += [*blocks_removed, *(k for a in acts if id(a) not in chosen_ids
                                              and not any(n in left for n in a.node_names) for k in a.keys)]
    if collapsed_keys and result_model is not original:   # a proto this run made (never the caller's)
        record_collapsed(result_model, collapsed_keys)
    res = CollapseResult(result_model, report, requested, passed, original, source=path,
                         check_shapes=dict(shapes), check_dist=check_dist)
    if prune_report.get("refused") and not cfg.force:
        raise VerificationError(f"{prune_report['refused']}; nothing written (use --force to write anyway)", report=res)
    if not passed and not cfg.force:
        raise VerificationError.mismatch(ver.against_requested, cfg.rtol, cfg.atol,
                                         "nothing written (use --force to write anyway)", res)
    return res


def _shapes_text(shapes: dict) -> str:
    return ", ".join(f"{n} {'x'.join(map(str, d))}" for n, d in shapes.items())


def _random_desc(cfg, feeds: list[dict], shapes: dict, dynamic: bool, unit: bool = False, ranges=None) -> str:
    """How the random check inputs were drawn, for the report: the sizes of dynamic dims (check_shapes'), or,
    `shapes` empty on a model with dynamic dims, that they ran as 1 (a model that needs real sizes names it)."""
    import numpy as np

    desc = f"{cfg.check} random input(s){' uniform in (0, 1]' if unit else ''}, seed {cfg.seed}"
    if ranges:   # index inputs drawn over their table (core/runtime.index_ranges)
        desc += ", " + ", ".join(f"{n} in 0..{k - 1}" for n, k in ranges.items())
    if shapes:
        desc += (f", dynamic dims sized from the model ({_shapes_text({k: np.shape(v) for k, v in feeds[0].items()})}; "
                 "--input-shape fixes them)")
    elif dynamic:
        desc += (", dynamic dims after the first run as 1 (--calib data checks real sizes, --input-shape "
                 "fixes them)")
    return desc


def _nested_nodes(graph, holder: str | None = None) -> dict:
    """Node name -> the control-flow node whose body holds it ("If node 'if0'"), at any depth: a key naming one
    was answered "unknown layer key ...; did you mean 'relu()'?", though the node is in the file."""
    out: dict = {}
    for n in graph.node:
        if holder and n.name:
            out.setdefault(n.name, holder)
        for g in subgraphs(n):
            out.update({k: v for k, v in _nested_nodes(g, holder or f"{n.op_type} node {n.name!r}").items()
                        if k not in out})
    return out


def _identical_samples(feeds: list[dict]) -> bool:
    """Whether more than one sample was given and every one equals the first (eight zero images, say). Row by row of
    each input: inputs of different fixed batch sizes hold different row counts (calib._fixed_batches), and a scalar
    input (an If's condition) has no rows."""
    import numpy as np

    from .calib import feed_samples

    first: dict = {}
    count = 0
    for f in feeds:
        count += feed_samples(f)
        for k, v in f.items():
            for row in (v if np.ndim(v) else [v]):
                if k not in first:
                    first[k] = row
                elif not np.array_equal(row, first[k]):
                    return False
    return count > 1


def half_precision(model: onnx.ModelProto) -> str | None:
    """What makes `model` compute in float16 / bfloat16 ("outputs", "weights"), or None. Weights count too: a
    float16 model with float32 inputs and outputs (onnxconverter-common's keep_io_types) rounds every folded or
    merged kernel to float16, and at float32's tolerances every fold and merge of it was refused."""
    half = {onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}
    if any(o.type.tensor_type.elem_type in half for o in model.graph.output):
        return "outputs"
    count = {True: 0, False: 0}   # float weights' elements in half precision / in float32 or float64
    for t in model.graph.initializer:
        if t.data_type in ONNX_FLOAT_TYPES | half:
            count[t.data_type in half] += math.prod(t.dims)
    return "weights" if count[True] > count[False] else None


def _input_shapes(model: onnx.ModelProto) -> dict:
    return {n: dims for n, dims, _ in _model_inputs(model)}


def _model_inputs(model: onnx.ModelProto) -> list:
    from .calib import model_inputs

    return model_inputs(model)


def _cost_model(cfg: CollapseConfig, model):
    from .algebra.cost import CostModel

    kw = {}
    if cfg.per_op_overhead is not None:
        kw["per_op_overhead_macs"] = cfg.per_op_overhead
    cm = CostModel(**kw)
    if cfg.cost == "measured":
        from .onnx.measure import measured_cost_model

        cm = measured_cost_model(model, cm)
    elif cfg.cost != "macs":
        raise CollapseError(f"unknown cost model {cfg.cost!r}; use macs or measured")
    return cm


def _overridable_weights(original, result) -> list[str]:
    """Initializers the input also declared as graph inputs (IR < 4 required it; onnxruntime lets a caller feed
    them) that the result no longer takes: the passes fold and merge them as constants, so the interface of
    the model written changes, and the report says so."""
    inits = {t.name for t in original.graph.initializer}
    kept = {i.name for i in result.graph.input}
    return [i.name for i in original.graph.input if i.name in inits and i.name not in kept]


def list_keys(model, example_inputs=None) -> list[dict]:
    if _is_torch_module(model):   # nn.Module / GraphModule / ExportedProgram: keys from the fx graph
        from .fx.api import list_torch_keys

        return list_torch_keys(model, example_inputs)
    original, _ = as_model(model)
    graph = to_graph(original)
    acts = find_activations(graph)
    resolve_keys(acts, node_key_names(original))
    return [{"key": display_key(a), "keys": a.keys, "module": a.module_path, "kind": a.kind, "nodes": a.node_names}
            for a in acts]


def _is_torch_module(obj) -> bool:
    mod = type(obj).__module__
    if not mod.startswith("torch"):
        return any(c.__module__.startswith("torch.nn") for c in type(obj).__mro__)
    return True
