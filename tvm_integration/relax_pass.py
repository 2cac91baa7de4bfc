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
relu6          ``R.nn.relu6(x)`` or ``R.clip(x, 0, 6)``
clip           ``R.clip(x, lo, hi)`` (other bounds); ONNX ``Clip`` imported as
               ``call_tir(maximum, x, lo)`` followed by ``call_tir(minimum, ., hi)``
leakyrelu      ``R.nn.leakyrelu(x, alpha)``
prelu          ``R.nn.prelu(x, alpha)``
gelu           ``R.nn.gelu(x)``
gelu_tanh      ``R.nn.gelu_tanh(x)``
silu           ``R.nn.silu(x)``
swish          ``R.multiply(x, R.sigmoid(x))`` (either operand order; the sigmoid
               then becomes dead and is removed by DeadCodeElimination)
selu           ``R.nn.selu(x)``
=============  ====================================================================

Each kind names an entry of the activation catalogue (``collapse_passes.core.activations``;
``leakyrelu`` is ``leaky_relu`` there, ``swish`` is ``silu``), which gives the linear regime the
activation becomes: the identity for all of the above but SELU, which becomes ``gamma * x`` as in
the ONNX front end. ``R.nn.softplus`` is not listed: the catalogue marks it not collapsible.

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

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Union

from collapse_passes.core import activations as catalogue

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
KINDS = tuple(sorted(set(ACTIVATION_OPS.values()) | {"relu6", "clip", "swish"}))


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


def _scalar(expr) -> float | None:
    """Python value of a scalar literal (prim expr or one-element constant), else None."""
    import numpy as np
    import tvm

    if tvm.ir.is_prim_expr(expr):
        v = getattr(expr, "value", None)
        return float(v) if isinstance(v, (int, float)) else None
    if isinstance(expr, tvm.ir.Constant):
        v = getattr(expr, "value", None)
        try:
            arr = v.numpy() if hasattr(v, "numpy") else np.asarray(v)
        except Exception:
            return None
        if arr.size == 1 and arr.dtype.kind in "fiub":
            return float(arr.reshape(-1)[0])
    return None


def _is_constant_like(expr, bindings) -> bool:
    """A literal, or a var bound to an expression of literals only."""
    import tvm

    if isinstance(expr, tvm.ir.Constant) or tvm.ir.is_prim_expr(expr):
        return True
    if _is_var(expr) and _key(expr) in bindings:
        v = bindings[_key(expr)]
        if isinstance(v, tvm.ir.Constant):
            return True
        if isinstance(v, tvm.ir.Call) and isinstance(v.op, tvm.ir.Op):
            return all(_is_constant_like(a, bindings) for a in v.args)
    return False


def _call_tir_parts(expr):
    """(callee name, [tensor args]) of a ``R.call_tir`` call, else None."""
    import tvm

    if _op_name(expr) != "relax.call_tir":
        return None
    gv = expr.args[0]
    args = expr.args[1]
    fields = list(args.fields) if isinstance(args, tvm.ir.Tuple) else [args]
    return str(getattr(gv, "name_hint", "")), fields


def _classify(value, bindings) -> tuple[str, Any] | None:
    """(kind, input expr) if ``value`` is an activation, else None."""
    name = _op_name(value)
    if name is None:
        return None
    if name in ACTIVATION_OPS:
        return ACTIVATION_OPS[name], value.args[0]
    if name == "relax.clip":
        lo, hi = _scalar(value.args[1]), _scalar(value.args[2])
        kind = "relu6" if (lo == 0.0 and hi == 6.0) else "clip"
        return kind, value.args[0]
    if name == "relax.multiply":
        a, b = value.args[0], value.args[1]
        for x, g in ((a, b), (b, a)):
            if _is_var(g) and _key(g) in bindings:
                gv = bindings[_key(g)]
                if _op_name(gv) == "relax.sigmoid" and gv.args[0].same_as(x):
                    return "swish", x
        return None
    if name == "relax.call_tir":
        # ONNX Clip -> call_tir(minimum, [call_tir(maximum, [x, lo?]), hi?])
        parts = _call_tir_parts(value)
        if parts is None:
            return None
        callee, fields = parts
        if not callee.startswith("minimum") or not fields:
            return None
        inner = fields[0]
        if not (_is_var(inner) and _key(inner) in bindings):
            return None
        if not all(_is_constant_like(f, bindings) for f in fields[1:]):
            return None
        inner_parts = _call_tir_parts(bindings[_key(inner)])
        if inner_parts is None:
            return None
        icallee, ifields = inner_parts
        if not icallee.startswith("maximum") or not ifields:
            return None
        if not all(_is_constant_like(f, bindings) for f in ifields[1:]):
            return None
        return "clip", ifields[0]
    return None


