"""onnxruntime's fused contrib ops written back as the standard ONNX ops they stand for.

A model onnxruntime optimized and saved (SessionOptions.optimized_model_filepath at ORT_ENABLE_EXTENDED)
hides its activations inside com.microsoft ops: FusedConv / FusedGemm carry the ReLU, Clip, Sigmoid, ...
after the conv as an attribute and QuickGelu is x*sigmoid(alpha*x) (SiLU when alpha = 1). Read as they
are, those activations are invisible: a MobileNetV2 saved so had no activation to score and an
EfficientNet-B0 none of its 49 SiLUs. FusedMatMul (alpha * A @ B, a Swin's scaled attention; transA/transB and
transBatchA/B: a transposed operand) is written as Transpose, MatMul and Mul, so its MACs are counted and no
com.microsoft op is left in the model written (a transposed operand of unknown rank is the one form kept).
`expand_contrib_ops` rewrites them as Conv/Gemm + Add + the activation op (the definition of those kernels),
so every activation is found, scored, collapsed and merged as in the exported file, and the model written is
standard ONNX (onnxruntime fuses it again when it loads; TVM can import it). The run verifies against the file
as given, contrib ops and all.

NCHWc layout ops (com.microsoft.nchwc: what ORT_ENABLE_ALL saves) are blocked layouts for the CPU the
file was saved on: refused, with the way out.
"""
from __future__ import annotations

import functools

import onnx
from onnx import helper

from ..errors import CollapseError
from ..core.names import fresh_name

MS = "com.microsoft"
#: contrib ops rewritten here
EXPANDED = ("FusedConv", "FusedGemm", "QuickGelu", "BiasGelu", "FastGelu", "FusedMatMul")
_GEMM_ATTRS = ("alpha", "beta", "transA", "transB")
#: node metadata marking a node inline_local_functions wrote out of a local function's body
INLINED_META = "collapse_passes.inlined"


def has_contrib_ops(model: onnx.ModelProto) -> bool:
    return any(n.domain == MS and n.op_type in EXPANDED for n in model.graph.node)


def refuse_nchwc(model: onnx.ModelProto, where: str = "the model") -> None:
    ops = sorted({n.op_type for n in model.graph.node if n.domain == "com.microsoft.nchwc"})
    if ops:
        raise CollapseError(f"{where} holds onnxruntime's NCHWc layout ops (com.microsoft.nchwc {', '.join(ops[:4])}: "
                            "saved at ORT_ENABLE_ALL, for the CPU it was saved on), whose activations cannot be "
                            "read: give the exported model, or one saved at ORT_ENABLE_EXTENDED or lower")


def _act_nodes(kind: str, params: dict, x: str, y: str, name: str) -> list[onnx.NodeProto]:
    """The activation `kind` (onnxruntime's MLAS activation names) from x to y as standard ops."""
    if kind in ("Relu", "Sigmoid", "Tanh"):
        return [helper.make_node(kind, [x], [y], name=name)]
    if kind == "LeakyRelu":
        return [helper.make_node(kind, [x], [y], name=name, alpha=float(params.get("alpha", 0.01)))]
    if kind == "HardSigmoid":
        return [helper.make_node(kind, [x], [y], name=name, alpha=float(params.get("alpha", 0.2)),
                                 beta=float(params.get("beta", 0.5)))]
    if kind == "Clip":   # bounds as inputs from opset 11 (scalars added by the caller), attributes before
        if "min_name" in params:
            return [helper.make_node("Clip", [x, params["min_name"], params["max_name"]], [y], name=name)]
        return [helper.make_node("Clip", [x], [y], name=name, min=float(params.get("min", float("-inf"))),
                                 max=float(params.get("max", float("inf"))))]
    raise CollapseError(f"{name}: onnxruntime fused activation {kind!r} is not known here; give the model as "
                        "exported, before onnxruntime's optimizations")


