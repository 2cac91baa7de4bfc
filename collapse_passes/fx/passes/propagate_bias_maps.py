"""bias_maps: carry a merged conv's per-position bias map to the end of its linear region and add it once.

A merge of padded convs leaves conv'(x) + M (a PaddedConv holding its bias map M: the first conv's bias seen
through the second's zero padding). That Add kept the conv out of every later fold, merge, residual absorb and
pool hoist (each refuses a conv with a map), where the ONNX front end carries the map on (its PropagateBiasMaps):
up to the next kept nonlinearity every op is linear, L(x + M) = L(x) + L0(M) exactly (algebra.conv.map_through_*),
so the maps leave their convs, each node of the region carries the sum of the maps that reached it as an
offset (a RunMap), and every region exit (a node read by an op not linear in it, or a graph output) gets one
Add of its offset, at the cheapest point of the single-reader chain into it (planning.cheapest_point), or folded
into the producing conv / linear's bias where it is constant over space. Maps whose regions meet are decided
together, and only where the cost model says the Adds after cost less than those before (planning.rewrite_pays).
The convs that lose their map keep their size guard: the offsets hold the planned size's borders.
"""
from __future__ import annotations

import operator

import numpy as np
import torch
from torch import fx

from ...algebra import conv as conv_alg
from ...algebra.cost import CostModel
from ...algebra.runmap import RunMap
from ...planning import cheapest_point, rewrite_pays
from ..graph import (PaddedConv, _arg, _fresh_name, alias_group, batchnorm_op, const_tensor, feeds_output,
                     insert_linear, is_add, linear_op, mutates, origin, shape_of, submodule, to_numpy)
from ._base import FxPass, PassResult
from .cleanup import _is_noop
from .hoist_global_pool import _global_pool, _is_batch

aten = torch.ops.aten

_SUBS = {operator.sub, torch.sub, aten.sub.Tensor, "sub"}
_MULS = {operator.mul, torch.mul, aten.mul.Tensor, "mul"}
_DIVS = {operator.truediv, torch.div, aten.div.Tensor, "div", "truediv"}
_FLATTENS = {torch.flatten, aten.flatten.using_ints, "flatten"}
_VIEWS = {torch.reshape, aten.view.default, aten.reshape.default, aten._unsafe_view.default, "view", "reshape"}


def _target(node: fx.Node):
    return node.target if node.op in ("call_function", "call_method") else None


def _per_sample(shape) -> tuple | None:
    """A node's shape with its batch as 1 (offsets are (1, ...), the same for every sample); None if unknown."""
    return None if shape is None or len(shape) < 2 else (1,) + tuple(int(d) for d in shape[1:])


def _constant(gm: fx.GraphModule, arg, out: tuple):
    """A number, or a constant tensor that broadcasts into `out` without growing it or having a batch extent,
    as float64; else None."""
    if isinstance(arg, (int, float)) and not isinstance(arg, bool):
        return np.float64(arg)
    t = const_tensor(gm, arg) if isinstance(arg, fx.Node) else None
    if t is None or not t.is_floating_point():
        return None
    c = to_numpy(t).astype(np.float64)
    try:
        if np.broadcast_shapes(c.shape, out) != out:
            return None
    except ValueError:
        return None
    return c


def _flattens(gm: fx.GraphModule, node: fx.Node, x: fx.Node) -> bool:
    """node regroups each sample of x on its own, keeping the batch first: flatten(x, 1), nn.Flatten(), a view /
    reshape whose first size is the batch (a number or a size(0) read) and whose others are numbers."""
    xs, ys = shape_of(x), shape_of(node)
    if xs is None or ys is None or not node.args or node.args[0] is not x or xs[0] != ys[0]:
        return False
    if node.op == "call_module":
        mod = submodule(gm, node)
        return type(mod) is torch.nn.Flatten and mod.start_dim in (1, 1 - len(xs)) and mod.end_dim == -1
    t = _target(node)
    if t in _FLATTENS and (node.op == "call_method") == (t == "flatten"):
        start, end = _arg(node, 1, "start_dim", 0), _arg(node, 2, "end_dim", -1)
        return start in (1, 1 - len(xs)) and end in (-1, len(xs) - 1)
    if t in _VIEWS and (node.op == "call_method") == (t in ("view", "reshape")) and not node.kwargs:
        sizes = node.args[1:]
        if len(sizes) == 1 and isinstance(sizes[0], (list, tuple)):
            sizes = sizes[0]
        return len(sizes) >= 1 and _is_batch(sizes[0], int(xs[0])) and all(type(s) is int for s in sizes[1:])
    return False


