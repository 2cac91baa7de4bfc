"""Activation patterns: find every nonlinearity the tool can collapse, as one unit with one key.

Single-op activations are matched by op type. Activations that exporters spell out as several
elementwise nodes (SiLU = x*sigmoid(x), GELU = x*0.5*(1+erf(x/sqrt2)), tanh-GELU, decomposed
HardSwish, Mish) are found structurally -- a region of scalar-constant elementwise ops with a
single non-constant input -- and then identified by evaluating the region on probe points and
comparing with the known function. A region that matches nothing is left alone, never guessed.

Each activation also knows its *linear regime* (the branch it follows when "always on"): that is
what linearize substitutes. For almost all it is the identity; SELU's is lambda*x and
HardSigmoid's is alpha*x+beta (both then fold into the neighbouring linear op). Regimes, reference
functions and which kinds are collapsible come from the one catalogue, core/activations.py; this
file only maps ONNX nodes to its kinds and params.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from ..core import activations as catalogue
from ..core import gates
from ..core.nonlinear_ops import NONLINEAR_OPS   # always nonlinear: depth accounting, "ops left alone" listings
from .graph import const_value, toposort

# op types that are always elementwise and cheap to evaluate on probe points
_ELEMENTWISE = {"Mul", "Add", "Sub", "Div", "Erf", "Tanh", "Sigmoid", "Pow", "Relu", "Clip",
                "HardSigmoid", "Softplus", "Exp", "Neg", "Sqrt", "Reciprocal", "Max", "Min",
                "Identity", "Abs", "Greater", "Less", "Where"}   # dynamo's Softplus: Where(x > 20, x, Softplus(x))


@dataclass
class Activation:
    """One collapsible activation: a region of nodes computing y = f(x) elementwise."""
    name: str                    # the ONNX node name that produces y (the primary key)
    kind: str                    # relu, relu6, clip, leaky_relu, prelu, hardswish, hardsigmoid, silu, gelu, ...
    nodes: list                  # gs.Node objects of the region (anchor last)
    input: object                # gs.Variable x
    output: object               # gs.Variable y
    linear_scale: float = 1.0    # linear regime y = scale*x + shift
    linear_shift: float = 0.0
    params: dict = field(default_factory=dict)   # e.g. slope for LeakyRelu / PRelu values
    keys: list = field(default_factory=list)     # filled by keys.resolve_keys, most specific first
    module_path: str | None = None               # torch module path, when an exporter left one
    site: str | None = None                      # call-site key: module_path, or module_path:i when shared
    named: bool = False                          # keyed by its node names before its root key (keys.resolve_keys)

    @property
    def node_names(self) -> list[str]:
        return [n.name for n in self.nodes]

    @property
    def is_identity_when_linear(self) -> bool:
        return self.linear_scale == 1.0 and self.linear_shift == 0.0


def _scalar(t) -> float | None:
    v = const_value(t)
    if v is None or v.size != 1:
        return None
    return float(v.reshape(()))


def _clip_bounds(node) -> tuple[float | None, float | None, bool]:
    """(min, max, understood) of a Clip in either opset form."""
    lo = node.attrs.get("min")
    hi = node.attrs.get("max")
    ok = True
    if len(node.inputs) > 1 and node.inputs[1].name:
        lo = _scalar(node.inputs[1])
        ok &= lo is not None
    if len(node.inputs) > 2 and node.inputs[2].name:
        hi = _scalar(node.inputs[2])
        ok &= hi is not None
    return lo, hi, ok


def _scalar_operand(node) -> tuple[float, object] | None:
    """(c, x) of a two-input elementwise node (Max, Min, Mul) of one float tensor x and a float scalar constant c
    (an initializer or a Constant node; shape () or (1,): the output has x's shape, so the identity replaces it
    exactly), else None. Integer operands (shape arithmetic) are no activation."""
    if len(node.inputs) != 2 or len(node.outputs) != 1:
        return None
    consts = [const_value(t) for t in node.inputs]
    if sum(c is None for c in consts) != 1:
        return None
    c = next(c for c in consts if c is not None)
    if c.size != 1 or c.ndim > 1 or c.dtype.kind != "f":
        return None
    x = node.inputs[0] if consts[0] is None else node.inputs[1]
    return float(c.reshape(())), x


def _max_scalar(node) -> tuple[float, object] | None:
    """(c, x) of Max(x, c) (_scalar_operand): torch.export writes x.clamp(min=c) / clamp_min as this Max, where
    the TorchScript exporter writes Clip(x, c) (the same activation, and the same key, on both exporters)."""
    return _scalar_operand(node)


def _single_op(node) -> Activation | None:
    if not node.inputs or not node.outputs:
        return None
    op = node.op
    x, y = node.inputs[0], node.outputs[0]

    def act(kind, params=None):
        if not catalogue.is_collapsible(kind):
            return None  # e.g. Softplus: kept and listed as nonlinear
        scale, shift = catalogue.linear_regime(kind, params)
        return Activation(node.name, kind, [node], x, y, linear_scale=scale, linear_shift=shift,
                          params=dict(params or {}))
    if op == "Max" and (node.domain or "") in ("", "ai.onnx"):
        lo_x = _max_scalar(node)
        if lo_x is None:
            return None
        lo, x = lo_x
        if catalogue.is_eps_guard(lo, None):
            return None   # clamp_min(eps) before a division, as the Clip form below
        return act("clip", params={"min": lo})
    if (node.domain or "") not in ("", "ai.onnx", "com.microsoft"):
        return None
    if op == "Relu":
        return act("relu")
    if op == "Clip":
        lo, hi, ok = _clip_bounds(node)
        if not ok:
            return None
        if catalogue.is_eps_guard(lo, None if hi is None or math.isinf(hi) else hi):
            return None   # clamp_min(eps) before a division (F.normalize): no activation
        if lo == 0.0 and hi == 6.0:
            return act("relu6")
        if lo is not None and hi is not None and lo < hi:
            return act("clip", params={"min": lo, "max": hi})
        if lo is not None and hi is None:
            return act("clip", params={"min": lo})
        return None
    if op == "LeakyRelu":
        return act("leaky_relu", params={"alpha": float(node.attrs.get("alpha", 0.01))})
    if op == "PRelu":
        slope = const_value(node.inputs[1])
        if slope is None:
            return None
        return act("prelu", params={"slope": np.asarray(slope, dtype=np.float64)})
    if op == "HardSwish":
        return act("hardswish")
    if op == "HardSigmoid":
        a = float(node.attrs.get("alpha", 0.2))
        b = float(node.attrs.get("beta", 0.5))
        return act("hardsigmoid", params={"alpha": a, "beta": b})
    if op == "Elu":
        return act("elu", params={"alpha": float(node.attrs.get("alpha", 1.0))})
    if op == "Celu":
        return act("celu", params={"alpha": float(node.attrs.get("alpha", 1.0))})
    if op == "Selu":
        return act("selu", params={"gamma": float(node.attrs.get("gamma", catalogue.SELU_GAMMA)),
                                   "alpha": float(node.attrs.get("alpha", catalogue.SELU_ALPHA))})
    if op == "Gelu":  # opset 20, or com.microsoft
        approx = node.attrs.get("approximate", "none")
        approx = approx.decode() if isinstance(approx, bytes) else approx
        return act("gelu_tanh" if approx == "tanh" else "gelu")
    if op == "FastGelu" and node.domain == "com.microsoft" and len(node.inputs) == 1:
        return act("gelu_tanh")
    if op == "Mish":
        return act("mish")
    if op == "Softplus":
        return act("softplus", params={"beta": 1.0})  # not collapsible: None
    return None


# ----------------------------------------------------------------- fused (multi-node) patterns

def _erf(v):
    return np.vectorize(math.erf)(v)


_PROBE = gates.PROBE


def _eval_region(nodes: list, x_name: str, probe: np.ndarray) -> np.ndarray | None:
    """Evaluate an elementwise region in float64; None if it uses something non-scalar."""
    env = {x_name: probe}

    def val(t):
        if t.name in env:
            return env[t.name]
        c = const_value(t)
        if c is None or c.size != 1:
            raise KeyError(t.name)
        return float(c.reshape(()))

    try:
        with np.errstate(all="ignore"):
            for n in nodes:
                ins = [val(t) if t.name else None for t in n.inputs]
                op = n.op
                if op == "Mul":
                    r = ins[0] * ins[1]
                elif op == "Add":
                    r = ins[0] + ins[1]
                elif op == "Sub":
                    r = ins[0] - ins[1]
                elif op == "Div":
                    r = ins[0] / ins[1]
                elif op == "Erf":
                    r = _erf(ins[0])
                elif op == "Tanh":
                    r = np.tanh(ins[0])
                elif op == "Sigmoid":
                    r = 1.0 / (1.0 + np.exp(-ins[0]))
                elif op == "Pow":
                    r = np.power(ins[0], ins[1])
                elif op == "Relu":
                    r = np.maximum(ins[0], 0.0)
                elif op == "Clip":
                    lo, hi, ok = _clip_bounds(n)
                    if not ok:
                        return None
                    r = np.clip(ins[0], -np.inf if lo is None else lo, np.inf if hi is None else hi)
                elif op == "HardSigmoid":
                    a, b = float(n.attrs.get("alpha", 0.2)), float(n.attrs.get("beta", 0.5))
                    r = np.clip(a * ins[0] + b, 0.0, 1.0)
                elif op == "Softplus":
                    r = np.log1p(np.exp(ins[0]))
                elif op == "Exp":
                    r = np.exp(ins[0])
                elif op == "Neg":
                    r = -ins[0]
                elif op == "Sqrt":
                    r = np.sqrt(ins[0])
                elif op == "Reciprocal":
                    r = 1.0 / ins[0]
                elif op == "Max":
                    r = np.maximum(ins[0], ins[1])
                elif op == "Min":
                    r = np.minimum(ins[0], ins[1])
                elif op == "Abs":
                    r = np.abs(ins[0])
                elif op == "Identity":
                    r = ins[0]
                elif op == "Greater":
                    r = ins[0] > ins[1]
                elif op == "Less":
                    r = ins[0] < ins[1]
                elif op == "Where":
                    r = np.where(ins[0], ins[1], ins[2])
                else:
                    return None
                env[n.outputs[0].name] = np.broadcast_to(np.asarray(r, dtype=np.float64), probe.shape)
    except KeyError:
        return None
    return env[nodes[-1].outputs[0].name]


def _classify(nodes: list, x_name: str) -> str | None:
    return gates.identify_region(_eval_region(nodes, x_name, _PROBE), _precision(nodes))


def _precision(nodes: list) -> str:
    """The coarsest float type among a region's constants (a float16 model's 0.5, 1.4140625): how closely
    its values can follow an activation's (gates.REGION_TOLERANCE)."""
    found = "float32"
    for n in nodes:
        for t in n.inputs:
            c = const_value(t) if t.name else None
            if c is None:
                continue
            name = str(getattr(c, "dtype", ""))
            if "bfloat16" in name:
                return "bfloat16"
            if name == "float16":
                found = "float16"
    return found


