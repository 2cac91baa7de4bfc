"""Relax pass: ONNX ``Clip`` kernels back to ``R.maximum`` / ``R.minimum`` ops.

TVM's ONNX importer emits ``Clip`` as two opaque ``call_tir`` kernels
(``topi.maximum(x, lo)``, ``topi.minimum(., hi)``).  ``ConvertLayout`` cannot
see through ``call_tir``, so in an NHWC build every ReLU6 would be wrapped in
a transpose pair and cut from its convolution.  This pass turns such a
kernel back into the high-level op it was made from -- only when its PrimFunc
is structurally equal to the one ``topi.maximum``/``topi.minimum`` gives for
the same operands, so the legalized result is the very same kernel.
"""

from __future__ import annotations

_OPS = ("maximum", "minimum")


def _reference(op_name: str, x_info, c_info):
    """The PrimFunc ``emit_te(topi.<op>, x, c)`` makes for these operand types."""
    from tvm import relax, topi

    bb = relax.BlockBuilder()
    x = relax.Var("x", x_info)
    c = relax.Var("c", c_info)
    with bb.function("f", [x, c]):
        out = bb.emit_te(getattr(topi, op_name), x, c)
        bb.emit_func_output(out)
    mod = bb.get()
    (prim,) = [f for gv, f in mod.functions.items() if gv.name_hint != "f"]
    return prim


def raise_constant_minmax(mod):
    """``mod`` with ``call_tir(maximum|minimum, [x, scalar constant])`` -> ``R.maximum|minimum(x, c)``.

    Returns ``(new module, number of calls raised)``.
    """
    import tvm
    import tvm_ffi
    from tvm import relax
    from tvm.relax.expr_functor import PyExprMutator, mutator

    cache: dict = {}
    count = [0]

    def op_of(call) -> str | None:
        if not (isinstance(call, tvm.ir.Call) and isinstance(call.op, tvm.ir.Op)
                and call.op.name == "relax.call_tir"):
            return None
        gv, args = call.args[0], call.args[1]
        name = str(getattr(gv, "name_hint", ""))
        op = next((o for o in _OPS if name.startswith(o)), None)
        fields = list(args.fields) if isinstance(args, tvm.ir.Tuple) else []
        if op is None or len(fields) != 2 or not isinstance(fields[1], tvm.ir.Constant):
            return None
        c_info = fields[1].ty
        if getattr(c_info, "ndim", -1) != 0:
            return None
        prim = mod.functions.get(gv) if gv in mod.functions else None
        if not isinstance(prim, tvm.tirx.PrimFunc):
            return None
        key = (op, str(fields[0].ty), str(c_info))
        if key not in cache:
            cache[key] = _reference(op, fields[0].ty, c_info)
        if tvm_ffi.get_first_structural_mismatch(prim, cache[key], True) is not None:
            return None
        return op

    @mutator
    class _Raise(PyExprMutator):
        def visit_call_(self, call):
            call = super().visit_call_(call)
            op = op_of(call)
            if op is None:
                return call
            count[0] += 1
            x, c = call.args[1].fields
            return getattr(relax.op, op)(x, c)

    mutator_obj = _Raise(mod)
    for gv, func in list(mod.functions.items()):
        if isinstance(func, relax.Function):
            mutator_obj.builder_.update_func(gv, mutator_obj.visit_expr(func))
    out = mutator_obj.builder_.get()
    return relax.transform.DeadCodeElimination()(out) if count[0] else mod, count[0]


def RaiseConstantMinMax():  # noqa: N802 - TVM pass naming
    """Module pass wrapper of :func:`raise_constant_minmax` (unused kernels are dropped)."""
    import tvm

    @tvm.transform.module_pass(opt_level=0, name="RaiseConstantMinMax")
    def _pass(mod, _ctx):
        return raise_constant_minmax(mod)[0]

    return _pass
