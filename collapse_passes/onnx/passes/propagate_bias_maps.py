"""bias_maps: carry constant per-position bias maps to the end of their linear region and add them once.

A merge leaves conv'(x) + M (M: the first conv's bias seen through the second conv's zero padding).
Up to the next kept nonlinearity every op is linear, so L(x + M) = L(x) + L0(M) exactly, L0 being the
op's linear part (algebra.conv.map_through_*). So the map Adds are removed, each tensor of the region
carries the sum of the maps that reached it as a constant *offset*, and every region exit (a tensor
read by an op that is not linear in it, or a graph output) gets one Add of its offset: at the
cheapest point of the single-consumer chain leading to it (a 1x1 conv that widens 320 -> 1280
channels is better passed before the Add than after), or folded into the producing conv's bias where
the offset is constant over space. Maps whose regions are connected are decided together, and only
where the cost model says the Adds after cost less than the Adds before. Offsets are RunMaps (their
distinct slices, algebra/runmap.py: the same float64 numbers as the full maps), made full only for an
Add at an exit.
"""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from ...algebra import conv as conv_alg
from ...algebra.cost import CostModel
from ...algebra.linear import from_gemm
from ...algebra.runmap import RunMap
from ...pipeline import PassResult
from ...planning import cheapest_point, rewrite_pays
from ..graph import add_after, const_value, make_const, tensor_namer, toposort, unique_name
from ..linear_ops import ConvView, DenseView

__all__ = ["PropagateBiasMaps", "bias_map_source", "count_bias_map_adds"]


def _static(t) -> tuple | None:
    """The tensor's shape with a symbolic first dim (a dynamic batch) read as 1, or None when another dim is
    unknown. Offsets are (1, ...) and every op they pass through acts row by row along the first dim, so
    they are the same for every batch (a dynamic-batch export kept all its bias-map Adds)."""
    s = getattr(t, "shape", None)
    if s is None or len(s) == 0 or not all(isinstance(d, (int, np.integer)) and d > 0 for d in s[1:]):
        return None
    first = s[0]
    if isinstance(first, (int, np.integer)):
        if first <= 0:
            return None
    elif not (isinstance(first, str) and first):
        return None
    return (int(first) if isinstance(first, (int, np.integer)) else 1,) + tuple(int(d) for d in s[1:])


def _fits(c: np.ndarray, shape: tuple) -> bool:
    """A constant operand that broadcasts into `shape` without growing it and without a batch extent."""
    try:
        if np.broadcast_shapes(c.shape, shape) != shape:
            return False
    except ValueError:
        return False
    return c.ndim < len(shape) or c.shape[0] == 1


def bias_map_source(node):
    """(x, M as (1, C, *spatial)) if node is Add(x, M) with M a constant per-position map (varies over
    space, one value per channel and position, shared by the batch), else None. Per-channel bias Adds
    are not sources: they are ordinary biases and pass through unchanged."""
    if node.op != "Add" or len(node.inputs) != 2 or len(node.outputs) != 1:
        return None
    consts = [const_value(t) for t in node.inputs]
    if (consts[0] is None) == (consts[1] is None):
        return None
    k = 0 if consts[0] is not None else 1
    K, x = consts[k], node.inputs[1 - k]
    shape = _static(x)
    if shape is None or len(shape) < 3 or K.dtype.kind != "f" or K.ndim != len(shape):
        return None
    if not _fits(K, shape) or K.shape[1] != shape[1] or int(np.prod(K.shape[2:])) < 2:
        return None
    return x, np.broadcast_to(K, (1,) + shape[1:])


def count_bias_map_adds(graph: gs.Graph) -> int:
    """How many per-position bias-map Adds a graph holds (what the benchmark reports)."""
    return sum(bias_map_source(n) is not None for n in graph.nodes)


