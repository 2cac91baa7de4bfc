"""The linear region around collapsed activations, cut out as a model of its own.

A collapse changes the graph only where linear ops meet through the collapsed activations: folding,
chain merging, residual absorption and bias-map propagation all stay inside the connected region of
linear ops (Conv, Gemm, MatMul/Mul/Div by a constant, Add, BatchNorm, reshapes) joined by collapsed
activations, bounded by the activations left alone and by every nonlinear op. --target-speedup prices
tens to hundreds of candidate sets; running the passes on those regions instead of the whole graph
makes each price a few small runs (a MobileNetV3-L at 224 with --target-speedup: 113 s -> 13 s).

    linear_regions(acts, collapsed_ids, non_float) -> [frozenset of node names], one per region
    region_model(model, names, types)                -> (the region as an ONNX model or None,
                                                         boundary tensors whose type/shape is missing)
"""
from __future__ import annotations

from dataclasses import dataclass

import onnx
from onnx import helper

#: ops that are linear (affine) in their float inputs whatever their constant operands are (every op
#: the passes carry a merge or a bias map through must be here: GlobalAveragePool and ReduceMean, torch.export's
#: spelling of it, pass bias maps on)
_LINEAR = {"Conv", "ConvTranspose", "Gemm", "BatchNormalization", "Add", "Sub", "Neg", "Identity", "Pad",
           "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Concat", "Split", "Slice", "Dropout",
           "Sum", "Cast", "GlobalAveragePool", "ReduceMean"}
#: linear only when one operand is a constant (x @ W, x * s); x @ y and x * y are not
_LINEAR_WITH_CONSTANT = {"MatMul", "Mul", "Div"}
_FLOAT = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}


def _is_constant(t) -> bool:
    """What the passes take for a constant (graph.const_value): also an initializer read through the
    Identity the TorchScript exporter shares equal initializers with."""
    from .graph import const_value

    return const_value(t) is not None


def _linear(node) -> bool:
    if node.op in _LINEAR:
        return True
    if node.op in _LINEAR_WITH_CONSTANT:
        return any(_is_constant(t) for t in node.inputs)
    return False


def linear_regions(acts, collapsed_ids: set, non_float: set) -> list[frozenset]:
    """Node-name sets of the connected linear regions that hold the collapsed activations
    (id(activation) in collapsed_ids). Never walks a tensor known not to be float (shape arithmetic
    is not part of a region) nor into an activation left alone."""
    act_of = {id(n): a for a in acts for n in a.nodes}
    seen: set = set()
    regions = []
    for a in acts:
        if id(a) not in collapsed_ids or id(a.nodes[-1]) in seen:
            continue
        region, names, todo = set(), set(), list(a.nodes)
        while todo:
            n = todo.pop()
            if id(n) in region:
                continue
            region.add(id(n))
            names.add(n.name)
            seen.add(id(n))
            owner = act_of.get(id(n))
            if owner is not None:
                todo.extend(m for m in owner.nodes if id(m) not in region)
            neighbours = [p for t in n.inputs if t.name not in non_float for p in t.inputs]
            neighbours += [c for t in n.outputs if t.name not in non_float for c in t.outputs]
            for m in neighbours:
                if id(m) in region:
                    continue
                owner = act_of.get(id(m))
                if owner is not None:
                    if id(owner) in collapsed_ids:
                        todo.append(m)
                elif _linear(m):
                    todo.append(m)
        regions.append(frozenset(names))
    return regions


def non_float_tensor_names(types: dict, model: onnx.ModelProto) -> set:
    """Names of the tensors known to be of another type than float (inferred types, graph inputs and
    initializers); a tensor whose type inference lost counts as float."""
    out = {t.name for t in model.graph.initializer if t.data_type not in _FLOAT}
    for vi in list(model.graph.input) + list(model.graph.output) + list(types.values()):
        et = vi.type.tensor_type.elem_type
        if et and et not in _FLOAT:
            out.add(vi.name)
    return out


@dataclass
class ModelIndex:
    """What region_model reads of the whole model, found once per model instead of once per region."""
    consts: dict        # tensor -> the Constant node making it
    inits: dict         # name -> initializer
    graph_in: dict      # name -> graph input ValueInfo
    graph_out: set
    live_reads: list    # (node name, tensors it reads, subgraphs included) of the live nodes
    symbols: set        # the graph inputs' symbolic dims

    @staticmethod
    def of(model: onnx.ModelProto) -> "ModelIndex":
        g = model.graph
        return ModelIndex({o: n for n in g.node if n.op_type == "Constant" for o in n.output},
                          {t.name: t for t in g.initializer}, {vi.name: vi for vi in g.input},
                          {vi.name for vi in g.output},
                          [(n.name, {*n.input, *_subgraph_reads(n)}) for n in _live_nodes(g)],
                          {d.dim_param for vi in g.input for d in vi.type.tensor_type.shape.dim if d.dim_param})