def _grow_region(anchor, order: dict, claimed: set):
    """core/gates.grow_region on onnx-graphsurgeon nodes and tensors (constants are not operands)."""
    return gates.grow_region(
        anchor, operands=lambda n: [t for t in n.inputs if t.name and const_value(t) is None],
        producer=lambda t: t.inputs[0] if t.inputs else None, consumers=lambda t: t.outputs,
        expandable=lambda n: n.op in _ELEMENTWISE and id(n) not in claimed and len(n.outputs) == 1,
        order=lambda n: order[id(n)])


def _fused(graph: gs.Graph, order: dict, claimed: set, outputs: set) -> list[Activation]:
    found = []
    for anchor in sorted(graph.nodes, key=lambda n: -order[id(n)]):
        if anchor.op not in ("Mul", "Div") or id(anchor) in claimed:
            continue
        best = None
        for nodes, x in _grow_region(anchor, order, claimed):
            # intermediate tensors must not be graph outputs
            if any(n.outputs[0].name in outputs for n in nodes[:-1]):
                break
            kind = _classify(nodes, x.name)
            if kind:
                best = (nodes, x, kind)
        if best:
            nodes, x, kind = best
            for n in nodes:
                claimed.add(id(n))
            scale, shift = catalogue.linear_regime(kind)
            found.append(Activation(anchor.name, kind, nodes, x, anchor.outputs[0], linear_scale=scale,
                                    linear_shift=shift))
    return found


