"""Views of ONNX linear ops as algebra parameters, and writing parameters back.

Conv  <-> algebra.conv.ConvParams
Gemm (transA=0), or MatMul with a constant 2-D right operand optionally followed by an Add of a
constant bias  <-> algebra.linear.LinearParams
A Conv's `auto_pad` is read as the explicit pads it stands for when its input's spatial size is static
(conv_pads); written back, a conv always gets explicit pads. Anything else (auto_pad on an unknown
size, dynamic weights, transA) is not a view: passes leave it alone.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from ..algebra.conv import ConvParams, auto_pads
from ..algebra.linear import LinearParams, from_gemm, from_matmul_const
from .graph import add_after, const_value, make_const, single_consumer


@dataclass
class ConvView:
    node: gs.Node

    @staticmethod
    def of(node) -> "ConvView | None":
        if node is None or node.op != "Conv" or (node.domain or "") not in ("", "ai.onnx"):
            return None
        w = const_value(node.inputs[1])
        if w is None or w.ndim < 3 or conv_pads(node, w.ndim - 2) is None:
            return None
        if len(node.inputs) > 2 and node.inputs[2].name and const_value(node.inputs[2]) is None:
            return None
        return ConvView(node)

    @property
    def input(self):
        return self.node.inputs[0]

    @property
    def output(self):
        return self.node.outputs[0]

    @property
    def nodes(self) -> list:
        return [self.node]

    @property
    def params(self) -> ConvParams:
        n = self.node
        w = const_value(n.inputs[1])
        b = const_value(n.inputs[2]) if len(n.inputs) > 2 and n.inputs[2].name else None
        nd = w.ndim - 2
        pads = conv_pads(n, nd)
        if pads is None:
            raise ValueError(f"Conv {n.name!r}: auto_pad on an input of unknown size (not a ConvView)")
        return ConvParams(weight=w, bias=b, strides=tuple(n.attrs.get("strides", [1] * nd)), pads=pads,
                          dilations=tuple(n.attrs.get("dilations", [1] * nd)), group=int(n.attrs.get("group", 1)))

    def write(self, graph: gs.Graph, p: ConvParams) -> None:
        n = self.node
        base = n.name or "conv"
        w = make_const(graph, f"{base}.weight", p.weight.astype(_dtype(n.inputs[1])))
        inputs = [n.inputs[0], w]
        if p.bias is not None:
            inputs.append(make_const(graph, f"{base}.bias", p.bias.astype(_dtype(n.inputs[1]))))
        n.inputs.clear()
        n.inputs.extend(inputs)
        n.attrs["kernel_shape"] = list(p.weight.shape[2:])
        n.attrs["strides"] = list(p.strides)
        n.attrs["pads"] = list(p.pads)
        n.attrs["dilations"] = list(p.dilations)
        n.attrs["group"] = int(p.group)
        n.attrs.pop("auto_pad", None)


def _mode(node) -> str:
    m = node.attrs.get("auto_pad", "NOTSET")
    return m.decode() if isinstance(m, bytes) else str(m)


def conv_pads(node, nd: int) -> tuple | None:
    """Explicit pads of a Conv with `nd` spatial axes: its `pads` attribute, or what its auto_pad means for
    its input's static spatial size (the padding then depends on that size). None where the size is
    unknown, and for SAME_* with a dilation > 1 (onnxruntime refuses to run those, so nothing could be
    verified)."""
    mode = _mode(node)
    if mode == "NOTSET":
        return tuple(node.attrs.get("pads", [0] * (2 * nd)))
    if mode == "VALID":
        return (0,) * (2 * nd)
    dilations = tuple(node.attrs.get("dilations", [1] * nd))
    shape = node.inputs[0].shape
    spatial = tuple(shape[2:]) if shape is not None and len(shape) == nd + 2 else ()
    if any(int(d) != 1 for d in dilations) or not (
            len(spatial) == nd and all(isinstance(d, int) and d > 0 for d in spatial)):
        return None
    w = const_value(node.inputs[1])
    return auto_pads(mode, spatial, w.shape[2:], node.attrs.get("strides", [1] * nd), dilations)


@dataclass
class DenseView:
    """y = x @ W.T + b with W (out, in); a Gemm, or MatMul [+ Add bias]."""
    node: gs.Node
    bias_add: gs.Node | None = None

    @staticmethod
    def of(node, graph_outputs: set | None = None) -> "DenseView | None":
        if node is None or (node.domain or "") not in ("", "ai.onnx"):
            return None
        if node.op == "Gemm":
            if int(node.attrs.get("transA", 0)) != 0:
                return None
            if const_value(node.inputs[1]) is None:
                return None
            if len(node.inputs) > 2 and node.inputs[2].name:
                c = const_value(node.inputs[2])
                if c is None or (c.ndim == 2 and c.shape[0] != 1):
                    return None
            return DenseView(node)
        if node.op == "MatMul":
            b = const_value(node.inputs[1])
            if b is None or b.ndim != 2:
                return None
            add = single_consumer(node.outputs[0])
            if add is not None and add.op == "Add" and not (graph_outputs and node.outputs[0].name in graph_outputs):
                other = add.inputs[1] if add.inputs[0] is node.outputs[0] else add.inputs[0]
                c = const_value(other)
                if c is not None and c.size == b.shape[1] and (c.ndim == 1 or (c.ndim >= 1 and c.shape[-1] == c.size)):
                    return DenseView(node, add)
            return DenseView(node)
        return None

    @property
    def input(self):
        return self.node.inputs[0]

    @property
    def output(self):
        return (self.bias_add or self.node).outputs[0]

    @property
    def nodes(self) -> list:
        return [self.node] + ([self.bias_add] if self.bias_add is not None else [])

    @property
    def params(self) -> LinearParams:
        n = self.node
        if n.op == "Gemm":
            c = const_value(n.inputs[2]) if len(n.inputs) > 2 and n.inputs[2].name else None
            return from_gemm(const_value(n.inputs[1]), c, transB=int(n.attrs.get("transB", 0)),
                             alpha=float(n.attrs.get("alpha", 1.0)), beta=float(n.attrs.get("beta", 1.0)))
        p = from_matmul_const(const_value(n.inputs[1]))
        if self.bias_add is not None:
            a = self.bias_add
            other = a.inputs[1] if a.inputs[0] is n.outputs[0] else a.inputs[0]
            p = LinearParams(p.weight, np.asarray(const_value(other), dtype=np.float64).reshape(-1))
        return p

    def write(self, graph: gs.Graph, p: LinearParams) -> None:
        n = self.node
        dt = _dtype(n.inputs[1])
        base = n.name or "dense"
        if n.op == "Gemm":
            new = [n.inputs[0], make_const(graph, f"{base}.weight", p.weight.astype(dt))] + (
                [make_const(graph, f"{base}.bias", p.bias.astype(dt))] if p.bias is not None else [])
            n.inputs.clear()
            n.inputs.extend(new)
            n.attrs.update(transA=0, transB=1, alpha=1.0, beta=1.0)
            return
        n.inputs[1] = make_const(graph, f"{base}.weight", np.ascontiguousarray(p.weight.T).astype(dt))
        if p.bias is None:
            if self.bias_add is not None:
                a = self.bias_add
                i = 1 if a.inputs[0] is n.outputs[0] else 0
                a.inputs[i] = make_const(graph, f"{base}.bias", np.zeros(p.weight.shape[0], dt))
            return
        bias = make_const(graph, f"{base}.bias", p.bias.astype(dt))
        if self.bias_add is not None:
            a = self.bias_add
            i = 1 if a.inputs[0] is n.outputs[0] else 0
            a.inputs[i] = bias
            return
        self.bias_add = add_after(graph, n.outputs[0], bias, "mm", f"{base}_bias_add")   # an Add after the MatMul


def _dtype(t) -> np.dtype:
    v = const_value(t)
    return v.dtype if v is not None and v.dtype.kind == "f" else np.dtype(np.float32)


def linear_view(node, graph_outputs: set | None = None):
    return ConvView.of(node) or DenseView.of(node, graph_outputs)


def _from_constants(t, depth: int = 8) -> bool:
    """Whether `t` is computed from constants alone (a weight a DequantizeLinear or Cast makes at run time)."""
    if const_value(t) is not None:
        return True
    p = t.inputs[0] if t.inputs else None
    if p is None or depth == 0 or any(isinstance(v, gs.Graph) for v in p.attrs.values()):
        return False
    ins = [i for i in p.inputs if i is not None and i.name]
    return bool(ins) and all(_from_constants(i, depth - 1) for i in ins)


def _computed(t) -> str:
    """How a weight / bias that is no constant is made: a graph input, or computed from constants at run time."""
    if not t.inputs:
        return "is a graph input (set at run time)"
    p = t.inputs[0]
    if p.op == "DequantizeLinear":
        return (f"is a quantized weight (DequantizeLinear {p.name or t.name}); merges need float weights: collapse "
                "the float model, then quantize")
    return f"is computed at run time ({p.op} {p.name or t.name}); fold constants first (onnxslim, onnxsim)"


def why_not_view(node) -> str | None:
    """Why a Conv / ConvTranspose / Gemm / MatMul is no ConvView / DenseView (so no merge reads it), or None when it
    is one, or is a product of two activations (attention), or the reason is not one a user can act on. What the
    merge note says for two linear ops left back to back."""
    if node is None or (node.domain or "") not in ("", "ai.onnx"):
        return None
    op = node.op
    if op == "ConvTranspose":
        return "ConvTranspose is not merged (no exact rule for a transposed conv yet)"
    if op not in ("Conv", "Gemm", "MatMul") or len(node.inputs) < 2 or linear_view(node) is not None:
        return None
    x, w = node.inputs[0], node.inputs[1]
    if op == "MatMul":
        if _from_constants(x) and not _from_constants(w):
            return "its constant is the left operand (W @ x); only x @ W is merged"
        if const_value(w) is not None:
            return f"its weight has rank {const_value(w).ndim}; only 2-D weights are merged"
        return f"its weight {w.name} {_computed(w)}" if _from_constants(w) else None
    if const_value(w) is None:
        return f"its weight {w.name} {_computed(w)}" if _from_constants(w) or not w.inputs else None
    if len(node.inputs) > 2 and node.inputs[2].name and const_value(node.inputs[2]) is None:
        b = node.inputs[2]
        return f"its bias {b.name} {_computed(b)}" if _from_constants(b) or not b.inputs else None
    if op == "Gemm" and int(node.attrs.get("transA", 0)):
        return "Gemm with transA=1 is not merged"
    if op == "Gemm":
        return "its C operand is a full matrix (not one bias per output)"
    if all(int(d) == 1 for d in node.attrs.get("dilations", [1])):
        return "auto_pad on an input of unknown size (--input-shape fixes it)"
    return None
