"""ONNX front end of the channel dependency graph: build it from an onnx-graphsurgeon graph, and rewrite
the graph once units are chosen for removal.

Only ops listed here are understood; any other op that touches a channel-carrying tensor freezes the
groups it touches and is listed in the report.
"""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from ..algebra import prune as prune_alg
from ..algebra.conv import bn_to_affine
from ..core.activations import SELU_ALPHA, SELU_GAMMA
from ..onnx.graph import add_after, const_value, make_const, toposort
from ..onnx.linear_ops import ConvView, DenseView
from .builder import SlotBuilder
from .graph import ChannelGraph, activation_fn, avg_pool_keeps_constants, removal_edits

#: elementwise unary ops: channel i of the output depends on channel i of the input only
UNARY = {"Relu", "LeakyRelu", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "Gelu", "Erf", "Elu", "Selu", "Celu",
         "Softplus", "Softsign", "Mish", "Identity", "Dropout", "Clip", "Neg", "Abs", "Exp",
         "Log", "Sqrt", "Reciprocal", "Floor", "Ceil", "Round", "Sign", "Cast"}
#: unary ops that keep a per-channel constant the same constant
CONST_PRESERVING = {"Identity", "Dropout", "MaxPool", "GlobalAveragePool", "GlobalMaxPool"}
POOLS = {"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool", "GlobalLpPool"}
BINARY = {"Add": "add", "Sub": "sub", "Mul": "mul", "Div": "div"}
REDUCE = {"ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum"}


def scalar_fn(node):
    """f(x) of an elementwise unary op on one float, for the smooth activations and the pieces of their
    decompositions (SiLU = x * Sigmoid(x), GELU = 0.5 x (1 + Erf(x / sqrt 2))), so a constant channel
    through them is still a known constant (EfficientNet, MobileNetV3, Swin); None for other ops."""
    import math

    a = node.attrs
    kinds = {"Sigmoid": ("sigmoid", {}), "Tanh": ("tanh", {}), "HardSwish": ("hardswish", {}), "Mish": ("mish", {}),
             "HardSigmoid": ("hardsigmoid", {"alpha": float(a.get("alpha", 0.2)), "beta": float(a.get("beta", 0.5))}),
             "Elu": ("elu", {"alpha": float(a.get("alpha", 1.0))}), "Softplus": ("softplus", {"beta": 1.0}),
             "Celu": ("celu", {"alpha": float(a.get("alpha", 1.0))}),
             "Selu": ("selu", {"alpha": float(a.get("alpha", SELU_ALPHA)), "gamma": float(a.get("gamma", SELU_GAMMA))}),
             "Gelu": ("gelu_tanh" if a.get("approximate", "none") == "tanh" else "gelu", {})}
    if node.op in kinds:
        return activation_fn(*kinds[node.op])
    if node.op == "Pow":   # x ** e, e a constant scalar (op_Pow): the x**3 of a decomposed tanh-GELU
        e = float(np.asarray(const_value(node.inputs[1])).reshape(()))
        return lambda x: float(np.power(np.float64(x), e))
    return {"Erf": math.erf, "Neg": lambda x: -x, "Abs": abs}.get(node.op)


def _average_pool_keeps_constants(node) -> bool:
    """An AveragePool whose windows average input values only (count_include_pad=0, or no padding and no ceil_mode):
    a constant channel stays that constant, as through GlobalAveragePool (the exporters write adaptive_avg_pool2d(4)
    as one; it stopped the constant, so torch removed channels the ONNX export kept)."""
    a = node.attrs
    mode = a.get("auto_pad", "NOTSET")
    if (mode.decode() if isinstance(mode, bytes) else str(mode)) not in ("NOTSET", "VALID"):
        return bool(not int(a.get("count_include_pad", 0)))
    return avg_pool_keeps_constants(list(a.get("pads", [0])), bool(int(a.get("ceil_mode", 0))),
                                    bool(int(a.get("count_include_pad", 0))))