def _fused_matmul_perm(rank: int | None, trans: int, trans_batch: int):
    """The Transpose perm that makes a FusedMatMul operand what it multiplies (onnxruntime's definition, checked
    against its kernel): transA/B swaps the last two dims; transBatchA/B moves dim 0 behind the batch dims
    (1 .. rank-2), as the row dim ([1, .., r-2, 0, r-1]; with trans too, [1, .., r-1, 0]). None: no transpose;
    False: one is needed and the rank is unknown (or < 2)."""
    if not trans and not trans_batch:
        return None
    if rank is None or rank < 2:
        return False
    if trans_batch:
        return list(range(1, rank)) + [0] if trans else list(range(1, rank - 1)) + [0, rank - 1]
    return list(range(rank - 2)) + [rank - 1, rank - 2]


def inline_local_functions(model: onnx.ModelProto, notes: list | None = None) -> onnx.ModelProto:
    """`model` with the calls of its own local functions (the TorchScript exporter's export_modules_as_functions,
    a dynamo export's functions) written out as the ops they are made of; the same object when it calls none.
    The passes see the top-level graph only: a ResNet-18 exported with its blocks as functions showed 1 of its
    17 ReLUs, and no conv inside a block could be merged or pruned. The result is verified against the file as
    given, functions and all. A local function named as a standard op (domain "" Relu) is left alone: onnxruntime
    runs the op, not the function, and inlining its body wrote another model (verified against the inlined
    model, it passed while 2.9 off the file)."""
    shadowing = {(f.domain, f.name) for f in model.functions if _standard_op(f.name, f.domain)}
    local = {(f.domain, f.name) for f in model.functions} - shadowing
    called = sorted({n.op_type for n in model.graph.node if (n.domain, n.op_type) in local})
    if not called:
        return model
    from onnx.inliner import inline_selected_functions

    from .graph import name_nameless_nodes

    # a top-level node keeps its outputs' names through inlining; a node from a function body writes an inner
    # value, or the call's output: mark those, whose names no author or torch exporter gave (onnx/keys.py)
    kept = {o for n in model.graph.node if (n.domain, n.op_type) not in local for o in n.output}
    out = inline_selected_functions(model, sorted(shadowing), exclude=True)
    for n in out.graph.node:
        if not (n.output and n.output[0] in kept):
            n.metadata_props.add(key=INLINED_META, value="1")
    out = name_nameless_nodes(out)
    if notes is not None:
        notes.append(f"local functions inlined ({', '.join(called[:4])}{', ...' if len(called) > 4 else ''}), so the "
                     "activations inside them are seen (keyed by position, relu():i: the function bodies keep no module "
                     "path); verified against the file as given")
    return out


def _standard_op(name: str, domain: str) -> bool:
    """Whether (domain, name) is an op onnxruntime knows (the ONNX standard's, any version, or one of its
    contrib ops: a com.microsoft Gelu function also ran the Gelu kernel): a node so named runs the op."""
    domain = "" if domain == "ai.onnx" else domain
    return onnx.defs.has(name, domain) or (domain, name) in _runtime_ops()


@functools.lru_cache(maxsize=1)
def _runtime_ops() -> frozenset:
    try:
        from onnxruntime.capi.onnxruntime_pybind11_state import get_all_operator_schema
        return frozenset((s.domain, s.name) for s in get_all_operator_schema())
    except Exception:   # noqa: BLE001 - a build without the schema registry: the ONNX standard's ops only
        return frozenset()


