"""hoist_pool: move a global average pool up before the pointwise convs that feed it, exactly.

mean(W x + b) = W mean(x) + b: averaging over every position commutes with a per-position channel mix
(algebra.conv.pointwise_as_linear). With the head activation collapsed, MobileNetV2's
`conv 1x1 320->1280 at 7x7 -> pool -> flatten -> Linear(1280->1000)` becomes
`pool -> flatten -> Linear(320->1280) -> Linear(1280->1000)`: the 1280-channel op runs on one position, and
MergeLinearChains (run after this pass) merges the two Linears when the cost model says so. Run before the
merge: a merge first would fuse the 1x1 conv into the conv before it, and the hoist could no longer take it.

Matching rules (the ONNX pass's, onnx/passes/hoist_global_pool.py, in torch's spellings):
- the pool P averages over exactly the spatial axes 2..r-1 of a batched map (r the conv weight's rank; 1-D,
  2-D, 3-D alike): nn.AdaptiveAvgPool1d/2d/3d(1), F.adaptive_avg_pool*d(x, 1 or (1, ..)), aten.(_)adaptive_avg_pool*d,
  x.mean / torch.mean / aten.mean.dim over those axes, keepdim or not (no dtype=);
- P's input is the output of a pointwise conv (fx/graph.linear_op kind "conv": 1x1, stride 1, no padding, any
  dilation and groups; no bias map, no size guard) that has P as its only user (reads of its batch size,
  x.size(0), aside: they then read the conv's input) and is not a graph output, and
  nothing writes the conv's input in place between the conv and P;
- the join conv>pool is allowed by the merge fallback (core/merge_fallback: a hoist is a merge record);
- it pays (core.chains.pool_hoist_costs, where the chain's shapes are known): the conv hoisted no longer joins the
  conv chain before it (up to MAX_SEGMENT convs back), whose merge could have removed more;
- "flattened": P dropped the spatial axes itself (mean without keepdim), or P's output has one user F (batch size
  reads aside: `q.view(q.size(0), -1)`), is not a
  graph output, and F flattens it to (N, C): torch.flatten(x, 1), x.flatten(1), nn.Flatten(), aten.flatten, a
  view / reshape (N, -1) or (N, C) with N the batch (a number, or a read of size(0)) and C the conv's outputs.
Rewrite (P and F keep their nodes and spelling; the conv becomes a new module, fx/graph.insert_linear, whose origin
is the conv's, so the report and the merge records name it)
- flattened, and the conv is dense (group 1) or its pooled positions are at least its group count (a densified
  grouped conv costs group times its MACs per position): P on the conv's input -> F (a view's C becomes the conv's
  input channels) -> nn.Linear (pointwise_as_linear), which MergeLinearChains may merge with the classifier;
- otherwise with keepdim: P on the conv's input -> the same conv on the 1x1 map (a flatten after it stays);
- otherwise (no keepdim, a grouped conv not worth densifying): left alone.
Repeated until nothing matches: a pool climbs a chain of pointwise convs one conv at a time.
"""
from __future__ import annotations

import operator

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import fx

from ...algebra.conv import pointwise_as_linear
from ...algebra.cost import CostModel, conv_macs, linear_macs
from ...core.chains import MAX_SEGMENT, pool_hoist_costs
from ...core.merge_fallback import join_key, joins_ok
from ..graph import (PaddedConv, _arg, StateGuard, feeds_output, insert_linear, linear_op, mutated_between, origin,
                     propagate_shapes, shape_of, single_user, submodule)
from ._base import FxPass, PassResult
from .cleanup import _is_noop

aten = torch.ops.aten

_POOL_MODULES = {nn.AdaptiveAvgPool1d: 1, nn.AdaptiveAvgPool2d: 2, nn.AdaptiveAvgPool3d: 3}
_POOL_FUNCS = {F.adaptive_avg_pool1d: 1, F.adaptive_avg_pool2d: 2, F.adaptive_avg_pool3d: 3,
               torch.adaptive_avg_pool1d: 1, torch._C._nn.adaptive_avg_pool2d: 2, torch._C._nn.adaptive_avg_pool3d: 3,
               aten.adaptive_avg_pool1d.default: 1, aten.adaptive_avg_pool2d.default: 2,
               aten.adaptive_avg_pool3d.default: 3, aten._adaptive_avg_pool2d.default: 2,
               aten._adaptive_avg_pool3d.default: 3}
