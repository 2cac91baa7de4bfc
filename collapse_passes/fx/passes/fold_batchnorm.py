"""fold: an eval-mode BatchNorm (or a scalar Mul/Add a linearized SELU/HardSigmoid left, or a Mul/Add by a
per-channel parameter / buffer such as a layer scale) next to a conv/linear goes into that op's weights
(algebra.*.fold_affine_after / _before).

After the op is preferred; before it only where the algebra allows (a shift cannot cross a padded
conv's zero padding: the algebra refuses and the BatchNorm stays; through a reflect / replicate / circular pad,
which copies pixels of the same channel, both cross, as on ONNX). A Linear meets a BatchNorm1d's
channel axis only on 2-D inputs, so only those are folded. A zero-constant F.pad of the spatial axes
right before a conv becomes the conv's own padding (as the ONNX fold's FoldPadIntoConv): exact, and the
conv chain through it can then merge."""
from __future__ import annotations

import operator

import numpy as np
import torch
from torch import fx

from ...algebra import conv as conv_alg
from ...algebra import linear as lin_alg
from ...errors import CollapseError
from ..graph import (_CONV_MODULES, batchnorm_op, feeds_output, get_attr_value, insert_linear, linear_op, origin,
                     shape_of, single_user, submodule, to_numpy)
from ._base import FxPass, PassResult

aten = torch.ops.aten
_MUL = {operator.mul, torch.mul, aten.mul.Tensor, aten.mul.Scalar, "mul"}
_ADD = {operator.add, torch.add, aten.add.Tensor, aten.add.Scalar, "add"}


_SUB = {operator.sub, torch.sub, aten.sub.Tensor, aten.sub.Scalar, "sub"}
_DIV = {operator.truediv, torch.div, torch.true_divide, aten.div.Tensor, aten.div.Scalar, "div", "truediv"}


def _affine_form(gm: fx.GraphModule, node: fx.Node):
    """(x, c, scale_shift) of x*c, x+c, x-c, c-x or x/c (either order where it commutes) with c a Python number or a
    float parameter / buffer; scale_shift(c) -> (scale, shift), None where the form is no affine map (x/0). Else None."""
    if node.op not in ("call_function", "call_method") or len(node.args) != 2 or node.kwargs:
        return None
    a, b = node.args
    def const(v):
        if isinstance(v, fx.Node):
            t = get_attr_value(gm, str(v.target)) if v.op == "get_attr" else None
            return t if isinstance(t, torch.Tensor) and t.is_floating_point() and t.numel() else None
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None
    ca, cb = const(a), const(b)
    if (ca is None) == (cb is None):
        return None
    x_first = cb is not None
    x, c = (a, cb) if x_first else (b, ca)
    if not isinstance(x, fx.Node):
        return None
    t = node.target
    if t in _MUL:
        return x, c, lambda v: (v, 0.0 * v)
    if t in _ADD:
        return x, c, lambda v: (1.0 + 0.0 * v, v)
    if t in _SUB:
        return x, c, (lambda v: (1.0 + 0.0 * v, -v)) if x_first else (lambda v: (-1.0 + 0.0 * v, v))
    if t in _DIV and x_first:
        return x, c, lambda v: None if np.any(np.asarray(v) == 0) else (1.0 / v, 0.0 * v)
    return None


def _channel_vector(c, n: int, shape, axis: int, dtype):
    """c (a number, or a tensor broadcast against a tensor of `shape`) as a vector of the n channels on `axis`, in
    dtype; None where it varies along another axis, broadcasts x up, or has another dtype (a float64 constant
    promotes). A number needs no shape (a PassManager run without ShapeProp folded x * 2 before)."""
    if not isinstance(c, torch.Tensor):
        return np.full(n, c, dtype=dtype)
    if shape is None or len(shape) < 2 or shape[axis] != n:
        return None
    if c.ndim > len(shape) or str(c.dtype) != f"torch.{np.dtype(dtype).name}":
        return None
    full = (1,) * (len(shape) - c.ndim) + tuple(c.shape)
    if any(d != 1 for i, d in enumerate(full) if i != axis) or full[axis] not in (1, n):
        return None
    return np.broadcast_to(c.detach().cpu().numpy().reshape(-1), (n,)).astype(dtype)


