"""ONNX pruning operations: exact removal of constant channels, ratio pruning, calibration statistics,
and the reference model for verification (the original with removed channels forced to their constant)."""
from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..errors import CollapseError
from .graph import OFF_IS_ZERO, ChannelGraph, zero_filters
from .onnx_adapter import apply_removal, build_channel_graph, infer_shapes
from .select import NothingToPrune, check_ratio, nothing_to_prune, select_for_ratio

IMPORTANCE = ("l1", "l2", "tlc", "easier")


def group_rows(cg: ChannelGraph, removed, labels: dict | None = None) -> list[dict]:
    """Per group: channels before/after (only groups that lose channels) and why."""
    by_gid: dict = {}
    for gid, k in removed:
        by_gid.setdefault(gid, []).append(k)
    rows = []
    for g in cg.groups():
        if g.gid not in by_gid:
            continue
        n, w = g.channels, cg.unit_width(g)   # w: channels per unit (a grouped conv's groups)
        rows.append({"group": g.name, "channels_before": n * w, "channels_after": (n - len(by_gid[g.gid])) * w,
                     "tensors": [s[0] for s in g.slots][:12],
                     **({"kind": labels[g.gid]} if labels and g.gid in labels else {})})
    return rows


def graph_summary(cg: ChannelGraph) -> dict:
    gs_ = cg.groups()
    return {"graph_groups": len(gs_), "frozen_groups": sum(bool(g.frozen) for g in gs_),
            "prunable_groups": sum(bool(cg.prunable_units(g)) for g in gs_),
            "frozen_ops": cg.frozen_ops[:200]}


def exact_removal(graph: gs.Graph, data_dependent_off: dict | None = None) -> dict:
    """Remove every channel whose value is a known constant, folding it into its readers. In place.

    data_dependent_off: {tensor name of a ReLU output: channels always off on calibration data}.
    Returns a report dict: removed groups, frozen ops, notes.
    """
    if not data_dependent_off and not may_hold_constant_channels(graph):
        return {"removed_channels": 0, "groups": [], "data_dependent": False, "data_dependent_channels": {},
                "params_saved": 0, "macs_saved": 0, "notes": [], "skipped": "no constant-channel source"}
    cg = build_channel_graph(graph)
    dd = {}
    for name, chans in (data_dependent_off or {}).items():
        slot = next((s for s in cg.slots.nodes if s[0] == name), None)
        if slot is not None:
            dd[slot] = set(int(c) for c in chans)
    notes = []
    ok = applicable_constants(cg, cg.constant_units(dd), notes)
    groups = cg.groups()
    removed = [(f["gid"], f["unit"]) for f in ok]
    dd_removed: dict = {}
    for f in ok:
        for s, i in groups[f["gid"]].units[f["unit"]]:
            if i in dd.get(s, ()):
                dd_removed.setdefault(s[0], []).append(int(i))
    rows = []
    saved = {"params_saved": 0, "macs_saved": 0}
    if removed:
        rows = removal_rows(cg, ok)
        folds = [x for f in ok for x in f["folds"]]
        before = _stats(graph)
        info = apply_removal(graph, cg, removed, folds)
        graph.cleanup()
        after = _stats(graph)
        saved = {"params_saved": before.params - after.params, "macs_saved": before.macs - after.macs}
        if info["bias_maps"]:
            notes.append(f"{len(info['bias_maps'])} conv(s) got a per-position bias map (a removed constant "
                         "channel read through zero padding)")
    return {"removed_channels": cg.channel_count(removed), "groups": rows,
            "data_dependent": any(f["data_dependent"] for f in ok), "data_dependent_channels": dd_removed, **saved,
            **graph_summary(cg), "notes": notes}


