"""Runs the ONNX passes: builds the pass list from the config and returns the new model."""
from __future__ import annotations

import onnx

from ..pipeline import PassManager
from .context import OnnxContext
from .graph import check_model, to_graph, to_model
from .passes import Cleanup, FoldAffine, LinearizeActivations


def build_pass_manager(merge: bool = True) -> PassManager:
    loop = [FoldAffine()]
    if merge:
        from .passes.merge_chains import MergeLinearChains
        from .passes.absorb_residual import AbsorbResidual

        loop += [AbsorbResidual(), MergeLinearChains()]
    loop.append(Cleanup())
    return PassManager([Cleanup(), LinearizeActivations(), ("fixed_point", loop)])


def run_passes(model: onnx.ModelProto, chosen: set, *, merge: bool = True, allow_border_approx: bool = False,
               cost_model=None, input_shapes=None) -> tuple[onnx.ModelProto, OnnxContext, PassManager]:
    ctx = OnnxContext(graph=to_graph(model), chosen=set(chosen), allow_border_approx=allow_border_approx,
                      cost_model=cost_model, input_shapes=dict(input_shapes or {}))
    pm = build_pass_manager(merge)
    pm.run(ctx)
    out = to_model(ctx.graph, model)
    check_model(out, "collapsed model")
    return out, ctx, pm


def requested_semantics(model: onnx.ModelProto, chosen: set) -> onnx.ModelProto:
    """The input model with the chosen activations linearized and nothing else: the reference."""
    ctx = OnnxContext(graph=to_graph(model), chosen=set(chosen))
    LinearizeActivations()(ctx)
    return to_model(ctx.graph, model)
