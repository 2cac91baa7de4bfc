"""clean: drop Identity nodes (and no-op Dropouts), dead nodes and unused initializers, toposort, re-infer shapes."""
from __future__ import annotations

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


class Cleanup:
    name = "clean"

    def __init__(self, shapes: bool = True):
        self.shapes = shapes

    def __call__(self, ctx) -> PassResult:
        g = ctx.graph
        n0 = len(g.nodes)
        outputs = ctx.graph_outputs
        removed = 0
        for node in list(g.nodes):
            if noop_dropout(node, outputs):   # an Identity from here on (the mask output is unread)
                node.op, node.attrs = "Identity", {}
                while len(node.inputs) > 1:
                    node.inputs.pop()
                while len(node.outputs) > 1:
                    node.outputs.pop()
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