_MEANS = {torch.mean, aten.mean.dim, "mean"}
_FLATTENS = {torch.flatten, aten.flatten.using_ints, "flatten"}
_VIEWS = {torch.reshape, aten.view.default, aten.reshape.default, aten._unsafe_view.default, "view", "reshape"}
_SIZES = {aten.sym_size.int, "size"}


def _target(node):
    """What a call_function / call_method node calls (a method by its name); None for other nodes."""
    return node.target if node.op in ("call_function", "call_method") else None


def _ones(size, n: int) -> bool:
    """output_size 1, or n ones (a None keeps that axis: not a global pool)."""
    if isinstance(size, int):
        return size == 1
    return isinstance(size, (list, tuple)) and len(size) == n and all(type(s) is int and s == 1 for s in size)


def _global_pool(gm: fx.GraphModule, node: fx.Node, rank: int):
    """keepdim (True: the pooled map keeps its 1-sized spatial axes, False: it is (N, C) already) when `node`
    averages its first operand, a batched map of `rank` axes, over exactly all its spatial axes; else None."""
    if not node.args or not isinstance(node.args[0], fx.Node):
        return None
    n = rank - 2
    if node.op == "call_module":
        mod = submodule(gm, node)
        dims = _POOL_MODULES.get(type(mod))
        ok = dims == n and len(node.args) == 1 and not node.kwargs and _ones(mod.output_size, n)
        return True if ok else None
    t = _target(node)
    if node.op == "call_function" and t in _POOL_FUNCS:
        return True if _POOL_FUNCS[t] == n and _ones(_arg(node, 1, "output_size", None), n) else None
    if t in _MEANS and (node.op == "call_method") == (t == "mean"):
        dim, keepdim = _arg(node, 1, "dim", None), _arg(node, 2, "keepdim", False)
        if node.kwargs.get("dtype") is not None or type(keepdim) is not bool or dim is None:
            return None
        dim = [dim] if isinstance(dim, int) else dim
        if not isinstance(dim, (list, tuple)) or not all(type(d) is int and -rank <= d < rank for d in dim):
            return None
        axes = sorted(d % rank for d in dim)
        return keepdim if axes == list(range(2, rank)) else None
    return None


def _is_batch(arg, batch: int, pooled: fx.Node | None = None) -> bool:
    """A view's first size that is the batch size: the number itself, a read of some tensor's size(0), or the
    symbol of the pooled map's batch (torch.compile(dynamic=True) passes `q.size(0)` in as a SymInt input)."""
    if type(arg) is int:
        return arg == batch
    if not isinstance(arg, fx.Node):
        return False
    v = arg.meta.get("example_value", arg.meta.get("val"))
    pv = None if pooled is None else pooled.meta.get("example_value", pooled.meta.get("val"))
    if isinstance(v, torch.SymInt) and isinstance(pv, torch.Tensor) and pv.dim() > 0 \
            and isinstance(pv.shape[0], torch.SymInt):
        return v.node.expr == pv.shape[0].node.expr
    t = _target(arg)
    if t in _SIZES and (arg.op == "call_method") == (t == "size"):
        return len(arg.args) == 2 and arg.args[1] == 0
    if t is operator.getitem and len(arg.args) == 2 and arg.args[1] == 0 and isinstance(arg.args[0], fx.Node):
        src = arg.args[0]   # x.shape[0], x.size()[0]
        return (_target(src) is getattr and src.args[1:] == ("shape",)) or \
            (_target(src) == "size" and src.op == "call_method" and len(src.args) == 1)
    return False


