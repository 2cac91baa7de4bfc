"""The pruning steps of api.collapse, kept here so the API only calls two functions.

prepare: validate the flags, prune to a ratio (an approximation, before everything else), and with
--prune-calib-dead find the ReLU / ReLU6 / HardSwish channels always 0 on the calibration data. finish: measure what the
data-dependent removal changes on random inputs (it is exact on the calibration data by construction), and
the ratio prune's error against the unpruned requested semantics (the collapse applied to the unpruned
model: what the user asked for, as the torch front end does; and top-1 accuracy with --eval data),
refuse it above --prune-max-error unless forced.
"""
from __future__ import annotations

import onnx

from ..errors import CollapseError
from .select import check_ratio


def prune_to_ratio(original: onnx.ModelProto, cfg, score_details=None,
                   remove_blocks=()) -> tuple[onnx.ModelProto, dict]:
    """(model to collapse, report dict): `original` pruned to cfg.prune_ratio, or as it is without one.
    `remove_blocks`: the blocks the run replaces by their skip; the ratio applies to the channels that stay.

    --target-speedup plans its collapse on this model (what the passes will get), so its prediction counts
    the prune; planned on the unpruned input, it said "1.002x, target not reached" of a ResNet-50 whose
    written model, pruned to 0.3, does half the MACs, and collapsed activations the target did not need."""
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

        axes: dict = {}   # the axis TLC / EASIER statistics were measured along, per tensor
        importance, channel_scores = _importance(original, cfg, score_details, axes)
        base, info = ratio_prune(original, float(cfg.prune_ratio), scope=cfg.prune_scope, round_to=cfg.round_to,
                                 importance=importance, channel_scores=channel_scores,
                                 remove_blocks=remove_blocks, channel_axes=axes)
        b, a = model_stats(original), model_stats(base)
        info.update(params_saved=b.params - a.params, macs_saved=b.macs - a.macs, approximate=True)
        report["ratio"] = info
    return base, report


def prepare_pruning(original: onnx.ModelProto, cfg, score_details=None, chosen=(),
                    remove_blocks=(), pruned=None, channel_regimes=None) -> tuple[onnx.ModelProto, dict, dict]:
    """(model to collapse, data-dependent off channels, report dict); `pruned`: prune_to_ratio's result
    when the caller has it already; `channel_regimes`: the chosen sites' per-channel maps (--channel-regimes).

    The off channels are found on the requested semantics (the chosen activations linearized, or mapped
    per channel, the removed blocks skipped): a kept ReLU after a collapsed one sees other values there than
    in the input model, and a channel off only in the input model would be removed wrongly (the gate, whose
    reference masks the same channels, could not tell). With --channel-regimes a dead channel of a collapsed
    ReLU is 0 in the request, not its negative input: a kept ReLU it feeds, off under plain linearization,
    can be on (it was removed: 1.0 off on the calibration data, and the gate passed it)."""
    base, report = pruned if pruned is not None else prune_to_ratio(original, cfg, score_details, remove_blocks)
    off = {}
    if cfg.prune and cfg.calib is not None and cfg.prune_calib_dead:   # an approximation: opt-in only
        from .onnx_prune import always_off_channels

        from ..onnx.driver import requested_semantics

        off = always_off_channels(requested_semantics(base, set(chosen), remove_blocks=remove_blocks,
                                                      channel_regimes=channel_regimes),
                                  cfg.calib, cfg.calib_batches)
    return base, off, report


