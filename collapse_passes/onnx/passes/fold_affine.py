"""fold: per-channel affine ops (BatchNormalization, Mul/Add/Sub/Div by constants, LayerNorm's
gamma/beta) folded into the Conv / Gemm / MatMul beside them -- only where that is exact.

One small class per pattern (onnxslim style), all registered in FOLD_PATTERNS; FoldAffine runs
them until none applies. After a linear op is always exact. Before a Conv a per-channel scale always (s*x
padded with zeros is s*(x padded with zeros)), a shift only where the conv has no padding: zero padding would
not see the shift (the reference doc's padding rule; the torch front end's too). A Pad that fills the border with
pixels of the same channel (reflect, edge, wrap: a torch padding_mode conv exports as one) may stand between them:
both commute with it, so the affine goes into the conv and the Pad stays (the shift again only where the conv
itself has no pads).
A zero-constant Pad of the spatial axes before a Conv (F.pad(x, ...) then a conv, as TF-"same" ports
write asymmetric padding) becomes the conv's own pads (FoldPadIntoConv): exact, and it lets the conv
chain through it merge.
"""
from __future__ import annotations

import numpy as np

from ...algebra import conv as conv_alg
from ...algebra import linear as lin_alg
from ...pipeline import PassResult
from ..graph import const_value, single_consumer, toposort
from ..linear_ops import ConvView, DenseView
from ..patterns import find_activations


# ------------------------------------------------------------------ affine views of single nodes

def _channel_vector(c: np.ndarray, channels: int, rank: int, axis: int) -> np.ndarray | None:
    """A constant broadcast against a rank-`rank` tensor, as a per-channel vector on `axis`."""
    if c.size == 1:
        return np.full(channels, float(c.reshape(())), dtype=np.float64)
    if c.ndim > rank:
        return None
    shape = (1,) * (rank - c.ndim) + tuple(c.shape)
    ax = axis % rank
    if shape[ax] != channels or any(s != 1 for i, s in enumerate(shape) if i != ax):
        return None
    return np.asarray(c, dtype=np.float64).reshape(channels)


def affine_of(node, x, channels: int, rank: int, axis: int):
    """(scale, shift) if node computes scale*x + shift per channel of its input x, else None."""
    op = node.op
    if op == "BatchNormalization":
        if node.inputs[0] is not x or len([o for o in node.outputs if o.name]) != 1:
            return None
        if int(node.attrs.get("training_mode", 0)) or axis % rank != 1:
            return None
        vals = [const_value(t) for t in node.inputs[1:5]]
        if any(v is None for v in vals) or vals[0].size != channels:
            return None
        return conv_alg.bn_to_affine(*[np.asarray(v, np.float64) for v in vals],
                                     eps=float(node.attrs.get("epsilon", 1e-5)))
    if op not in ("Mul", "Add", "Sub", "Div") or len(node.inputs) != 2:
        return None
    if node.inputs[0] is x:
        c = const_value(node.inputs[1])
        x_first = True
    elif node.inputs[1] is x:
        c = const_value(node.inputs[0])
        x_first = False
    else:
        return None
    if c is None or c.dtype.kind != "f":
        return None
    v = _channel_vector(c, channels, rank, axis)
    if v is None:
        return None
    ones, zeros = np.ones(channels), np.zeros(channels)
    if op == "Mul":
        return v, zeros
    if op == "Add":
        return ones, v
    if op == "Sub":
        return (ones, -v) if x_first else (-ones, v)
    if op == "Div" and x_first and np.all(v != 0):
        return 1.0 / v, zeros
    return None


#: the ops affine_of reads as a per-channel affine
AFFINE_OPS = frozenset({"BatchNormalization", "Mul", "Add", "Sub", "Div"})


def _may_be_affine(node, ctx) -> bool:
    """Whether affine_of could fold `node` (its op, a constant operand, not protected): asked before a view's
    params are read, as a dense view's params copy its weights (a transposed MatMul weight). The patterns rescan
    the graph after every fold, so a TorchScript or dynamo Swin-T read every MatMul's weights ~1,000 times in
    one run (3.3 s), most of them beside a Relu or a residual Add of two activations."""
    if node.op not in AFFINE_OPS or id(node) in ctx.fold_protected:
        return False
    return node.op == "BatchNormalization" or (
        len(node.inputs) == 2 and any(const_value(t) is not None for t in node.inputs))