def _batch_reads(node: fx.Node) -> list:
    """The users of `node` that read nothing but its batch size: x.size(0), aten.sym_size.int(x, 0), x.shape[0] /
    x.size()[0] (a shape read at index 0 only). `q.view(q.size(0), -1)` after a pool reads the pooled map twice, and
    the ONNX export folds that size (or keeps Shape -> Gather 0): they are no readers of the values, and the batch
    is the same on the conv's input and on the pooled map of other channels."""
    reads = []
    for u in node.users:
        t = _target(u)
        if t in _SIZES and (u.op == "call_method") == (t == "size"):
            if len(u.args) == 2 and u.args[1] == 0 and not u.kwargs:
                reads.append(u)
        elif ((t is getattr and u.args[1:] == ("shape",)) or (t == "size" and u.op == "call_method"
                                                              and len(u.args) == 1 and not u.kwargs)) \
                and u.users and all(_target(g) is operator.getitem and g.args[1:] == (0,) for g in u.users):
            reads.append(u)
    return reads


def _single_reader(node: fx.Node) -> fx.Node | None:
    """single_user, not counting the users that read only the batch size (_batch_reads)."""
    batch = set(_batch_reads(node))
    users = [u for u in node.users if u not in batch]
    return users[0] if len(users) == 1 else None


def _flatten(gm: fx.GraphModule, node: fx.Node, pooled: fx.Node, rank: int, batch: int, channels: int):
    """None unless `node` flattens `pooled` (N, C, 1, ..) to (N, C); else the new args / kwargs it takes when
    the pooled map has other channels (a view (N, C) names its channel count)."""
    if not node.args or node.args[0] is not pooled:
        return None
    s = shape_of(node)
    if s is not None and tuple(s) != (batch, channels):   # a view (m, -1) of another m: no flatten
        return None
    if node.op == "call_module":
        mod = submodule(gm, node)
        ok = type(mod) is nn.Flatten and len(node.args) == 1 and not node.kwargs \
            and mod.start_dim in (1, 1 - rank) and mod.end_dim in (-1, rank - 1)
        return (node.args, node.kwargs) if ok else None
    t = _target(node)
    if t in _FLATTENS and (node.op == "call_method") == (t == "flatten"):
        start, end = _arg(node, 1, "start_dim", 0), _arg(node, 2, "end_dim", -1)
        ok = type(start) is int and type(end) is int and start in (1, 1 - rank) and end in (-1, rank - 1)
        return (node.args, node.kwargs) if ok else None
    if t in _VIEWS and (node.op == "call_method") == (t in ("view", "reshape")):
        if node.kwargs:
            return None
        sizes = node.args[1:]
        if len(sizes) == 1 and isinstance(sizes[0], (list, tuple)):
            sizes, packed = list(sizes[0]), True
        else:
            sizes, packed = list(sizes), False
        if len(sizes) != 2 or sizes[1] not in (-1, channels) or type(sizes[1]) is not int:
            return None
        if not (_is_batch(sizes[0], batch, pooled) or (sizes[0] == -1 and sizes[1] == channels)):
            return None
        return node.args, node.kwargs, packed
    return None


def _retarget_view(node: fx.Node, how, old: int, new: int) -> None:
    """A view (N, C) of the pooled map now of `new` channels: its C becomes `new` (N, -1 stays)."""
    if len(how) != 3:
        return
    args, _, packed = how
    sizes = list(args[1]) if packed else list(args[1:])
    if sizes[1] == old and old != -1:
        sizes[1] = new
    node.args = (args[0], sizes) if packed else (args[0], *sizes)


def _set_channels(node: fx.Node, channels: int) -> None:
    """node's output now has `channels` on axis 1 (the rest as it was): its shape metadata says so."""
    tm = node.meta.get("tensor_meta")
    if tm is not None and hasattr(tm, "shape") and hasattr(tm, "_replace"):
        shape = list(tm.shape)
        shape[1] = channels
        stride, acc = [], 1
        for d in reversed(shape):
            stride.insert(0, acc)
            acc *= d
        node.meta["tensor_meta"] = tm._replace(shape=torch.Size(shape), stride=tuple(stride))
    for k in ("val", "example_value"):
        v = node.meta.get(k)
        if isinstance(v, torch.Tensor):
            shape = list(v.shape)
            shape[1] = channels
            try:
                node.meta[k] = v.new_empty(shape)
            except Exception:   # a fake tensor whose mode cannot make it here: no metadata beats a wrong one
                node.meta.pop(k)