def _scan_function(func, func_name: str):
    """[(ActivationSite, bound var, input expr)] of a Relax function, in dataflow order."""
    from tvm import relax

    sites = []
    bindings: dict = {}
    body = func.body
    if not isinstance(body, relax.SeqExpr):
        return sites
    for block in body.blocks:
        for binding in block.bindings:
            if not isinstance(binding, relax.VarBinding):
                continue
            bindings[_key(binding.var)] = binding.value
            found = _classify(binding.value, bindings)
            if found is None:
                continue
            kind, inp = found
            site = ActivationSite(
                index=len(sites),
                kind=kind,
                var_name=_var_name(binding.var),
                function=func_name,
                op=_op_name(binding.value) or "",
            )
            sites.append((site, binding.var, inp))
    return sites


def list_activations(mod, func_name: str | None = None) -> list[ActivationSite]:
    """Activations of ``mod`` (all Relax functions, or just ``func_name``) in dataflow order."""
    from tvm import relax

    out: list[ActivationSite] = []
    for gv, func in mod.functions.items():
        if not isinstance(func, relax.Function):
            continue
        if func_name is not None and gv.name_hint != func_name:
            continue
        out.extend(site for site, _, _ in _scan_function(func, gv.name_hint))
    return out


def _make_predicate(selection: Selector) -> Callable[[ActivationSite, int], bool]:
    """A predicate over (site, number of sites in its function)."""
    if selection is None or (isinstance(selection, str) and selection == "all"):
        return lambda site, n: True
    if callable(selection) and not isinstance(selection, (str, bytes)):
        return lambda site, n: bool(selection(site))
    items = [selection] if isinstance(selection, (int, str)) else list(selection)
    ints, names = set(), set()
    for it in items:
        if isinstance(it, bool):
            raise TypeError("activation selectors must be ints, strings or a predicate")
        if isinstance(it, int):
            ints.add(it)
        elif isinstance(it, str):
            names.add(it)
        else:
            raise TypeError(f"unsupported activation selector {it!r}")

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
    chosen = [(var, inp, catalogue.linear_regime(site.kind)) for site, var, inp in sites if pred(site, n)]
    if not chosen:
        return func, 0

    @mutator
    class _Linearizer(PyExprMutator):
        def visit_var_binding_(self, binding):
            for var, inp, (scale, shift) in chosen:
                if binding.var.same_as(var):
                    # `lv = act(x)`  ->  `lv = x` (identity regime; CanonicalizeBindings removes the
                    # alias), or `lv = x * scale + shift` (SELU: gamma*x)
                    value = inp
                    if scale != 1.0 or shift != 0.0:
                        dtype = str(getattr(inp, "dtype", None) or "float32")
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


def _check_names(wanted: set, mod, func_names) -> None:
    """strict: a string that is neither an activation kind nor the variable of an activation in the
    functions transformed is a typo ("rleu"), not a request to do nothing."""
    from tvm import relax

    known = set(KINDS)
    for gv, func in mod.functions.items():
        if isinstance(func, relax.Function) and (func_names is None or gv.name_hint in func_names):
            known.update(site.var_name for site, _, _ in _scan_function(func, gv.name_hint))
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
        string that is neither a kind nor an activation's variable name.
    """
    import tvm
    from tvm import relax

    pred = _make_predicate(selection)
    names = None if func_names is None else set(func_names)

    @tvm.transform.module_pass(opt_level=0, name="LinearizeActivations")
    def _pass(mod, _ctx):
        if strict and getattr(pred, "names", None):
            _check_names(pred.names, mod, names)
        updates = {}
        for gv, func in mod.functions.items():
            if not isinstance(func, relax.Function):
                continue
            if names is not None and gv.name_hint not in names:
                continue
            new_func, count = _linearize_function(func, gv.name_hint, pred, mod, strict)
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