def _out_rank(t, default: int) -> int:
    return len(t.shape) if t.shape is not None else default


def _detach(node) -> None:
    node.inputs.clear()
    node.outputs.clear()


#: Pad modes that fill the border with pixels of the same channel: a per-channel affine commutes with them
_COPYING_MODES = ("reflect", "edge", "wrap")


def _pad_mode(pad) -> str:
    mode = pad.attrs.get("mode", "constant")
    return mode.decode() if isinstance(mode, bytes) else str(mode)


def spatial_pads(pad, rank: int):
    """(begins, ends) of a Pad of a rank-`rank` tensor that pads its spatial axes only (2..), by >= 0, with zeros in
    constant mode (in a copying mode the value is read by nothing), else None."""
    if "pads" in pad.attrs:   # opset < 11: attributes
        pads, value, axes = pad.attrs["pads"], pad.attrs.get("value", 0.0), None
    else:
        if len(pad.inputs) < 2:
            return None
        pads = const_value(pad.inputs[1])
        has = lambda i: len(pad.inputs) > i and pad.inputs[i].name   # noqa: E731
        value = const_value(pad.inputs[2]) if has(2) else 0.0
        axes = const_value(pad.inputs[3]) if has(3) else None
        if pads is None or (has(3) and axes is None):
            return None
    if _pad_mode(pad) == "constant":
        value = None if value is None else np.asarray(value)
        if value is None or value.size > 1 or (value.size == 1 and float(value.reshape(-1)[0]) != 0.0):
            return None
    pads = [int(v) for v in np.asarray(pads).reshape(-1)]
    axes = list(range(rank)) if axes is None else [int(a) % rank for a in np.asarray(axes).reshape(-1)]
    if len(pads) != 2 * len(axes) or len(set(axes)) != len(axes):
        return None
    begin, end = [0] * rank, [0] * rank
    for k, a in enumerate(axes):
        begin[a], end[a] = pads[k], pads[len(axes) + k]
    if min(begin + end) < 0 or any(begin[:2]) or any(end[:2]):
        return None   # cropping, or padding batch / channels
    return begin[2:], end[2:]


# ------------------------------------------------------------------------------- the patterns

class _ConvKind:
    """How a Conv sees a per-channel affine: channels on axis 1; a shift folds before it only without padding."""
    name = "conv"
    fold_after = staticmethod(conv_alg.fold_affine_after)
    fold_before = staticmethod(conv_alg.fold_affine_before)

    @staticmethod
    def view(node, outs):
        return ConvView.of(node)

    @staticmethod
    def channel_axis(op, p, t):
        """(rank, axis) of the per-channel constant against tensor t, or None."""
        return p.ndim + 2, 1

    @staticmethod
    def can_fold_before(p, shift) -> bool:
        """A scale crosses zero padding (scaled zeros are zeros), a shift does not (algebra.conv.fold_affine_before
        refuses it): the torch front end's rule (fx/passes/fold_batchnorm.py)."""
        return not any(p.pads) or not np.any(shift)

    @staticmethod
    def in_channels(p) -> int:
        return p.in_channels

    @staticmethod
    def copying_pad(v, outs):
        """The Pad writing conv view v's input when it pads the spatial axes only, with pixels of the same channel
        (reflect, edge, wrap), and nothing else reads its output: a per-channel affine commutes with it."""
        x = v.input
        pad = x.inputs[0] if x.inputs else None
        if pad is None or pad.op != "Pad" or (pad.domain or "") not in ("", "ai.onnx") or not pad.inputs \
                or _pad_mode(pad) not in _COPYING_MODES or single_consumer(x) is not v.node or x.name in outs:
            return None
        return pad if spatial_pads(pad, v.params.weight.ndim) is not None else None


