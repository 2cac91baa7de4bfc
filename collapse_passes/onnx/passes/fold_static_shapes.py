"""fold_shapes: replace run-time shape arithmetic by its values when every shape in the model is static.

TorchScript exports compute sizes at run time: Shape -> Gather -> Div -> Concat -> Reshape/Pad/Slice.
torchvision's Swin-T at 224 carries thousands of such nodes (window partition, padding, the shifted
window mask). ONNX shape inference stops at them, so every later pass works on a graph 4x larger than the
network and asks onnxruntime for the shapes it lost. With static graph inputs and no op whose output
shape depends on data, those values are constants of the model (onnxslim folds them too). They are
computed from the shapes ONNX inference knows (a small model of the shape arithmetic alone), or, where
inference lost a shape (Swin's run-time padding), read from one onnxruntime run of the input model; then
written as constants. The shape nodes die in cleanup, and inference reaches the whole graph again.

Conditions (otherwise the pass does nothing):
- every graph input dim is a number;
- no op whose output shape depends on data (NonZero, Unique, TopK, ...) and no control flow;
- no custom-domain op, and every input that sets an output shape (Reshape's shape, Pad's pads, ...)
  is a constant or itself shape arithmetic.

Integer arithmetic on small constants alone (sizes the exporter already wrote as Constant nodes, e.g.
Swin's `(window - W % window) % window` padding) is folded the same way: onnxruntime would fold it at
load, TVM's ONNX importer does not (small_constant_arithmetic).

Only integer and boolean values are written (sizes, indices, conditions), where a node that is not
folded reads them, and only up to MAX_ELEMENTS values. A tensor built from shapes that is data rather
than a size (the shifted-window attention mask and its boolean condition) stays computed at run time
from the now constant sizes: it is not a parameter and would count as one.
"""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from ...pipeline import PassResult
from ..graph import RANDOM_OPS, toposort
from ..shapes import run_values

#: ops whose output shape depends on input values that no static rule gives
DATA_SHAPED = {"NonZero", "Unique", "Compress", "NonMaxSuppression", "Loop", "If", "Scan", "StringSplit",
               "SequenceConstruct", "SequenceInsert", "SequenceAt", "SequenceEmpty", "SplitToSequence",
               "ConcatFromSequence", "Optional", "OptionalGetElement", "OptionalHasElement", "RegexFullMatch"}
#: ops whose output is not a function of their inputs: never folded
NONDETERMINISTIC = RANDOM_OPS | {"Dropout"}
#: op -> input positions whose VALUES set the output shape; each must be constant or shape arithmetic
SHAPE_INPUTS = {
    "Reshape": (1,), "Expand": (1,), "Tile": (1,), "Pad": (1, 3), "Slice": (1, 2, 3, 4), "ConstantOfShape": (0,),
    "Range": (0, 1, 2), "Resize": (1, 2, 3), "Upsample": (1,), "TopK": (1,), "OneHot": (1,), "Squeeze": (1,),
    "Unsqueeze": (1,), "Split": (1,), "CenterCropPad": (1,), "Col2Im": (1, 2), "MaxUnpool": (2,), "DFT": (1, 2),
    "STFT": (1, 3), "AffineGrid": (1,), "BlackmanWindow": (0,), "HannWindow": (0,), "HammingWindow": (0,),
    "MelWeightMatrix": (0, 1, 2, 3, 4), "ReduceSum": (1,), "ReduceMean": (1,), "ReduceMax": (1,), "ReduceMin": (1,),
    "ReduceProd": (1,), "ReduceL1": (1,), "ReduceL2": (1,), "ReduceLogSum": (1,), "ReduceLogSumExp": (1,),
    "ReduceSumSquare": (1,),
}
#: the largest folded value written into the model (sizes and index vectors are far smaller; a mask is not)
MAX_ELEMENTS = 4096


def static_inputs(graph: gs.Graph) -> bool:
    return bool(graph.inputs) and all(
        t.shape is not None and all(isinstance(d, int) and d >= 0 for d in t.shape) for t in graph.inputs)


