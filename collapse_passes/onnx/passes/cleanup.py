"""clean: drop Identity nodes (and no-op Dropouts, Slices, Pads), dead nodes and unused initializers, toposort,
re-infer shapes."""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from ...pipeline import PassResult
from ..graph import const_value, dropout_passes_through, toposort
from ..shapes import apply_types, fill_shapes, inferred_types, light_export, missing_priced_tensors, run_shapes


def infer_shapes(graph: gs.Graph) -> bool:
    """ONNX shape inference so new tensors get shapes (MACs, bias maps need them): every Variable gets
    the dtype/shape inference gives it (none if inference does not reach it), in place. The weights are
    not sent through inference (onnx/shapes.py). False (graph unchanged) if inference fails."""
    model = light_export(graph)
    types = inferred_types(model)
    del model
    if types is None:
        return False
    apply_types(graph, types, reset=True)
    return True


def fill_from_source(graph: gs.Graph, ctx) -> int:
    """Shapes inference loses at Conv / Gemm / MatMul and priced elementwise ops (TorchScript Swin's
    run-time window sizes, a ShuffleNet's channel shuffle: shapes.missing_priced_tensors), read
    from one onnxruntime run of the input model and kept by tensor name, so the merge planner prices
    them (a merge priced on unknown dims can make a bottleneck MLP twice as costly). Only for static
    inputs: the run's shapes are then the model's only ones (they are written as value_info)."""
    if ctx.source is None or not all(isinstance(d, int) for t in graph.inputs for d in (t.shape or [None])):
        return 0
    missing = missing_priced_tensors(graph)
    todo = [n for n in missing if n not in ctx.run_asked]
    if todo:
        ctx.run_asked.update(todo)
        ctx.run_shapes.update(run_shapes(ctx.source, todo))
    return fill_shapes(missing, ctx.run_shapes)


def shape_signature(graph: gs.Graph) -> tuple:
    """What ONNX shape inference reads: the node structure, input shapes, constant shapes and dtypes, and
    the values of small integer constants (Reshape targets, Slice bounds). Equal signatures, equal shapes."""
    def const_sig(t):
        if not isinstance(t, gs.Constant):
            return t.name
        v = t.values
        small = v.dtype.kind in "iu" and v.size <= 64
        return (t.name, tuple(v.shape), str(v.dtype), v.tobytes() if small else None)

    return (tuple((t.name, tuple(t.shape or ()), str(t.dtype)) for t in graph.inputs),
            tuple(t.name for t in graph.outputs),
            tuple((n.op, n.name, n.domain,
                   tuple((k, const_sig(v) if isinstance(v, gs.Constant) else repr(v)) for k, v in sorted(n.attrs.items())),
                   tuple(const_sig(t) for t in n.inputs), tuple(t.name for t in n.outputs)) for n in graph.nodes))


def noop_dropout(node, graph_outputs=()) -> bool:
    """A standard Dropout whose mask nobody reads and which passes its input through: inference mode (no
    training_mode input, or a constant False) or ratio a constant 0 (keeps every element, scales by 1/(1-0)).
    A train-mode export of Swin-T's Dropout(0.0) left one between fc1 and fc2, which then never merged."""
    if node.op != "Dropout" or node.domain not in (None, "", "ai.onnx") or not node.inputs or not node.outputs:
        return False
    if len(node.outputs) > 1 and node.outputs[1].name and (node.outputs[1].outputs
                                                          or node.outputs[1].name in graph_outputs):
        return False   # the mask is read
    train = const_value(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2].name else False
    ratio = const_value(node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1].name else None
    return dropout_passes_through(train, ratio)


#: ends at or past this count as "to the end" on a dim of unknown size (torch writes INT64_MAX, some INT32_MAX)
_TO_THE_END = 2 ** 31 - 1