class _DenseKind:
    """How a Gemm/MatMul sees it: features on the last axis (BN only on 2-D tensors, axis 1)."""
    name = "dense"
    fold_after = staticmethod(lin_alg.fold_affine_after)
    fold_before = staticmethod(lin_alg.fold_affine_before)

    @staticmethod
    def view(node, outs):
        return DenseView.of(node, outs)

    @staticmethod
    def channel_axis(op, p, t):
        rank = _out_rank(t, 2)
        if op == "BatchNormalization":
            return (2, 1) if rank == 2 else None
        return rank, -1

    @staticmethod
    def can_fold_before(p, shift) -> bool:
        return True

    @staticmethod
    def in_channels(p) -> int:
        return p.in_features

    @staticmethod
    def copying_pad(v, outs):
        return None


class FoldAffineIntoPrev:
    """linear -> BN/Mul/Add: W' = W*scale per output channel, b' = b*scale + shift (always exact)."""

    def __init__(self, kind):
        self.kind = kind
        self.name = f"affine_into_prev_{kind.name}"

    def apply(self, ctx) -> bool:
        outs = ctx.graph_outputs
        for node in list(ctx.graph.nodes):
            v = self.kind.view(node, outs)
            if v is None or v.output.name in outs:
                continue
            nxt = single_consumer(v.output)
            if nxt is None or not _may_be_affine(nxt, ctx):
                continue
            p = v.params
            ra = self.kind.channel_axis(nxt.op, p, v.output)
            n_out = p.weight.shape[0]
            aff = affine_of(nxt, v.output, n_out, *ra) if ra and id(nxt) not in ctx.fold_protected else None
            if aff is None:
                continue
            v.write(ctx.graph, self.kind.fold_after(p, *aff))
            _take_output(v.nodes[-1], nxt)
            ctx.folds.append({"op": nxt.op, "node": nxt.name, "into": node.name, "where": "after"})
            return True
        return False


class FoldAffineIntoNext:
    """BN/Mul/Add -> linear: scale the input channels of the weight, push the shift into the bias.

    Before a padded conv a scale only (zero padding would not see the shift); through a reflect / edge / wrap Pad
    (_ConvKind.copying_pad), which stays.
    """

    def __init__(self, kind):
        self.kind = kind
        self.name = f"affine_into_next_{kind.name}"

    def apply(self, ctx) -> bool:
        outs = ctx.graph_outputs
        for node in list(ctx.graph.nodes):
            v = self.kind.view(node, outs)
            if v is None:
                continue
            x, reader = v.input, node
            pad = self.kind.copying_pad(v, outs)
            if pad is not None:
                x, reader = pad.inputs[0], pad
            prev = x.inputs[0] if x.inputs else None
            if prev is None or single_consumer(x) is not reader or x.name in outs or not _may_be_affine(prev, ctx):
                continue
            src = prev.inputs[0] if prev.inputs else None
            p = v.params
            if src is None:
                continue
            ra = self.kind.channel_axis(prev.op, p, v.input)
            aff = affine_of(prev, src, self.kind.in_channels(p), *ra) if ra and id(prev) not in ctx.fold_protected \
                else None
            if aff is None or not self.kind.can_fold_before(p, aff[1]):
                continue
            v.write(ctx.graph, self.kind.fold_before(p, *aff))
            reader.inputs[0] = src
            _detach(prev)
            ctx.folds.append({"op": prev.op, "node": prev.name, "into": node.name, "where": "before",
                              **({"through": pad.name} if pad is not None else {})})
            return True
        return False