def shape_arithmetic(graph: gs.Graph) -> set | None:
    """ids of the tensors computed from shapes and constants alone (with at least one Shape/Size behind
    them), or None when some shape in the model may depend on data (see the module docstring)."""
    const: set = set()
    derived: set = set()
    for node in graph.nodes:
        if node.domain not in (None, "", "ai.onnx") or node.op in DATA_SHAPED:
            return None
        if any(isinstance(v, gs.Graph) for v in node.attrs.values()):
            return None
        ins = [t for t in node.inputs if t is not None and t.name]
        if node.op == "Constant" or (node.op not in NONDETERMINISTIC and ins and all(
                isinstance(t, gs.Constant) or id(t) in const for t in ins)):
            const.update(id(t) for t in node.outputs)
            continue
        if node.op in ("Shape", "Size"):
            derived.update(id(t) for t in node.outputs)
            continue
        for i in SHAPE_INPUTS.get(node.op, ()):
            if i < len(node.inputs):
                t = node.inputs[i]
                if t is not None and t.name and not (isinstance(t, gs.Constant) or id(t) in const
                                                     or id(t) in derived):
                    return None   # a shape set by data: Shape of what follows is not a constant
        if node.op not in NONDETERMINISTIC and ins and all(
                isinstance(t, gs.Constant) or id(t) in const or id(t) in derived for t in ins):
            derived.update(id(t) for t in node.outputs)
    return derived


def small_constant_arithmetic(graph: gs.Graph) -> set:
    """ids of the tensors computed by ops from constants alone, where every constant behind them holds at
    most MAX_ELEMENTS values: size arithmetic the TorchScript exporter wrote with Constant nodes once the
    input size was static (Swin's `pad_r = (window - W % window) % window` -> Concat -> Cast -> Pad).
    onnxruntime folds these when a session loads; TVM's ONNX importer does not, and loses the shape of
    what they reshape. Large constants (a weight's Transpose) are never pulled in."""
    small: set = set()
    for node in graph.nodes:
        if node.op in NONDETERMINISTIC or node.op == "Constant" or node.domain not in (None, "", "ai.onnx") \
                or any(isinstance(v, gs.Graph) for v in node.attrs.values()):
            continue
        ins = [t for t in node.inputs if t is not None and t.name]
        if ins and all(id(t) in small or (isinstance(t, gs.Constant) and _small_constant(t))
                       or (t.inputs and t.inputs[0].op == "Constant" and _small_constant(t.inputs[0].attrs.get("value")))
                       for t in ins):
            small.update(id(t) for t in node.outputs)
    return small


def _small_constant(c) -> bool:
    try:
        return isinstance(c, gs.Constant) and int(np.prod(c.shape)) <= MAX_ELEMENTS
    except (TypeError, ValueError):
        return False