class PropagateBiasMaps(FxPass):
    """See the module docstring. cost_model: algebra.cost.CostModel (that of the merge it follows)."""
    name = "bias_maps"

    def __init__(self, record=None, cost_model: CostModel | None = None):
        super().__init__(record)
        self.cm = cost_model or CostModel()

    def call(self, gm: fx.GraphModule) -> PassResult:
        off, srcs, sources, linear = {}, {}, {}, set()
        for node in gm.graph.nodes:
            if node.op == "call_module" and isinstance(submodule(gm, node), PaddedConv) \
                    and submodule(gm, node).bias_map is not None:
                op, out = linear_op(gm, node), _per_sample(shape_of(node))
                try:   # the map is stored (C, *spatial) or (1, C, *spatial)
                    bm = np.broadcast_to(op.bias_map, out) if op is not None and out is not None else None
                except ValueError:
                    bm = None
                base = self._through(gm, node, off) if bm is not None and op.x in off else 0.0
                if bm is None or base is None:
                    continue
                off[node] = RunMap.from_dense(bm) + base
                srcs[node] = srcs.get(op.x, frozenset()) | {node}
                sources[node] = op
                linear.add(node)
                continue
            if not any(a in off for a in node.all_input_nodes):
                continue
            o = self._through(gm, node, off)
            if o is None:
                continue
            linear.add(node)
            off[node] = o
            srcs[node] = frozenset().union(*(srcs[a] for a in node.all_input_nodes if a in srcs))
        if not sources:
            return PassResult(gm, False)
        # exits: region nodes that a graph output or a reader not linear in them (a kept activation, an in-place
        # writer) reads in their true value; maps reaching a common exit are decided together (union-find)
        exits, groups, parent = [], {}, {}

        def find(a):
            parent.setdefault(a, a)
            while parent[a] != a:
                parent[a] = parent[parent[a]]
                a = parent[a]
            return a

        for n, o in off.items():
            if not (feeds_output(n) or any(u not in linear for u in n.users)) or not o.any():
                continue
            exits.append(n)
            for s in srcs[n]:
                parent[find(("e", n))] = find(("s", s))
        plans = {e: self._place(gm, e, off, linear, sources) for e in exits}
        for s in sources:
            groups.setdefault(find(("s", s)), ([], []))[0].append(s)
        for e in exits:
            groups[find(("e", e))][1].append(e)
        done_src = done_exits = folded = 0
        for src, outs in groups.values():
            before = [self.cm.elementwise_cost("Add", _per_sample(shape_of(s))[1:]) for s in src]
            if not rewrite_pays(before, [plans[e][2] for e in outs]):
                continue
            dtype = sources[src[0]].bias_map.dtype
            for e in outs:
                u, how, _ = plans[e]
                self._materialize(gm, e, u, how, off[u], dtype, linear)
                folded += how == "fold"
            for s in src:
                op = sources[s]
                new = insert_linear(gm, s, s.args[0], "conv", op.params, None, hint=f"{s.name}_unmapped", meta_from=s,
                                    origin=origin(s), size_guard=True, sources=[s])
                s.replace_all_uses_with(new)
                gm.graph.erase_node(s)
            done_src += len(src)
            done_exits += len(outs)
        if not done_src:
            return PassResult(gm, False)
        return self.finish(gm, done_src, f"{{}} bias map(s) carried to {done_exits} region exit(s): "
                                         f"{done_exits - folded} Add(s) left, {folded} folded into a bias")

    # ------------------------------------------------------------------------------------ the region
    def _through(self, gm: fx.GraphModule, node: fx.Node, off: dict):
        """The offset of node's output from its carried inputs' (off), or None where node is not linear in them."""
        out = _per_sample(shape_of(node))
        if out is None or node.op not in ("call_module", "call_function", "call_method"):
            return None
        carried = [a for a in node.all_input_nodes if a in off]
        x = node.args[0] if node.args and isinstance(node.args[0], fx.Node) else None
        for a in carried:   # written in place (directly or through a view): only by a residual add into its branch
            if any(mutates(u, b) and not (u is node and is_add(node)) for b in alias_group(a) for u in b.users):
                return None
        try:
            res = self._linear_part(gm, node, off, carried, x, out)
        except (ValueError, KeyError, conv_alg.AlgebraError):
            return None
        if res is None or tuple(res.shape) != out:
            return None
        return res if isinstance(res, RunMap) else np.asarray(res, np.float64)

    def _linear_part(self, gm, node, off, carried, x, out):
        only_x = carried == [x]
        op = linear_op(gm, node)
        if op is not None:
            if not only_x or op.x is not x:
                return None
            if op.kind == "conv":
                return conv_alg.map_through_conv(off[x], op.params)
            return conv_alg.map_through_dense(off[x], op.params.weight)
        bn = batchnorm_op(gm, node)
        if bn is not None and bn.node is node and only_x and bn.x is x:
            var = to_numpy(bn.var).astype(np.float64)
            gamma = np.ones_like(var) if bn.gamma is None else to_numpy(bn.gamma).astype(np.float64)
            scale = gamma / np.sqrt(var + bn.eps)   # algebra.conv.bn_to_affine's scale, in float64
            o = off[x]
            return conv_alg.map_through_scale(o, np.asarray(scale, np.float64).reshape((-1,) + (1,) * (o.ndim - 2)))
        if _is_noop(gm, node) and only_x:
            return off[x]
        t = _target(node)
        if is_add(node) or t in _SUBS and len(node.args) == 2 and not node.kwargs:
            sign = -1.0 if t in _SUBS else 1.0
            a, b = node.args
            terms = []
            for i, v in enumerate((a, b)):
                s = 1.0 if i == 0 else sign
                if isinstance(v, fx.Node) and v in off:
                    if _per_sample(shape_of(v)) != out:   # broadcasting a carried tensor: not a plain sum
                        return None
                    terms.append(s * off[v])
                elif _constant(gm, v, out) is None and not (isinstance(v, fx.Node) and _per_sample(shape_of(v)) == out):
                    return None
            return sum(terms[1:], terms[0]) if terms else None
        if (t in _MULS or t in _DIVS) and len(node.args) == 2 and not node.kwargs and only_x:
            c = _constant(gm, node.args[1], out)
            if c is None and t in _MULS:
                c = _constant(gm, node.args[0], out)
                if c is None or node.args[1] is not x:
                    return None
            elif c is None or node.args[0] is not x:
                return None
            if _per_sample(shape_of(x)) != out:
                return None
            return conv_alg.map_through_scale(off[x], c if t in _MULS else 1.0 / c)
        if only_x:
            o = off[x]
            keepdim = _global_pool(gm, node, o.ndim)
            if keepdim is not None:
                m = conv_alg.map_through_mean(o, range(2, o.ndim))
                return m if keepdim else m.reshape(m.shape[:2])
            if _flattens(gm, node, x):
                return np.asarray(o.dense() if isinstance(o, RunMap) else o).reshape(out)
        return None

    # ------------------------------------------------------------------------------------ placement
    def _place(self, gm, e, off, linear, sources):
        """(node to fix, 'add' | 'fold', cost) for exit e: the cheapest point of the single-reader chain into it."""
        clean = not any(u in linear for u in e.users)   # every reader of e wants its true value
        chain, u = [e], e
        while clean and u in linear and u not in sources:
            data = [a for a in u.all_input_nodes if const_tensor(gm, a) is None]
            if len(data) != 1 or data[0] not in off or len(data[0].users) != 1 or feeds_output(data[0]):
                break
            u = data[0]
            chain.append(u)
        chain.reverse()   # flow order: ties go to the point nearest the exit
        costs, hows = [], []
        for t in chain:
            if clean and t not in sources and self._foldable(gm, t, off[t]):
                costs.append(0.0)
                hows.append("fold")
            else:
                costs.append(self.cm.elementwise_cost("Add", off[t].shape[1:]))
                hows.append("add")
        i = cheapest_point(costs)
        return chain[i], hows[i], costs[i]

    @staticmethod
    def _foldable(gm, t, o) -> bool:
        return linear_op(gm, t) is not None and conv_alg.spatially_constant(o) is not None

    def _materialize(self, gm, e, u, how, o, dtype, linear) -> None:
        if how == "fold":
            op = linear_op(gm, u)
            vec = conv_alg.spatially_constant(o)
            p = op.params
            bias = ((np.asarray(p.bias, np.float64) if p.bias is not None else 0.0) + vec).astype(p.weight.dtype)
            params = p.replace(bias=bias) if op.kind == "conv" else p.__class__(p.weight, bias)
            new = insert_linear(gm, u, op.x, op.kind, params, op.bias_map, hint=f"{u.name}_biased", meta_from=u,
                                origin=origin(u), sources=[u])
            u.replace_all_uses_with(new)
            gm.graph.erase_node(u)
            return
        name = _fresh_name(gm, f"{u.name}_bias_map")
        gm.register_buffer(name, torch.from_numpy(np.ascontiguousarray(np.asarray(o, np.float64).astype(dtype))))
        with gm.graph.inserting_after(u):
            k = gm.graph.get_attr(name)
        with gm.graph.inserting_after(k):
            fixed = gm.graph.call_function(operator.add, (u, k))
        for key in ("tensor_meta", "val", "example_value", "nn_module_stack", "stack_trace"):
            if key in u.meta:
                fixed.meta[key] = u.meta[key]
        # e's readers linear in it keep the raw value (their offsets count the map); the others read the fixed one
        readers = [r for r in u.users if r is not fixed and not (u is e and r in linear)]
        for r in readers:
            r.replace_input_with(u, fixed)
