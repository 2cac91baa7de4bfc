"""Relax-level entry point: replace chosen activations with their linear regime ("linearize" them).

For users who already hold a Relax ``IRModule`` (e.g. from
``tvm.relax.frontend.onnx.from_onnx`` or ``from_exported_program``).  The full
collapse pipeline of ``collapse_passes`` -- pick activations, remove them, merge
the now-adjacent linear ops exactly, verify with onnxruntime -- works on the ONNX
graph *before* import; this pass only does the first step inside TVM, and
:func:`collapse_sequence` lets ``FoldConstant``/``CanonicalizeBindings``/
``DeadCodeElimination`` clean up afterwards.

Recognised activations (Relax ops as produced by TVM 0.27's importers):

=============  ====================================================================
kind           pattern
=============  ====================================================================
relu           ``R.nn.relu(x)``
relu6          ``R.nn.relu6(x)``, ``R.clip(x, 0, 6)``, or a clip pair with bounds 0 and 6 (ONNX
               ``Min(Max(x, 0), 6)`` in either nesting too: see below)
clip           a lower bound, then optionally an upper one: ``R.clip(x, lo, hi)``; ONNX ``Clip``
               as from_onnx imports it, ``call_tir(maximum, x, lo)`` then ``call_tir(minimum, .,
               hi)`` (bounds behind its ``where(isnan(c), -inf, c)`` guard); hardtanh as
               from_exported_program writes it, ``R.clip(x, lo, inf)`` then ``R.clip(., -inf, hi)``.
               Not an activation (as in the ONNX and torch front ends): an upper bound alone, and
               ``clamp_min(eps)`` with eps <= 1e-4 before a division (``catalogue.is_eps_guard``)
leakyrelu      ``R.nn.leakyrelu(x, alpha)``, or ``maximum(x, alpha * x)`` (either order; scalar
               0 < alpha < 1, the product read by the maximum alone), as the ONNX and torch front ends
prelu          ``R.nn.prelu(x, alpha)``
gelu           ``R.nn.gelu(x)``, or the erf formula as several ops (both torch ONNX exporters)
gelu_tanh      ``R.nn.gelu_tanh(x)``, or the tanh formula as several ops
silu           ``R.nn.silu(x)``
swish          ``x * R.sigmoid(x)`` (from_onnx's SiLU, and from_exported_program's after decomposition)
hardswish      ``x * clip(x + 3, 0, 6) / 6`` in either order of ops (from_onnx, from_exported_program)
hardsigmoid    ``clip(alpha * x + beta, 0, 1)`` (from_onnx), ``relu6(x + 3) / 6``
               (from_exported_program); regime ``alpha * x + beta``
mish           ``x * tanh(softplus(x))``
selu           ``R.nn.selu(x)``, or ``gamma * (relu(x) - alpha * relu(1 - exp(x)))``; regime ``gamma * x``
elu, celu      ``relu(x) - alpha * relu(1 - exp(x))`` (both importers' ELU), CELU's ``where`` form
=============  ====================================================================

ONNX ``Max`` / ``Min`` of two tensors, which from_onnx writes as ``R.max`` / ``R.min`` over axis 0 of
``R.stack`` of both operands broadcast to the output's shape, are read as ``R.maximum`` / ``R.minimum`` (the stack
and broadcasts go with the site), so ``Min(Max(x, lo), hi)`` in either nesting is one clip / relu6 site and
``Max(x, a*x)`` one leakyrelu site, with the kinds the one-op spellings get: the ONNX front end's
``_two_op_forms``.

Softplus as from_onnx writes it (``max(x, 0) + log(1 + exp(-|x|))``) is found too, so that its ``max`` is no
"clip", and is not listed: the catalogue marks it not collapsible.

Activations written as several ops are found by the rule the ONNX and fx front ends use
(``collapse_passes.core.gates``): a region of elementwise ops with scalar constants and one tensor
input, evaluated on probe points and identified against the catalogue; one site, anchored at its
last op, whose input is the region's. Linearizing it drops the region's other ops.

Each kind names an entry of the activation catalogue (``collapse_passes.core.activations``;
``leakyrelu`` is ``leaky_relu`` there, ``swish`` is ``silu``), which gives the linear regime the
activation becomes: the identity for all of the above but SELU (``gamma * x``) and HardSigmoid
(``alpha * x + beta``), as in the ONNX front end.

Activations are numbered per Relax function in dataflow order (the order of
their bindings), starting at 0; :func:`list_activations` shows the numbering.

Example::

    import tvm
    from tvm.relax.frontend.onnx import from_onnx
    from tvm_integration.relax_pass import collapse_sequence, list_activations

    mod = from_onnx(onnx.load("model.onnx"))
    print(list_activations(mod))          # [ActivationSite(index=0, kind='relu', ...), ...]
    mod = collapse_sequence([0, 2])(mod)  # activations #0 and #2 become identity
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Union

import numpy as np

from collapse_passes.core import activations as catalogue
from collapse_passes.core import gates

ACTIVATION_OPS: dict[str, str] = {
    "relax.nn.relu": "relu",
    "relax.nn.relu6": "relu6",
    "relax.nn.leakyrelu": "leakyrelu",
    "relax.nn.prelu": "prelu",
    "relax.nn.gelu": "gelu",
    "relax.nn.gelu_tanh": "gelu_tanh",
    "relax.nn.silu": "silu",
    "relax.nn.selu": "selu",
}
#: kinds of composites (several ops; core/gates identifies them): "swish" is x * sigmoid(x) (from_onnx's SiLU,
#: from_exported_program's after decomposition), the others the catalogue's names
COMPOSITE_KINDS = ("swish", "gelu", "gelu_tanh", "hardswish", "hardsigmoid", "mish", "elu", "celu", "selu")
KINDS = tuple(sorted(set(ACTIVATION_OPS.values()) | {"relu6", "clip"} | set(COMPOSITE_KINDS)))


@dataclass(frozen=True)
class ActivationSite:
    """One activation found in a Relax function.

    ``index``: position among the function's activations (dataflow order);
    ``kind``: see the module docstring; ``var_name``: name of the variable the
    activation output is bound to; ``function``: the Relax function's name.
    """

    index: int
    kind: str
    var_name: str
    function: str
    op: str


Selector = Union[int, str, Iterable[Union[int, str]], Callable[[ActivationSite], bool], None]


def _var_name(var) -> str:
    # TVM 0.27 unified the IR: relax.Var is tvm.ir.expr.Var and keeps its name in `.name`.
    for attr in ("name", "name_hint"):
        name = getattr(var, attr, None)
        if isinstance(name, str):
            return name
    return str(var)


def _key(obj) -> int:
    """Identity of the underlying C++ node.

    TVM 0.27 expression wrappers hash by *Python* object identity
    (``ExprOperand.__hash__ = object.__hash__``), so two wrappers of the same
    Var are different dict keys; key by the C++ handle instead.
    """
    return int(obj.__chandle__())


def _op_name(expr) -> str | None:
    import tvm

    if isinstance(expr, tvm.ir.Call) and isinstance(expr.op, tvm.ir.Op):
        return str(expr.op.name)
    return None


def _is_var(expr) -> bool:
    import tvm

    return isinstance(expr, tvm.ir.expr.Var)


# ----------------------------------------------------------------------------- function graph

#: elementwise Relax ops a composite activation may be made of (evaluated on gates.PROBE by _eval_node)
_ELEMENTWISE = {
    "relax.add", "relax.subtract", "relax.multiply", "relax.divide", "relax.power", "relax.erf", "relax.tanh",
    "relax.sigmoid", "relax.exp", "relax.log", "relax.negative", "relax.sqrt", "relax.rsqrt", "relax.abs",
    "relax.clip", "relax.maximum", "relax.minimum", "relax.nn.relu", "relax.nn.relu6", "relax.nn.softplus",
    "relax.nn.gelu", "relax.nn.gelu_tanh", "relax.nn.silu", "relax.greater", "relax.less", "relax.where",
}
#: where a composite ends: x * gate(x) (SiLU, GELU, HardSwish from from_onnx), (x * relu6(x + 3)) / 6
#: (HardSwish from from_exported_program), for HardSigmoid the clip of alpha * x + beta, and for the ELU
#: family relu(x) - alpha * relu(1 - exp(x)) (from_exported_program) or where(x > 0, x, ...) (CELU)
_ANCHORS = {"relax.multiply", "relax.divide", "relax.clip", "relax.maximum", "relax.minimum", "call_tir:maximum",
            "call_tir:minimum", "relax.add", "relax.subtract", "relax.where"}
#: from_onnx's Max / Min of two tensors: a reduction over a stack (_FunctionGraph._read_stacked_pairs)
_STACKED = {"relax.max": "relax.maximum", "relax.min": "relax.minimum"}


class _Node:
    """One binding of a Relax function: position, bound var, value, op name (_node_op). core/gates compares
    nodes by identity, so each binding has exactly one."""

    __slots__ = ("idx", "var", "value", "op")

    def __init__(self, idx, var, value, op):
        self.idx, self.var, self.value, self.op = idx, var, value, op


class _Value:
    """One Relax var (a binding's output or a parameter), canonical per C++ node for core/gates."""

    __slots__ = ("key", "var")

    def __init__(self, key, var):
        self.key, self.var = key, var


class _FunctionGraph:
    """The dataflow graph of a Relax function: producers, users (the function's result counts as a user)
    and scalar constants, for the single-op rules and core/gates' region growing."""

    OUTPUT = object()   # a user outside the bindings: the function's result

    def __init__(self, func):
        from tvm import relax

        self.nodes: list[_Node] = []
        self.producer: dict[int, _Node] = {}
        self.users: dict[int, list] = {}
        self._values: dict[int, _Value] = {}
        self.pair_args: dict[int, list] = {}     # _read_stacked_pairs: a reduction's two operands
        self.internal: dict[int, list] = {}      # ... and the stack / broadcast_to bindings it reads
        body = func.body
        if not isinstance(body, relax.SeqExpr):
            return
        for block in body.blocks:
            for binding in block.bindings:
                if not isinstance(binding, relax.VarBinding):
                    continue
                node = _Node(len(self.nodes), binding.var, binding.value, _node_op(binding.value))
                self.nodes.append(node)
                self.producer[_key(binding.var)] = node
                for v in relax.analysis.free_vars(binding.value):
                    self.users.setdefault(_key(v), []).append(node)
            for binding in block.bindings:   # MatchCast and the like read vars too
                if not isinstance(binding, relax.VarBinding):
                    for v in relax.analysis.free_vars(binding.value):
                        self.users.setdefault(_key(v), []).append(self.OUTPUT)
        for v in relax.analysis.free_vars(body.body):
            self.users.setdefault(_key(v), []).append(self.OUTPUT)
        self._read_stacked_pairs()

    def _read_stacked_pairs(self) -> None:
        """from_onnx writes an ONNX Max / Min of two tensors (Max(x, 0), Min(., 6), Max(x, a*x)) as R.max / R.min
        over axis 0 of R.stack of the operands, each broadcast_to the output's shape. Such a reduction is read as the
        elementwise R.maximum / R.minimum of its operands (its op, tensor_args and the operands' users), its stack
        and broadcast_to bindings as part of it (`internal`: dropped with it), so the bound and the LeakyReLU rules
        see it as they see R.maximum (from_exported_program's torch.maximum)."""
        for node in self.nodes:
            op = _STACKED.get(node.op)
            got = self._stacked_operands(node) if op else None
            if got is None:
                continue
            operands, internal = got
            node.op = op
            self.pair_args[node.idx], self.internal[node.idx] = operands, internal
            inside = {id(n) for n in internal}
            for v in operands:
                if _is_var(v):
                    users = [u for u in self.users.get(_key(v), []) if id(u) not in inside]
                    self.users[_key(v)] = users + [node]

    def _stacked_operands(self, node: _Node):
        """([a, b], [stack, broadcast_to nodes]) of R.max / R.min(R.stack((broadcast_to(a), broadcast_to(b)), 0), 0)
        whose stack and broadcasts are read by it alone and broadcast a tensor to its own shape (a scalar constant:
        any); else None."""
        import tvm

        v, attrs = node.value, node.value.attrs
        axes = getattr(attrs, "axis", None)
        if len(v.args) != 1 or not _is_var(v.args[0]) or axes is None or [int(a) for a in axes] != [0] \
                or bool(getattr(attrs, "keepdims", True)):
            return None
        stack = self.producer.get(_key(v.args[0]))
        if stack is None or stack.op != "relax.stack" or len(self.users.get(_key(stack.var), [])) != 1 \
                or not isinstance(stack.value.args[0], tvm.ir.Tuple):
            return None
        axis = getattr(stack.value.attrs, "axis", None)
        if axis is None or int(axis) != 0:
            return None
        fields = list(stack.value.args[0].fields)
        if len(fields) != 2:
            return None
        operands, internal = [], [stack]
        for f in fields:
            b = self.producer.get(_key(f)) if _is_var(f) else None
            if b is None or b.op != "relax.broadcast_to":
                operands.append(f)
                continue
            src = b.value.args[0]
            if len(self.users.get(_key(f), [])) != 1 or (_is_var(src) and not _same_type(f, src)) \
                    or (not _is_var(src) and self.scalar(src) is None):
                return None
            operands.append(src)
            internal.append(b)
        return operands, internal

    def value(self, var) -> _Value:
        k = _key(var)
        if k not in self._values:
            self._values[k] = _Value(k, var)
        return self._values[k]

    def const(self, expr, depth: int = 0):
        """numpy value of a one-element constant expression: a literal, or a var bound to isnan / where of
        literals (from_onnx guards Clip's bounds as where(isnan(c), -inf, c)); else None (weights are never
        copied to the host here)."""
        import tvm

        if depth > 4:
            return None
        if tvm.ir.is_prim_expr(expr):
            v = getattr(expr, "value", None)
            return np.float64(v) if isinstance(v, (int, float)) else None
        if isinstance(expr, tvm.ir.Constant):
            v = getattr(expr, "value", None)   # 0.27: the runtime tensor is .value (was .data)
            try:
                if int(np.prod(tuple(v.shape))) != 1:
                    return None
                return np.asarray(v.numpy())
            except Exception:  # noqa: BLE001 - not a host array: not a constant we can read
                return None
        if _is_var(expr):
            node = self.producer.get(_key(expr))
            if node is None:
                return None
            if isinstance(node.value, tvm.ir.Constant) or tvm.ir.is_prim_expr(node.value):
                return self.const(node.value, depth + 1)
            args = [self.const(a, depth + 1) for a in getattr(node.value, "args", [])]
            if node.op == "relax.isnan" and len(args) == 1 and args[0] is not None:
                return np.isnan(args[0])
            if node.op == "relax.where" and len(args) == 3 and all(a is not None for a in args):
                return np.where(*args)
        return None

    def scalar(self, expr) -> float | None:
        c = self.const(expr)
        if c is None or np.size(c) != 1 or np.asarray(c).dtype.kind not in "fiub":
            return None
        return float(np.asarray(c).reshape(-1)[0])

    def operands(self, node: _Node) -> list:
        """The non-constant tensor operands of a binding (core/gates: constants are not operands)."""
        return [self.value(a) for a in self.tensor_args(node) if _is_var(a) and self.const(a) is None]

    def tensor_args(self, node: _Node) -> list:
        if node.idx in self.pair_args:
            return list(self.pair_args[node.idx])
        return _tensor_args(node.value)


def _tensor_args(value) -> list:
    """The tensor arguments of a call: call_tir's argument tuple, else the call's args."""
    import tvm

    if _op_name(value) == "relax.call_tir":
        args = value.args[1]
        return list(args.fields) if isinstance(args, tvm.ir.Tuple) else [args]
    return list(getattr(value, "args", []) or [])


def _node_op(value) -> str | None:
    """Op name of a binding's value; ``call_tir`` kernels named maximum*/minimum* (ONNX Clip, Max/Min by a
    constant) as "call_tir:maximum" / "call_tir:minimum"."""
    name = _op_name(value)
    if name == "relax.call_tir":
        callee = str(getattr(value.args[0], "name_hint", ""))
        for k in ("maximum", "minimum"):
            if callee.startswith(k):
                return f"call_tir:{k}"
        return None
    return name


def _clip_like(g: _FunctionGraph, node: _Node):
    """(x, lo, hi) of a bound on one tensor x -- R.clip, R.nn.relu6, R.maximum / R.minimum or their call_tir
    kernels by a scalar constant; lo / hi are -inf / inf where there is no bound -- else None."""
    import math

    op = node.op
    if op == "relax.clip":
        lo, hi = g.scalar(node.value.args[1]), g.scalar(node.value.args[2])
        if lo is None or hi is None:
            return None
        return node.value.args[0], lo, hi
    if op == "relax.nn.relu6":
        return node.value.args[0], 0.0, 6.0
    if op in ("relax.maximum", "relax.minimum", "call_tir:maximum", "call_tir:minimum"):
        args = g.tensor_args(node)
        if len(args) != 2:
            return None
        consts = [g.scalar(a) for a in args]
        if sum(c is None for c in consts) != 1:
            return None
        x = args[0] if consts[0] is None else args[1]
        c = consts[1] if consts[0] is None else consts[0]
        if math.isnan(c):
            return None
        return (x, c, math.inf) if op.endswith("maximum") else (x, -math.inf, c)
    return None


def _clip_kind(lo: float, hi: float):
    """(kind, params) of a bound (lo, hi) as the catalogue's front ends read it, or None: an upper-only bound
    and a clamp_min(eps) before a division (catalogue.is_eps_guard) are no activations."""
    import math

    lo_ = None if math.isinf(lo) and lo < 0 else lo
    hi_ = None if math.isinf(hi) and hi > 0 else hi
    if lo_ is None or catalogue.is_eps_guard(lo_, hi_) or (hi_ is not None and lo_ >= hi_):
        return None
    if lo_ == 0.0 and hi_ == 6.0:
        return "relu6", {}
    return "clip", {"min": lo_, "max": hi_}


def _eval_node(g: _FunctionGraph, node: _Node, env: dict):
    """A region binding evaluated in float64 on the probe values in env (keyed by var); KeyError if it reads
    anything but the region and scalar constants."""
    import math

    def val(a):
        if _is_var(a) and _key(a) in env:
            return env[_key(a)]
        c = g.scalar(a)
        if c is None:
            raise KeyError("not a scalar")
        return c

    op = node.op
    if op in ("relax.clip", "relax.maximum", "relax.minimum", "call_tir:maximum", "call_tir:minimum",
              "relax.nn.relu6"):
        b = _clip_like(g, node)
        if b is None:
            raise KeyError("bound")
        return np.clip(val(b[0]), b[1], b[2])
    a = [val(x) for x in g.tensor_args(node)]
    if op == "relax.add":
        return a[0] + a[1]
    if op == "relax.subtract":
        return a[0] - a[1]
    if op == "relax.multiply":
        return a[0] * a[1]
    if op == "relax.divide":
        return a[0] / a[1]
    if op == "relax.power":
        return np.power(a[0], a[1])
    if op == "relax.greater":
        return a[0] > a[1]
    if op == "relax.less":
        return a[0] < a[1]
    if op == "relax.where":
        return np.where(a[0], a[1], a[2])
    if op == "relax.erf":
        return np.vectorize(math.erf, otypes=[np.float64])(a[0])
    unary = {"relax.tanh": np.tanh, "relax.sigmoid": lambda x: 1.0 / (1.0 + np.exp(-x)), "relax.exp": np.exp,
             "relax.log": np.log, "relax.negative": np.negative, "relax.sqrt": np.sqrt,
             "relax.rsqrt": lambda x: 1.0 / np.sqrt(x), "relax.abs": np.abs,
             "relax.nn.relu": lambda x: np.maximum(x, 0.0)}
    if op in unary:
        return unary[op](a[0])
    if op == "relax.nn.softplus":
        beta = float(getattr(node.value.attrs, "beta", 1.0))
        return np.logaddexp(0.0, beta * a[0]) / beta
    if op in ("relax.nn.gelu", "relax.nn.gelu_tanh", "relax.nn.silu"):
        return catalogue.reference(op.rsplit(".", 1)[1], a[0])
    raise KeyError(op)


def _eval_region(g: _FunctionGraph, nodes: list, x: _Value):
    env = {x.key: gates.PROBE.copy()}
    try:
        with np.errstate(all="ignore"):
            for n in nodes:
                env[_key(n.var)] = np.broadcast_to(np.asarray(_eval_node(g, n, env), np.float64), gates.PROBE.shape)
    except (KeyError, IndexError, TypeError, ValueError):
        return None
    return env[_key(nodes[-1].var)]


def _identify(values):
    """(kind, params) of a region's values on gates.PROBE: a gated kind (gates.identify_region, the ONNX and
    fx front ends' rule); else, as TVM's importers decompose them, a HardSigmoid clip(alpha*x + beta, 0, 1)
    that saturates on both sides within the probe (from_onnx; from_exported_program: relu6(x + 3) / 6), the
    ELU family, or Softplus (not collapsible: found so that the max(x, 0) inside it is no "clip")."""
    kind = gates.identify_region(values)
    if kind:
        return kind, {}
    if values is None or not np.all(np.isfinite(values)):
        return None
    return _identify_hardsigmoid(values) or _identify_elu_family(values) or (
        ("softplus", {}) if np.allclose(values, catalogue.reference("softplus", gates.PROBE), rtol=1e-4, atol=1e-5)
        else None)


def _identify_hardsigmoid(values):
    p = gates.PROBE
    inside = (values > 1e-6) & (values < 1.0 - 1e-6)
    if inside.sum() < 2 or not (values <= 1e-12).any() or not (values >= 1.0 - 1e-12).any():
        return None
    alpha, beta = np.polyfit(p[inside], values[inside], 1)
    params = {"alpha": float(alpha), "beta": float(beta)}
    if alpha > 0 and np.allclose(values, catalogue.reference("hardsigmoid", p, params), rtol=1e-4, atol=1e-5):
        return "hardsigmoid", params
    return None


def _identify_elu_family(values):
    """(kind, params) of ELU / SELU / CELU values on gates.PROBE (params fitted at the probe's ends), else
    None. from_exported_program writes ELU and SELU as relu(x) - alpha * relu(1 - exp(x)) (times gamma), which
    was listed as two ReLUs: linearizing one of them broke the ELU."""
    p = gates.PROBE
    gamma, low = values[-1] / p[-1], values[0]
    if not (gamma > 0 and low < -1e-6):
        return None
    alpha = low / (gamma * np.expm1(p[0]))
    celu = -low   # CELU's alpha = -f(-inf); refined below as -f(x0) / (1 - exp(x0 / alpha))
    for _ in range(20):
        celu = -low / -np.expm1(p[0] / celu)
    candidates = ([("elu", {"alpha": float(alpha)}), ("celu", {"alpha": float(celu)})] if abs(gamma - 1.0) < 1e-5
                  else [])
    candidates.append(("selu", {"gamma": float(gamma), "alpha": float(alpha)}))
    for kind, params in candidates:
        if np.allclose(values, catalogue.reference(kind, p, params), rtol=1e-4, atol=1e-5):
            return kind, params
    return None


def _same_type(a, b) -> bool:
    """a and b have the same struct info (a composite replaced by its input must not change a shape)."""
    from tvm_ffi import structural_equal   # 0.27: no longer tvm.ir.structural_equal

    ta = getattr(a, "struct_info", None) or getattr(a, "ty", None)
    tb = getattr(b, "struct_info", None) or getattr(b, "ty", None)
    return ta is not None and tb is not None and bool(structural_equal(ta, tb))


def _composites(g: _FunctionGraph, claimed: set) -> list:
    """(anchor, kind, params, x var, region) of every composite activation: core/gates' rule, as the ONNX and
    fx front ends find x*sigmoid(x), the erf / tanh GELU and HardSwish written as several ops."""
    found = []

    def expandable(n):
        return n.idx not in claimed and (n.op in _ELEMENTWISE or (n.op or "").startswith("call_tir:"))

    for anchor in reversed(g.nodes):
        op = anchor.op or ""
        if anchor.idx in claimed or op not in _ANCHORS or not expandable(anchor):
            continue
        best = None
        for nodes, x in gates.grow_region(
                anchor, operands=g.operands, producer=lambda v: g.producer.get(v.key),
                consumers=lambda v: g.users.get(v.key, []), expandable=expandable, order=lambda n: n.idx):
            got = _identify(_eval_region(g, nodes, x))
            if got and _same_type(anchor.var, x.var):
                best = (nodes, x, got)
        if best:
            nodes, x, (kind, params) = best
            claimed.update(n.idx for n in nodes)
            if catalogue.is_collapsible(kind):   # Softplus (from_onnx: max(x, 0) + log(1 + exp(-|x|))): no site
                found.append((anchor, "swish" if kind == "silu" else kind, params, x.var, nodes))
    return found


def _leaky_pair(g: _FunctionGraph, node: _Node, claimed: set):
    """(alpha, x, the multiply) of maximum(x, alpha * x) in either operand order, alpha a scalar in (0, 1) and the
    product read by this maximum alone: LeakyReLU as tf2onnx / TFLite converters write it, by the ONNX front end's
    rule (onnx/patterns._two_op_forms; torch's matchers take torch.maximum(x, a * x) alike), else None. A maximum
    of a product of another tensor, alpha >= 1 or a per-channel alpha is no LeakyReLU."""
    if node.op not in ("relax.maximum", "call_tir:maximum"):
        return None
    args = g.tensor_args(node)
    if len(args) != 2 or not all(_is_var(a) and g.const(a) is None for a in args):
        return None
    for x, prod in (args, args[::-1]):
        inner = g.producer.get(_key(prod))
        if inner is None or inner.idx in claimed or inner.op != "relax.multiply" \
                or len(g.users.get(_key(prod), [])) != 1:
            continue
        margs = g.tensor_args(inner)
        if len(margs) != 2:
            continue
        consts = [g.scalar(a) for a in margs]
        if sum(c is None for c in consts) != 1:
            continue
        alpha, y = (consts[1], margs[0]) if consts[0] is None else (consts[0], margs[1])
        if _is_var(y) and _key(y) == _key(x) and 0.0 < alpha < 1.0:
            return alpha, x, inner
    return None


def _single(g: _FunctionGraph, node: _Node, claimed: set):
    """(kind, params, input, absorbed nodes) of a one-op activation, else None. A lower bound followed by an
    upper one on a value used nowhere else (from_onnx's Clip: maximum then minimum; from_exported_program's
    hardtanh: clip(x, lo, inf) then clip(., -inf, hi)) is one activation, anchored at the second."""
    import math

    if node.op in ACTIVATION_OPS:
        return ACTIVATION_OPS[node.op], {}, node.value.args[0], []
    leaky = _leaky_pair(g, node, claimed)
    if leaky is not None:
        alpha, x, inner = leaky
        return "leakyrelu", {"alpha": alpha}, x, [inner]
    b = _clip_like(g, node)
    if b is None:
        return None
    x, lo, hi = b
    absorbed = []
    inner = g.producer.get(_key(x)) if _is_var(x) else None
    if inner is not None and inner.idx not in claimed and len(g.users.get(_key(x), [])) == 1:
        ib = _clip_like(g, inner)
        if ib is not None:
            ix, ilo, ihi = ib
            lower_then_upper = math.isinf(ihi) and math.isinf(lo) and not math.isinf(hi)
            upper_then_lower = math.isinf(ilo) and math.isinf(hi) and not math.isinf(lo)
            if (lower_then_upper or upper_then_lower) and max(ilo, lo) < min(ihi, hi):
                x, lo, hi, absorbed = ix, max(ilo, lo), min(ihi, hi), [inner]
    kind = _clip_kind(lo, hi)
    if kind is None:
        return None
    return kind[0], kind[1], x, absorbed


def _scan_function(func, func_name: str):
    """[(ActivationSite, bound var, input expr, params, vars of the ops inside it)] of a Relax function, in
    first (they claim their ops), then one-op activations."""
    g = _FunctionGraph(func)
    claimed: set = set()
    found = [(a, kind, params, x, [n for n in nodes if n is not a]) for a, kind, params, x, nodes in
             _composites(g, claimed)]
    singles = {}
    for node in g.nodes:
        if node.idx in claimed:
            continue
        got = _single(g, node, claimed)
        if got is None:
            continue
        kind, params, x, absorbed = got
        for inner in absorbed:   # listed on its own a moment ago: now part of this one
            singles.pop(inner.idx, None)
        singles[node.idx] = (node, kind, params, x, absorbed)
    found.extend(singles.values())
    found.sort(key=lambda t: t[0].idx)
    sites = []
    for anchor, kind, params, x, inner in found:
        site = ActivationSite(index=len(sites), kind=kind, var_name=_var_name(anchor.var), function=func_name,
                              op=_op_name(anchor.value) or "")
        # a Max / Min read through its stack and broadcasts (_read_stacked_pairs): those go with it
        inside = list(inner) + [m for n in [anchor, *inner] for m in g.internal.get(n.idx, [])]
        sites.append((site, anchor.var, x, params, [n.var for n in inside]))
    return sites


def _relax_functions(mod, who: str) -> dict:
    """{name: Relax function} of an IRModule; TypeError in one line for anything else (a Relax function, an
    ONNX model), which failed deep inside TVM or with an AttributeError."""
    import tvm
    from tvm import relax

    if not isinstance(mod, tvm.IRModule):
        raise TypeError(f"{who}: expected a tvm.IRModule (from_onnx / from_exported_program), got "
                        f"{type(mod).__name__}; wrap a Relax function as tvm.IRModule({{'main': func}})")
    return {gv.name_hint: func for gv, func in mod.functions.items() if isinstance(func, relax.Function)}


def _check_func_names(wanted, functions: dict, who: str) -> None:
    unknown = sorted(set(wanted) - set(functions))
    if unknown:
        raise ValueError(f"{who}: no Relax function named {', '.join(map(repr, unknown))}; the module has "
                         f"{', '.join(map(repr, sorted(functions))) or 'none'}")


def list_activations(mod, func_name: str | None = None) -> list[ActivationSite]:
    """Activations of ``mod`` (all Relax functions, or just ``func_name``) in dataflow order."""
    functions = _relax_functions(mod, "list_activations")
    if func_name is not None:
        _check_func_names([func_name], functions, "list_activations")
    out: list[ActivationSite] = []
    for name, func in functions.items():
        if func_name is None or name == func_name:
            out.extend(site for site, *_ in _scan_function(func, name))
    return out


def _make_predicate(selection: Selector) -> Callable[[ActivationSite, int], bool]:
    """A predicate over (site, number of sites in its function)."""
    if selection is None or (isinstance(selection, str) and selection == "all"):
        return lambda site, n: True
    if callable(selection) and not isinstance(selection, (str, bytes)):
        return lambda site, n: bool(selection(site))
    how = "an int, a kind or variable name, a list of those, a predicate f(site) -> bool, or None for all"
    if isinstance(selection, (int, str)) and not isinstance(selection, bool):
        items = [selection]
    elif isinstance(selection, Iterable) and not isinstance(selection, (bytes, Mapping)):
        items = list(selection)
    else:   # a float was "'float' object is not iterable"; a dict selected its keys
        raise TypeError(f"unsupported activation selection {selection!r}: {how}")
    ints, names = set(), set()
    for it in items:
        if isinstance(it, int) and not isinstance(it, bool):
            ints.add(it)
        elif isinstance(it, str):
            names.add(it)
        else:
            raise TypeError(f"unsupported activation selector {it!r}: {how}")

    def pred(site: ActivationSite, n: int) -> bool:
        if site.index in ints or (site.index - n) in ints:
            return True
        return site.kind in names or site.var_name in names

    pred.ints = ints  # type: ignore[attr-defined]
    pred.names = names  # type: ignore[attr-defined]
    return pred


def _linearize_function(func, func_name: str, pred, mod, strict: bool):
    from tvm import relax
    from tvm.relax.expr_functor import PyExprMutator, mutator

    sites = _scan_function(func, func_name)
    n = len(sites)
    ints = getattr(pred, "ints", set())
    if strict and ints:
        bad = sorted(i for i in ints if not -n <= i < n)
        if bad:
            raise IndexError(
                f"activation index {bad} out of range: function {func_name!r} has {n} activation(s)"
            )
    chosen = [(var, inp, catalogue.linear_regime(site.kind, params)) for site, var, inp, params, _ in sites
              if pred(site, n)]
    if not chosen:
        return func, 0
    # the ops inside a chosen composite (HardSwish's add / clip / divide) or clip pair are read by nothing
    # else: dropped here, not left for DeadCodeElimination (list_activations listed them as activations)
    dropped = {_key(v) for site, _, _, _, inner in sites if pred(site, n) for v in inner}

    @mutator
    class _Linearizer(PyExprMutator):
        def visit_var_binding_(self, binding):
            if _key(binding.var) in dropped:
                return None
            for var, inp, (scale, shift) in chosen:
                if binding.var.same_as(var):
                    # `lv = act(x)`  ->  `lv = x` (identity regime; CanonicalizeBindings removes the
                    # alias), or `lv = x * scale + shift` (SELU: gamma*x)
                    value = inp
                    if scale != 1.0 or shift != 0.0:
                        info = getattr(inp, "struct_info", None) or getattr(inp, "ty", None)   # 0.27: .ty
                        dtype = str(getattr(info, "dtype", None) or "float32")   # a Var has no .dtype
                        x = self.visit_expr(inp)
                        if scale != 1.0:
                            x = self.builder_.emit(relax.op.multiply(x, relax.const(scale, dtype)))
                        if shift != 0.0:
                            x = self.builder_.emit(relax.op.add(x, relax.const(shift, dtype)))
                        value = x
                    return super().visit_var_binding_(relax.VarBinding(binding.var, value))
            return super().visit_var_binding_(binding)

    new_func = _Linearizer(mod).visit_expr(func)
    return new_func, len(chosen)


def _check_names(wanted: set, functions: dict) -> None:
    """strict: a string that is neither an activation kind nor the variable of an activation in the
    functions transformed is a typo ("rleu"), not a request to do nothing. A kind the module lacks is not
    (one selection applied to several models; tests/test_adv4_tvm_handoff.py)."""
    known = set(KINDS)
    for name, func in functions.items():
        known.update(site.var_name for site, *_ in _scan_function(func, name))
    unknown = sorted(wanted - known)
    if unknown:
        raise ValueError(f"no activation kind or activation variable named {', '.join(map(repr, unknown))}: "
                         f"kinds are {', '.join(KINDS)}; variables: see list_activations(mod)")


def LinearizeActivations(  # noqa: N802 - TVM pass naming convention
    selection: Selector = None,
    func_names: Iterable[str] | None = None,
    strict: bool = True,
):
    """Module pass replacing the selected activation calls with their linear regime.

    The regime comes from the activation catalogue: the input itself, or gamma*input for SELU.

    Parameters
    ----------
    selection:
        * an int or ints: positions among each function's activations in
          dataflow order (negative counts from the end);
        * a string or strings: an activation kind (``"relu"``, ``"gelu"``,
          ``"swish"``, see :data:`KINDS`) selects all of that kind, any other
          string is matched against the name of the variable the activation is
          bound to (``"lv3"``);
        * a predicate ``f(ActivationSite) -> bool``;
        * ``None`` / ``"all"``: every activation.
    func_names:
        Relax functions to transform (default: all of them).
    strict:
        Raise ``IndexError`` for an index past the number of activations, ``ValueError`` for a
        string that is neither a kind nor an activation's variable name, and for a ``func_names``
        entry the module lacks.
    """
    import tvm
    from tvm import relax

    pred = _make_predicate(selection)
    if isinstance(func_names, str):   # "main" was the set {'m', 'a', 'i', 'n'}: nothing transformed
        func_names = [func_names]
    names = None if func_names is None else set(func_names)

    @tvm.transform.module_pass(opt_level=0, name="LinearizeActivations")
    def _pass(mod, _ctx):
        functions = _relax_functions(mod, "LinearizeActivations")
        if names is not None:
            if strict:
                _check_func_names(names, functions, "LinearizeActivations")
            functions = {k: f for k, f in functions.items() if k in names}
        if strict and getattr(pred, "names", None):
            _check_names(pred.names, functions)
        updates = {}
        for gv in list(mod.functions.keys()):
            if gv.name_hint not in functions:
                continue
            new_func, count = _linearize_function(functions[gv.name_hint], gv.name_hint, pred, mod, strict)
            if count:
                updates[gv] = new_func
        if not updates:
            return mod
        mod = mod.clone() if hasattr(mod, "clone") else mod
        for gv, func in updates.items():
            mod[gv] = func
        return mod

    return _pass


def collapse_sequence(
    selection: Selector = None,
    func_names: Iterable[str] | None = None,
    strict: bool = True,
):
    """``Sequential([LinearizeActivations, CanonicalizeBindings, FoldConstant, DeadCodeElimination])``."""
    import tvm
    from tvm import relax

    return tvm.transform.Sequential(
        [
            LinearizeActivations(selection, func_names=func_names, strict=strict),
            relax.transform.CanonicalizeBindings(),
            relax.transform.FoldConstant(),
            relax.transform.DeadCodeElimination(),
        ],
        name="CollapseActivations",
    )
