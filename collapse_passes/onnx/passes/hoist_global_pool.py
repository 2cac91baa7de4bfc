"""hoist_pool: move a global average pool up before the pointwise convs that feed it, exactly.

mean(W x + b) = W mean(x) + b for a 1x1 conv without stride or padding (any groups), so once the activation
between a network's last 1x1 conv and its pool is collapsed (MobileNetV2's 320->1280 head, MobileNetV3's and
EfficientNet's head convs), the pool can run first: the conv then runs on one position (MobileNetV2 at 224:
20 MMACs -> 0.4M) and, flattened, is a Gemm that the dense chain planner (merge_chains / core.chains) can
merge with the classifier. Repeated until nothing matches, so a chain of 1x1 convs hoists up to the first
op that is not one. The algebra is algebra.conv.pointwise_as_linear; the torch.fx front end's pass
(fx/passes/hoist_global_pool.py) follows the same rules:

Match
- the pool P: GlobalAveragePool, or ReduceMean whose axes (attribute, or constant input from opset 18;
  negative axes counted from the rank) are exactly the spatial axes 2..r-1, r the conv weight's rank
  (1-D, 2-D, 3-D convs alike); keepdims 0 or 1;
- P's data input X is the output of a Conv with constant weights (and bias) that is pointwise: kernel all 1,
  strides all 1, no padding (auto_pad read as pads; any dilation and group); X has P as its only reader (a
  Shape read for the batch size only aside: it then reads the conv's input) and is not a graph output;
- the join conv>pool is allowed by the merge fallback (core/merge_fallback: a hoist is a merge record);
- it pays (core.chains.pool_hoist_costs, where the chain's shapes are known): the conv hoisted no longer
  joins the conv chain before it, whose merge could have removed more (a 1x1 3->64 then a 1x1 64->2 are one
  3->2 conv); the conv chain into it (up to MAX_SEGMENT convs back) is planned with and without it, and, as a
  dense layer, the dense chain reading the flattened vector (the classifier it then merges with) too;
- "flattened": P's output Y is (N, C) already (keepdims=0), or Y has one reader F (batch-size Shape reads
  aside), is not a graph output, and F is Flatten(axis=1) or a Reshape whose inferred output shape is (N, C)
  with C the conv's output channels, or whose target is Concat(the batch read at run time, [-1] or [C]) (a
  dynamic-batch export of `x.view(x.size(0), -1)`); another Reshape of unknown output shape is no flatten.
Rewrite (names of P, F and the conv node, and the tensors downstream, are kept)
- flattened, and the conv is dense (group 1) or its pooled positions are known and at least its group count
  (a densified grouped conv costs group times its MACs per position, so it must save that much):
  P on the conv's input -> Flatten(axis=1) (a Reshape becomes one: its shape constant names the old channel
  count) -> Gemm(transB=1, weight pointwise_as_linear) writing F's output (Y when keepdims=0);
- otherwise with keepdims=1: P on the conv's input -> the same Conv on the 1x1 map writing Y (a flatten after
  it stays as it was);
- otherwise (keepdims=0, a grouped conv not worth densifying): left alone.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from ...algebra.conv import pointwise_as_linear
from ...algebra.cost import CostModel, conv_macs, linear_macs
from ...core.chains import MAX_SEGMENT, pool_hoist_costs
from ...core.merge_fallback import join_key, joins_ok
from ...pipeline import PassResult
from ..analysis import counted_batch
from ..graph import const_value, make_const, single_consumer, tensor_namer, toposort
from ..linear_ops import ConvView, DenseView

__all__ = ["HoistGlobalPool", "find_hoist", "pool_spatial_axes"]


def pool_spatial_axes(node, rank: int) -> bool:
    """Does `node` average over exactly the spatial axes 2..rank-1 of a rank-`rank` tensor?"""
    if (node.domain or "") not in ("", "ai.onnx") or not node.inputs:
        return False
    if node.op == "GlobalAveragePool":
        return rank >= 3
    if node.op != "ReduceMean":
        return False
    if len(node.inputs) > 1 and node.inputs[1].name:
        v = const_value(node.inputs[1])
        if v is None:
            return False
        axes = [int(a) for a in np.asarray(v).reshape(-1)]
    else:
        axes = [int(a) for a in node.attrs.get("axes", [])]
    if not axes or any(not -rank <= a < rank for a in axes):
        return False
    return sorted({a % rank for a in axes}) == list(range(2, rank)) and len(axes) == rank - 2


def _keepdims(pool) -> bool:
    return pool.op == "GlobalAveragePool" or bool(int(pool.attrs.get("keepdims", 1)))


def _std(node, op: str) -> bool:
    return node is not None and node.op == op and (node.domain or "") in ("", "ai.onnx")


def _ints(t) -> list | None:
    v = const_value(t) if t is not None else None
    return None if v is None else [int(a) for a in np.asarray(v).reshape(-1)]


def _first_dim_only(shape_node, outs: set) -> bool:
    """Shape(T) whose value is read for T's first dim only (Shape start 0 end 1, or read by Gather 0 / Slice 0:1)."""
    if not _std(shape_node, "Shape") or shape_node.outputs[0].name in outs:
        return False
    if int(shape_node.attrs.get("start", 0)) == 0 and shape_node.attrs.get("end") is not None \
            and int(shape_node.attrs["end"]) == 1:
        return True
    if int(shape_node.attrs.get("start", 0)) != 0:
        return False
    readers = list(shape_node.outputs[0].outputs)
    return bool(readers) and all(
        (_std(r, "Gather") and int(r.attrs.get("axis", 0)) == 0 and _ints(r.inputs[1]) == [0])
        or (_std(r, "Slice") and _ints(r.inputs[1]) == [0] and _ints(r.inputs[2]) == [1]
            and (len(r.inputs) < 4 or _ints(r.inputs[3]) == [0]) and (len(r.inputs) < 5 or _ints(r.inputs[4]) == [1]))
        for r in readers)