def _affine_after(gm: fx.GraphModule, node: fx.Node):
    """(x, scale, shift) of a constant per-channel affine `node` of a conv / linear's output x (a scalar, or a
    parameter / buffer varying along the op's output channels only: a layer scale `gamma * conv(x)`), else None.
    Its value is read at fold time: the result keeps no reference to c."""
    form = _affine_form(gm, node)
    if form is None:
        return None
    x, c, how = form
    op = linear_op(gm, x)
    if op is None:
        return None
    shape = shape_of(x)
    axis = 1 if op.kind == "conv" else len(shape or (0, 0)) - 1   # the op's output channels
    vec = _channel_vector(c, op.params.weight.shape[0], shape, axis, op.dtype)
    aff = None if vec is None else how(vec)
    return None if aff is None else (x, *aff)


def _affine_before(gm: fx.GraphModule, node: fx.Node):
    """(op, x, scale, shift, pad) of a constant per-channel affine `node` whose only reader is a conv / linear op, on
    that op's input channels (input normalisation `(x - mean) / std` before a stem conv), else None. pad: a
    reflect / replicate / circular pad of the spatial axes between them (_copying_pad; a padding_mode conv split by
    _split_padding_mode), which the affine commutes with, else None."""
    form = _affine_form(gm, node)
    nxt = single_user(node)
    pad = None
    if form is not None and nxt is not None and _copying_pad(nxt) is not None and not feeds_output(nxt):
        pad, nxt = nxt, single_user(nxt)
    op = linear_op(gm, nxt) if form is not None and nxt is not None else None
    if op is None or op.x is not (node if pad is None else pad) or op.bias_map is not None or feeds_output(node):
        return None
    if pad is not None and (op.kind != "conv" or len(_copying_pad(pad)) > 2 * op.params.ndim):
        return None   # pads the channel axis too: channels mix
    x, c, how = form
    shape = shape_of(node)
    if isinstance(c, torch.Tensor) and (shape is None or shape_of(x) != shape):
        return None   # unknown shapes, or the constant broadcasts x up
    meta = x.meta.get("val", x.meta.get("tensor_meta"))
    if str(getattr(meta, "dtype", None)) != f"torch.{np.dtype(op.dtype).name}":
        return None   # an integer image `(x - 127.5) / 255`: the conv would read x as it is
    axis = 1 if op.kind == "conv" else len(shape or (0, 0)) - 1
    vec = _channel_vector(c, op.params.weight.shape[1] * (op.params.group if op.kind == "conv" else 1), shape,
                          axis, op.dtype)
    aff = None if vec is None else how(vec)
    return None if aff is None else (op, x, *aff, pad)


_PAD = {torch.nn.functional.pad, aten.pad.default, aten.constant_pad_nd.default}
#: pad modes that fill the border with pixels of the same channel: a per-channel affine commutes with them
_COPYING = ("reflect", "replicate", "circular")


def _copying_pad(node: fx.Node):
    """The pad list (F.pad order) of an F.pad / aten.pad in a copying mode (_COPYING), else None: the ONNX fold's
    _ConvKind.copying_pad (a Pad in mode reflect / edge / wrap)."""
    if node.op != "call_function" or node.target not in (torch.nn.functional.pad, aten.pad.default) or not node.args \
            or not isinstance(node.args[0], fx.Node):
        return None
    pad = node.args[1] if len(node.args) > 1 else node.kwargs.get("pad")
    mode = node.args[2] if len(node.args) > 2 else node.kwargs.get("mode", "constant")
    if mode not in _COPYING or not isinstance(pad, (list, tuple)) or not all(isinstance(v, int) for v in pad):
        return None
    return tuple(pad)