def _importance(model, cfg, score_details, axes: dict | None = None):
    imp = cfg.prune_importance
    if isinstance(imp, str) and imp in ("l1", "l2"):
        return imp, None
    if isinstance(imp, str) and imp in ("tlc", "easier"):
        from ..onnx.graph import to_graph
        from .onnx_prune import channel_scores_from_details

        if not (score_details and score_details.get("method") == imp):
            from ..scores import compute_scores

            try:
                score_details = compute_scores(imp, model, calib=cfg.calib, calib_batches=cfg.calib_batches).as_dict()
            except CollapseError as e:   # the method's message names --method, which the user did not give
                msg = str(e)
                if not msg.startswith(f"--method {imp}"):
                    raise
                raise CollapseError(f"--prune-importance {imp}" + msg[len(f"--method {imp}"):]) from None
        scores = channel_scores_from_details(score_details.get("details", {}), to_graph(model), axes)
        if not scores:
            raise CollapseError(f"--prune-importance {imp}: the method gave no per-channel statistics for this model")
        return "scores", scores
    if isinstance(imp, dict):   # the library's dict: checked as the .json file is (a typo left channels unranked)
        return "scores", _check_channel_scores("prune_importance", imp, model)
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
        return "scores", _check_channel_scores(imp, data, model)
    raise CollapseError(f"unknown --prune-importance {imp!r}; use l1, l2, tlc, easier or a per-channel scores .json")


def _check_channel_scores(src: str, data: dict, model) -> dict:
    """{tensor or node name: scores}: each entry names a tensor or node of the model, or a torch module path (the key
    collapse(nn.Module, prune_importance=) takes, resolved to the module's output tensor on either exporter), and holds
    finite numbers. A typo or a NaN would otherwise leave those channels unranked (kept) without a word; the library's
    dict was not checked at all, and a module path was refused here while the torch front end took it."""
    import numbers

    import numpy as np

    known = {t for n in model.graph.node for t in (n.name, *n.output) if t} | {i.name for i in model.graph.input}
    outputs = None
    out: dict = {}
    for k, v in data.items():
        name = k
        if k not in known:
            outputs = _module_outputs(model) if outputs is None else outputs
            calls = outputs.get(k) if isinstance(k, str) else None
            if not calls:
                raise CollapseError(f"{src}: {k!r} names no tensor or node of the model, nor a module of it; use the "
                                    "names of the model's nodes or of their output tensors, or a torch module path "
                                    "(layer1.0.conv1; the TorchScript exporter folds a BatchNorm into its conv: name "
                                    "the conv)")
            if len(calls) > 1:
                raise CollapseError(f"{src}: module {k!r} is called at {len(calls)} places (outputs "
                                    f"{', '.join(calls[:3])}); name the output tensor of the call to rank")
            name = calls[0]
        try:
            arr = np.asarray(v, dtype=np.float64).reshape(-1)
            # numbers, numpy's too (list(np.arange(8, dtype=np.float32))); not true / false, strings or nested lists
            ok = arr.size > 0 and bool(np.isfinite(arr).all()) and (not isinstance(v, (list, tuple)) or all(
                isinstance(x, numbers.Real) and not isinstance(x, (bool, np.bool_)) for x in v))
        except (TypeError, ValueError, OverflowError):
            ok = False
        if not ok:
            raise CollapseError(f"{src}: {k!r} must be a non-empty list of finite numbers (one score per channel)")
        if name in out:
            raise CollapseError(f"{src}: {k!r} and another key name the same tensor {name!r}; give its scores once")
        out[name] = arr
    return out