class FoldLayerNormAffine:
    """LayerNorm(gamma, beta) -> linear: move gamma/beta into the linear, leave a plain LayerNorm."""
    name = "layernorm_affine_into_next_dense"

    def apply(self, ctx) -> bool:
        for ln in list(ctx.graph.nodes):
            if ln.op != "LayerNormalization" or int(ln.attrs.get("axis", -1)) != -1:
                continue
            y = ln.outputs[0]
            dense = DenseView.of(single_consumer(y), ctx.graph_outputs) if not y.name in ctx.graph_outputs else None
            if dense is None:
                continue
            gamma = const_value(ln.inputs[1])
            beta = const_value(ln.inputs[2]) if len(ln.inputs) > 2 and ln.inputs[2].name else None
            if gamma is None or (len(ln.inputs) > 2 and ln.inputs[2].name and beta is None):
                continue
            gamma = np.asarray(gamma, np.float64).reshape(-1)
            beta = np.zeros_like(gamma) if beta is None else np.asarray(beta, np.float64).reshape(-1)
            if np.all(gamma == 1.0) and np.all(beta == 0.0):
                continue
            p = dense.params
            if gamma.size != p.weight.shape[1]:
                continue
            if p.bias is None and dense.node.op == "MatMul" and np.any(beta != 0.0):
                continue   # beta would become a new bias Add (e.g. Swin's bias-free PatchMerging reduction): a loss

            dense.write(ctx.graph, lin_alg.fold_affine_before(p, gamma, beta))
            from ..graph import make_const
            dt = np.asarray(const_value(ln.inputs[1])).dtype
            ln.inputs[1] = make_const(ctx.graph, f"{ln.name}.scale_one", np.ones(gamma.size, dt))
            if len(ln.inputs) > 2 and ln.inputs[2].name:
                ln.inputs[2] = make_const(ctx.graph, f"{ln.name}.bias_zero", np.zeros(gamma.size, dt))
            ctx.folds.append({"op": "LayerNormalization(affine)", "node": ln.name, "into": dense.node.name,
                              "where": "before"})
            return True
        return False


class FoldPadIntoConv:
    """Pad(mode constant, value 0, spatial axes only, pads >= 0) -> Conv: add the pads to the conv's.

    Why: the TorchScript exporter (and onnx models from other converters) keep F.pad as its own node;
    left there it cuts the conv chain (conv, collapsed act, Pad, conv never merged) and makes an exactly
    mergeable padded conv look unpadded to the border rule. The dynamo exporter already fuses it."""
    name = "pad_into_next_conv"

    def apply(self, ctx) -> bool:
        outs = ctx.graph_outputs
        for node in list(ctx.graph.nodes):
            v = ConvView.of(node)
            if v is None:
                continue
            x = v.input
            pad = x.inputs[0] if x.inputs else None
            if pad is None or pad.op != "Pad" or (pad.domain or "") not in ("", "ai.onnx") or not pad.inputs \
                    or single_consumer(x) is not node or x.name in outs:
                continue
            p = v.params
            nd = p.weight.ndim - 2
            sp = spatial_pads(pad, nd + 2) if _pad_mode(pad) == "constant" else None
            if sp is None:
                continue
            b, e = sp
            pads = tuple(p.pads[i] + b[i] for i in range(nd)) + tuple(p.pads[nd + i] + e[i] for i in range(nd))
            v.write(ctx.graph, conv_alg.ConvParams(p.weight, p.bias, p.strides, pads, p.dilations, p.group))
            node.inputs[0] = pad.inputs[0]
            _detach(pad)
            ctx.folds.append({"op": "Pad", "node": pad.name, "into": node.name, "where": "before"})
            return True
        return False


def _take_output(producer_node, absorbed) -> None:
    """producer now computes what `absorbed` computed: give it absorbed's output tensor."""
    out = absorbed.outputs[0]
    _detach(absorbed)
    producer_node.outputs[0] = out


FOLD_PATTERNS = [FoldAffineIntoPrev(_ConvKind), FoldAffineIntoPrev(_DenseKind), FoldAffineIntoNext(_ConvKind),
                 FoldAffineIntoNext(_DenseKind), FoldLayerNormAffine(), FoldPadIntoConv()]


class FoldAffine:
    name = "fold"

    def __init__(self, patterns=None):
        self.patterns = patterns or FOLD_PATTERNS

    def __call__(self, ctx) -> PassResult:
        n0 = len(ctx.folds)
        # the scalar Mul / Div inside an activation left as it is (a GELU's x*0.5, x/sqrt(2)) stay in it:
        # folded into the next MatMul they would be exact, but the activation would no longer be one
        # (its count drops in the report and a later run could not collapse it)
        ctx.fold_protected = {id(n) for a in find_activations(ctx.graph) for n in a.nodes if len(a.nodes) > 1}
        for _ in range(10_000):
            if not any(p.apply(ctx) for p in self.patterns):
                break
        done = len(ctx.folds) - n0
        if done:
            toposort(ctx.graph.cleanup(remove_unused_graph_inputs=False))
        return PassResult(done > 0, [f"folded {done} affine op(s)"] if done else [])
