"""Runs the ONNX passes: builds the pass list from the config and returns the new model."""
from __future__ import annotations

import numpy as np
import onnx

from ..core.blas import single_threaded_blas
from ..pipeline import PassManager
from .context import OnnxContext
from .graph import check_model, keep_node_metadata, node_key_names, to_graph, to_model
from .keys import site_metadata
from .passes import Cleanup, FoldAffine, LinearizeActivations
from .patterns import find_activations


def _pre_passes(remove_blocks) -> list:
    if not remove_blocks:
        return [LinearizeActivations()]
    from .passes.remove_blocks import RemoveResidualBlocks

    return [RemoveResidualBlocks(), LinearizeActivations()]


def build_pass_manager(merge: bool = True, remove_blocks=None, prune: bool = False, fold: bool = True) -> PassManager:
    loop = [FoldAffine()] if fold else []
    if merge:
        from .passes.merge_chains import MergeLinearChains
        from .passes.absorb_residual import AbsorbResidual
        from .passes.propagate_bias_maps import PropagateBiasMaps
        from .passes.hoist_global_pool import HoistGlobalPool

        # the pool goes up before merging: merged first, a head 1x1 conv would join the 3x3 before it and the
        # pool could no longer pass it (MobileNetV2's 320->1280 conv, then a Gemm merged with the classifier)
        loop += [AbsorbResidual(), HoistGlobalPool(), MergeLinearChains(), PropagateBiasMaps()]
    loop.append(Cleanup())
    pre = list(_pre_passes(remove_blocks))
    if prune:   # after linearize: a collapsed ReLU no longer turns a negative constant channel into 0
        from .passes.remove_constant_channels import RemoveConstantChannels

        pre.append(RemoveConstantChannels())
    from .passes.fold_static_shapes import FoldStaticShapes

    # Cleanup after the pre passes too: linearize writes a HardSigmoid / SELU regime as new Mul / Add tensors with
    # no shape, and a conv chain through them met "shapes unknown" in the loop's first round; when nothing else
    # changed in that round the loop stopped there and the chain was never merged (dynamo export, conv ->
    # hardsigmoid -> conv -> hardtanh -> conv: merged on the TorchScript export, whose BatchNorm fold made a 2nd round)
    return PassManager([FoldStaticShapes(), Cleanup(), *pre, Cleanup(), ("fixed_point", loop)])


def run_passes(model: onnx.ModelProto, chosen: set, *, merge: bool = True, allow_border_approx: bool = False,
               cost_model=None, input_shapes=None, remove_blocks=None, prune: bool = False,
               prune_off: dict | None = None, run_cache: OnnxContext | None = None, merge_allowed=None,
               fold: bool = True, channel_regimes: dict | None = None) -> tuple[onnx.ModelProto, OnnxContext, PassManager]:
    """`run_cache`: the context of an earlier run on the same `model`, whose run-read shapes
    (ctx.run_shapes, shapes.run_shapes) this run reuses instead of running the model again.
    `merge_allowed`: the join keys merges may use (None: all), core/merge_fallback.
    `fold=False` (with merge=False): the activations linearized and nothing folded, the gate's last resort."""
    ctx = OnnxContext(graph=to_graph(model), chosen=set(chosen), allow_border_approx=allow_border_approx,
                      cost_model=cost_model, input_shapes=dict(input_shapes or {}),
                      remove_blocks=set(remove_blocks or ()), node_meta=node_key_names(model),
                      prune=prune, prune_off=dict(prune_off or {}), source=model, merge_allowed=merge_allowed,
                      channel_regimes=dict(channel_regimes or {}))
    if run_cache is not None:   # shared, not copied: what one candidate reads, the next one has
        ctx.run_shapes, ctx.run_asked = run_cache.run_shapes, run_cache.run_asked
    # keyed before the passes change the graph: the result keeps the input's site keys (onnx.keys)
    sites = site_metadata(find_activations(ctx.graph), ctx.node_meta)
    pm = build_pass_manager(merge, remove_blocks, prune, fold)
    # many small float64 products: worker threads cost more than they give (core/blas). A merged constant cast back
    # to a float16 model's type may overflow to inf: the gate refuses (or the fallback unmerges) that result, so
    # numpy's "overflow encountered in cast" on stderr said nothing the run does not say in its own words
    with single_threaded_blas(), np.errstate(over="ignore"):
        pm.run(ctx)
    ctx.notes.extend(ctx.chain_notes.values())
    out = to_model(ctx.graph, model)   # the input's node metadata back (to_model); the site keys on top
    keep_node_metadata(out, sites)
    check_model(out, "collapsed model")
    return out, ctx, pm


def requested_semantics(model: onnx.ModelProto, chosen: set, remove_blocks=None,
                        constant_channels: dict | None = None, channel_regimes: dict | None = None) -> onnx.ModelProto:
    """The input model with the chosen activations linearized (and chosen residual blocks replaced by
    their skip) and nothing else: the reference the result is verified against.

    constant_channels {tensor: channels}: channels removed because they were off on the calibration data
    (a data-dependent removal) are forced to 0 in the reference first; structural constant-channel
    removals need nothing (those channels are constant in the original already).
    channel_regimes {anchor: ChannelRegime}: those activations become their per-channel map (--channel-regimes).

    Nothing requested returns `model` itself (the same object): verify then reuses its outputs."""
    if not chosen and not remove_blocks and not constant_channels:
        return model
    if constant_channels:
        from ..pruning.onnx_prune import mask_channels

        model = mask_channels(model, constant_channels)
    ctx = OnnxContext(graph=to_graph(model), chosen=set(chosen), remove_blocks=set(remove_blocks or ()),
                      node_meta=node_key_names(model), channel_regimes=dict(channel_regimes or {}))
    for p in _pre_passes(remove_blocks):
        p(ctx)
    return to_model(ctx.graph, model)