def _batch_shapes(t, outs: set) -> list:
    """The Shape nodes reading `t` for its batch size only (a dynamic-batch export's `x.view(x.size(0), -1)`):
    no readers of its values; the batch is the same on the conv's input and on the pooled map of other channels."""
    return [n for n in t.outputs if n.inputs and n.inputs[0] is t and _first_dim_only(n, outs)]


def _only_reader(t, outs: set):
    """single_consumer, not counting the Shape nodes that read the batch size only (_batch_shapes)."""
    batch = {id(n) for n in _batch_shapes(t, outs)}
    readers = [n for n in t.outputs if id(n) not in batch]
    return readers[0] if len(readers) == 1 else None


def _is_batch_value(v, batch) -> bool:
    """Is the 1-element tensor `v` the batch size `batch` (a tensor shape's first dim): Shape(T)[0:1],
    Unsqueeze(Shape(T)[0]), Gather(Shape(T), [0]) with T's first dim that same dim, or the number itself."""
    c = _ints(v)
    if c is not None:
        return isinstance(batch, (int, np.integer)) and c == [int(batch)]
    node = v.inputs[0] if len(v.inputs) == 1 else None
    if _std(node, "Unsqueeze"):
        axes = _ints(node.inputs[1]) if len(node.inputs) > 1 else [int(a) for a in node.attrs.get("axes", [])]
        g = node.inputs[0].inputs[0] if len(node.inputs[0].inputs) == 1 else None
        if axes != [0] or not _std(g, "Gather") or _ints(g.inputs[1]) != [0] or np.ndim(const_value(g.inputs[1])) != 0:
            return False
        node = g
    if _std(node, "Gather") or _std(node, "Slice"):
        node = node.inputs[0].inputs[0] if len(node.inputs[0].inputs) == 1 else None
    if not _std(node, "Shape") or not _first_dim_only(node, set()):
        return False
    s = node.inputs[0].shape
    return bool(s) and s[0] == batch and (isinstance(batch, (int, np.integer)) or isinstance(batch, str) and batch)


def _reshape_flattens(f, y, out_channels: int) -> bool:
    """Reshape f of y (N, C, 1, ..) to (N, C): its inferred shape says so, or its target is Concat(batch, [-1] or
    [C]) with the batch read at run time (a dynamic-batch export of `x.view(x.size(0), -1)`)."""
    s = f.outputs[0].shape
    if s is not None and len(s) == 2 and isinstance(s[1], (int, np.integer)) and int(s[1]) == out_channels:
        return True
    cat = f.inputs[1].inputs[0] if len(f.inputs) > 1 and len(f.inputs[1].inputs) == 1 else None
    if not _std(cat, "Concat") or int(cat.attrs.get("axis", 0)) != 0 or len(cat.inputs) != 2 \
            or int(f.attrs.get("allowzero", 0)) or y.shape is None or len(y.shape) < 3:
        return False
    return _ints(cat.inputs[1]) in ([-1], [out_channels]) and _is_batch_value(cat.inputs[0], y.shape[0])


def _flatten_after(pool, out_channels: int, outs: set):
    """The node that flattens the pooled map to (N, C) right after `pool`, or None."""
    y = pool.outputs[0]
    f = _only_reader(y, outs)
    if f is None or y.name in outs or f.inputs[0] is not y or (f.domain or "") not in ("", "ai.onnx"):
        return None
    if f.op == "Flatten":
        return f if int(f.attrs.get("axis", 1)) == 1 else None
    if f.op == "Reshape" and _reshape_flattens(f, y, out_channels):
        return f
    return None