def _evaluate(graph: gs.Graph, derived: set, frontier: dict, source) -> dict:
    """{tensor name: value} of the shape-arithmetic tensors `frontier`: from a model of the shape arithmetic alone when inference gives
    every Shape/Size input it reads, else from one run of the input model."""
    import onnx
    from onnx_graphsurgeon.exporters.onnx_exporter import OnnxExporter

    from ...core import runtime
    from ..shapes import inferred_types

    producer = {id(t): n for n in graph.nodes for t in n.outputs}
    needed, stack, seen = [], [producer[id(t)] for t in frontier.values() if id(t) in producer], set()
    while stack:
        n = stack.pop()
        if id(n) in seen:
            continue
        seen.add(id(n))
        needed.append(n)
        if n.op not in ("Shape", "Size"):
            stack.extend(producer[id(t)] for t in n.inputs if t is not None and id(t) in producer)
    roots = [n for n in needed if n.op in ("Shape", "Size")]
    types = {**{vi.name: vi for vi in source.graph.input}, **(inferred_types(source) or {})} if roots else {}
    known = {}
    for n in roots:
        vi = types.get(n.inputs[0].name)
        dims = [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim] \
            if vi is not None and vi.type.tensor_type.HasField("shape") else None
        if dims is None or any(d is None for d in dims):
            return run_values(source, list(frontier))   # inference lost this shape: the run has it
        if n.op == "Size":
            known[id(n)] = np.asarray(int(np.prod(dims, dtype=np.int64)), dtype=np.int64)
        else:
            start, end = n.attrs.get("start", 0), n.attrs.get("end", len(dims))
            known[id(n)] = np.asarray(dims[slice(start, end)], dtype=np.int64)
    order = {id(n): i for i, n in enumerate(graph.nodes)}
    nodes, inits = [], {}
    for n in sorted(needed, key=lambda n: order[id(n)]):
        if id(n) in known:
            nodes.append(onnx.helper.make_node("Constant", [], [n.outputs[0].name],
                                               value=onnx.numpy_helper.from_array(known[id(n)])))
            continue
        nodes.append(OnnxExporter.export_node(n))
        for t in n.inputs:
            if isinstance(t, gs.Constant) and t.name not in inits:
                inits[t.name] = OnnxExporter.export_tensor_proto(t)
    outs = [onnx.ValueInfoProto(name=name) for name in frontier]   # typed by onnxruntime
    model = onnx.helper.make_model(onnx.helper.make_graph(nodes, "shape_arithmetic", [], outs, list(inits.values())),
                                   opset_imports=source.opset_import, ir_version=source.ir_version)
    try:
        got = runtime.session(model).run(list(frontier), {})
    except Exception:
        return run_values(source, list(frontier))
    return {name: np.asarray(v) for name, v in zip(frontier, got)}


class FoldStaticShapes:
    name = "fold_shapes"

    def __call__(self, ctx) -> PassResult:
        graph = ctx.graph
        if ctx.source is None or not static_inputs(graph):
            return PassResult(False)
        derived = shape_arithmetic(graph)
        if derived is None:
            return PassResult(False)
        derived = derived | small_constant_arithmetic(graph)
        if not derived:
            return PassResult(False)
        outputs = ctx.graph_outputs
        wanted = {t.name: t for n in graph.nodes for t in n.outputs if id(t) in derived and t.name not in outputs}
        # one step past the shape arithmetic: what a non-shape node reads of it
        if not any(id(t) not in derived for n in graph.nodes for x in n.inputs if id(x) in derived
                   for t in n.outputs):
            return PassResult(False)
        values = _evaluate(graph, derived, wanted, ctx.source)
        fold = {name for name, v in values.items() if v.dtype.kind in "iub" and v.size <= MAX_ELEMENTS}
        done = 0
        for name in fold:
            t = wanted[name]
            c = None
            for consumer in list(t.outputs):
                if consumer.outputs and all(o.name in fold for o in consumer.outputs):
                    continue   # folded itself: it dies with the arithmetic
                c = c if c is not None else gs.Constant(f"{name}__folded", np.ascontiguousarray(values[name]))
                for i, x in enumerate(consumer.inputs):
                    if x is t:
                        consumer.inputs[i] = c
            done += c is not None
        if not done:
            return PassResult(False)
        n0 = len(graph.nodes)
        toposort(graph.cleanup(remove_unused_graph_inputs=False))
        return PassResult(True, [f"folded {done} run-time shape value(s), {n0 - len(graph.nodes)} node(s) removed"])


def folded_graph(model) -> gs.Graph:
    """`model` as a graph with its run-time shape arithmetic folded, for an analysis outside the pass
    pipeline that needs the shapes ONNX inference stops at: ratio pruning of a TorchScript export, whose
    torch.chunk is a Slice ending at Shape -> Gather -> Div, would otherwise freeze every channel group
    behind it (and prune other channels than on the torch.export-based export of the same model)."""
    from ..context import OnnxContext
    from ..graph import to_graph

    ctx = OnnxContext(graph=to_graph(model), source=model)
    FoldStaticShapes()(ctx)
    return ctx.graph