def _zero_pad(node: fx.Node):
    """The pad list (F.pad order: last axis first) of a zero-constant pad node, else None."""
    if node.op != "call_function" or node.target not in _PAD or not node.args or not isinstance(node.args[0], fx.Node):
        return None
    pad = node.args[1] if len(node.args) > 1 else node.kwargs.get("pad")
    if node.target is aten.constant_pad_nd.default:
        mode, value = "constant", node.args[2] if len(node.args) > 2 else node.kwargs.get("value", 0)
    else:
        mode = node.args[2] if len(node.args) > 2 else node.kwargs.get("mode", "constant")
        value = node.args[3] if len(node.args) > 3 else node.kwargs.get("value", None)
    if mode != "constant" or not (value is None or (isinstance(value, (int, float)) and value == 0)):
        return None
    if not isinstance(pad, (list, tuple)) or not all(isinstance(v, int) for v in pad):
        return None
    return tuple(pad)


def _fold_after(op, scale, shift):
    if op.kind == "linear":
        return lin_alg.fold_affine_after(op.params, scale, shift), None
    p = conv_alg.fold_affine_after(op.params, scale, shift)
    bm = op.bias_map
    if bm is not None:
        sc = np.broadcast_to(np.asarray(scale if scale is not None else 1.0, np.float64).reshape(-1), (p.out_channels,))
        shape = (1,) * (bm.ndim - p.ndim - 1) + (-1,) + (1,) * p.ndim   # channel axis just before the spatial ones
        bm = (bm.astype(np.float64) * sc.reshape(shape)).astype(bm.dtype)
    return p, bm