def _module_outputs(model) -> dict:
    """{torch module path: [output tensor of each call]} from what the exporters leave: the TorchScript exporter's
    scope names (/layer1/layer1.0/conv1/Conv; a second call of a module is scoped relu_1), the torch.export-based
    exporter's name_scopes metadata, and a weight initializer named <path>.weight (that exporter's fused Conv + BN
    carries the BatchNorm's scope; its weight keeps the conv's name). A call's output is a tensor its nodes make
    that a node outside the module (or the graph's output) reads: a Gemm's, a MatMul + Add's Add."""
    import re
    from collections import defaultdict

    from ..onnx.keys import module_path_from_metadata, module_path_from_scope_name

    nodes = [n for n in model.graph.node if n.op_type != "Constant"]
    inits = {t.name for t in model.graph.initializer}
    path = {}
    for i, n in enumerate(nodes):
        p = module_path_from_metadata({m.key: m.value for m in n.metadata_props}) or module_path_from_scope_name(n.name)
        if p:
            path[i] = p
    ops, weights = defaultdict(set), defaultdict(set)
    for i, p in path.items():
        ops[p].add(nodes[i].op_type)
        weights[p].update(t for t in nodes[i].input if t in inits)
    members, own = defaultdict(set), {}
    for i, p in path.items():
        # relu_1 of the TorchScript exporter: the second call of relu, when relu has its ops and reads the same
        # weights (a module of its own named conv_1, beside conv, reads other initializers)
        head, _, last = p.rpartition(".")
        m = re.match(r"^(.*)_(\d+)$", last) if nodes[i].name.startswith("/") else None
        base = (f"{head}.{m.group(1)}" if head else m.group(1)) if m else None
        same = base in ops and ops[base] == ops[p] and weights[p] <= weights[base]
        own[i] = base if same else p
        members[own[i]].add(i)
    for i, n in enumerate(nodes):   # the torch.export-based exporter's Conv + BN: the BN's scope, the conv's weight
        rule = next((m.value for m in n.metadata_props if m.key == "pkg.onnxscript.rewriter.rule_name"), "")
        if "FuseBatchNorm" in rule and len(n.input) > 1 and n.input[1] in inits and n.input[1].endswith(".weight"):
            members[n.input[1][:-len(".weight")]].add(i)
    readers = defaultdict(set)
    for i, n in enumerate(nodes):
        for t in n.input:
            readers[t].add(i)
    graph_out = {o.name for o in model.graph.output}
    out = {}
    for p, ms in members.items():
        def outside(j):   # a node of another module (one inside p, a block's own layers, is p's)
            q = own.get(j)
            return j not in ms and not (q is not None and q.startswith(p + "."))
        out[p] = [t for i in sorted(ms) for t in nodes[i].output
                  if t and (t in graph_out or any(outside(j) for j in readers[t]))]
        # a layer called twice in a row (conv(conv(x))): the first call's output is read inside the module, so one
        # call seemed to leave it; a Conv / Gemm module is one such node a call (exporters share equal initializers
        # between modules, LayerNorms' ones: no sign of a call)
        layers = [nodes[j].output[0] for j in sorted(ms) if nodes[j].op_type in ("Conv", "ConvTranspose", "Gemm")]
        if len(layers) > len(out[p]):
            out[p] = layers
    return out


