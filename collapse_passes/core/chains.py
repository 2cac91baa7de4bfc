"""Merge planning for chains of linear ops, front-end neutral (numpy + algebra only): which segments
of a conv chain to merge (exact merges only, unless border approximation is opted into, priced by
the cost model through planning.plan_segments), and the record (with its one-line reason) a merge leaves.

Both front ends' merge passes (onnx/passes/merge_chains.py, fx/passes/merge_chains.py) call these:
they only find chains and rewrite the graph.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..algebra import conv as conv_alg
from ..algebra import linear as lin_alg
from ..algebra.cost import CostModel, conv_macs, conv_signature, linear_macs, linear_signature
from ..errors import CollapseError
from ..planning import plan_segments
from .merge_fallback import REFUSED_JOIN

MAX_SEGMENT = 6


@dataclass
class ConvChainPlan:
    """Segments [i, j) of a conv chain and, for each merged one, its MergedConv; refused pairs say why;
    candidates holds every merge the planner priced (for "exact but costs more" notes): shape-only
    (algebra.conv.compose_conv(values=False)) except the merged ones."""
    segments: list
    merged: dict = field(default_factory=dict)
    refused: dict = field(default_factory=dict)
    candidates: dict = field(default_factory=dict)


def plan_conv_chain(params, spatials, outs, cm: CostModel, allow_border_approx: bool = False,
                    any_size: bool = False, joins_ok=None, values: bool = True) -> ConvChainPlan:
    """Where to cut a chain of ConvParams (input spatial size spatials[k], output outs[k] of conv k).

    Segments are priced by cm (a bias-map Add counted as an elementwise op); a merge the algebra
    calls inexact is refused (refused[(i, j)] = why) unless allow_border_approx. any_size: the input's
    spatial size is dynamic (spatials are one instance of it), so a merge that holds at that size only
    (a per-position bias map, strides, asymmetric pads: size_bound) is refused too. values=False: priced only,
    nothing composed (`merged` then holds the shape-only candidates: plan_cost reads them alike)."""
    merged, refused = {}, {}   # what the algebra (and any_size) allow, the joins aside

    def get(i, j):
        if (i, j) in merged or (i, j) in refused:
            return merged.get((i, j))
        if j - i == 1:
            merged[(i, j)] = conv_alg.MergedConv(params[i], None, True, "single conv")
            return merged[(i, j)]
        if (i + 1, j) in refused:   # a refused inner pair refuses every segment that contains it
            refused[(i, j)] = refused[(i + 1, j)]
            return None
        prefix = get(i, j - 1)
        if prefix is None:
            refused[(i, j)] = refused.get((i, j - 1), "prefix not mergeable")
            return None
        try:
            if not allow_border_approx:
                exact, why = conv_alg.merge_exactness(prefix.params, params[j - 1], spatials[i])
                if not exact:
                    refused[(i, j)] = why
                    return None
            m = conv_alg.extend_chain(prefix, params[j - 1], spatials[i], values=False)
        except CollapseError as exc:
            refused[(i, j)] = str(exc)
            return None
        if not m.exact and not allow_border_approx:
            refused[(i, j)] = m.reason
            return None
        if any_size and size_bound(m, params[i:j]):
            refused[(i, j)] = ("exact at the planned input size only (per-position bias, strides or asymmetric "
                               "pads), and the input's spatial size is dynamic")
            return None
        merged[(i, j)] = m
        return m

    def free_cost(i, j):
        m = get(i, j)
        return None if m is None else segment_cost(m, spatials[i], outs[j - 1], cm)

    def join_refused(i, j):
        return joins_ok is not None and j - i > 1 and not all(joins_ok[i:j - 1])

    def cost(i, j):
        return None if join_refused(i, j) else free_cost(i, j)

    segs = plan_segments(len(params), cost, MAX_SEGMENT)
    if joins_ok is not None and not all(joins_ok):
        _name_join_refusals(len(params), merged, refused, joins_ok, free_cost)
    candidates = {k: m for k, m in merged.items() if k not in refused}
    # segments are priced on shapes (extend_chain(values=False)); only the chosen ones are composed
    if not values:
        return ConvChainPlan(segs, {k: merged[k] for k in segs if k[1] - k[0] > 1}, refused, candidates)
    chosen = {(i, j): conv_alg.compose_conv_chain(params[i:j], spatials[i]) for i, j in segs if j - i > 1}
    candidates.update(chosen)
    return ConvChainPlan(segs, chosen, refused, candidates)


def _name_join_refusals(n, merged, refused, joins_ok, free_cost) -> None:
    """Say REFUSED_JOIN ("failed verification") only for a segment whose refused join the plan without any
    refused join fuses (a merge the per-merge fallback took away): a join is refused in a fallback trial merely
    for not being among the kept merges, and a pair the planner never merges (inexact on the border, or exact
    but costing more) keeps its own reason (EfficientNet-B0's ONNX report said "failed verification" for 17
    pairs, two of them tried). merged / refused: plan_conv_chain's, the joins aside; refused gains entries."""
    fused = {k for a, b in plan_segments(n, free_cost, MAX_SEGMENT) for k in range(a, b - 1)}
    for i, j in list(merged):
        if j - i > 1 and any(not joins_ok[k] and k in fused for k in range(i, j - 1)):
            refused[(i, j)] = REFUSED_JOIN