# ----------------------------------------------------------------- two-op spellings of single-op kinds

_STD = ("", "ai.onnx")


def _sole_reader(t, outputs: set, claimed: set):
    """The one node reading tensor t, when t is read by that node alone and is no graph output, else None."""
    if t.name in outputs or len(t.outputs) != 1:
        return None
    n = t.outputs[0]
    return None if id(n) in claimed or (n.domain or "") not in _STD else n


def _two_op_forms(graph: gs.Graph, claimed: set, outputs: set) -> list[Activation]:
    """Activations exporters spell as two elementwise ops (tf2onnx, TFLite converters), found as one site with
    one key, so collapsing it removes both ops:
    - Min(Max(x, lo), hi) and Max(Min(x, hi), lo), scalar lo < hi: a Clip (ReLU6 for 0, 6). Matched alone, the
      Max was a clip(min) site and collapsing it left the Min in the graph. A bound that is not a scalar (per
      channel, (C, 1, 1)) is no ReLU6: the Max alone stays a clip(min) site (its collapse is exact, the Min kept);
    - Max(x, a*x), the Mul reading the same tensor x and a scalar 0 < a < 1: LeakyReLU(alpha=a). Any other
      Max of a product (another tensor, a >= 1, a per-channel a) is left alone."""
    found = []
    for first in list(graph.nodes):
        if id(first) in claimed or (first.domain or "") not in _STD or first.op not in ("Max", "Min", "Mul"):
            continue
        inner = _scalar_operand(first)
        if inner is None:
            continue
        c1, x = inner
        second = _sole_reader(first.outputs[0], outputs, claimed)
        if second is None or len(second.outputs) != 1:
            continue
        if first.op == "Mul":
            if second.op != "Max" or len(second.inputs) != 2 or not 0.0 < c1 < 1.0:
                continue
            mid = first.outputs[0]
            other = second.inputs[1] if second.inputs[0] is mid else second.inputs[0]
            if other is not x or other is mid:
                continue   # Max(y, a*x) of another tensor y is no LeakyReLU
            kind, params = "leaky_relu", {"alpha": c1}
        else:
            if second.op != ({"Max": "Min", "Min": "Max"}[first.op]):
                continue
            outer = _scalar_operand(second)
            if outer is None:
                continue
            lo, hi = (c1, outer[0]) if first.op == "Max" else (outer[0], c1)
            if not lo < hi:
                continue   # a constant output, not a clip: the single-op forms below take what they can
            kind, params = ("relu6", {}) if (lo, hi) == (0.0, 6.0) else ("clip", {"min": lo, "max": hi})
        claimed.update((id(first), id(second)))
        scale, shift = catalogue.linear_regime(kind, params)
        found.append(Activation(second.name, kind, [first, second], x, second.outputs[0], linear_scale=scale,
                                linear_shift=shift, params=params))
    return found


def find_activations(graph: gs.Graph) -> list[Activation]:
    """All collapsible activations in topological order."""
    toposort(graph)
    order = {id(n): i for i, n in enumerate(graph.nodes)}
    outputs = {t.name for t in graph.outputs}
    claimed: set = set()
    acts = _fused(graph, order, claimed, outputs)
    acts += _two_op_forms(graph, claimed, outputs)
    for n in graph.nodes:
        if id(n) in claimed:
            continue
        a = _single_op(n)
        if a is not None:
            claimed.add(id(n))
            acts.append(a)
    acts.sort(key=lambda a: order[id(a.nodes[-1])])
    return acts


def unknown_nonlinear_nodes(graph: gs.Graph, activations: list[Activation]) -> list:
    """Nonlinear ops that are not part of a recognised activation: left alone and listed."""
    inside = {id(n) for a in activations for n in a.nodes}
    return [n for n in graph.nodes if id(n) not in inside and n.op in NONLINEAR_OPS]