def may_hold_constant_channels(graph: gs.Graph) -> bool:
    """A cheap look before building the channel graph: a constant channel starts only at an all-zero
    filter of a Conv/ConvTranspose/Gemm/MatMul or a BatchNormalization with a zero scale
    (ChannelGraph._constant_sources, data-dependent ReLUs aside), or a Mul by a per-channel constant with zeros.
    Unreadable weights count as "may"."""
    from ..onnx.graph import const_value
    from ..onnx.linear_ops import ConvView, DenseView

    outs = {t.name for t in graph.outputs}
    for n in graph.nodes:
        if n.op == "Mul" and any(c is not None and c.size > 1 and not np.all(c)
                                 for c in (const_value(t) for t in n.inputs)):
            return True   # a per-channel collapse's off channels (core/channel_regimes: x * 0)
        if n.op == "BatchNormalization":
            gamma = const_value(n.inputs[1]) if len(n.inputs) > 1 else None
            if gamma is None or not np.all(np.asarray(gamma)):
                return True
            continue
        if n.op == "ConvTranspose" and len(n.inputs) > 1 and const_value(n.inputs[1]) is not None:
            from ..algebra.prune import ConvTransposeParams

            w = ConvTransposeParams(np.asarray(const_value(n.inputs[1])), None, int(n.attrs.get("group", 1))).filters()
            if zero_filters(w).any():
                return True
            continue
        v = ConvView.of(n) if n.op == "Conv" else DenseView.of(n, outs) if n.op in ("Gemm", "MatMul") else None
        if v is None:
            continue
        if zero_filters(v.params.weight).any():
            return True
    return False


def applicable_constants(cg: ChannelGraph, found: list, notes: list) -> list:
    """The constant units (ChannelGraph.constant_units) that can go: not those whose nonzero constant a
    conv reads through padding of unknown input size (its bias map can't be sized), and never every
    channel of a group. Front-end neutral: both adapters record ops the same way."""
    ops = {op.name: op for op in cg.ops}
    ok = []
    kept: dict[str, int] = {}   # reader -> channels kept: one note, not one per channel (481 on a 224 ResNet-50)
    for f in found:
        bad = [name for name, _s, _i, v in f["folds"]
               if v != 0.0 and ops[name].kind == "conv" and any(ops[name].data["params"].pads)
               and not ops[name].data["input_spatial"]]
        if bad:
            kept[bad[0]] = kept.get(bad[0], 0) + 1
            continue
        ok.append(f)
    if kept:
        notes.append(f"kept {sum(kept.values())} constant channel(s) read through padding of an unknown input size "
                     f"(a static input size lets them go) by {len(kept)} conv(s): "
                     + ", ".join(f"{name} ({n})" for name, n in kept.items()))
    ok = keep_one_per_group(ok, cg.groups(), notes)
    mapped = [f for f in ok if _needs_bias_map(f, ops)]
    if mapped and _params_added(cg, ok) > 0:
        # a constant read through zero padding leaves a per-position map of the reader's whole output:
        # at 224x224 it can outweigh everything the removal saves (a 16 KB model grew to 1.8 MB)
        notes.append(f"kept {len(mapped)} constant channel(s) read through zero padding: the per-position bias "
                     "maps their removal needs would add more parameters than the removal saves")
        ok = [f for f in ok if not _needs_bias_map(f, ops)]
    return ok


def _needs_bias_map(f: dict, ops: dict) -> bool:
    return any(v != 0.0 and ops[name].kind == "conv" and any(ops[name].data["params"].pads)
               for name, _s, _i, v in f["folds"])


def _params_added(cg: ChannelGraph, found: list) -> int:
    """Parameters removing `found` adds to the conv and dense ops (negative: saves), bias maps included."""
    from .graph import removal_edits

    def size(p):
        return int(np.size(p.weight)) + (0 if p.bias is None else int(np.size(p.bias)))

    delta = 0
    for e in removal_edits(cg, [(f["gid"], f["unit"]) for f in found], [x for f in found for x in f["folds"]]):
        if e.params is not None:
            delta += size(e.params) - size(e.rec.data["params"]) + (0 if e.bias_map is None else int(np.size(e.bias_map)))
    return delta


def removal_rows(cg: ChannelGraph, found: list) -> list[dict]:
    """Report rows of the groups the constant units in `found` shrink, labelled by why."""
    labels = {}
    for f in found:
        if f["data_dependent"]:
            labels[f["gid"]] = "data-dependent (activation always 0 on the calibration data)"
        else:
            labels.setdefault(f["gid"], "structural (constant channel)")
    return group_rows(cg, [(f["gid"], f["unit"]) for f in found], labels)


def keep_one_per_group(found: list, groups, notes: list) -> list:
    """A group whose every channel is constant keeps its first one: ops can't have zero channels, and the
    kept constant channel is still exact (its value flows on as before)."""
    by_gid: dict = {}
    for f in found:
        by_gid.setdefault(f["gid"], []).append(f)
    out = []
    for gid, fs in by_gid.items():
        if len(fs) >= len(groups[gid].units):
            fs = sorted(fs, key=lambda f: f["unit"])[1:]
            notes.append(f"every channel of group {gid} is constant: one is kept (a layer cannot be empty)")
        out.extend(fs)
    return out