def noop_slice_or_pad(node) -> bool:
    """A Slice that keeps every element in order (each axis it cuts from 0 to the end, step 1), or a Pad whose
    pads are all 0: its output is its input. The TorchScript exporter writes Swin's crop back to the map
    (`x[:, :h, :w, :]`, a no-op when no window padding was needed) as two such Slices per block and both
    exporters its `F.pad(x, (0, 0, 0, pad_r, 0, pad_b))` with pads 0 at 224: 39 ops of a Swin-T's critical
    path that compute nothing, and 24 more ops on the TorchScript file than on the torch.export-based one."""
    if node.domain not in (None, "", "ai.onnx") or not node.inputs or not node.outputs or len(node.outputs) != 1:
        return False
    if node.op == "Pad":
        pads = const_value(node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1].name else None
        return pads is not None and pads.size > 0 and not np.any(pads)
    if node.op != "Slice" or len(node.inputs) < 3:
        return False
    vals = [const_value(t) if t is not None and t.name else None for t in node.inputs[1:5]]
    if vals[0] is None or vals[1] is None or any(t is not None and t.name and v is None
                                                 for t, v in zip(node.inputs[3:5], vals[2:])):
        return False
    shape = node.inputs[0].shape
    if shape is None:
        return False
    rank = len(shape)
    starts, ends = vals[0].reshape(-1), vals[1].reshape(-1)
    axes = vals[2].reshape(-1) if len(vals) > 2 and vals[2] is not None else np.arange(len(starts))
    steps = vals[3].reshape(-1) if len(vals) > 3 and vals[3] is not None else np.ones(len(starts), np.int64)
    if not (len(starts) == len(ends) == len(axes) == len(steps)):
        return False
    for s, e, a, st in zip(starts, ends, axes, steps):
        a = int(a) + rank if a < 0 else int(a)
        if not 0 <= a < rank or int(st) != 1:
            return False
        d = shape[a]
        known = isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d >= 0
        start = int(s) + d if known and s < 0 else int(s)
        if start > 0 if known else int(s) != 0:
            return False
        if not (int(e) >= d if known else int(e) >= _TO_THE_END):
            return False
    return True


def strided_copy_source(node):
    """x, when `node` is Gather(Reshape(x, [-1]), arange(x.size).reshape(x.shape)) on axis 0: it reads x back
    whole, in order, in x's shape. The torch.export-based exporter writes aten.as_strided this way where a
    decomposition restores a tensor's own strides (AdaptiveAvgPool2d(1) on a channels-last map: ConvNeXt's
    head, after its permuted blocks); the two ops are 2 of ConvNeXt-T's critical path that the TorchScript
    export and the torch front end never had. None otherwise."""
    if node.op != "Gather" or node.domain not in (None, "", "ai.onnx") or len(node.inputs) != 2 \
            or len(node.outputs) != 1 or int(node.attrs.get("axis", 0)) != 0:
        return None
    flat = node.inputs[0]
    prod = flat.inputs[0] if len(flat.inputs) == 1 else None
    if prod is None or prod.op != "Reshape" or prod.domain not in (None, "", "ai.onnx") or len(prod.inputs) != 2:
        return None
    x = prod.inputs[0]
    dims = x.shape
    if dims is None or not all(isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d >= 0 for d in dims):
        return None
    size = int(np.prod(dims, dtype=np.int64))
    target = const_value(prod.inputs[1])
    idx = const_value(node.inputs[1])
    if target is None or target.reshape(-1).tolist() not in ([-1], [size]) or idx is None \
            or idx.dtype.kind not in "iu" or tuple(idx.shape) != tuple(int(d) for d in dims):
        return None
    return x if np.array_equal(idx.reshape(-1), np.arange(size)) else None


def flattened_for_strided_copy(node, graph_outputs=()) -> bool:
    """A Reshape whose output only strided_copy_source Gathers read (at least one): with them, no op."""
    if node.op != "Reshape" or len(node.outputs) != 1 or node.outputs[0].name in graph_outputs:
        return False
    readers = node.outputs[0].outputs
    return bool(readers) and all(strided_copy_source(r) is not None for r in readers)


