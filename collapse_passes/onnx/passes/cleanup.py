"""clean: drop Identity nodes, dead nodes and unused initializers, toposort, re-infer shapes."""
from __future__ import annotations

import onnx
import onnx_graphsurgeon as gs

from ...pipeline import PassResult


def infer_shapes(graph: gs.Graph) -> gs.Graph:
    """Round-trip through ONNX shape inference so new tensors get shapes (MACs, bias maps need them)."""
    model = gs.export_onnx(graph, do_type_check=False)
    for vi in list(model.graph.value_info):
        model.graph.value_info.remove(vi)
    try:
        model = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception:
        return graph
    return gs.import_onnx(model)


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
        g.cleanup(remove_unused_graph_inputs=False).toposort()
        if self.shapes:
            ctx.graph = infer_shapes(g)
        changed = removed > 0 or len(ctx.graph.nodes) != n0
        return PassResult(changed, [f"removed {n0 - len(ctx.graph.nodes)} node(s)"] if changed else [])