def infer_shapes(graph: gs.Graph) -> dict[str, list]:
    """tensor name -> static shape list (ints or None), from ONNX shape inference on the current graph."""
    from ..onnx.shapes import inferred_types

    model = gs.export_onnx(graph, do_type_check=False)
    types = inferred_types(model)   # shape inference without sending the weights through it
    infos = list(types.values()) if types is not None else list(model.graph.value_info) + list(model.graph.output)
    out = {}
    for vi in list(model.graph.input) + infos:
        tt = vi.type.tensor_type
        if tt.HasField("shape"):
            out[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
    for init in model.graph.initializer:
        out[init.name] = list(init.dims)
    return out



def _concat_entries(cat, read):
    """The sizes a shape-building Concat(axis 0) lists, one (value, concat input index, position in it) per size:
    constant inputs give their numbers, any other input goes to read(tensor, index), which returns its entries or
    False for a pattern it does not understand. False when `cat` is no axis-0 Concat or read refused an input.
    The dynamic-batch Reshape and Expand targets of both exporters are read this way (op_Reshape, op_Expand)."""
    if cat is None or cat.op != "Concat" or int(cat.attrs.get("axis", 0)) != 0:
        return False
    entries = []
    for j, t in enumerate(cat.inputs):
        c = const_value(t)
        if c is not None:
            entries += [(int(v), j, k) for k, v in enumerate(np.asarray(c).reshape(-1))]
            continue
        more = read(t, j)
        if more is False:
            return False
        entries += more
    return entries

class _Builder(SlotBuilder):
    VALUE_KIND = "tensor"

    def __init__(self, graph: gs.Graph):
        super().__init__()
        self.g = graph
        self.shapes = infer_shapes(graph)
        # a Conv's auto_pad is read as the explicit pads of its input's size (linear_ops.conv_pads), from the shape on
        # the tensor: a file without value_info (tf2onnx's auto_pad=SAME_UPPER convs) froze every such conv, and a
        # ratio prune of it removed nothing. Inner shapes are re-inferred after a removal (apply_removal).
        for n in graph.nodes:
            x = n.inputs[0] if n.op == "Conv" and n.inputs else None
            s = None if x is None or x.shape is not None else self.shapes.get(x.name)
            if s and all(isinstance(d, int) and d > 0 for d in s):
                x.shape = list(s)
        self.skip: set = set()
        self.inputs = {t.name for t in graph.inputs}

    # -- what SlotBuilder reads -------------------------------------------------------------------
    def shape(self, t):
        s = self.shapes.get(t.name)
        return None if s is None else list(s)

    def rank(self, t):
        s = self.shape(t)
        return None if s is None else len(s)

    def op_type(self, node) -> str:
        return node.op

    def origin(self, t) -> str:
        return "graph input" if t.name in self.inputs else \
            f"produced by {t.inputs[0].op if t.inputs else 'nothing'} (not tracked)"

    def slotted(self, node) -> list:
        return [self.slot_of.get(t.name) for t in node.inputs]

    # -- walk -------------------------------------------------------------------------------------
    def build(self) -> ChannelGraph:
        toposort(self.g)
        for node in self.g.nodes:
            if id(node) in self.skip:
                continue
            try:
                self.visit(node)
            except (TypeError, ValueError, IndexError, KeyError, ZeroDivisionError) as exc:
                # a shape or attribute this builder did not expect: not understood, so frozen (never guessed)
                self.unknown(node, f"could not analyse ({type(exc).__name__}: {' '.join(str(exc).split())[:80]})")
        self.resolve_counts()
        for t in self.g.outputs:
            if t.name in self.slot_of:
                self.cg.freeze(self.slot_of[t.name], t.name, "tensor", "graph output")
        # an If / Loop / Scan body reads outer tensors by name, not as inputs of its node: the walk above
        # never sees that reader, so those channels are frozen (a pruned one would break the body)
        top = {id(n) for n in self.g.nodes}
        tensors = self.g.tensors()
        for name, slot in list(self.slot_of.items()):
            t = tensors.get(name)
            if t is not None and any(id(c) not in top for c in t.outputs):
                self.cg.freeze(slot, name, "tensor", "read inside a subgraph (If / Loop / Scan body)")
        return self.cg

    def visit(self, node):
        op = node.op
        if (node.domain or "") not in ("", "ai.onnx"):
            return self.unknown(node, f"custom domain {node.domain}")
        ins = self.slotted(node)
        if op in ("Conv",):
            return self.conv(node)
        if op == "ConvTranspose":
            return self.conv_transpose(node)
        if op in ("Gemm", "MatMul"):
            return self.dense(node)
        if not any(s is not None for s in ins):
            return  # shape arithmetic, constants: no channel flows through
        fn = getattr(self, "op_" + op, None)
        if fn is not None:
            return fn(node)
        if op in UNARY or op in POOLS:
            return self.unary(node)
        if op in BINARY:
            return self.binary(node)
        if op in REDUCE:
            return self.reduce(node)
        return self.unknown(node, "op not understood by the channel graph")

    def conv(self, node):
        v = ConvView.of(node)
        if v is None:
            return self.unknown(node, "conv with dynamic weights, or auto_pad on an input of unknown size")
        p = v.params
        sin = self.get_slot(node.inputs[0], 1, node)
        sout = self.new_slot(node.outputs[0], 1)
        if sin is None or sout is None:
            return self.cg.freeze_op(node.name, "Conv", [sin, sout], "unknown shapes")
        self.cg.conv_groups(node.name, "Conv", sin, sout, p)
        xs = self.shape(node.inputs[0])
        spatial = tuple(xs[2:]) if xs and all(isinstance(d, int) and d > 0 for d in xs[2:]) else None
        self.record(node, "conv", [sin], [sout], params=p, input_spatial=spatial, view=v)

    def conv_transpose(self, node):
        """ConvTranspose with constant weight (I, O/group, *k) and bias: sliced like a conv, grouped ones with
        equal groups (ChannelGraph.conv_groups). It writes constants (a zero filter) but absorbs none."""
        w = const_value(node.inputs[1]) if len(node.inputs) > 1 else None
        b = const_value(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2].name else None
        if w is None or (len(node.inputs) > 2 and node.inputs[2].name and b is None):
            return self.unknown(node, "conv-transpose with dynamic weights")
        p = prune_alg.ConvTransposeParams(np.asarray(w), None if b is None else np.asarray(b),
                                          int(node.attrs.get("group", 1)))
        sin = self.get_slot(node.inputs[0], 1, node)
        sout = self.new_slot(node.outputs[0], 1)
        if sin is None or sout is None or self.cg.size(sin) != p.in_channels or self.cg.size(sout) != p.out_channels:
            return self.cg.freeze_op(node.name, node.op, [sin, sout], "unknown shapes")
        self.cg.conv_groups(node.name, node.op, sin, sout, p)
        self.record(node, "convt", [sin], [sout], params=p)

    def dense(self, node):
        v = DenseView.of(node, {t.name for t in self.g.outputs})
        if v is None:
            if any(s is not None for s in self.slotted(node)):
                return self.unknown(node, "matmul with a non-constant or transposed operand")
            return
        r = self.rank(node.inputs[0])
        sin = self.get_slot(node.inputs[0], r - 1, node) if r else None
        out = v.output
        ro = self.rank(out)
        sout = self.new_slot(out, ro - 1) if ro else None
        if sin is None or sout is None:
            return self.cg.freeze_op(node.name, node.op, [sin, sout], "unknown shapes")
        if v.bias_add is not None:
            self.skip.add(id(v.bias_add))
        self.record(node, "dense", [sin], [sout], params=v.params, view=v)

    def op_BatchNormalization(self, node):
        sin = self.get_slot(node.inputs[0], 1, node)
        vals = [const_value(t) for t in node.inputs[1:5]]
        if sin is None or any(v is None for v in vals) or int(node.attrs.get("training_mode", 0)):
            return self.unknown(node, "batchnorm with dynamic parameters or in training mode")
        sout = self.new_slot(node.outputs[0], 1)
        self.cg.couple(sin, sout)
        scale, shift = bn_to_affine(*[np.asarray(v, np.float64) for v in vals], eps=float(node.attrs.get("epsilon", 1e-5)))
        self.record(node, "bn", [sin], [sout], scale=np.asarray(scale, np.float64), shift=np.asarray(shift, np.float64))

    def unary(self, node):
        src = self.slot_of.get(node.inputs[0].name)
        if src is None or any(s is not None for s in self.slotted(node)[1:]):
            return self.unknown(node, "channel tensor in a parameter position")
        if node.op in POOLS and src[1] != 1:
            return self.unknown(node, "pooling over the channel axis")
        if node.op == "Clip" and any(t.name and const_value(t) is None for t in node.inputs[1:]):
            return self.unknown(node, "clip with dynamic bounds")
        sout = self.new_slot(node.outputs[0], src[1])
        if sout is None:
            return self.unknown(node, "unknown output shape")
        self.cg.couple(src, sout)
        n = self.cg.size(src)
        if node.op == "Relu":
            self.record(node, "relu", [src], [sout])
        elif node.op == "LeakyRelu":
            self.record(node, "leaky_relu", [src], [sout], alpha=float(node.attrs.get("alpha", 0.01)))
        elif node.op == "Clip":
            lo, hi = node.attrs.get("min"), node.attrs.get("max")
            if len(node.inputs) > 1 and node.inputs[1].name:
                lo = float(np.asarray(const_value(node.inputs[1])).reshape(()))
            if len(node.inputs) > 2 and node.inputs[2].name:
                hi = float(np.asarray(const_value(node.inputs[2])).reshape(()))
            self.record(node, "clip", [src], [sout], lo=lo, hi=hi)
        elif node.op in CONST_PRESERVING or node.op == "AveragePool" and _average_pool_keeps_constants(node):
            self.record(node, "index", [src], [sout], src=[(np.zeros(n, int), np.arange(n))])
        elif scalar_fn(node) is not None:   # a constant channel stays constant: f(c)
            self.record(node, "fn", [src], [sout], fn=scalar_fn(node))
        else:
            self.record(node, "other", [src], [sout])

    def op_Max(self, node):
        """Max(x, c) / Min(x, c) by a constant scalar: a clip from below / above (torch.export's spelling of
        x.clamp(min=0), a ReLU; not understood, it froze every group it touched)."""
        cs = [const_value(t) for t in node.inputs]
        if len(node.inputs) != 2 or sum(c is not None for c in cs) != 1 or np.size(next(c for c in cs if c is not None)) != 1:
            return self.unknown(node, f"{node.op.lower()} of two tensors or by a non-scalar constant")
        k = 0 if cs[0] is None else 1
        src = self.slot_of.get(node.inputs[k].name)
        sout = self.new_slot(node.outputs[0], src[1]) if src is not None else None
        if sout is None or self.cg.size(sout) != self.cg.size(src):
            return self.unknown(node, "unknown output shape")
        self.cg.couple(src, sout)
        c = float(np.asarray(cs[1 - k], np.float64).reshape(()))
        self.record(node, "clip", [src], [sout], lo=c if node.op == "Max" else None, hi=c if node.op == "Min" else None)

    op_Min = op_Max

    def op_Pow(self, node):
        """Pow by a constant scalar is elementwise (the torch.export-based exporter writes tanh-GELU with x**3;
        not understood, it froze the hidden axis of every such MLP)."""
        e = const_value(node.inputs[1]) if len(node.inputs) > 1 else None
        if e is None or np.size(e) != 1:
            return self.unknown(node, "pow with a dynamic or non-scalar exponent")
        return self.unary(node)

    def op_PRelu(self, node):
        """PRelu with a constant slope: elementwise on the channel, its per-channel slope sliced with the channels
        (MobileNet / Layer Folding models have one after every conv; not understood, it froze all their groups)."""
        src = self.slot_of.get(node.inputs[0].name)
        slope = const_value(node.inputs[1]) if len(node.inputs) > 1 else None
        r = self.rank(node.inputs[0])
        if src is None or self.slotted(node)[1] is not None or slope is None or r is None or np.ndim(slope) > r:
            return self.unknown(node, "prelu with a dynamic slope or of unknown rank")
        ax, C = src[1], self.cg.size(src)
        slope = np.asarray(slope, np.float64)
        shp = (1,) * (r - slope.ndim) + tuple(slope.shape)
        if shp[ax] not in (1, C):
            return self.unknown(node, "prelu slope does not broadcast on the channel axis")
        sout = self.new_slot(node.outputs[0], ax)
        if sout is None:
            return self.unknown(node, "unknown output shape")
        self.cg.couple(src, sout)
        cv = np.moveaxis(slope.reshape(shp), ax, 0).reshape(shp[ax], -1)
        per_channel = np.broadcast_to(cv[:, 0], (C,)).copy() if np.all(cv == cv[:, :1]) else None
        a = ax - (r - slope.ndim)
        self.record(node, "prelu", [src], [sout], slope=per_channel,
                    slice_axis=a if shp[ax] == C and C > 1 and a >= 0 else None)

    def binary(self, node):
        out = node.outputs[0]
        ro = self.rank(out)
        got = self.binary_output(node, out, [(s, self.rank(t)) for t, s in zip(node.inputs, self.slotted(node))], ro)
        if got is None:
            return None
        ax, sout, C = got
        ins, consts, slice_axes = [], [], []
        for t, s in zip(node.inputs, self.slotted(node)):
            r = self.rank(t) if const_value(t) is None else np.ndim(const_value(t))
            if r is None:
                return self.unknown(node, "operand of unknown rank")
            a = ax - (ro - r)
            c = const_value(t)
            if c is not None:
                ins.append(None)
                shp = (1,) * (ro - c.ndim) + tuple(c.shape)
                if shp[ax] not in (1, C):
                    return self.unknown(node, "constant operand does not broadcast on the channel axis")
                slice_axes.append(a if shp[ax] == C and a >= 0 else None)
                cv = np.moveaxis(np.broadcast_to(np.asarray(c, np.float64).reshape(shp), shp), ax, 0).reshape(shp[ax], -1)
                consts.append(np.broadcast_to(cv[:, 0], (C,)).copy() if np.all(cv == cv[:, :1]) else None)
                continue
            dims = self.shape(t)
            if a < 0 or dims is None or dims[a] == 1:
                if s is not None:
                    return self.unknown(node, "channel tensor broadcast against another")
                ins.append(None)
                consts.append(None)
                slice_axes.append(None)
                if a >= 0 and dims is None:
                    return self.unknown(node, "operand of unknown shape")
                continue
            s = s or self.get_slot(t, a, node)
            if s is None:
                return self.unknown(node, "operand without channel slot")
            self.cg.couple(s, sout)
            ins.append(s)
            consts.append(None)
            slice_axes.append(None)
        self.record(node, "binary", ins, [sout], fn=BINARY[node.op], consts=consts, slice_axes=slice_axes)

    def op_Concat(self, node):
        out = node.outputs[0]
        ro = self.rank(out)
        if ro is None:
            return self.unknown(node, "unknown output rank")
        axis = int(node.attrs.get("axis")) % ro
        present = [s for s in self.slotted(node) if s is not None]
        if axis in {s[1] for s in present}:
            sout = self.new_slot(out, axis)
            ins = [self.get_slot(t, axis, node) for t in node.inputs]
            if sout is None or any(s is None for s in ins):
                return self.unknown(node, "concat input of unknown shape")
            if sum(self.cg.size(s) for s in ins) != self.cg.size(sout):
                return self.unknown(node, "concat sizes do not add up")
            return self.record(node, "index", ins, [sout], src=[self.cg.couple_concat(ins, sout)])
        ch = {s[1] for s in present}
        if len(ch) != 1:
            return self.unknown(node, "concat inputs carry channels on different axes")
        a = ch.pop()
        sout = self.new_slot(out, a)
        ins = []
        for t in node.inputs:
            s = self.get_slot(t, a, node)
            if s is None or sout is None:
                return self.unknown(node, "concat input of unknown shape")
            self.cg.couple(s, sout)
            ins.append(s)
        self.record(node, "other", ins, [sout])

    def op_Split(self, node):
        src = self.slot_of.get(node.inputs[0].name)
        r = self.rank(node.inputs[0])
        axis = int(node.attrs.get("axis", 0)) % r
        n = self.cg.size(src)
        outs = []
        if axis != src[1]:
            for t in node.outputs:
                s = self.new_slot(t, src[1])
                if s is None:
                    return self.unknown(node, "unknown output shape")
                self.cg.couple(src, s)
                outs.append(s)
            return self.record(node, "index", [src], outs, src=[(np.zeros(n, int), np.arange(n))] * len(outs))
        srcs, off = [], 0
        for t in node.outputs:
            s = self.new_slot(t, axis)
            if s is None:
                return self.unknown(node, "unknown output shape")
            m = self.cg.size(s)
            self.cg.couple(src, s, off + np.arange(m), np.arange(m))
            srcs.append((np.zeros(m, int), off + np.arange(m)))
            outs.append(s)
            off += m
        if off != n:
            return self.unknown(node, "split sizes do not add up")
        self.record(node, "index", [src], outs, src=srcs, split_axis=axis)

    def op_Slice(self, node):
        src = self.slot_of.get(node.inputs[0].name)
        if any(s is not None for s in self.slotted(node)[1:]):
            return self.unknown(node, "channel tensor as slice bounds")
        vals = [const_value(t) if t.name else None for t in node.inputs[1:]]
        if len(vals) < 2 or vals[0] is None or vals[1] is None or any(
                node.inputs[k + 1].name and v is None for k, v in enumerate(vals)):
            return self.unknown(node, "slice with dynamic bounds")
        r = self.rank(node.inputs[0])
        starts, ends = vals[0].tolist(), vals[1].tolist()
        axes = [a % r for a in (vals[2].tolist() if len(vals) > 2 and vals[2] is not None else range(len(starts)))]
        steps = vals[3].tolist() if len(vals) > 3 and vals[3] is not None else [1] * len(starts)
        n = self.cg.size(src)
        if src[1] not in axes:
            sout = self.new_slot(node.outputs[0], src[1])
            if sout is None:
                return self.unknown(node, "unknown output shape")
            self.cg.couple(src, sout)
            return self.record(node, "index", [src], [sout], src=[(np.zeros(n, int), np.arange(n))])
        k = axes.index(src[1])
        if steps[k] != 1:
            return self.unknown(node, "strided slice of the channel axis")
        lo, hi, _ = slice(int(starts[k]), int(ends[k])).indices(n)
        sout = self.new_slot(node.outputs[0], src[1])
        if sout is None or self.cg.size(sout) != max(hi - lo, 0):
            return self.unknown(node, "unknown output shape")
        m = self.cg.size(sout)
        self.cg.couple(src, sout, lo + np.arange(m), np.arange(m))
        self.record(node, "index", [src], [sout], src=[(np.zeros(m, int), lo + np.arange(m))], slice_k=k, lo=lo)

    def _flatten_like(self, node, src, out_axis_dims_ok: bool):
        """Channel axis src[1] merged with all trailing axes into the output's last axis."""
        xs = self.shape(node.inputs[0])
        if xs is None or any(not isinstance(d, int) or d <= 0 for d in xs[src[1] + 1:]):
            return None
        inner = int(np.prod(xs[src[1] + 1:], dtype=np.int64))
        sout = self.new_slot(node.outputs[0], src[1])
        n = self.cg.size(src)
        if sout is None or self.cg.size(sout) != n * inner:
            return None
        feats = np.arange(n * inner)
        self.cg.couple(src, sout, feats // inner, feats)
        return sout, inner, feats

    def op_Flatten(self, node):
        src = self.slot_of.get(node.inputs[0].name)
        r = self.rank(node.inputs[0])
        axis = int(node.attrs.get("axis", 1)) % r if r else None
        if axis != src[1]:
            return self.unknown(node, "flatten that does not start at the channel axis")
        res = self._flatten_like(node, src, True)
        if res is None:
            return self.unknown(node, "flatten of unknown shape")
        sout, inner, feats = res
        self.record(node, "index", [src], [sout], src=[(np.zeros(feats.size, int), feats // inner)])

    def _dynamic_reshape(self, node, src):
        """Reshape(x, Concat(Unsqueeze(Gather(Shape(t), i)) for i < a, [size at a], [sizes after a])), as the
        TorchScript exporter writes x.view(x.size(0), -1) and the SE reference code's y.view(b, c) / view(b, c, 1, 1)
        for a dynamic batch (b read from another tensor of the block, `b, c, _, _ = x.size()`; its c is folded to a
        number). Either a flatten of the channel axis (size at a: -1 or C*inner, nothing after) or a reshape after it
        (size at a: C, numbers after it whose product is the inner size). Returns (flat, piece, output shape): piece is
        the Concat input and position holding the size at a when it is a number (the rewrite sets it), else None;
        False when the target shape is anything else. The leading sizes are the input's (the element count fixes
        them when there is one: the batch); before 2026-11-29 only Shape(x) of the input itself and the flatten were
        understood, so every SE gate of a dynamic-batch export froze its group."""
        xs = self.shape(node.inputs[0])
        a = src[1]
        if xs is None or any(c.op != "Reshape" or c.inputs[0] is not node.inputs[0] for c in node.inputs[1].outputs):
            return False   # the shape is read elsewhere too: its size entry can't be rewritten for this reshape

        def read(t, j):   # Unsqueeze(Gather(Shape(t), i)): ("dim", i, read from the input itself)
            u = t.inputs[0] if t.inputs else None
            g = u.inputs[0].inputs[0] if u is not None and u.op == "Unsqueeze" and u.inputs[0].inputs else None
            sh = g.inputs[0].inputs[0] if g is not None and g.op == "Gather" and g.inputs[0].inputs else None
            idx = const_value(g.inputs[1]) if g is not None else None
            if sh is None or sh.op != "Shape" or idx is None or np.size(idx) != 1 \
                    or int(sh.attrs.get("start", 0)) != 0 or int(g.attrs.get("axis", 0)) != 0:
                return False
            t_slot, t_rank = self.slot_of.get(sh.inputs[0].name), self.rank(sh.inputs[0])
            i = int(np.asarray(idx).reshape(()))
            if t_rank is None or t_slot is not None and i % t_rank == t_slot[1]:
                return False   # a channel count read at run time (not folded): not this pattern
            return [(("dim", i % t_rank, sh.inputs[0] is node.inputs[0]), j, 0)]

        cat = node.inputs[1].inputs[0] if node.inputs[1].inputs else None
        entries = _concat_entries(cat, read)
        if entries is False:
            return False
        if any(not isinstance(d, int) or d <= 0 for d in xs[a + 1:]) or len(entries) <= a:
            return False
        inner = int(np.prod(xs[a + 1:], dtype=np.int64))
        n = self.cg.size(src)
        lead_ok = all((isinstance(e, tuple) and e[1] == i and (e[2] or a == 1)) or (isinstance(xs[i], int) and e == xs[i])
                      for i, (e, _, _) in enumerate(entries[:a]))
        rest = [e for e, _, _ in entries[a + 1:]]
        at = entries[a][0]
        flat = len(entries) == a + 1 and at in (-1, n * inner)
        keep = at == n and all(isinstance(e, int) and e > 0 for e in rest) and int(np.prod(rest, dtype=np.int64)) == inner
        if not lead_ok or not (flat or keep):
            return False
        piece = None if at == -1 else (cat, entries[a][1], entries[a][2])
        return flat, piece, list(xs[:a]) + ([n * inner] if flat else [n] + rest)

    def op_Reshape(self, node):
        src = self.slot_of.get(node.inputs[0].name)
        shape_c = const_value(node.inputs[1])
        xs, ys = self.shape(node.inputs[0]), self.shape(node.outputs[0])
        if shape_c is None and xs is not None and self.slotted(node)[1] is None:
            got = self._dynamic_reshape(node, src)
            if got is not False:
                a = src[1]
                flat, piece, shape = got
                self.shapes[node.outputs[0].name] = shape   # inference leaves the -1 / the read sizes unknown
                if not flat:
                    sout = self.new_slot(node.outputs[0], a)
                    if sout is None:
                        return self.unknown(node, "reshape of unknown shape")
                    self.cg.couple(src, sout)
                    n = self.cg.size(src)
                    return self.record(node, "index", [src], [sout], src=[(np.zeros(n, int), np.arange(n))],
                                       reshape_axis=a, inner=1, shape_piece=piece)
                res = self._flatten_like(node, src, True)
                if res is None:
                    return self.unknown(node, "reshape of unknown shape")
                sout, inner, feats = res
                return self.record(node, "index", [src], [sout], src=[(np.zeros(feats.size, int), feats // inner)],
                                   reshape_axis=a, inner=inner, shape_piece=piece)
        if shape_c is None or xs is None or ys is None or self.slotted(node)[1] is not None:
            return self.unknown(node, "reshape with a dynamic target shape")
        a = src[1]
        if len(ys) == a + 1 and ys[:a] == xs[:a]:  # flatten of the channel axis and everything after it
            res = self._flatten_like(node, src, True)
            if res is None:
                return self.unknown(node, "reshape of unknown shape")
            sout, inner, feats = res
            return self.record(node, "index", [src], [sout], src=[(np.zeros(feats.size, int), feats // inner)],
                               reshape_axis=a, inner=inner)
        if len(ys) > a and ys[:a + 1] == xs[:a + 1] and shape_c.size > a and int(shape_c[a]) in (0, xs[a]):
            sout = self.new_slot(node.outputs[0], a)
            n = self.cg.size(src)
            self.cg.couple(src, sout)
            return self.record(node, "index", [src], [sout], src=[(np.zeros(n, int), np.arange(n))],
                               reshape_axis=a, inner=1)
        return self.unknown(node, "reshape that splits or moves the channel axis")

    def _axes(self, node):
        axes = node.attrs.get("axes")
        if axes is None and len(node.inputs) > 1 and node.inputs[1].name:
            axes = const_value(node.inputs[1])
            if axes is None:
                return None
        return None if axes is None else [int(a) for a in np.asarray(axes).reshape(-1)]

    def op_Unsqueeze(self, node):
        """Unsqueeze / Squeeze of other axes move the channel axis, its channels stay (the torch.export-based
        exporter writes adaptive_avg_pool1d as Unsqueeze, AveragePool, Squeeze; not understood, it froze the group
        its TorchScript export, one AveragePool, prunes)."""
        src = self.slot_of.get(node.inputs[0].name)
        r = self.rank(node.inputs[0])
        axes = self._axes(node)
        if axes is None or r is None or self.slotted(node)[1:] != [None] * (len(node.inputs) - 1):
            return self.unknown(node, "unsqueeze with dynamic axes or of unknown rank")
        ro = r + len(axes)
        inserted = {a % ro for a in axes}
        return self.moved(node, node.outputs[0], src, [i for i in range(ro) if i not in inserted][src[1]])

    def op_Squeeze(self, node):
        src = self.slot_of.get(node.inputs[0].name)
        xs = self.shape(node.inputs[0])
        axes = self._axes(node)
        if xs is None or self.slotted(node)[1:] != [None] * (len(node.inputs) - 1):
            return self.unknown(node, "squeeze with dynamic axes or of unknown shape")
        if axes is None:   # every axis of size 1 (their sizes must be known)
            if any(not isinstance(d, int) for d in xs):
                return self.unknown(node, "squeeze of all unit axes of a tensor of unknown shape")
            axes = [i for i, d in enumerate(xs) if d == 1]
        axes = {a % len(xs) for a in axes}
        if src[1] in axes:
            return self.unknown(node, "squeezes the channel axis")
        return self.moved(node, node.outputs[0], src, src[1] - sum(1 for a in axes if a < src[1]))

    def op_Transpose(self, node):
        src = self.slot_of.get(node.inputs[0].name)
        r = self.rank(node.inputs[0])
        perm = list(node.attrs.get("perm", list(range(r))[::-1]))
        sout = self.new_slot(node.outputs[0], perm.index(src[1]))
        if sout is None:
            return self.unknown(node, "unknown output shape")
        self.cg.couple(src, sout)
        n = self.cg.size(src)
        self.record(node, "index", [src], [sout], src=[(np.zeros(n, int), np.arange(n))])

    def op_Pad(self, node):
        src = self.slot_of.get(node.inputs[0].name)
        pads = const_value(node.inputs[1]) if len(node.inputs) > 1 else None
        r = self.rank(node.inputs[0])
        if pads is None or r is None or len(node.inputs) > 3 and node.inputs[3].name:
            return self.unknown(node, "pad with dynamic pads or axes")
        if pads[src[1]] or pads[src[1] + r]:
            return self.unknown(node, "pads the channel axis")
        self.unary(node)

    def op_Resize(self, node):
        src = self.slot_of.get(node.inputs[0].name)
        sizes = const_value(node.inputs[3]) if len(node.inputs) > 3 and node.inputs[3].name else None
        if len(node.inputs) > 3 and node.inputs[3].name:
            return self.unknown(node, "resize with explicit sizes (the channel count is in them)")
        scales = const_value(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2].name else None
        if scales is None or sizes is not None or float(scales[src[1]]) != 1.0:
            return self.unknown(node, "resize with dynamic scales or scaling the channel axis")
        sout = self.new_slot(node.outputs[0], src[1])
        self.cg.couple(src, sout)
        self.record(node, "other", [src], [sout])

    def reduce(self, node):
        src = self.slot_of.get(node.inputs[0].name)
        r = self.rank(node.inputs[0])
        axes = node.attrs.get("axes")
        if axes is None and len(node.inputs) > 1 and node.inputs[1].name:
            axes = const_value(node.inputs[1])
            if axes is None:
                return self.unknown(node, "reduce over dynamic axes")
        if axes is None:
            return self.unknown(node, "reduce over all axes (includes the channel axis)")
        axes = sorted(int(a) % r for a in np.asarray(axes).reshape(-1))
        if src[1] in axes:
            return self.unknown(node, "reduces over the channel axis")
        keep = int(node.attrs.get("keepdims", 1))
        a = src[1] if keep else src[1] - sum(1 for x in axes if x < src[1])
        sout = self.new_slot(node.outputs[0], a)
        if sout is None:
            return self.unknown(node, "unknown output shape")
        self.cg.couple(src, sout)
        n = self.cg.size(src)
        if node.op in ("ReduceMean", "ReduceMax", "ReduceMin"):
            self.record(node, "index", [src], [sout], src=[(np.zeros(n, int), np.arange(n))])
        else:
            self.record(node, "other", [src], [sout])

    def op_Shape(self, node):
        """Only the batch/spatial sizes may be read (x.view(x.size(0), -1)), or the whole shape as the target of an
        Expand of the same group (`y.expand_as(x)`: a count read, builder.read_count); reading the channel count
        otherwise freezes."""
        src = self.slot_of.get(node.inputs[0].name)
        whole = "start" not in node.attrs and "end" not in node.attrs
        r = self.rank(node.inputs[0])
        if not whole and r:   # Shape(x, start, end) of other axes (torch.export's batch size): no channel count read
            lo, hi, _ = slice(int(node.attrs.get("start", 0)), node.attrs.get("end"), None).indices(r)
            if not lo <= src[1] < hi:
                return None
        expands = [c for c in node.outputs[0].outputs if c.op == "Expand" and whole and c.inputs[1] is node.outputs[0]
                   and c.inputs[0] is not node.outputs[0]]
        ok = all(c in expands or c.op == "Gather" and const_value(c.inputs[1]) is not None
                 and src[1] not in np.asarray(const_value(c.inputs[1])).reshape(-1).tolist()
                 and int(node.attrs.get("start", 0)) == 0
                 for c in node.outputs[0].outputs)
        if not ok:
            return self.unknown(node, "reads the tensor's shape (the channel count would change)")
        if expands:
            self.read_count(src, node, node.name, [c.name for c in expands])

    def _expand_piece(self, shape_t, ro: int, a: int, n: int):
        """An Expand target Concat(sizes read from Shape(t) of other axes, numbers) with 1 or n at a (torch.export's
        expand_as for a dynamic batch: Concat(Shape(input, 0, 1), [C], [H], [W])): the Concat input and position of
        a's number when it is n (the rewrite sets it), None when 1; False for anything else."""
        if len(shape_t.outputs) != 1:
            return False

        def read(t, j):   # Shape(t, start, end) of axes other than t's channel axis: one None entry per size
            p = t.inputs[0] if t.inputs else None
            if p is None or p.op != "Shape" or "end" not in p.attrs or self.rank(p.inputs[0]) is None:
                return False
            lo, hi, _ = slice(int(p.attrs.get("start", 0)), int(p.attrs["end"]), None).indices(self.rank(p.inputs[0]))
            ps = self.slot_of.get(p.inputs[0].name)
            if ps is not None and lo <= ps[1] < hi:
                return False
            return [(None, j, k) for k in range(max(hi - lo, 0))]

        cat = shape_t.inputs[0] if shape_t.inputs else None
        entries = _concat_entries(cat, read)
        if entries is False:
            return False
        k = a - (ro - len(entries))
        if k < 0 or len(entries) > ro or entries[k][0] not in (1, n):
            return False
        return None if entries[k][0] == 1 or n == 1 else (cat, entries[k][1], entries[k][2])

    def op_Expand(self, node):
        """Expand(y, shape) with y's channel axis whole (the SE reference code's `y.expand_as(x)`, y (N, C, 1, 1)):
        the output's channels are y's. The shape is a constant (its channel entry, when not 1, is rewritten with the
        kept count) or Shape(x) of a value on the same axis, which is then coupled too (x's count sizes the output).
        Not understood before 2026-11-29: it froze the SE block's group on both exporters."""
        src = self.slot_of.get(node.inputs[0].name)
        ry, ro = self.rank(node.inputs[0]), self.rank(node.outputs[0])
        if src is None or ry is None or ro is None or self.slotted(node)[1] is not None:
            return self.unknown(node, "expand of an untracked value or of unknown rank")
        a, n = src[1] + ro - ry, self.cg.size(src)
        os_ = self.shape(node.outputs[0])
        if os_ is None or os_[a] != n:
            return self.unknown(node, "expands the channel axis")
        target = const_value(node.inputs[1])
        sh = node.inputs[1].inputs[0] if target is None and node.inputs[1].inputs else None
        other = None
        if target is not None:
            target = np.asarray(target).reshape(-1)
            k = a - (ro - target.size)
            if k >= 0 and int(target[k]) not in (1, n):
                return self.unknown(node, "expands the channel axis")
            entry = k if k >= 0 and int(target[k]) == n and n != 1 else None
        elif sh is not None and sh.op == "Shape" and "start" not in sh.attrs and "end" not in sh.attrs \
                and self.rank(sh.inputs[0]) == ro:
            other = self.get_slot(sh.inputs[0], a, node)
            if other is None:
                return self.unknown(node, "expand to the shape of a value without channels on that axis")
            entry = None
        else:
            entry = self._expand_piece(node.inputs[1], ro, a, n)
            if entry is False:
                return self.unknown(node, "expand to a computed shape")
        sout = self.new_slot(node.outputs[0], a)
        if sout is None:
            return self.unknown(node, "unknown output shape")
        self.cg.couple(src, sout)
        if other is not None:
            self.cg.couple(other, sout)
            self.use_count(sh.name, node.name, src)
        self.record(node, "index", [src] + ([other] if other is not None else []), [sout],
                    src=[(np.zeros(n, int), np.arange(n))], expand_entry=entry)

    def op_LayerNormalization(self, node):
        src = self.slot_of.get(node.inputs[0].name)
        r = self.rank(node.inputs[0])
        axis = int(node.attrs.get("axis", -1)) % r
        if src[1] >= axis:
            return self.unknown(node, "normalises over the channel axis (statistics would change)")
        return self.unknown(node, "layer norm")


def build_channel_graph(graph: gs.Graph) -> ChannelGraph:
    return _Builder(graph).build()


# ------------------------------------------------------------------------------------------ rewrite

def apply_removal(graph: gs.Graph, cg: ChannelGraph, removed, folds=()) -> dict:
    """Remove units (gid, k) from the graph in place; fold constants (op, slot, channel, value) into readers.

    Returns {"bias_maps": [...op names that got a per-position bias map]}.
    """
    keep = cg.keep_sets(removed)
    info = {"bias_maps": []}
    for edit in removal_edits(cg, removed, folds):
        rec, k_in, k_out = edit.rec, edit.k_in, edit.k_out
        node = rec.data["node"]
        if rec.kind in ("conv", "dense"):
            rec.data["view"].write(graph, edit.params)
            if edit.bias_map is not None:
                _add_bias_map(graph, node, edit.bias_map)
                info["bias_maps"].append(rec.name)
        elif rec.kind == "convt":
            dtype = const_value(node.inputs[1]).dtype
            node.inputs[1] = make_const(graph, f"{node.name}.weight", edit.params.weight.astype(dtype))
            if edit.params.bias is not None:
                node.inputs[2] = make_const(graph, f"{node.name}.bias", edit.params.bias.astype(dtype))
        elif rec.kind == "bn":
            for j in range(1, 5):
                v = const_value(node.inputs[j])
                node.inputs[j] = make_const(graph, f"{node.name}.p{j}", prune_alg.slice_vector(v, k_in))
        elif rec.kind == "prelu":
            ax = rec.data["slice_axis"]
            if ax is not None and k_out is not None:
                c = const_value(node.inputs[1])
                node.inputs[1] = make_const(graph, f"{node.name}.slope", np.take(c, k_out, axis=ax))
        elif rec.kind == "binary":
            for j, ax in enumerate(rec.data["slice_axes"]):
                if ax is None or k_out is None:
                    continue
                c = const_value(node.inputs[j])
                node.inputs[j] = make_const(graph, f"{node.name}.c{j}", np.take(c, k_out, axis=ax))
        elif node.op == "Split" and "split_axis" in rec.data:
            sizes = np.array([len(keep[s]) if s in keep else cg.size(s) for s in rec.outs], dtype=np.int64)
            if len(node.inputs) > 1 and node.inputs[1].name:
                node.inputs[1] = make_const(graph, f"{node.name}.split", sizes)
            elif int(graph.opset or 13) >= 13:
                # the sizes are an input from opset 13 (the attribute made the model invalid); opset 18's
                # num_outputs (torch.chunk through the torch.export-based exporter) goes with the equal split it meant
                node.attrs.pop("num_outputs", None)
                const = make_const(graph, f"{node.name}.split", sizes)
                if len(node.inputs) > 1:
                    node.inputs[1] = const
                else:
                    node.inputs.append(const)
            else:
                node.attrs["split"] = sizes.tolist()
        elif node.op == "Slice" and "slice_k" in rec.data and (k_in is not None or k_out is not None):
            kin = k_in if k_in is not None else np.arange(cg.size(rec.ins[0]))
            m = len(k_out) if k_out is not None else cg.size(rec.outs[0])
            lo = int(np.sum(kin < rec.data["lo"]))
            k = rec.data["slice_k"]
            for j, v in ((1, lo), (2, lo + m)):
                arr = np.array(const_value(node.inputs[j]), dtype=np.int64)
                arr[k] = v
                node.inputs[j] = make_const(graph, f"{node.name}.b{j}", arr)
        elif node.op == "Expand" and isinstance(rec.data.get("expand_entry"), tuple) and k_out is not None:
            cat, j, k = rec.data["expand_entry"]   # a number in a Concat target (_expand_piece)
            arr = np.array(const_value(cat.inputs[j]), dtype=np.int64)
            arr.reshape(-1)[k] = len(k_out)
            cat.inputs[j] = make_const(graph, f"{cat.name}.p{j}", arr)
        elif node.op == "Expand" and rec.data.get("expand_entry") is not None and k_out is not None:
            arr = np.array(const_value(node.inputs[1]), dtype=np.int64).reshape(-1)
            arr[rec.data["expand_entry"]] = len(k_out)
            node.inputs[1] = make_const(graph, f"{node.name}.shape", arr)
        elif node.op == "Reshape" and "shape_piece" in rec.data:   # a dynamic target shape (_dynamic_reshape)
            if rec.data["shape_piece"] is not None and k_out is not None:
                cat, j, k = rec.data["shape_piece"]
                arr = np.array(const_value(cat.inputs[j]), dtype=np.int64)
                arr.reshape(-1)[k] = len(k_out)
                cat.inputs[j] = make_const(graph, f"{cat.name}.p{j}", arr)
        elif node.op == "Reshape" and "reshape_axis" in rec.data and k_out is not None:
            arr = np.array(const_value(node.inputs[1]), dtype=np.int64)
            a = rec.data["reshape_axis"]
            if arr[a] > 0:
                arr[a] = len(k_out)
                node.inputs[1] = make_const(graph, f"{node.name}.shape", arr)
    # shapes recorded before the removal are stale for every inner tensor: infer them again
    io = {t.name for t in graph.inputs} | {t.name for t in graph.outputs}
    inner = [t for t in graph.tensors().values() if isinstance(t, gs.Variable) and t.name not in io]
    for t in inner:
        t.shape = None
    shapes = infer_shapes(graph)
    for t in inner:
        if shapes.get(t.name) is not None:
            t.shape = list(shapes[t.name])
    return info


def _add_bias_map(graph: gs.Graph, node, bias_map: np.ndarray) -> None:
    bm = make_const(graph, f"{node.name}.bias_map", bias_map[None].astype(np.float32))
    add_after(graph, node.outputs[0], bm, "pruned", f"{node.name}_bias_map")
