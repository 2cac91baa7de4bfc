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

With dynamic input dims (a dynamic batch) only the sizes that read static dims are folded (fold_static_dims:
the c, h, w of a ShuffleNet channel shuffle, `view(b, -1, h, w)`'s -1 when its dynamic dims are the input's
own), in rounds of fold + shape inference; whatever reads a dynamic dim stays computed at run time.

Only integer and boolean values are written (sizes, indices, conditions), where a node that is not
folded reads them, and only up to MAX_ELEMENTS values. A tensor built from shapes that is data rather
than a size (the shifted-window attention mask and its boolean condition) stays computed at run time
from the now constant sizes: it is not a parameter and would count as one.
"""
from __future__ import annotations

import contextlib
import contextvars

import numpy as np
import onnx_graphsurgeon as gs

from ...pipeline import PassResult
from ..graph import RANDOM_OPS, const_value, toposort
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


#: within shared_runs(): [(model, tensor names, values)] of the runs made for size values
_RUNS: contextvars.ContextVar = contextvars.ContextVar("fold_shapes_runs", default=None)


@contextlib.contextmanager
def shared_runs():
    """Within it, the run of a model for the values of its size arithmetic (where inference lost a shape) is made
    once per model object and set of tensors: the report's "before" (analysis.measured_graph) and the passes'
    fold_shapes read the same values of the same input. A TorchScript Swin-T at 224 ran its 115 MB model twice for
    them (a session and a run, ~3.5 s each, before 2026-11-30). The model must not change inside."""
    token = _RUNS.set([])   # per call: a nested collapse() may get a model changed in between
    try:
        yield
    finally:
        _RUNS.reset(token)


def _run_values(source, names: list) -> dict:
    runs = _RUNS.get()
    if runs is None:
        return run_values(source, names)
    key = tuple(names)
    for model, k, values in runs:
        if model is source and k == key:
            return values
    values = run_values(source, names)
    runs.append((source, key, values))
    return values


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
            return _run_values(source, list(frontier))   # inference lost this shape: the run has it
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
        return _run_values(source, list(frontier))
    return {name: np.asarray(v) for name, v in zip(frontier, got)}


class FoldStaticShapes:
    name = "fold_shapes"

    def __call__(self, ctx) -> PassResult:
        graph = ctx.graph
        if ctx.source is None:
            return PassResult(False)
        if not static_inputs(graph):
            return fold_static_dims(ctx)
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
        done = _write_folded(wanted, values)
        if not done:
            return PassResult(False)
        n0 = len(graph.nodes)
        toposort(graph.cleanup(remove_unused_graph_inputs=False))
        return PassResult(True, [f"folded {done} run-time shape value(s), {n0 - len(graph.nodes)} node(s) removed"])


def _write_folded(wanted: dict, values: dict, written: dict | None = None) -> int:
    """Give the nodes outside the arithmetic that read a tensor of `values` (integer/boolean, at most
    MAX_ELEMENTS values) a constant instead; the number of tensors so replaced (recorded in `written`)."""
    fold = {name for name, v in values.items() if v.dtype.kind in "iub" and v.size <= MAX_ELEMENTS}
    if written is not None:
        written.update((name, values[name]) for name in fold)
    done = 0
    for name in fold:
        t = wanted[name]
        c = None
        for consumer in list(t.outputs):
            if consumer.outputs and all(o.name in fold for o in consumer.outputs):
                continue   # folded itself: it dies with the arithmetic
            if c is None:   # np.array, not np.ascontiguousarray: a 0-d value stays 0-d (a scalar Gather index)
                c = gs.Constant(f"{name}__folded", np.array(values[name], order="C"))
            for i, x in enumerate(consumer.inputs):
                if x is t:
                    consumer.inputs[i] = c
        done += c is not None
    return done


#: rounds of fold + shape inference for a model with dynamic input dims (each round reaches one more
#: reshape whose size arithmetic read the one before it: a ShuffleNet block, a Swin window partition)
MAX_DYNAMIC_ROUNDS = 64


def _static_dim_reads(graph: gs.Graph) -> dict:
    """id(tensor) -> value of each Gather / Slice of a Shape output (and each Shape, start/end included)
    that reads only dims shape inference gives as numbers: sizes that do not depend on a dynamic dim."""
    out = {}
    for node in graph.nodes:
        if node.op != "Shape" or not node.inputs or node.inputs[0].shape is None:
            continue
        dims = [d if isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d >= 0 else None
                for d in node.inputs[0].shape]
        r = len(dims)
        start, end = node.attrs.get("start", 0), node.attrs.get("end", r)
        sel = dims[slice(start + r if start < 0 else start, end + r if end < 0 else end)]
        s_out = node.outputs[0]
        if sel and all(d is not None for d in sel):
            out[id(s_out)] = np.asarray(sel, np.int64)
            continue
        for c in s_out.outputs:
            if c.inputs[0] is not s_out or not c.outputs:
                continue
            if c.op == "Gather" and c.attrs.get("axis", 0) == 0 and len(c.inputs) == 2 \
                    and const_value(c.inputs[1]) is not None:
                idx = const_value(c.inputs[1])
                if idx.dtype.kind not in "iu" or idx.size == 0 or np.any(idx >= len(sel)) or np.any(idx < -len(sel)):
                    continue
                picked = [sel[int(i)] for i in idx.reshape(-1)]
                if all(d is not None for d in picked):
                    out[id(c.outputs[0])] = np.asarray(picked, np.int64).reshape(idx.shape)
            elif c.op == "Slice" and all(const_value(t) is not None
                                         for t in c.inputs[1:] if t is not None and t.name):
                ins = [const_value(t).reshape(-1) if t is not None and t.name else None for t in c.inputs[1:]]
                starts, ends = ins[0], ins[1]
                axes = ins[2] if len(ins) > 2 and ins[2] is not None else np.zeros_like(starts)
                steps = ins[3] if len(ins) > 3 and ins[3] is not None else np.ones_like(starts)
                if starts.size != 1 or list(axes) not in ([0], [-1]) or int(steps[0]) == 0:
                    continue
                picked = list(range(len(sel)))[slice(int(starts[0]), int(ends[0]), int(steps[0]))]
                if all(sel[i] is not None for i in picked):
                    out[id(c.outputs[0])] = np.asarray([sel[i] for i in picked], np.int64)
    return out


def _fold_static_dim_round(graph: gs.Graph, outputs, source, written: dict) -> int:
    """One round of fold_static_dims: the static-dim reads and the small integer arithmetic on them and on
    constants, evaluated with onnxruntime on a model of that arithmetic alone (never a run of the model:
    its values could depend on the dynamic dims), written where the rest of the graph reads them."""
    import onnx
    from onnx_graphsurgeon.exporters.onnx_exporter import OnnxExporter

    from ...core import runtime

    roots = _static_dim_reads(graph)
    static = set(roots)
    nodes = []
    for node in graph.nodes:
        if any(id(t) in roots for t in node.outputs) or node.op in NONDETERMINISTIC or node.op == "Constant" \
                or node.domain not in (None, "", "ai.onnx") \
                or any(isinstance(v, gs.Graph) for v in node.attrs.values()):
            continue
        ins = [t for t in node.inputs if t is not None and t.name]
        if not ins or not any(id(t) in static for t in ins):
            continue   # constants alone: small_constant_arithmetic's (and onnxruntime's) business
        small = [const_value(t) if id(t) not in static else None for t in ins]
        if all(id(t) in static or (v is not None and v.size <= MAX_ELEMENTS) for t, v in zip(ins, small)):
            static.update(id(t) for t in node.outputs)
            nodes.append(node)
    # every static tensor something reads, not only those read outside the static part: a static value that
    # cannot be written (Swin's float window mask, built by ConstantOfShape + ScatterND from the map's h, w)
    # must get its integer inputs as constants, or the Shape reads behind it stay on every path (a dynamic-batch
    # TorchScript Swin-T at 224: a critical path of 1075 ops after its GELUs collapsed, now 450; static: 393)
    wanted = {t.name: t for t in graph.tensors().values()
              if id(t) in static and t.name not in outputs and t.outputs}
    if not wanted:
        return 0
    names = {id(t): t.name for t in graph.tensors().values() if id(t) in roots}
    protos, inits = [], {}
    for i, v in roots.items():
        protos.append(onnx.helper.make_node("Constant", [], [names[i]], value=onnx.numpy_helper.from_array(v)))
    for n in nodes:
        protos.append(OnnxExporter.export_node(n))
        for t in n.inputs:
            if t is None or not t.name or id(t) in static or t.name in inits:
                continue
            inits[t.name] = onnx.numpy_helper.from_array(np.array(const_value(t), order="C"), t.name)
    model = onnx.helper.make_model(
        onnx.helper.make_graph(protos, "static_dims", [], [onnx.ValueInfoProto(name=n) for n in wanted],
                               list(inits.values())),
        opset_imports=source.opset_import, ir_version=source.ir_version)
    try:
        got = runtime.session(model).run(list(wanted), {})
    except Exception:
        return 0
    return _write_folded(wanted, {n: np.asarray(v) for n, v in zip(wanted, got)}, written)


def _symbolic_piece(t):
    """The 1-D size vector `t` as a list of ints and dim names, when it is a small integer constant or
    Unsqueeze(Gather(Shape(x), i)) of one dim of x (a number or a name, as inference gives it); else None."""
    v = const_value(t)
    if v is not None:
        return [int(d) for d in v.reshape(-1)] if v.dtype.kind in "iu" and v.ndim <= 1 and v.size <= 8 else None
    p = t.inputs[0] if t.inputs else None
    if p is None or p.op != "Unsqueeze" or not p.inputs:
        return None
    axes = const_value(p.inputs[1]) if len(p.inputs) > 1 else np.asarray(p.attrs.get("axes", []))
    g = p.inputs[0].inputs[0] if p.inputs[0].inputs else None
    if axes is None or list(axes.reshape(-1)) not in ([0], [-1]) or g is None or g.op != "Gather" \
            or g.attrs.get("axis", 0) != 0:
        return None
    sh = g.inputs[0].inputs[0] if g.inputs[0].inputs else None
    idx = const_value(g.inputs[1])
    if sh is None or sh.op != "Shape" or idx is None or idx.ndim != 0 or sh.inputs[0].shape is None \
            or sh.attrs.get("start", 0) != 0 or "end" in sh.attrs:
        return None
    dims = list(sh.inputs[0].shape)
    i = int(idx)
    return [dims[i]] if -len(dims) <= i < len(dims) else None


def _resolve_reshape_wildcards(graph: gs.Graph, names: set, written: list) -> int:
    """The -1 of a Reshape whose target is Concat(batch, -1, h, w) (`x.view(b, -1, h, w)` in a TorchScript
    export) when the dynamic dims of the target are those of the input (same names, from the graph's
    inputs): -1 is then the product of the input's numbers over those of the target, whatever the dynamic
    sizes. ONNX inference leaves such a dim unknown (it does not divide symbols), and with it the channel
    count of everything after a channel shuffle. The -1 is written as that number (a new constant)."""
    done = 0
    for node in graph.nodes:
        if node.op != "Reshape" or len(node.inputs) < 2 or node.attrs.get("allowzero", 0):
            continue
        data, target = node.inputs[0], node.inputs[1]
        cat = target.inputs[0] if target.inputs else None
        if cat is None or cat.op != "Concat" or len(target.outputs) != 1 or data.shape is None:
            continue
        pieces = [_symbolic_piece(t) for t in cat.inputs]
        if any(p is None for p in pieces):
            continue
        flat = [d for p in pieces for d in p]
        holes = [k for k, p in enumerate(pieces) if -1 in p]
        if len(holes) != 1 or flat.count(-1) != 1 or 0 in flat:
            continue
        src = list(data.shape)
        sym_in = sorted(d for d in src if isinstance(d, str))
        sym_out = sorted(d for d in flat if isinstance(d, str))
        if sym_in != sym_out or not set(sym_in) <= names or any(d is None for d in src) \
                or any(isinstance(d, (int, np.integer)) and d < -1 for d in flat):
            continue
        num = int(np.prod([d for d in src if not isinstance(d, str)], dtype=np.int64))
        den = int(np.prod([d for d in flat if not isinstance(d, str) and d != -1], dtype=np.int64))
        if den <= 0 or num % den:
            continue
        k = holes[0]
        value = np.asarray([num // den if d == -1 else d for d in pieces[k]], np.int64)
        cat.inputs[k] = gs.Constant(f"{target.name}__dim{k}", value)
        written.append((target.name, k, value))
        done += 1
    return done


#: fold_static_dims' results by graph signature (cleanup.shape_signature): --target-speedup runs the passes on
#: the same model once per candidate (150 runs for a ShuffleNet), each would redo every round of inference
_RECIPES: dict = {}
_RECIPES_KEPT = 8


def fold_static_dims(ctx) -> PassResult:
    """A model with dynamic input dims (a dynamic batch): the run-time size arithmetic that reads only its
    static dims (a TorchScript export's `x.view(b, groups, c // groups, h, w)` in a channel shuffle reads
    c, h, w from Shape -> Gather -> Div) is folded into constants, and shape inference reaches what follows
    (with h and w left at run time, ONNX inference loses the channel count at the Div and every shape after
    the next torch.chunk, and the merge planner could not plan a conv behind it). Sizes that read a dynamic
    dim stay computed at run time, so the model still takes every size it took. Shape inference gives the
    static dims; each round reaches one more reshape that read the one before it. A graph folded before
    (same signature) gets the same constants without the rounds."""
    from .cleanup import infer_shapes, shape_signature

    graph = ctx.graph
    if shape_arithmetic(graph) is None:   # a shape set by data, control flow, a custom op: as it is
        return PassResult(False)
    n0 = len(graph.nodes)
    sig = shape_signature(graph)
    recipe = _RECIPES.get(sig)
    if recipe is None:
        recipe = _fold_rounds(graph, ctx)
        _RECIPES[sig] = recipe
        while len(_RECIPES) > _RECIPES_KEPT:
            _RECIPES.pop(next(iter(_RECIPES)))
    elif recipe[0] or recipe[1]:
        tensors = graph.tensors()
        for name, k, value in recipe[1]:
            cat = tensors[name].inputs[0]
            cat.inputs[k] = gs.Constant(f"{name}__dim{k}", value)
        _write_folded({n: tensors[n] for n in recipe[0]}, recipe[0])
        toposort(graph.cleanup(remove_unused_graph_inputs=False))
        infer_shapes(graph)
    done = len(recipe[0]) + len(recipe[1])
    if not done:
        return PassResult(False)
    return PassResult(True, [f"folded {done} run-time size value(s) that read only static dims, "
                             f"{n0 - len(graph.nodes)} node(s) removed (dynamic input dims stay dynamic)"])


def _fold_rounds(graph: gs.Graph, ctx) -> tuple[dict, list]:
    """fold_static_dims' rounds on `graph` (changed in place); what was written: ({tensor name: value},
    [(Reshape target name, Concat input index, value)])."""
    from .cleanup import infer_shapes

    values: dict = {}
    wildcards: list = []
    if not infer_shapes(graph):
        return values, wildcards
    names = {d for t in graph.inputs for d in (t.shape or ()) if isinstance(d, str)}
    for _ in range(MAX_DYNAMIC_ROUNDS):
        k = _fold_static_dim_round(graph, ctx.graph_outputs, ctx.source, values) \
            + _resolve_reshape_wildcards(graph, names, wildcards)
        if not k:
            break
        toposort(graph.cleanup(remove_unused_graph_inputs=False))
        if not infer_shapes(graph):
            break
    return values, wildcards


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