def _push(node, off: dict):
    """Offset of node's output given the offsets (by tensor name) of its inputs, or None when the node is
    not linear in them (then those inputs must hold their true values: a region exit)."""
    if len(node.outputs) != 1:
        return None
    out_shape = _static(node.outputs[0])
    if out_shape is None:
        return None
    ins = node.inputs
    carried = [t for t in ins if t.name in off]
    consts = [const_value(t) for t in ins]
    op = node.op
    res = None
    try:
        if op == "Identity":
            res = off[ins[0].name]
        elif op == "Conv":
            if ConvView.of(node) is not None and carried == [ins[0]]:
                res = conv_alg.map_through_conv(off[ins[0].name], ConvView(node).params)
        elif op in ("Add", "Sub") and len(ins) == 2:
            sign = [1.0, 1.0 if op == "Add" else -1.0]
            if all(c is None for c in consts):  # residual: offsets add (no broadcasting allowed)
                if all(_static(t) == out_shape for t in ins):
                    res = sum(sign[i] * off[t.name] for i, t in enumerate(ins) if t.name in off)
            else:  # a constant (per-channel) bias: the offset passes unchanged
                k = 0 if consts[0] is not None else 1
                if _fits(consts[k], out_shape) and _static(ins[1 - k]) == out_shape:
                    res = sign[1 - k] * off[ins[1 - k].name]
        elif op in ("Mul", "Div") and len(ins) == 2:
            k = 0 if consts[0] is not None else 1
            if consts[k] is not None and consts[1 - k] is None and (op == "Mul" or k == 1) \
                    and _fits(consts[k], out_shape) and _static(ins[1 - k]) == out_shape:
                c = consts[k].astype(np.float64)
                res = conv_alg.map_through_scale(off[ins[1 - k].name], c if op == "Mul" else 1.0 / c)
        elif op == "BatchNormalization":
            if len(ins) == 5 and all(c is not None for c in consts[1:]) and carried == [ins[0]]:
                scale, _ = conv_alg.bn_to_affine(*consts[1:], eps=float(node.attrs.get("epsilon", 1e-5)))
                o = off[ins[0].name]
                res = conv_alg.map_through_scale(o, scale.astype(np.float64).reshape((-1,) + (1,) * (o.ndim - 2)))
        elif op == "GlobalAveragePool":
            o = off[ins[0].name]
            res = conv_alg.map_through_mean(o, range(2, o.ndim))
        elif op == "ReduceMean":   # torch.export's adaptive_avg_pool2d(1) / x.mean((2, 3)): the pooling of GAP
            o = off[ins[0].name]
            axes = _reduce_axes(node, consts, o.ndim)
            if carried == [ins[0]] and axes is not None and 0 not in axes:
                res = conv_alg.map_through_mean(o, axes) if axes else o
                if axes and not int(node.attrs.get("keepdims", 1)):
                    res = np.squeeze(res, axis=axes)
        elif op == "Flatten":
            if int(node.attrs.get("axis", 1)) == 1:
                res = off[ins[0].name].reshape(1, -1)
        elif op == "Reshape":   # torch.export's flatten / view(n, -1): TorchScript writes Flatten
            if len(ins) == 2 and carried == [ins[0]] and _keeps_batch(node, consts[1]):
                res = off[ins[0].name].reshape((1,) + out_shape[1:])
        elif op == "Gemm":
            if int(node.attrs.get("transA", 0)) == 0 and consts[1] is not None and carried == [ins[0]]:
                p = from_gemm(consts[1], None, transB=int(node.attrs.get("transB", 0)),
                              alpha=float(node.attrs.get("alpha", 1.0)))
                res = conv_alg.map_through_dense(off[ins[0].name], p.weight)
        elif op == "MatMul":
            if consts[1] is not None and consts[1].ndim == 2 and carried == [ins[0]]:
                res = np.asarray(off[ins[0].name], dtype=np.float64) @ consts[1].astype(np.float64)
    except (ValueError, KeyError):  # shapes that do not line up: treat as an exit
        return None
    if res is None or tuple(res.shape[1:]) != out_shape[1:] or res.shape[0] != 1:
        return None
    return res if isinstance(res, RunMap) else np.asarray(res, dtype=np.float64)