class FoldBatchNorm(FxPass):
    name = "fold"

    def call(self, gm: fx.GraphModule) -> PassResult:
        done = 0
        self._protected = None   # nodes of multi-op activation sites, read when first needed
        for node in list(gm.graph.nodes):
            if node.graph is None:   # erased by an earlier fold in this sweep
                continue
            bn = batchnorm_op(gm, node)
            if bn is not None:
                done += self._fold_bn(gm, bn)
                continue
            aff = _affine_after(gm, node)
            if aff is not None and self._fold_scalar(gm, node, *aff):
                done += 1
                continue
            aff = _affine_before(gm, node)
            if aff is not None:
                done += self._fold_affine_before(gm, node, *aff)
                continue
            pad = _zero_pad(node)
            if pad is not None:
                done += self._fold_pad(gm, node, pad)
                continue
            done += self._split_padding_mode(gm, node)
        return self.finish(gm, done, "folded {} affine op(s)")

    def _split_padding_mode(self, gm, node) -> int:
        """A conv module with padding_mode reflect / replicate / circular computes F.pad(x, mode) then an unpadded
        conv (torch's Conv._conv_forward); written so when a conv or BatchNorm reads it alone, or it alone reads a
        per-channel affine (which then folds into it through the pad: _affine_before), as its ONNX export (Pad +
        Conv) is. Left whole it was no linear op: the 1x1 conv after it never merged and a BatchNorm after it never
        folded, where the export's Conv did both (exact: the pad stays before the merged conv)."""
        mod = submodule(gm, node)
        if not isinstance(mod, _CONV_MODULES) or mod.padding_mode == "zeros" or len(node.args) != 1 \
                or node.kwargs or not isinstance(node.args[0], fx.Node) or feeds_output(node):
            return 0
        x = node.args[0]
        after_affine = single_user(x) is node and not feeds_output(x) and _affine_form(gm, x) is not None
        nxt = single_user(node)
        op, bn = (linear_op(gm, nxt), batchnorm_op(gm, nxt)) if nxt is not None else (None, None)
        if not ((op is not None and op.x is node) or (bn is not None and bn.x is node) or after_affine):
            return 0
        shape = shape_of(x)
        n = mod.weight.ndim - 2
        pad = tuple(int(v) for v in mod._reversed_padding_repeated_twice)   # F.pad order: last axis first
        with gm.graph.inserting_before(node):
            padded = gm.graph.call_function(torch.nn.functional.pad, (x, pad, mod.padding_mode))
        padded.meta["nn_module_stack"] = node.meta.get("nn_module_stack", {})
        if shape is not None:
            grown = list(shape)
            for a in range(n):
                grown[2 + a] += pad[2 * (n - 1 - a)] + pad[2 * (n - 1 - a) + 1]
            padded.meta["val"] = torch.empty(grown, dtype=mod.weight.dtype, device="meta")
        p = conv_alg.ConvParams(to_numpy(mod.weight), to_numpy(mod.bias), tuple(mod.stride), (0,) * (2 * n),
                                tuple(mod.dilation), mod.groups)
        new = insert_linear(gm, node, padded, "conv", p, None, hint=f"{node.name}_unpadded", meta_from=node,
                            origin=origin(node), sources=[node])
        node.replace_all_uses_with(new)
        self._erase(gm, [node])
        self.note(f"{node.name}: its {mod.padding_mode} padding written as an F.pad before the conv")
        return 1

    def _fold_pad(self, gm, node, pad) -> int:
        nxt = single_user(node)
        op = linear_op(gm, nxt) if nxt is not None else None
        if op is None or op.kind != "conv" or op.x is not node or op.bias_map is not None or feeds_output(node):
            return 0
        p = op.params
        n = p.ndim
        if len(pad) > 2 * n + 2 * 2 or len(pad) % 2 or any(pad[2 * n:]):
            return 0   # pads the channel or batch axis too
        pad = list(pad[:2 * n]) + [0] * (2 * n - len(pad[:2 * n]))
        begin = [pad[2 * (n - 1 - a)] for a in range(n)]   # F.pad lists the last axis first
        end = [pad[2 * (n - 1 - a) + 1] for a in range(n)]
        if min(begin + end) < 0:
            return 0   # a crop
        q = conv_alg.ConvParams(p.weight, p.bias, p.strides,
                                tuple(p.pads[a] + begin[a] for a in range(n)) + tuple(p.pads[n + a] + end[a] for a in range(n)),
                                p.dilations, p.group)
        names = origin(node) + origin(nxt)
        new = insert_linear(gm, node, node.args[0], "conv", q, None, hint=f"{nxt.name}_pad", meta_from=nxt,
                            origin=origin(nxt), sources=[nxt])
        nxt.replace_all_uses_with(new)
        self._erase(gm, [nxt, node])
        self.record.folds.append({"kind": "pad-before", "nodes": names})
        return 1

    def _bn_affine(self, bn):
        g = None if bn.gamma is None else to_numpy(bn.gamma)
        b = None if bn.beta is None else to_numpy(bn.beta)
        n = to_numpy(bn.mean).shape[0]
        g = np.ones(n, to_numpy(bn.mean).dtype) if g is None else g
        b = np.zeros(n, to_numpy(bn.mean).dtype) if b is None else b
        return conv_alg.bn_to_affine(g, b, to_numpy(bn.mean), to_numpy(bn.var), bn.eps)

    def _fold_bn(self, gm, bn) -> int:
        scale, shift = self._bn_affine(bn)
        prod = bn.x
        op = self.producer(gm, bn)
        if op is not None:
            p, bm = _fold_after(op, scale, shift)
            names = origin(prod) + origin(bn.node)
            new = insert_linear(gm, prod, op.x, op.kind, p, bm, hint=f"{op.node.name}_bn", meta_from=bn.node,
                                origin=origin(prod), sources=[prod, *bn.nodes])
            bn.node.replace_all_uses_with(new)
            self._erase(gm, bn.nodes + [prod])
            self.record.folds.append({"kind": "batchnorm-after", "nodes": names})
            return 1
        nxt = single_user(bn.node)
        op = linear_op(gm, nxt) if nxt is not None else None
        if op is not None and op.x is bn.node and op.bias_map is None and not feeds_output(bn.node) \
                and self._channels_ok(op, bn.node):
            try:
                p = (conv_alg if op.kind == "conv" else lin_alg).fold_affine_before(op.params, scale, shift)
            except CollapseError as exc:
                self.note(f"{bn.node.name} kept before {nxt.name}: {exc}")
                return 0
            names = origin(bn.node) + origin(nxt)
            new = insert_linear(gm, min(bn.nodes), bn.x, op.kind, p, None, hint=f"{nxt.name}_bn", meta_from=nxt,
                                origin=origin(nxt), sources=[nxt, *bn.nodes])
            nxt.replace_all_uses_with(new)
            self._erase(gm, [nxt] + bn.nodes)
            self.record.folds.append({"kind": "batchnorm-before", "nodes": names})
            return 1
        return 0

    @classmethod
    def producer(cls, gm, bn):
        """The conv / linear op `bn` folds into (its only reader, not a graph output, channels on the op's
        output axis), else None. graph_stats counts such a BatchNorm as no op (export_free_nodes): one rule."""
        prod = bn.x
        op = linear_op(gm, prod) if isinstance(prod, fx.Node) else None
        if op is not None and single_user(prod) is bn.nodes[-1] and not feeds_output(prod) \
                and cls._channels_ok(op, prod):
            return op
        return None

    @staticmethod
    def _channels_ok(op, node) -> bool:
        if op.kind == "conv":
            return True
        s = shape_of(node)
        return s is not None and len(s) == 2   # BatchNorm1d's channel axis 1 is the features axis only in 2-D

    def _fold_scalar(self, gm, node, x, scale, shift) -> int:
        op = linear_op(gm, x)
        if op is None or single_user(x) is not node or feeds_output(x):
            return 0
        dt = op.dtype   # Python floats would make the algebra return float64 weights
        p, bm = _fold_after(op, np.asarray(scale, dt), np.asarray(shift, dt))   # shift -> bias; the bias map only scales
        names = origin(x) + origin(node)
        new = insert_linear(gm, x, op.x, op.kind, p, bm, hint=f"{op.node.name}_affine", meta_from=node,
                            origin=origin(x), sources=[x, node])   # node: a layer scale's parameter is read too
        node.replace_all_uses_with(new)
        self._erase(gm, [node, x])
        self.record.folds.append({"kind": "scalar-affine-after", "nodes": names})
        return 1

    def _fold_affine_before(self, gm, node, op, x, scale, shift, pad=None) -> int:
        """As the ONNX fold's FoldAffineIntoNext: a shift crosses no zero padding (the algebra refuses it: the
        border would need the shift too), a scale always does; both cross a copying `pad` between them, which
        then reads x. Not inside an activation spelled out (the `/ 6` of `x * relu6(x + 3) / 6`): folded, it would
        no longer be one site."""
        if self._protected is None:
            from ..graph import find_activations
            self._protected = {n for a in find_activations(gm) if len(a.nodes) > 1 for n in a.nodes}
        if node in self._protected:
            return 0
        try:
            p = (conv_alg if op.kind == "conv" else lin_alg).fold_affine_before(op.params, scale, shift)
        except CollapseError as exc:
            self.note(f"{node.name} kept before {op.node.name}: {exc}")
            return 0
        names = origin(node) + origin(op.node)
        if pad is not None:
            pad.replace_input_with(node, x)
        new = insert_linear(gm, node if pad is None else op.node, x if pad is None else pad, op.kind, p, None,
                            hint=f"{op.node.name}_affine", meta_from=op.node, origin=origin(op.node),
                            sources=[op.node, node])
        op.node.replace_all_uses_with(new)
        self._erase(gm, [op.node, node])
        self.record.folds.append({"kind": "affine-before", "nodes": names})
        return 1

    @staticmethod
    def _erase(gm, nodes) -> None:
        for n in nodes:
            if not n.users:
                gm.graph.erase_node(n)