def region_model(model: onnx.ModelProto, names: frozenset, types: dict,
                 index: ModelIndex | None = None) -> tuple[onnx.ModelProto | None, list]:
    """(model, missing): the nodes named `names` (plus the Constant nodes they read) as a model whose
    inputs are the tensors they read from outside and whose outputs are the tensors read outside (or
    graph outputs), typed from `types` (tensor name -> ValueInfoProto). The model is None when a node
    is unnamed or its name is not unique, or when boundary tensors have no static type and shape in
    `types`: `missing` names those (a caller may find them, e.g. by running the model, and ask again)."""
    g = model.graph
    ix = index or ModelIndex.of(model)
    nodes = [n for n in g.node if n.name in names]
    if len(nodes) != len(names) or any(not n.name for n in nodes):
        return None, []
    produced = {o for n in nodes for o in n.output}
    consts, inits, graph_in, graph_out = ix.consts, ix.inits, ix.graph_in, ix.graph_out
    # readers the passes' first Cleanup drops (dead code) do not keep a region tensor alive
    read_outside = {t for name, reads in ix.live_reads if name not in names for t in reads}
    extra_consts, used_inits, inputs, outputs, missing = {}, {}, {}, {}, []
    for n in nodes:
        for t in n.input:
            if not t or t in produced:
                continue
            if t in consts:
                extra_consts.setdefault(consts[t].name, consts[t])
            elif t in inits:
                used_inits.setdefault(t, inits[t])
            elif t not in inputs:
                inputs[t] = graph_in.get(t) or types.get(t)
        for t in n.output:
            if t and (t in read_outside or t in graph_out):
                outputs[t] = types.get(t)
    missing = [t for t, vi in (*inputs.items(), *outputs.items()) if vi is None or not _typed(vi, ix.symbols)]
    if missing or not outputs:
        return None, missing
    sub = helper.make_graph(list(extra_consts.values()) + nodes, "region", list(inputs.values()),
                            list(outputs.values()), list(used_inits.values()))
    m = helper.make_model(sub, opset_imports=list(model.opset_import))
    m.ir_version = model.ir_version
    m.functions.extend(model.functions)
    return m, []


def _live_nodes(g) -> list:
    """The nodes of graph g some graph output depends on (what graphsurgeon's cleanup keeps)."""
    producer = {o: i for i, n in enumerate(g.node) for o in n.output if o}
    live, todo = set(), [o.name for o in g.output]
    while todo:
        i = producer.get(todo.pop())
        if i is None or i in live:
            continue
        live.add(i)
        todo.extend(t for t in (*g.node[i].input, *_subgraph_reads(g.node[i])) if t)
    return [n for i, n in enumerate(g.node) if i in live]


def _subgraph_reads(node) -> set:
    """Tensor names the subgraphs of node (If / Loop / Scan bodies) read, from the outer scope too: a
    region tensor read there only must stay a region output."""
    out = set()
    for a in node.attribute:
        for sg in ([a.g] if a.HasField("g") else []) + list(a.graphs):
            for n in sg.node:
                out.update(n.input)
                out |= _subgraph_reads(n)
            out.update(o.name for o in sg.output)
    return out


def _typed(vi, symbols: set) -> bool:
    """Typed as far as the whole graph is: a dtype, and every dim a known size or one of the graph
    inputs' symbols (a dynamic batch stays the same symbol in the region, so the passes know there what
    they know on the whole graph). A symbol inference made up for a size it lost is not known: the
    whole graph reads that size from a run (shapes.complete_mac_shapes)."""
    tt = vi.type.tensor_type
    return (tt.elem_type != 0 and tt.HasField("shape")
            and all((d.HasField("dim_value") and d.dim_value > 0) or (d.dim_param in symbols and d.dim_param)
                    for d in tt.shape.dim))


def run_types(model: onnx.ModelProto, names) -> dict:
    """name -> ValueInfoProto of the tensors `names`, typed from one onnxruntime run of `model` on
    random inputs (what inference could not say: TorchScript Swin sizes its windows at run time)."""
    from .shapes import run_values

    return {n: helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(v.dtype), list(v.shape))
            for n, v in run_values(model, names).items()}
