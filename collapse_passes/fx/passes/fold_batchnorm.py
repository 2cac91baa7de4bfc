"""fold: an eval-mode BatchNorm (or a scalar Mul/Add a linearized SELU/HardSigmoid left, or a Mul/Add by a
per-channel parameter / buffer such as a layer scale) next to a conv/linear goes into that op's weights
(algebra.*.fold_affine_after / _before).

After the op is preferred; before it only where the algebra allows (a shift cannot cross a padded
conv's zero padding: the algebra refuses and the BatchNorm stays). A Linear meets a BatchNorm1d's
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
from ..graph import (batchnorm_op, feeds_output, get_attr_value, insert_linear, linear_op, origin, shape_of,
                     single_user, to_numpy)
from ._base import FxPass, PassResult

aten = torch.ops.aten
_MUL = {operator.mul, torch.mul, aten.mul.Tensor, aten.mul.Scalar, "mul"}
_ADD = {operator.add, torch.add, aten.add.Tensor, aten.add.Scalar, "add"}


def _scalar_affine(node: fx.Node):
    """(x, scale, shift) of x*c or x+c with a Python-number c, else None."""
    if node.op not in ("call_function", "call_method") or len(node.args) != 2 or node.kwargs:
        return None
    a, b = node.args
    if isinstance(b, fx.Node) and isinstance(a, (int, float)):
        a, b = b, a
    if not isinstance(a, fx.Node) or isinstance(b, bool) or not isinstance(b, (int, float)):
        return None
    if node.target in _MUL:
        return a, float(b), 0.0
    if node.target in _ADD:
        return a, 1.0, float(b)
    return None


def _channel_affine(gm: fx.GraphModule, node: fx.Node):
    """(x, scale, shift) of x*c or x+c with c a parameter / buffer that varies along x's channels only (a layer
    scale `x + gamma * conv(x)` with gamma of shape (C, 1, 1), as ConvNeXt / CaiT / timm blocks write it; a (F,)
    vector after a linear), else None. Its value is read at fold time: the result keeps no reference to c.
    Before, only Python numbers folded, so such a scale stayed an op between the conv and the next linear op
    and blocked the merges the ONNX front end (which folds per-channel Mul/Add) made: 3 ops more on the path."""
    if node.op not in ("call_function", "call_method") or len(node.args) != 2 or node.kwargs \
            or node.target not in _MUL | _ADD:
        return None
    a, b = node.args
    if isinstance(a, fx.Node) and a.op == "get_attr":
        a, b = b, a
    if not isinstance(a, fx.Node) or not isinstance(b, fx.Node) or b.op != "get_attr":
        return None
    c = get_attr_value(gm, str(b.target))
    shape = shape_of(a)
    if not isinstance(c, torch.Tensor) or not c.is_floating_point() or shape is None or len(shape) < 2 \
            or c.ndim > len(shape) or c.numel() == 0:
        return None
    op = linear_op(gm, a)
    if op is None:
        return None
    axis = 1 if op.kind == "conv" else len(shape) - 1   # the op's output channels
    full = (1,) * (len(shape) - c.ndim) + tuple(c.shape)
    if any(d != 1 for i, d in enumerate(full) if i != axis) or full[axis] not in (1, shape[axis]):
        return None   # varies along the batch or a spatial / token axis, or broadcasts x up
    vec = np.broadcast_to(c.detach().cpu().numpy().reshape(-1), (shape[axis],))
    if vec.dtype != np.dtype(op.dtype):
        return None   # a float64 constant would promote the output
    if node.target in _MUL:
        return a, vec, np.zeros_like(vec)
    return a, np.ones_like(vec), vec


_PAD = {torch.nn.functional.pad, aten.pad.default, aten.constant_pad_nd.default}


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
        for node in list(gm.graph.nodes):
            if node.graph is None:   # erased by an earlier fold in this sweep
                continue
            bn = batchnorm_op(gm, node)
            if bn is not None:
                done += self._fold_bn(gm, bn)
                continue
            aff = _scalar_affine(node) or _channel_affine(gm, node)
            if aff is not None:
                done += self._fold_scalar(gm, node, *aff)
                continue
            pad = _zero_pad(node)
            if pad is not None:
                done += self._fold_pad(gm, node, pad)
        return self.finish(gm, done, "folded {} affine op(s)")

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

    @staticmethod
    def _erase(gm, nodes) -> None:
        for n in nodes:
            if not n.users:
                gm.graph.erase_node(n)