@dataclass
class Hoist:
    pool: gs.Node
    conv: gs.Node
    flatten: gs.Node | None   # the Flatten / Reshape after the pool (flattened with keepdims=1)
    as_gemm: bool             # the conv becomes a Gemm on (N, C); else the same Conv on the 1x1 map
    positions: int | None     # the conv's output positions (static), for the record's MACs


def _spatial(t, rank: int) -> tuple | None:
    s = t.shape
    if s is None or len(s) != rank or not all(isinstance(d, (int, np.integer)) and d > 0 for d in s[2:]):
        return None
    return tuple(int(d) for d in s[2:])


def _conv_chain_into(conv, outs: set) -> list:
    """The convs feeding `conv` one after the other (each output read by the next only), `conv` last: the chain
    merge_chains would plan it in, cut to its last MAX_SEGMENT convs."""
    chain = [conv]
    while len(chain) < MAX_SEGMENT:
        x = chain[0].inputs[0]
        prev = x.inputs[0] if len(x.inputs) == 1 else None
        if ConvView.of(prev) is None or len(prev.outputs) != 1 or single_consumer(x) is not chain[0] or x.name in outs:
            break
        chain.insert(0, prev)
    return chain


def _dense_chain_after(t, outs: set) -> list:
    """The DenseViews reading `t` one after the other (merge_chains' dense chains), up to MAX_SEGMENT."""
    chain = []
    while len(chain) < MAX_SEGMENT and t.name not in outs:
        v = DenseView.of(single_consumer(t), outs)
        if v is None or v.input is not t:
            break
        chain.append(v)
        t = v.output
    return chain


def _pays(h: "Hoist", ctx, outs: set) -> bool:
    """Is the hoist cheaper than the plan the conv chain into the conv would get with it (cost model)?
    Unknown shapes: hoisted (it saves the conv's MACs at every position but one)."""
    chain = _conv_chain_into(h.conv, outs)
    rank = ConvView(h.conv).params.weight.ndim
    spatials = [_spatial(n.inputs[0], rank) for n in chain]
    outs_sp = [_spatial(n.outputs[0], rank) for n in chain]
    if any(s is None for s in spatials + outs_sp):
        return True
    name = (lambda n: n.name or n.outputs[0].name)
    joins = [join_key(name(a), name(b)) for a, b in zip(chain, chain[1:])]
    dense, dense_joins = None, None
    if h.as_gemm:
        flat = (h.flatten or h.pool).outputs[0]
        views = _dense_chain_after(flat, outs)
        dense = [v.params for v in views]
        nodes = [h.conv] + [v.node for v in views]
        dense_joins = joins_ok(ctx.merge_allowed, [join_key(name(a), name(b)) for a, b in zip(nodes, nodes[1:])])
    kept, hoisted = pool_hoist_costs([ConvView(n).params for n in chain], spatials, outs_sp,
                                     ctx.cost_model or CostModel(), dense_after=dense, pool_kind=h.pool.op,
                                     allow_border_approx=ctx.allow_border_approx,
                                     joins_ok=joins_ok(ctx.merge_allowed, joins), dense_joins_ok=dense_joins)
    if hoisted < kept:
        return True
    note = (f"kept {ctx.label(h.pool.name)} after {ctx.label(h.conv.name)}: pooling first would cost more "
            f"({kept:,.0f} -> {hoisted:,.0f} MAC-equivalents) than merging the conv into the chain before it")
    if note not in ctx.notes:   # the fixed-point loop asks again every round
        ctx.notes.append(note)
    return False


def find_hoist(pool, outs: set, allowed=None) -> Hoist | None:
    """The hoist of `pool` over the pointwise conv before it (module docstring's rules but the price), or None."""
    if pool.op not in ("GlobalAveragePool", "ReduceMean") or not pool.inputs or len(pool.outputs) != 1:
        return None
    x = pool.inputs[0]
    conv = x.inputs[0] if len(x.inputs) == 1 else None
    view = ConvView.of(conv)
    if view is None or len(conv.outputs) != 1 or _only_reader(x, outs) is not pool or x.name in outs:
        return None
    p = view.params
    if not p.is_pointwise or not pool_spatial_axes(pool, p.weight.ndim):
        return None
    if allowed is not None and join_key(conv.name or x.name, pool.name or pool.outputs[0].name) not in allowed:
        return None
    spatial = x.shape[2:] if x.shape is not None and len(x.shape) == p.weight.ndim else None
    positions = int(np.prod(spatial)) if spatial is not None and all(
        isinstance(d, (int, np.integer)) and d > 0 for d in spatial) else None
    keep = _keepdims(pool)
    flat = _flatten_after(pool, p.out_channels, outs) if keep else None
    densify_pays = p.group == 1 or (positions is not None and positions >= p.group)
    as_gemm = (flat is not None or not keep) and densify_pays
    if not keep and not as_gemm:
        return None
    return Hoist(pool, conv, flat if as_gemm else None, as_gemm, positions)