def expand_contrib_ops(model: onnx.ModelProto, notes: list | None = None, in_place: bool = False) -> onnx.ModelProto:
    """`model` with onnxruntime's fused contrib ops (EXPANDED) written as standard ops; the same object when it
    has none, else a copy (the caller's proto is not changed) unless `in_place`. Appends one note saying what
    was expanded."""
    refuse_nchwc(model)
    model = inline_local_functions(model, notes)
    if not has_contrib_ops(model):
        return model
    if in_place:
        out = model
    else:
        out = onnx.ModelProto()
        out.CopyFrom(model)
    g = out.graph
    names = {n.name for n in g.node} | {t.name for t in g.initializer} | {v.name for v in g.input} \
        | {o for n in g.node for o in n.output}
    elem = {t.name: t.data_type for t in g.initializer}
    elem.update({v.name: v.type.tensor_type.elem_type for v in list(g.input) + list(g.value_info) + list(g.output)})

    def fresh(base: str) -> str:
        return fresh_name(base, names)

    def const(base: str, value: float, dtype: int) -> str:
        name = fresh(base)
        g.initializer.append(helper.make_tensor(name, dtype, [], [value]))
        return name

    floats = [t.data_type for t in g.initializer if t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16,
                                                                    onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE)]
    default_float = max(set(floats), key=floats.count) if floats else onnx.TensorProto.FLOAT
    opset = next((o.version for o in out.opset_import if o.domain in ("", "ai.onnx")), 1)
    counts: dict[str, int] = {}
    new_nodes = []
    ranks: dict[str, int] = {}

    def rank(t: str) -> int | None:
        """The rank of tensor t (onnx shape inference, run once and only for a transposed FusedMatMul), or None."""
        if not ranks:
            try:
                inferred = onnx.shape_inference.infer_shapes(model).graph
            except Exception:   # noqa: BLE001 - shape inference refusing the file: no rank known, the op is kept
                inferred = g
            ranks[""] = -1
            for v in list(inferred.input) + list(inferred.value_info) + list(inferred.output):
                if v.type.tensor_type.HasField("shape"):
                    ranks[v.name] = len(v.type.tensor_type.shape.dim)
            ranks.update({i.name: len(i.dims) for i in inferred.initializer})
        return ranks.get(t)
    for n in g.node:
        if n.domain != MS or n.op_type not in EXPANDED:
            new_nodes.append(n)
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        attrs = {k: v.decode() if isinstance(v, bytes) else v for k, v in attrs.items()}
        # the constants added (Clip bounds, alpha) take the op's float type: its input's, else its weight's, else
        # the model's weights' (a float16 model's values have no declared type between ops)
        dtype = elem.get(n.input[0]) or (elem.get(n.input[1]) if len(n.input) > 1 else None) or default_float
        y = n.output[0]
        made: list[onnx.NodeProto] = []
        if n.op_type == "FusedMatMul":   # alpha * (op(A) @ op(B)) (MatMulScaleFusion, MatmulTransposeFusion)
            perms = [_fused_matmul_perm(rank(t), attrs.get(f"trans{side}", 0), attrs.get(f"transBatch{side}", 0))
                     for t, side in zip(n.input[:2], "AB")]
            if any(p is False for p in perms):   # a transposed operand of unknown rank: left as it is
                new_nodes.append(n)
                continue
            ins = list(n.input[:2])
            for i, (p, side) in enumerate(zip(perms, "AB")):
                if p is not None:
                    ins[i] = fresh(f"{n.name}_{side}_T")
                    made.append(helper.make_node("Transpose", [n.input[i]], [ins[i]], perm=p,
                                                 name=fresh(f"{n.name}_Transpose{side}")))
            alpha = float(attrs.get("alpha", 1.0))
            mm_out = fresh(f"{y}_matmul") if alpha != 1.0 else y
            made.append(helper.make_node("MatMul", ins, [mm_out], name=n.name))
            if alpha != 1.0:
                made.append(helper.make_node("Mul", [mm_out, const(f"{n.name}_alpha", alpha, dtype)], [y],
                                             name=fresh(f"{n.name}_Mul")))
        elif n.op_type in ("FusedConv", "FusedGemm"):
            act = attrs.get("activation", "")
            if n.op_type == "FusedConv":
                core_attrs = {k: v for k, v in attrs.items() if k not in ("activation", "activation_params")}
                p = list(attrs.get("activation_params", []))
                params = {"LeakyRelu": dict(zip(["alpha"], p)), "HardSigmoid": dict(zip(["alpha", "beta"], p)),
                          "Clip": dict(zip(["min", "max"], p))}.get(act, {})
                ins = [i for i in n.input[:3]]
                z = n.input[3] if len(n.input) > 3 and n.input[3] else None
                op = "Conv"
            else:
                core_attrs = {k: v for k, v in attrs.items() if k in _GEMM_ATTRS}
                params = {k[len("activation_"):]: v for k, v in attrs.items() if k.startswith("activation_")}
                ins, z, op = list(n.input), None, "Gemm"
            while ins and not ins[-1]:
                ins.pop()
            conv_out = fresh(f"{y}_{op.lower()}") if (act or z) else y
            made.append(helper.make_node(op, ins, [conv_out], name=n.name, **core_attrs))
            cur = conv_out
            if z:
                add_out = fresh(f"{y}_sum") if act else y
                made.append(helper.make_node("Add", [cur, z], [add_out], name=fresh(f"{n.name}_Add")))
                cur = add_out
            if act:
                if act == "Clip" and opset >= 11:
                    params = {"min_name": const(f"{n.name}_clip_min", float(params.get("min", float("-inf"))), dtype),
                              "max_name": const(f"{n.name}_clip_max", float(params.get("max", float("inf"))), dtype)}
                made += _act_nodes(act, params, cur, y, fresh(f"{n.name}_{act}"))
        elif n.op_type == "QuickGelu":   # x * sigmoid(alpha * x)
            alpha = float(attrs.get("alpha", 1.702))
            base = n.name[:-len("/QuickGeluFusion/")] if n.name.endswith("/QuickGeluFusion/") else n.name
            x = n.input[0]
            if alpha != 1.0:
                ax = fresh(f"{y}_ax")
                made.append(helper.make_node("Mul", [x, const(f"{base}_alpha", alpha, dtype)], [ax],
                                             name=fresh(f"{base}_alpha_Mul")))
                x_in = ax
            else:
                x_in = x
            s = fresh(f"{y}_sigmoid")
            made.append(helper.make_node("Sigmoid", [x_in], [s], name=fresh(f"{base}_Sigmoid")))
            made.append(helper.make_node("Mul", [n.input[0], s], [y], name=fresh(base if base != n.name else f"{base}_Mul")))
        else:   # BiasGelu(x, bias) / FastGelu(x[, bias]): gelu (tanh form for FastGelu) of x + bias
            if len(n.input) < 2 or not n.input[1]:
                new_nodes.append(n)   # a one-input FastGelu is an activation patterns.py reads as it is
                continue
            s = fresh(f"{y}_biased")
            made.append(helper.make_node("Add", [n.input[0], n.input[1]], [s], name=fresh(f"{n.name}_Add")))
            made.append(helper.make_node("Gelu" if n.op_type == "BiasGelu" else "FastGelu", [s], [y],
                                         name=fresh(f"{n.name}_Gelu"), domain=MS))
        for m in made:
            m.metadata_props.extend(n.metadata_props)
        new_nodes += made
        counts[n.op_type] = counts.get(n.op_type, 0) + 1
    if not counts:   # only forms left as they are (a one-input FastGelu, a FusedMatMul of unknown rank)
        return model
    del g.node[:]
    g.node.extend(new_nodes)
    if notes is not None:
        keyed = " (an activation fused into a conv or Gemm is keyed by that op's name: the file does not keep its own)" \
            if counts.get("FusedConv") or counts.get("FusedGemm") else ""
        notes.append("onnxruntime's fused ops written as the standard ONNX ops they stand for ("
                     + ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
                     + f"), so the activations and MACs inside them are seen{keyed}; verified against the file as given")
    return out