def finish_pruning(report: dict, ctx, original, base, feeds, cfg, warnings: list, passed: bool,
                   requested, chosen=(), remove_blocks=()) -> bool:
    """Fill the report; returns whether the run still passes (a ratio prune may be refused).

    The ratio prune's error is the pruned requested semantics (`requested`, what the result was verified
    against) against the unpruned one (`original` with `chosen` linearized, `remove_blocks` skipped): with
    activations collapsed, the pruned channels' error runs through linear regions it did not cross in
    the input model (75x larger on a 224 ResNet-50), and that is the error of the model written."""
    from ..verify import compare, run

    report.update({k: v for k, v in ctx.pruning.items()} if ctx.pruning else {})
    if report.get("data_dependent_channels"):
        _measure_calib_dead(report, base, requested, chosen, remove_blocks, cfg)
    elif cfg.prune_calib_dead and cfg.prune:   # say so, rather than leave the flag looking applied
        from .graph import no_dead_channel_note

        line = no_dead_channel_note("--prune-calib-dead")
        if chosen:   # a collapsed site is no ReLU any more: "no channel is 0" read as if its dead channels were missed
            line += (f"; the {len(chosen)} collapsed activation(s) are not looked at (linear now"
                     + ("; --channel-regimes sends their dead channels, if any, to 0, removed exactly as constant channels)"
                        if getattr(cfg, "channel_regimes", False) else ")"))
        warnings.append(line)
    ratio = report.get("ratio")
    if ratio is not None:
        from ..onnx.driver import requested_semantics

        unpruned = requested_semantics(original, set(chosen), remove_blocks=remove_blocks)
        o, names = run(unpruned, feeds)
        b, _ = run(requested, feeds)
        c = compare(o, b, names, cfg.rtol, cfg.atol)
        ratio["error_vs_unpruned"] = {"max_abs": c.max_abs, "max_rel": c.max_rel}
        ev = getattr(cfg, "eval_data", None)
        if ev is not None:  # --eval: top-1 of the same two models
            from ..evaluation import load_eval_data, top1

            feeds_e, labels, _src = load_eval_data(ev, original)
            ratio["accuracy"] = {"unpruned": top1(unpruned, feeds_e, labels, _src),
                                 "pruned": top1(requested, feeds_e, labels, _src)}
        warnings.append(f"prune ratio {ratio['ratio']}: approximate, max abs error {c.max_abs:.3g} against the "
                        "unpruned model" + (" with the same activations collapsed" if chosen or remove_blocks else ""))
        if ratio.get("removed_block_channels"):
            warnings.append(f"prune ratio {ratio['ratio']}: {ratio['removed_block_channels']} channel(s) inside the "
                            f"{len(remove_blocks)} removed block(s) left out of the ratio (they go with their blocks)")
        from .select import misaligned_note

        note = misaligned_note(ratio.get("groups", []), ratio["ratio"])
        if note:
            warnings.append(note)
        if not ratio.get("removed_channels") and not ratio.get("prunable_groups"):
            # "a lower --round-to or a higher ratio removes more" does not hold when no group can be pruned at all
            unread = _unread_layers(original)
            warnings.append(f"prune ratio {ratio['ratio']} removed no channel: no channel group can be pruned "
                            f"({ratio.get('frozen_groups', 0)} frozen, report: pruning.ratio.frozen_ops)"
                            + (f"; layers the channel graph cannot read: {unread}" if unread else ""))
        elif not ratio.get("removed_channels"):   # say why, rather than report a prune that did nothing
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


def _unread_layers(model, limit: int = 3) -> str:
    """'conv0: auto_pad on an input of unknown size (--input-shape fixes it), ...': the Conv / Gemm / MatMul layers no
    ConvView / DenseView reads (onnx.linear_ops.why_not_view), which the channel graph cannot slice either."""
    from ..onnx.linear_ops import why_not_view
    from ..onnx.shapes import with_shapes

    try:
        graph = with_shapes(model)
    except Exception:   # an analysis for a message: never the reason a run fails
        return ""
    why = [(n.name or n.op, w) for n in graph.nodes if (w := why_not_view(n))]
    text = ", ".join(f"{n}: {w}" for n, w in why[:limit])
    return text + (f" (+{len(why) - limit} more)" if len(why) > limit else "")


def _measure_calib_dead(report: dict, base, requested, chosen, remove_blocks, cfg) -> None:
    """--prune-calib-dead: the result equals the requested semantics with the removed channels forced to 0
    (`requested`, what the gate checked), and that equals the unmasked one on the calibration data by
    construction. What the removal changes elsewhere is measured on cfg.check random inputs
    (report["calib_dead_error"], said in the report's warning): channels off on a few samples may be on
    for other inputs."""
    from ..onnx.driver import requested_semantics
    from ..core.runtime import check_inputs
    from ..verify import compare, run

    unmasked = requested_semantics(base, set(chosen), remove_blocks=remove_blocks)
    report["calib_dead_error"] = None
    if cfg.check < 1:   # --check 0 (with --calib): no random inputs to measure it on; said as not measured
        return
    try:
        feeds = check_inputs(base, cfg.check, cfg.seed + 1)
        o, names = run(unmasked, feeds)
        m, _ = run(requested, feeds)
    except Exception:   # noqa: BLE001 - a model that needs real data (dynamic sizes): not measured
        return
    c = compare(o, m, names, cfg.rtol, cfg.atol)
    report["calib_dead_error"] = {"max_abs": c.max_abs, "max_rel": c.max_rel, "inputs": f"{cfg.check} random input(s)"}