class HoistGlobalPool(FxPass):
    """Global average pool moved before the pointwise convs that feed it (exact; see the module docstring).
    cost_model / allow_border_approx / allowed: those of the MergeLinearChains it runs before. It needs the shapes
    in the node metadata (a batched map, the batch of a view): example_inputs runs ShapeProp first where a conv has
    none (in a PassManager this pass runs before MergeLinearChains, which would fill them too late)."""
    name = "hoist_pool"

    def __init__(self, record=None, example_inputs=None, cost_model: CostModel | None = None,
                 allow_border_approx: bool = False, allowed=None):
        super().__init__(record)
        self.example_inputs = example_inputs
        self.cm = cost_model or CostModel()
        self.allow_border_approx = allow_border_approx   # as MergeLinearChains plans the chain it competes with
        self.allowed = allowed   # join keys a hoist / merge may use (None: all), core/merge_fallback

    def call(self, gm: fx.GraphModule) -> PassResult:
        if self.example_inputs is not None and any(
                shape_of(n) is None for n in gm.graph.nodes if n.op != "output" and linear_op(gm, n) is not None):
            guard = StateGuard(gm)   # as MergeLinearChains: the shape run leaves a train-mode BatchNorm's statistics
            propagate_shapes(gm, self.example_inputs)
            if guard.written():
                guard.restore()
        done = 0
        for node in list(gm.graph.nodes):
            while self._hoist(gm, node):   # the same pool node climbs conv after conv
                done += 1
        return self.finish(gm, done, "moved {} global pool(s) before a pointwise conv")

    def _hoist(self, gm: fx.GraphModule, pool: fx.Node) -> bool:
        conv = pool.args[0] if pool.args and isinstance(pool.args[0], fx.Node) else None
        op = linear_op(gm, conv) if conv is not None else None
        if op is None or op.kind != "conv":
            return False
        out = shape_of(conv)
        rank = op.params.ndim + 2
        if out is None or len(out) != rank:   # unbatched (C, H, W), or no shapes: nothing to say
            return False
        keepdim = _global_pool(gm, pool, rank)
        if keepdim is None:
            return False
        p, x = op.params, op.x
        mod = submodule(gm, conv)
        if not p.is_pointwise or op.bias_map is not None or _single_reader(conv) is not pool or feeds_output(conv):
            return False
        join = join_key("+".join(origin(conv)), pool.name)
        if self.allowed is not None and join not in self.allowed:   # refused after verification
            return False
        if isinstance(mod, PaddedConv) and mod.in_spatial is not None:
            self.note(f"{conv.name} kept before {pool.name}: a size-guarded merged conv")
            return False
        if mutated_between(x, conv, pool):
            self.note(f"{conv.name} kept before {pool.name}: its input is changed in place before the pool")
            return False
        cin, cout = p.in_channels, p.out_channels
        positions = 1
        for d in out[2:]:
            positions *= int(d)
        flat, how = (pool, None) if not keepdim else (None, None)
        user = _single_reader(pool)
        if keepdim and user is not None and not feeds_output(pool):
            how = _flatten(gm, user, pool, rank, out[0], cout)
            if how is not None:
                flat = user
        if flat is not None and not (p.group == 1 or positions >= p.group):
            flat = how = None   # a densified grouped conv would cost more than it saves: the conv on the 1x1 map
        if flat is None and not keepdim:
            return False
        if not self._pays(gm, op, pool, flat):
            return False
        last = flat if flat is not None else pool
        old_meta = {k: last.meta[k] for k in ("tensor_meta", "val", "example_value") if k in last.meta}
        pool.replace_input_with(conv, x)
        _set_channels(pool, cin)
        if flat is not None and flat is not pool:
            if how is not None:
                _retarget_view(flat, how, cout, cin)
            _set_channels(flat, cin)
        one = (1,) * p.ndim
        if flat is not None:
            kind, params, form = "linear", pointwise_as_linear(p), "as a Linear on the pooled vector"
            after = linear_macs(params, out[0])
        else:
            kind, params, form = "conv", p, "on the 1x1 map"
            after = conv_macs(p, one) * out[0]
        new = insert_linear(gm, last.next, last, kind, params, hint=f"{conv.name}_hoisted", meta_from=conv,
                            origin=origin(conv), sources=[conv])
        for k in ("val", "example_value", "tensor_meta"):
            new.meta.pop(k, None)
        new.meta.update(old_meta)   # the shape `last` had: the new op gives what it gave
        last.replace_all_uses_with(new, delete_user_cb=lambda u: u is not new)
        before = conv_macs(p, tuple(out[2:])) * out[0]
        self.record.merges.append({
            "kind": "pool-hoist", "nodes": origin(conv) + [pool.name], "joins": [join],
            "macs_before": int(before), "macs_after": int(after), "ops_before": 2, "ops_after": 2, "exact": True,
            "reason": (f"pooled before {'+'.join(origin(conv))} (1x1 conv {cin}->{cout}"
                       + (f", group {p.group}" if p.group > 1 else "") + f"), which now runs {form}: "
                       f"MACs {int(before):,} -> {int(after):,}")})
        for u in _batch_reads(conv):   # x.size(0) of the conv's output: its input has the same batch
            u.replace_input_with(conv, x)
        gm.graph.erase_node(conv)
        return True

    def _pays(self, gm: fx.GraphModule, op, pool: fx.Node, flat: fx.Node | None) -> bool:
        """Is the hoist cheaper than the plan the conv chain into the conv would get with it (cost model)? As a
        Linear (flat: the node it reads), the dense chain after it (the classifier it then merges with) counts too.
        Unknown shapes: hoisted (it saves the conv's MACs at every position but one)."""
        chain = [op]
        while len(chain) < MAX_SEGMENT:   # the chain MergeLinearChains would plan the conv in (merge_chains._chains)
            x = chain[0].x
            prev = linear_op(gm, x)
            if prev is None or prev.kind != "conv" or single_user(x) is not chain[0].node or feeds_output(x) \
                    or chain[0].bias_map is not None:
                break
            chain.insert(0, prev)
        shapes_in = [shape_of(c.x) for c in chain]
        shapes_out = [shape_of(c.node) for c in chain]
        if any(s is None or len(s) < 3 for s in shapes_in + shapes_out):
            return True
        name = (lambda n: "+".join(origin(n)))
        joins = [join_key(name(a.node), name(b.node)) for a, b in zip(chain, chain[1:])]
        dense = dense_joins = None
        if flat is not None:
            after = _dense_chain_after(gm, flat)
            dense = [d.params for d in after]
            nodes = [op.node] + [d.node for d in after]
            dense_joins = joins_ok(self.allowed, [join_key(name(a), name(b)) for a, b in zip(nodes, nodes[1:])])
        pool_kind = "ReduceMean" if _target(pool) in _MEANS else "GlobalAveragePool"
        kept, hoisted = pool_hoist_costs([c.params for c in chain], [tuple(s[2:]) for s in shapes_in],
                                         [tuple(s[2:]) for s in shapes_out], self.cm, dense_after=dense,
                                         pool_kind=pool_kind, allow_border_approx=self.allow_border_approx,
                                         joins_ok=joins_ok(self.allowed, joins), dense_joins_ok=dense_joins)
        if hoisted < kept:
            return True
        self.note(f"kept {pool.name} after {name(op.node)}: pooling first would cost more "
                  f"({kept:,.0f} -> {hoisted:,.0f} MAC-equivalents) than merging the conv into the chain before it")
        return False


def _dense_chain_after(gm: fx.GraphModule, t: fx.Node) -> list:
    """The linears reading `t` one after the other (merge_chains' dense chains), up to MAX_SEGMENT; the no-ops
    Cleanup drops between them (an eval Dropout before the classifier: it runs after this pass) are looked through."""
    chain = []
    while len(chain) < MAX_SEGMENT and not feeds_output(t):
        u = single_user(t)
        if u is not None and u.args and u.args[0] is t and _is_noop(gm, u):
            t = u
            continue
        op = linear_op(gm, u) if u is not None else None
        if op is None or op.kind != "linear" or op.x is not t or (chain and op.bias_map is not None):
            break
        chain.append(op)
        t = u
    return chain