def size_bound(m, params) -> bool:
    """Does the merge of `params` (MergedConv m) hold at its planned input size only? A per-position bias map
    holds that size's borders; strides and asymmetric pads read other borders at another size."""
    return (m.bias_map is not None or tuple(m.params.pads_begin) != tuple(m.params.pads_end)
            or any(s != 1 for p in params for s in p.strides))


def segment_cost(m, spatial_in, spatial_out, cm: CostModel) -> float:
    """Cost of one planned segment (its MergedConv m, input / output spatial size): the conv plus its
    bias-map Add when it needs one. The planner's price; callers comparing plans use it too."""
    c = cm.op_cost("Conv", conv_macs(m.params, spatial_out), conv_signature(m.params, spatial_in))
    if m.bias_map is not None:
        c += cm.elementwise_cost("Add", (m.params.out_channels,) + tuple(spatial_out))
    return c


def plan_cost(plan: ConvChainPlan, spatials, outs, cm: CostModel) -> float:
    """Total cost of a plan_conv_chain result under cm (sum of its segments' costs)."""
    return sum(segment_cost(plan.candidates[(i, j)], spatials[i], outs[j - 1], cm) for i, j in plan.segments)


def merge_reason(before, after, n, m=None) -> str:
    """Why a segment of n ops was merged, from its MACs before/after and its MergedConv (or None)."""
    if after < before:
        why = f"{n} ops -> 1, MACs {before:,} -> {after:,} ({before / max(after, 1):.2f}x fewer)"
    elif after == before:
        why = f"{n} ops -> 1 at equal MACs"
    else:
        why = f"{n} ops -> 1; MACs rise {before:,} -> {after:,} but the saved op overhead pays for it"
    if m is not None and m.bias_map is not None:
        why += "; first bias as a per-position map"
    if m is not None and not m.exact:
        why += "; APPROXIMATE on the border"
    return why


def plan_dense_chain(params, rows: int, cm: CostModel, joins_ok=None) -> dict:
    """{(i, j): composed LinearParams} for the segments of a chain of linears worth merging (always exact);
    rows = how many rows (tokens x batch) each linear sees; joins_ok as plan_conv_chain."""
    cost = _dense_segment_cost(params, rows, cm, joins_ok)
    # priced on shapes; only the chosen segments are composed
    return {(i, j): lin_alg.compose_linear_chain(params[i:j])
            for i, j in plan_segments(len(params), cost, MAX_SEGMENT) if j - i > 1}


@dataclass
class _DenseShape:
    """A composed segment's shape, all its price reads (linear_macs, linear_signature)."""
    out_features: int
    in_features: int