def _stats(graph: gs.Graph):
    from ..onnx.analysis import model_stats

    return model_stats(gs.export_onnx(graph, do_type_check=False))


def channel_scores_from_details(details: dict, graph: gs.Graph, axes: dict | None = None) -> dict:
    """TLC/EASIER per-channel p_on (1 - p_off) keyed by the activation's output tensor (higher = keep); `axes`, when
    given, is filled with the axis each was measured along (ChannelGraph.score_importance checks it)."""
    nodes = {n.name: n for n in graph.nodes}
    out = {}
    for d in details.values():
        n = nodes.get(d.get("node"))
        if n is None or "p_on" not in d:
            continue
        out[n.outputs[0].name] = np.asarray(d["p_on"], dtype=np.float64)
        if axes is not None and isinstance(d.get("channel_axis"), int):
            axes[n.outputs[0].name] = d["channel_axis"]
    return out


def ratio_prune(model: onnx.ModelProto, ratio: float, *, scope: str = "global", round_to: int = 1,
                importance="l1", channel_scores: dict | None = None,
                remove_blocks=(), channel_axes: dict | None = None) -> tuple[onnx.ModelProto, dict]:
    """Prune about `ratio` of the prunable channels (lowest importance first): an approximation.

    importance: "l1" / "l2" (norms of each unit's filters) or "scores" with channel_scores {tensor or
    node name: per-channel scores, higher = more important} (TLC/EASIER p_on, or the user's).
    remove_blocks: keys of the residual blocks the same run replaces by their skip; the channels living
    only inside their branches go anyway, so they are neither candidates nor counted in the ratio (else
    a ResNet pruned to 0.3 with blocks removed kept more than 70% of the channels that stay).
    """
    from ..onnx.graph import to_model
    from ..onnx.passes.fold_static_shapes import folded_graph

    check_ratio(ratio, round_to)
    graph = folded_graph(model)   # the shapes the pipeline sees: its first pass folds the same arithmetic
    inside = _removed_branch_tensors(graph, model, remove_blocks) if remove_blocks else set()
    cg = build_channel_graph(graph)
    if importance in ("l1", "l2"):
        imp = cg.filter_importance(1 if importance == "l1" else 2)
    elif importance == "scores":
        if not channel_scores:
            raise CollapseError("per-channel importance scores are empty; give {\"<tensor or node>\": [scores...]}")
        names = {n.name: n.outputs[0].name for n in graph.nodes if n.outputs}
        scores = {names.get(k, k): np.asarray(v, dtype=np.float64).reshape(-1) for k, v in channel_scores.items()}
        imp = cg.score_importance(scores, {names.get(k, k): a for k, a in (channel_axes or {}).items()})
    else:
        raise CollapseError(f"unknown pruning importance {importance!r}; use one of {', '.join(IMPORTANCE)} "
                            "or per-channel scores")
    exclude = [(g.gid, k) for g in cg.groups() if g.slots and all(s[0] in inside for s in g.slots)
               for k in cg.prunable_units(g)]
    try:
        removed = select_for_ratio(cg, imp, ratio, scope, round_to, exclude=exclude)
    except NothingToPrune:   # say which layers the channel graph could not read (an auto_pad conv of unknown size)
        from .api_hook import _unread_layers

        raise nothing_to_prune(cg, ratio, exclude, _unread_layers(model)) from None
    rows = group_rows(cg, removed, {gid: "ratio" for gid, _ in removed})
    if removed:
        apply_removal(graph, cg, removed)
        graph.cleanup()
    out = to_model(graph, model)
    return out, {"ratio": ratio, "scope": scope, "round_to": round_to, "importance": importance,
                 "removed_channels": cg.channel_count(removed), "groups": rows,
                 **({"removed_block_channels": cg.channel_count(exclude)} if remove_blocks else {}),
                 **graph_summary(cg)}


