"""prune: remove channels whose value is a known constant (exact), through the channel dependency graph.

All-zero filter with bias <= 0 before a ReLU, zero-gamma BatchNorm, and -- with calibration data --
ReLU / ReLU6 / HardSwish channels that are 0 on every sample (data-dependent: the verified reference then has those
channels forced to 0). Their constant contribution goes into the readers' biases (a per-position bias
map where a conv reads them through zero padding). Runs once, after linearization (the constants are
those of the requested semantics: a collapsed ReLU passes a negative constant on) and before folding.
"""
from __future__ import annotations

from ...pipeline import PassResult


class RemoveConstantChannels:
    name = "remove_constant_channels"

    def __call__(self, ctx) -> PassResult:
        from ...pruning.onnx_prune import exact_removal

        rep = exact_removal(ctx.graph, getattr(ctx, "prune_off", None) or {})
        ctx.pruning = rep
        notes = list(rep["notes"])
        if rep["removed_channels"]:
            notes.append(f"removed {rep['removed_channels']} constant channel(s) in {len(rep['groups'])} group(s)"
                         + (" (some data-dependent: off on all calibration data)" if rep["data_dependent"] else ""))
        return PassResult(bool(rep["removed_channels"]), notes)
