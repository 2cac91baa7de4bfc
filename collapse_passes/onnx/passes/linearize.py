"""linearize: replace each chosen activation by its linear regime (identity for almost all).

This is the collapse itself. The requested semantics that verify.py checks against is this pass
alone applied to the input model, so it must stay the single definition of "collapsed".
"""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from ...pipeline import PassResult
from ..graph import make_const, replace_tensor_uses, toposort
from ..patterns import find_activations


class LinearizeActivations:
    name = "linearize"

    def __call__(self, ctx) -> PassResult:
        graph = ctx.graph
        acts = [a for a in find_activations(graph) if a.name in ctx.chosen]
        now = {}   # an activation's output -> what replaced it (a collapsed activation may feed the next one)
        for a in acts:
            x, y = a.input, a.output
            while id(x) in now:
                x = now[id(x)]
            new = x
            dt = x.dtype if x.dtype is not None else np.float32
            if a.linear_scale != 1.0:
                s = gs.Variable(f"{y.name}__lin_scale", dtype=x.dtype)
                graph.nodes.append(gs.Node("Mul", name=f"{a.name}__lin_scale", inputs=[
                    new, make_const(graph, f"{a.name}.lin_scale", np.asarray(a.linear_scale, dtype=dt))], outputs=[s]))
                new = s
            if a.linear_shift != 0.0:
                s = gs.Variable(f"{y.name}__lin_shift", dtype=x.dtype)
                graph.nodes.append(gs.Node("Add", name=f"{a.name}__lin_shift", inputs=[
                    new, make_const(graph, f"{a.name}.lin_shift", np.asarray(a.linear_shift, dtype=dt))], outputs=[s]))
                new = s
            replace_tensor_uses(graph, y, new)
            now[id(y)] = new
            for n in a.nodes:
                n.inputs.clear()
                n.outputs.clear()
        if acts:
            toposort(graph.cleanup(remove_unused_graph_inputs=False))
        return PassResult(bool(acts), [f"linearized {len(acts)} activation(s)"] if acts else [])