def _removed_branch_tensors(graph: gs.Graph, model: onnx.ModelProto, keys) -> set:
    """Names of the tensors computed inside the branches of the residual blocks `keys` and read nowhere
    else (not by the rest of the model, not a graph output): the remove_blocks pass drops them. A key
    naming no block is left to that pass, which says so."""
    from ..onnx.blocks import find_residual_blocks
    from ..onnx.graph import node_key_names

    index = {}
    for b in find_residual_blocks(graph, node_key_names(model)):
        for k in b.keys:
            index.setdefault(k, b)
    outs = {t.name for t in graph.outputs}
    inside: set = set()
    for b in {id(index[k]): index[k] for k in map(str, keys) if k in index}.values():
        nodes: dict = {}
        stack = [b.branch]
        while stack:   # back from the branch output to the block input (the branch reads nothing else)
            t = stack.pop()
            if t is b.input or not t.inputs or id(t.inputs[0]) in nodes:
                continue
            nodes[id(t.inputs[0])] = t.inputs[0]
            stack.extend(i for i in t.inputs[0].inputs if i.name)
        ok = set(nodes) | {id(b.add)}
        while True:   # a branch node read from outside stays, and so does what it reads
            keep = [i for i, n in nodes.items() if i in ok and any(
                t.name in outs or any(id(c) not in ok for c in t.outputs) for t in n.outputs)]
            if not keep:
                break
            ok.difference_update(keep)
        inside.update(t.name for i, n in nodes.items() if i in ok for t in n.outputs)
    return inside


def always_off_channels(model: onnx.ModelProto, calib, calib_batches=None) -> dict:
    """{activation output tensor: channels that are exactly 0 on every calibration sample and position}.

    Activations whose whole "off" side is exactly 0 (OFF_IS_ZERO: ReLU, ReLU6 -- Clip(x, 0, 6), MobileNetV2's
    activation, or any Clip from 0 -- and HardSwish, 0 for x <= -3): a channel at 0 on all the data is a constant channel there."""
    from ..onnx.patterns import find_activations
    from ..scores._common import tapped_batches

    graph = gs.import_onnx(model)
    shapes = infer_shapes(graph)
    relus = [a.output.name for a in find_activations(graph) if a.kind in OFF_IS_ZERO
             and a.params.get("min", 0.0) == 0.0 and shapes.get(a.output.name) and len(shapes[a.output.name]) >= 2]
    if not relus:
        return {}
    mx: dict = {}
    for got, _ in tapped_batches(model, relus, calib, calib_batches, 1, "pruning"):
        for name in relus:
            a = np.asarray(got[name])
            axis = 1 if a.ndim in (2, 4, 5) or a.ndim == 3 and _conv_fed(graph, name) else a.ndim - 1
            # |y| peak: HardSwish is negative (not 0) on (-3, 0), so "never above 0" is not "always 0"
            m = np.abs(np.moveaxis(a, axis, 0).reshape(a.shape[axis], -1)).max(axis=1)
            mx[name] = m if name not in mx else np.maximum(mx[name], m)
    return {name: np.flatnonzero(m == 0).tolist() for name, m in mx.items() if np.any(m == 0)}


def _conv_fed(graph, name) -> bool:
    t = graph.tensors().get(name)
    p = t.inputs[0] if t is not None and t.inputs else None
    while p is not None and p.op in ("Relu", "BatchNormalization", "Add"):
        p = p.inputs[0].inputs[0] if p.inputs and p.inputs[0].inputs else None
    return p is not None and p.op == "Conv"


def mask_channels(model: onnx.ModelProto, off: dict) -> onnx.ModelProto:
    """The model with the listed channels of each tensor forced to 0 (a Mul by a 0/1 mask after it): the
    reference "original with those channels set to their constant" for data-dependent removals."""
    from ..onnx.graph import make_const, tensor_namer, to_graph, to_model, toposort, unique_name

    if not off:
        return model
    graph = to_graph(model)
    shapes = infer_shapes(graph)
    tensors = graph.tensors()
    fresh = tensor_namer(graph)   # a model may hold `<name>__masked` already
    for name, chans in off.items():
        t = tensors.get(name)
        shp = shapes.get(name)
        if t is None or not shp or not chans:
            continue
        r = len(shp)
        axis = 1 if r != 3 or _conv_fed(graph, name) else r - 1
        mask = np.ones(shp[axis], dtype=np.float32)
        mask[list(chans)] = 0.0
        shape = [1] * r
        shape[axis] = shp[axis]
        masked = gs.Variable(fresh(f"{name}__masked"), dtype=t.dtype)
        for node in list(t.outputs):
            for i, inp in enumerate(node.inputs):
                if inp is t:
                    node.inputs[i] = masked
        graph.nodes.append(gs.Node("Mul", name=unique_name(graph, f"{name}__mask"), inputs=[t, make_const(graph, f"{name}.mask",
                                                                                        mask.reshape(shape))],
                                   outputs=[masked]))
    toposort(graph)
    return to_model(graph, model)

