"""linearize: replace each chosen activation by its linear regime (identity for almost all).

This is the collapse itself. The requested semantics that verify.py checks against is this pass
alone applied to the input model, so it must stay the single definition of "collapsed".

With ctx.channel_regimes (--channel-regimes, core/channel_regimes.py) an activation listed there becomes its
per-channel map instead: x * scale[c] (+ shift[c]), the channels that were always off in their off regime (0 for a
ReLU), the others linear; fold_affine folds it into the conv before, and the zero channels are pruned.
"""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from ...errors import CollapseError
from ...pipeline import PassResult
from ..graph import make_const, replace_tensor_uses, tensor_namer, toposort
from ...core.names import fresh_name
from ..patterns import find_activations


class LinearizeActivations:
    name = "linearize"

    def __call__(self, ctx) -> PassResult:
        graph = ctx.graph
        acts = [a for a in find_activations(graph) if a.name in ctx.chosen]
        regimes = getattr(ctx, "channel_regimes", None) or {}
        if any(a.name in regimes and a.input.shape is None for a in acts):
            # the per-channel constants need the input's rank: the requested semantics linearizes without a Cleanup
            from .cleanup import infer_shapes

            infer_shapes(graph)
        now = {}   # an activation's output -> what replaced it (a collapsed activation may feed the next one)
        # new names no tensor / node has (a model holding `<y>__lin_scale` had it read as the scaled tensor, in the
        # result and in the requested-semantics reference the check compares it with)
        fresh, node_names = tensor_namer(graph), {n.name for n in graph.nodes}
        for a in acts:
            x, y = a.input, a.output
            while id(x) in now:
                x = now[id(x)]
            new = x
            dt = x.dtype if x.dtype is not None else np.float32
            shaped = _per_channel(regimes.get(a.name), a)
            if shaped is not None:
                scale, shift = shaped
                # the pruning reads its rank
                s = gs.Variable(fresh(f"{y.name}__ch_scale"), dtype=x.dtype, shape=y.shape)
                graph.nodes.append(gs.Node("Mul", name=fresh_name(f"{a.name}__ch_scale", node_names), inputs=[
                    new, make_const(graph, f"{a.name}.ch_scale", scale.astype(dt))], outputs=[s]))
                new = s
                if np.any(shift):
                    s = gs.Variable(fresh(f"{y.name}__ch_shift"), dtype=x.dtype, shape=y.shape)
                    graph.nodes.append(gs.Node("Add", name=fresh_name(f"{a.name}__ch_shift", node_names), inputs=[
                        new, make_const(graph, f"{a.name}.ch_shift", shift.astype(dt))], outputs=[s]))
                    new = s
            elif a.linear_scale != 1.0:
                s = gs.Variable(fresh(f"{y.name}__lin_scale"), dtype=x.dtype)
                graph.nodes.append(gs.Node("Mul", name=fresh_name(f"{a.name}__lin_scale", node_names), inputs=[
                    new, make_const(graph, f"{a.name}.lin_scale", np.asarray(a.linear_scale, dtype=dt))], outputs=[s]))
                new = s
            if shaped is None and a.linear_shift != 0.0:
                s = gs.Variable(fresh(f"{y.name}__lin_shift"), dtype=x.dtype)
                graph.nodes.append(gs.Node("Add", name=fresh_name(f"{a.name}__lin_shift", node_names), inputs=[
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


def _per_channel(r, a):
    """(scale, shift) of `a`'s per-channel map `r` shaped to broadcast along its channel axis, or None (plain
    linear regime). A tensor whose rank is unknown or whose channel count differs from the statistics' is
    refused rather than broadcast wrongly."""
    from ...core.channel_regimes import broadcast_shape

    if r is None:
        return None
    x = a.input
    shape = broadcast_shape(r.scale.size, r.axis, None if x.shape is None else len(x.shape))
    dim = None if shape is None else x.shape[r.axis]
    if shape is not None and isinstance(dim, str):
        # a named (dynamic) dim: the statistics' "channels" are positions along an axis that changes with the input
        # (an NHWC tensor's H, the scores' axis 1 of a rank-4 tensor); constants of the calibration size broadcast
        # at that size only, and the written model (dynamic dims kept) failed at any other size
        raise CollapseError(f"--channel-regimes: activation {a.name} ({r.key}): the axis {r.axis} its statistics "
                            f"split into {r.scale.size} channels is dynamic ({dim!r} in {x.shape}), not a channel "
                            "axis; fix the input's dims with --input-shape (input_shapes=) or run without "
                            "--channel-regimes (channel_regimes=False)")
    if shape is None or (isinstance(dim, int) and dim != r.scale.size):
        raise CollapseError(f"--channel-regimes: activation {a.name} ({r.key}): its input's shape "
                            f"({x.shape}) does not match the {r.scale.size} channels of its statistics on axis "
                            f"{r.axis}; run without --channel-regimes (channel_regimes=False)")
    return r.scale.reshape(shape), r.shift.reshape(shape)