def noop_op(node, graph_outputs=()) -> bool:
    """An op whose output is its input (noop_dropout, noop_slice_or_pad; a strided_copy_source Gather and the
    Reshape that flattens for it): removed by Cleanup, and no op of the model's node count or critical path
    (analysis.model_stats), so the report does not credit their removal to a collapse."""
    return noop_dropout(node, graph_outputs) or noop_slice_or_pad(node) or strided_copy_source(node) is not None \
        or flattened_for_strided_copy(node, graph_outputs)


def inverse_transpose_pair(node) -> bool:
    """A Transpose reading another Transpose's output whose perm undoes it: its output is the first one's input.
    tf2onnx and TFLite converters write NHWC activations between two such transposes (Conv -> Transpose(0,2,3,1)
    -> Relu -> Transpose(0,3,1,2) -> Conv); once the activation is collapsed the pair is back to back and, left
    there, kept the two convs from ever meeting (no merge, and no word why)."""
    if node.op != "Transpose" or node.domain not in (None, "", "ai.onnx") or len(node.inputs) != 1:
        return False
    prev = node.inputs[0].inputs[0] if node.inputs[0].inputs else None
    if prev is None or prev.op != "Transpose" or prev.domain not in (None, "", "ai.onnx") or len(prev.inputs) != 1:
        return False
    p1, p2 = prev.attrs.get("perm"), node.attrs.get("perm")
    if p1 is None and p2 is None:
        return True   # both reverse the axes
    rank = len(p1 if p1 is not None else p2)
    p1 = list(p1) if p1 is not None else list(range(rank))[::-1]
    p2 = list(p2) if p2 is not None else list(range(rank))[::-1]
    return len(p1) == len(p2) and all(int(p1[int(p2[i])]) == i for i in range(rank))


class Cleanup:
    name = "clean"

    def __init__(self, shapes: bool = True):
        self.shapes = shapes

    def __call__(self, ctx) -> PassResult:
        g = ctx.graph
        n0 = len(g.nodes)
        outputs = ctx.graph_outputs
        removed = 0
        for node in list(g.nodes):   # first, before their flattening Reshape is taken for an Identity below
            src = strided_copy_source(node)
            if src is not None:
                node.inputs[0] = src
                node.op, node.attrs = "Identity", {}
                node.inputs.pop()
        for node in list(g.nodes):
            if noop_op(node, outputs):   # an Identity from here on (a Dropout's mask output is unread)
                node.op, node.attrs = "Identity", {}
                while len(node.inputs) > 1:
                    node.inputs.pop()
                while len(node.outputs) > 1:
                    node.outputs.pop()
            if inverse_transpose_pair(node):   # an Identity of the first Transpose's input (that one dies if unread)
                node.inputs[0] = node.inputs[0].inputs[0].inputs[0]
                node.op, node.attrs = "Identity", {}
            if node.op != "Identity" or not node.inputs or not node.outputs:
                continue
            src, dst = node.inputs[0], node.outputs[0]
            if dst.name in outputs:
                # keep graph output names stable: let the producer write the output directly
                prod = src.inputs[0] if src.inputs else None
                if prod is None or src.name in outputs or len(src.outputs) != 1:
                    continue
                node.inputs.clear()
                node.outputs.clear()
                prod.outputs[prod.outputs.index(src)] = dst
            else:
                for c in list(dst.outputs):
                    for i, t in enumerate(c.inputs):
                        if t is dst:
                            c.inputs[i] = src
                node.inputs.clear()
                node.outputs.clear()
            removed += 1
        toposort(g.cleanup(remove_unused_graph_inputs=False))
        if self.shapes:
            # a graph unchanged since the last inference keeps its shapes (one inference, not one per loop)
            sig = shape_signature(g)
            if getattr(ctx, "_shapes_signature", None) != sig:
                ctx._shapes_signature = sig if infer_shapes(g) else None
                if ctx._shapes_signature is not None:
                    fill_from_source(g, ctx)
        changed = removed > 0 or len(ctx.graph.nodes) != n0
        return PassResult(changed, [f"removed {n0 - len(ctx.graph.nodes)} node(s)"] if changed else [])