def _reduce_axes(node, consts, ndim: int):
    """ReduceMean's axes, non-negative and sorted (from the axes input, opset 18, or the attribute before it);
    () for a no-op (empty axes with noop_with_empty_axes), None when unknown or when it reduces every axis."""
    if len(node.inputs) > 1 and node.inputs[1].name:
        if consts[1] is None:
            return None
        axes = [int(a) for a in np.asarray(consts[1]).reshape(-1)]
    else:
        axes = [int(a) for a in node.attrs.get("axes", [])]
    if not axes:
        return () if int(node.attrs.get("noop_with_empty_axes", 0)) else None
    axes = sorted({a + ndim if a < 0 else a for a in axes})
    return tuple(axes) if all(0 <= a < ndim for a in axes) else None


def _keeps_batch(node, target) -> bool:
    """A Reshape that keeps the first (batch) dim and only regroups the others (view(n, -1), flatten(x, 1)):
    then it maps each sample's offset on its own, and the (1, ...) offset reshapes with it."""
    x, y = node.inputs[0], node.outputs[0]
    xs, ys = _static(x), _static(y)
    if target is None or xs is None or ys is None:
        return False
    t = [int(d) for d in np.asarray(target).reshape(-1)]
    if not t or int(np.prod(xs[1:])) != int(np.prod(ys[1:])):
        return False
    if 0 in t and int(node.attrs.get("allowzero", 0)):   # a literal 0 (torch.export writes allowzero=1)
        return False
    if t[0] == 0:   # copies the input's first dim
        return True
    if t[0] == -1:  # the rest fixes every other element, so -1 is the first dim
        return all(d >= 0 for d in t[1:])
    return isinstance(x.shape[0], (int, np.integer)) and t[0] == int(x.shape[0])


class _Sets:
    """Union-find over map sources and exits: maps that reach a common exit are decided together."""

    def __init__(self):
        self.parent = {}

    def find(self, a):
        self.parent.setdefault(a, a)
        while self.parent[a] != a:
            self.parent[a] = self.parent[self.parent[a]]
            a = self.parent[a]
        return a

    def union(self, a, b):
        self.parent[self.find(a)] = self.find(b)