class HoistGlobalPool:
    name = "hoist_pool"

    def __call__(self, ctx) -> PassResult:
        outs = ctx.graph_outputs
        done, refused = 0, set()
        while True:   # each hoist may expose the next 1x1 conv up the chain
            h = next((h for h in (find_hoist(n, outs, ctx.merge_allowed) for n in ctx.graph.nodes
                                  if id(n) not in refused) if h), None)
            if h is None:
                break
            if not _pays(h, ctx, outs):
                refused.add(id(h.pool))
                continue
            self._apply(ctx, h)
            done += 1
        if done:
            toposort(ctx.graph.cleanup(remove_unused_graph_inputs=False))
        return PassResult(done > 0, [f"pooled before {done} pointwise conv(s)"] if done else [])

    def _apply(self, ctx, h: Hoist) -> None:
        g, pool, conv = ctx.graph, h.pool, h.conv
        p = ConvView(conv).params
        x_in, x, y = conv.inputs[0], conv.outputs[0], pool.outputs[0]
        fresh = tensor_namer(g)

        for s in _batch_shapes(x, ctx.graph_outputs):   # x.size(0) of the conv's output: its input's batch
            s.inputs[0] = x_in
        y_batch = _batch_shapes(y, ctx.graph_outputs)
        keep = _keepdims(pool)
        ins = x_in.shape if x_in.shape is not None and len(x_in.shape) == p.weight.ndim else None
        pooled_shape = None if ins is None else (list(ins[:2]) + [1] * (len(ins) - 2) if keep else list(ins[:2]))
        pooled = gs.Variable(fresh(f"{x_in.name}__pooled"), dtype=y.dtype or x_in.dtype, shape=pooled_shape)
        pool.inputs[0] = x_in
        pool.outputs[0] = pooled
        for s in y_batch:   # the pooled map has the batch of the old one (y may be written by no node now)
            s.inputs[0] = pooled
        if h.as_gemm:
            lin = pointwise_as_linear(p)
            gemm_in, final = pooled, y
            if h.flatten is not None:
                f = h.flatten
                final = f.outputs[0]
                gemm_in = gs.Variable(fresh(f"{x_in.name}__pooled_flat"), dtype=pooled.dtype,
                                      shape=None if ins is None else list(ins[:2]))
                f.op = "Flatten"   # a Reshape's shape constant names the conv's output channels, not its input's
                f.attrs.clear()
                f.attrs["axis"] = 1
                f.inputs.clear()
                f.inputs.append(pooled)
                f.outputs[0] = gemm_in
            dt = np.asarray(p.weight).dtype
            base = conv.name or "conv"
            new_in = [gemm_in, make_const(g, f"{base}.weight", np.ascontiguousarray(lin.weight).astype(dt))]
            if lin.bias is not None:
                new_in.append(make_const(g, f"{base}.bias", np.asarray(lin.bias).astype(dt)))
            conv.op = "Gemm"
            conv.attrs.clear()
            conv.attrs.update(alpha=1.0, beta=1.0, transA=0, transB=1)
            conv.inputs.clear()
            conv.inputs.extend(new_in)
            conv.outputs[0] = final
            after = linear_macs(lin, 1)
            form = "as a Gemm on the pooled vector"
        else:
            conv.inputs[0] = pooled
            conv.outputs[0] = y
            if "auto_pad" in conv.attrs:   # explicit: SAME_* would be read for the 1x1 map again
                conv.attrs.pop("auto_pad")
                conv.attrs["pads"] = [0] * (2 * (p.weight.ndim - 2))
            after = conv_macs(p, (1,) * (p.weight.ndim - 2))
            form = "on the 1x1 map"
        x.inputs.clear()
        # the batch counted as the report's totals and the merge records count it (`N` is 1, `4*N` is 4)
        n = counted_batch(x)
        after *= int(n)
        before = None if h.positions is None else conv_macs(p, (1,) * (p.weight.ndim - 2)) * h.positions * int(n)
        ctx.merges.append({
            "kind": "pool-hoist", "nodes": [conv.name, pool.name],
            "joins": [join_key(conv.name or x.name, pool.name or y.name)],
            "macs_before": int(before if before is not None else after), "macs_after": int(after),
            "ops_before": 2, "ops_after": 2, "exact": True,
            "reason": (f"pooled before {ctx.label(conv.name)} (1x1 conv {p.in_channels}->{p.out_channels}"
                       + (f", group {p.group}" if p.group > 1 else "") + f"), which now runs {form}"
                       + ("" if before is None else f": MACs {before:,} -> {after:,}"))})
