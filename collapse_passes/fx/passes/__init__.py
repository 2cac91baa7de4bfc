"""The collapse passes as torch.fx PassBase objects (one per file); usable in a torch.fx PassManager.

    from torch.fx.passes.infra.pass_manager import PassManager
    pm = PassManager([LinearizeActivations(["layer1.0.relu:0"]), FoldBatchNorm(), AbsorbResidual(),
                      HoistGlobalPool(), MergeLinearChains(example_inputs=(x,)), PropagateBiasMaps(),
                      Cleanup()])
    gm = pm(torch.fx.symbolic_trace(model.eval())).graph_module

`default_passes(...)` builds the list the collapse() entry runs; pass one FxRecord to all of them
to collect notes, folds and merges for a report.
"""
from ._base import FxPass, FxRecord
from .absorb_residual import AbsorbResidual
from .cleanup import Cleanup
from .fold_batchnorm import FoldBatchNorm
from .hoist_global_pool import HoistGlobalPool
from .linearize import LinearizeActivations
from .merge_chains import MergeLinearChains
from .propagate_bias_maps import PropagateBiasMaps
from .remove_blocks import RemoveResidualBlocks


def default_passes(keys=(), *, merge: bool = True, cost_model=None, allow_border_approx: bool = False,
                   example_inputs=None, record: FxRecord | None = None) -> list:
    """linearize, then fold / absorb / merge / cleanup (run the list to a fixed point with
    PassManager(..., steps=n) or run_to_fixed_point)."""
    record = record if record is not None else FxRecord()
    passes = [LinearizeActivations(keys, record), FoldBatchNorm(record)]
    if merge:
        # the pool hoist before the merge: a merge first fuses the head's 1x1 conv into the conv before it
        passes += [AbsorbResidual(record), HoistGlobalPool(record, example_inputs, cost_model, allow_border_approx),
                   MergeLinearChains(cost_model, allow_border_approx, example_inputs, record),
                   PropagateBiasMaps(record, cost_model)]
    passes.append(Cleanup(record))
    return passes


__all__ = ["FxPass", "FxRecord", "LinearizeActivations", "FoldBatchNorm", "AbsorbResidual", "HoistGlobalPool",
           "MergeLinearChains", "PropagateBiasMaps",
           "Cleanup", "RemoveResidualBlocks", "default_passes"]