class PropagateBiasMaps:
    name = "bias_maps"

    def __call__(self, ctx) -> PassResult:
        g = ctx.graph
        toposort(g)
        cm = ctx.cost_model or CostModel()
        outs = ctx.graph_outputs
        # tensor name -> offset (1, C, *S) float64, a RunMap (its distinct slices: a full float64 map of
        # every tensor of a collapsed MobileNetV2 at 224 took up to 77 MB each) / source node ids
        off, srcs = {}, {}
        sources, linear = {}, set()    # id -> (node, x, map); ids of nodes linear in their carried inputs
        for node in g.nodes:
            src = bias_map_source(node)
            if src is not None:
                x, K = src
                y = node.outputs[0]
                off[y.name] = RunMap.from_dense(K) + off.get(x.name, 0.0)
                srcs[y.name] = srcs.get(x.name, frozenset()) | {id(node)}
                sources[id(node)] = (node, x, K)
                linear.add(id(node))
                continue
            if not any(t.name in off for t in node.inputs):
                continue
            o = _push(node, off)
            if o is None:
                continue
            linear.add(id(node))
            y = node.outputs[0]
            off[y.name] = o
            srcs[y.name] = frozenset().union(*(srcs[t.name] for t in node.inputs if t.name in srcs))
        if not sources:
            return PassResult(False)

        tensors = g.tensors()
        sets = _Sets()
        for s in sources:
            sets.find(("s", s))
        exits = []
        for name, o in off.items():
            t = tensors[name]
            if not (name in outs or any(id(c) not in linear for c in t.outputs)):
                continue
            if not o.any():
                continue
            exits.append(t)
            for s in srcs[name]:
                sets.union(("e", name), ("s", s))

        plans = {}
        for e in exits:
            plans[e.name] = self._place(e, off, linear, sources, outs, cm)
        groups = {}
        for s in sources:
            groups.setdefault(sets.find(("s", s)), ([], []))[0].append(s)
        for e in exits:
            groups[sets.find(("e", e.name))][1].append(e)

        done_src, done_exits, folded = 0, 0, 0
        for src_ids, group_exits in groups.values():
            before = [cm.elementwise_cost("Add", sources[s][2].shape[1:]) for s in src_ids]
            after = [plans[e.name][2] for e in group_exits]
            if not rewrite_pays(before, after):
                continue
            dtype = sources[src_ids[0]][2].dtype
            for s in src_ids:
                node, x, _ = sources[s]
                node.op = "Identity"
                node.attrs.clear()
                node.inputs.clear()
                node.inputs.append(x)
            for e in group_exits:
                u, how, _ = plans[e.name]
                self._materialize(g, e, u, how, off[u.name], dtype, linear)
                folded += how == "fold"
            done_src += len(src_ids)
            done_exits += len(group_exits)
        if not done_src:
            return PassResult(False)
        toposort(g.cleanup(remove_unused_graph_inputs=False))
        msg = (f"{done_src} bias-map Add(s) carried to {done_exits} region exit(s): "
               f"{done_exits - folded} Add(s) left, {folded} folded into a conv bias")
        return PassResult(True, [msg])

    # ----------------------------------------------------------------------------------- placement
    def _place(self, e, off, linear, sources, outs, cm):
        """(tensor to fix, 'add' | 'fold', cost) for exit e: the cheapest point on the chain into e."""
        clean = not any(id(c) in linear for c in e.outputs)  # every reader of e wants the true value
        chain = [e]
        u = e
        while clean:
            p = u.inputs[0] if u.inputs else None
            if p is None or id(p) not in linear or id(p) in sources or len(p.outputs) != 1:
                break
            data = [t for t in p.inputs if const_value(t) is None]
            if len(data) != 1 or data[0].name not in off:
                break
            v = data[0]
            if len(v.outputs) != 1 or v.name in outs:
                break
            chain.append(v)
            u = v
        chain.reverse()  # flow order: ties go to the point nearest the exit
        costs, hows = [], []
        for t in chain:
            if clean and self._foldable(t, off[t.name]):
                costs.append(0.0)
                hows.append("fold")
            else:
                costs.append(cm.elementwise_cost("Add", off[t.name].shape[1:]))
                hows.append("add")
        i = cheapest_point(costs)
        return chain[i], hows[i], costs[i]

    @staticmethod
    def _foldable(t, o) -> bool:
        p = t.inputs[0] if t.inputs else None
        if p is None or len(p.outputs) != 1 or conv_alg.spatially_constant(o) is None:
            return False
        return ConvView.of(p) is not None or (p.op == "Gemm" and DenseView.of(p) is not None)

    def _materialize(self, g, e, u, how, o, dtype, linear) -> None:
        if how == "fold":
            p = u.inputs[0]
            vec = conv_alg.spatially_constant(o)
            if p.op == "Conv":
                view = ConvView(p)
                q = view.params
                bias = (np.asarray(q.bias, np.float64) if q.bias is not None else 0.0) + vec
                view.write(g, q.replace(bias=bias.astype(q.weight.dtype)))
            else:
                view = DenseView(p)
                q = view.params
                bias = (np.asarray(q.bias, np.float64) if q.bias is not None else 0.0) + vec
                view.write(g, q.__class__(q.weight, bias.astype(np.asarray(q.weight).dtype)))
            return
        k = make_const(g, f"{u.name}.bias_map", o.astype(dtype))

        if u is e:  # the producer writes a raw tensor; readers linear in e keep the raw one, the rest get e
            raw = add_after(g, e, k, "raw", f"{e.name}_bias_map").inputs[0]
            for c in list(e.outputs):
                if id(c) in linear:
                    for i, t in enumerate(c.inputs):
                        if t is e:
                            c.inputs[i] = raw
            return
        fixed = gs.Variable(tensor_namer(g)(f"{u.name}__with_map"), dtype=u.dtype)
        c = u.outputs[0]
        c.inputs[c.inputs.index(u)] = fixed
        g.nodes.append(gs.Node("Add", name=unique_name(g, f"{u.name}_bias_map"), inputs=[u, k], outputs=[fixed]))