def _dense_segment_cost(params, rows: int, cm: CostModel, joins_ok):
    """The planner's price of segment [i, j) of a dense chain (None where a join is refused), from shapes: the
    composed (out of the last, in of the first) layer, without composing it (pricing a 960->320->1280->10 head
    composed every candidate product)."""
    def cost(i, j):
        if j - i > 1 and joins_ok is not None and not all(joins_ok[i:j - 1]):
            return None
        p = params[i] if j - i == 1 else _DenseShape(params[j - 1].out_features, params[i].in_features)
        return cm.op_cost("Gemm", linear_macs(p, rows), linear_signature(p, rows))
    return cost


def dense_chain_cost(params, rows: int, cm: CostModel, joins_ok=None) -> float:
    """Cost of a dense chain as plan_dense_chain would cut it (0 for none)."""
    if not params:
        return 0.0
    cost = _dense_segment_cost(params, rows, cm, joins_ok)
    return sum(cost(i, j) for i, j in plan_segments(len(params), cost, MAX_SEGMENT))


def merge_record(kind: str, nodes: list, before: int, after: int, ops_before: int, m=None, joins=()) -> dict:
    """The report's record of one merged segment (kind "conv" with its MergedConv m, or "dense"); joins: the
    join keys (merge_fallback.join_key) it fused, by which a refused merge is named on a rerun. before / after:
    the MACs of the whole batch, as the report's totals count them (every record does: conv, dense, pool-hoist,
    residual), so that the records' savings add up (docs/architecture.md, "The report's MACs")."""
    rec = {"kind": kind, "nodes": list(nodes), "joins": list(joins), "macs_before": int(before), "macs_after": int(after),
           "ops_before": ops_before, "ops_after": 1 + (m is not None and m.bias_map is not None),
           "exact": m is None or bool(m.exact)}
    if m is not None:
        rec.update(kernel=list(m.params.kernel_shape), group=m.params.group)
    rec["reason"] = merge_reason(before, after, ops_before, m)
    return rec



def pool_hoist_costs(params, spatials, outs, cm: CostModel, *, dense_after=None, pool_kind: str = "GlobalAveragePool",
                     allow_border_approx: bool = False, joins_ok=None, dense_joins_ok=None) -> tuple[float, float]:
    """(cost kept, cost hoisted) of a global average pool after the pointwise conv params[-1], the last of the conv
    chain params (conv k reads spatial size spatials[k], writes outs[k]; joins_ok as plan_conv_chain).

    Hoisted, the pool reads the conv's input and the conv runs on one position: with dense_after (a list, maybe
    empty: the pooled vector is flattened) as the dense layer algebra.conv.pointwise_as_linear makes of it (a
    grouped conv densified) in front of the dense chain dense_after (LinearParams of the Gemms reading the
    flattened vector one after the other, planned with it: dense_joins_ok[0] the conv's join to the first),
    else as the conv itself. But the conv no longer joins the conv chain before it, whose plan may have merged it
    away (a 1x1 3->64 then a 1x1 64->2 are one 3->2 conv: hoisting the second leaves the wide first at every
    position). Both sides priced with the planners' own costs (plan_conv_chain, plan_dense_chain)."""
    last, n = params[-1], len(params)

    def chain(k):
        if k == 0:
            return 0.0
        plan = plan_conv_chain(params[:k], spatials[:k], outs[:k], cm, allow_border_approx,
                               joins_ok=None if joins_ok is None else list(joins_ok)[:k - 1], values=False)
        return plan_cost(plan, spatials[:k], outs[:k], cm)

    if dense_after is not None:
        lin = conv_alg.pointwise_as_linear(last)
        tail = None if dense_joins_ok is None else list(dense_joins_ok)
        moved = dense_chain_cost([lin] + list(dense_after), 1, cm, tail) \
            - dense_chain_cost(list(dense_after), 1, cm, None if tail is None else tail[1:])
    else:
        one = (1,) * len(outs[-1])
        moved = cm.op_cost("Conv", conv_macs(last, one), conv_signature(last, one))
    kept = chain(n) + cm.elementwise_cost(pool_kind, (last.out_channels,) + tuple(outs[-1]))
    hoisted = chain(n - 1) + moved + cm.elementwise_cost(pool_kind, (last.in_channels,) + tuple(spatials[-1]))
    return kept, hoisted
