"""Collapse scores computed by the tool (lower = more collapsed, 0 = fully collapsed).

    compute_scores(method, model, calib=None, calib_batches=None) -> ScoreResult

method: "tlc" (BN parameters, data-free; or per-channel mean/std on calibration data), "easier"
(on/off entropy on calibration data), "prelu" (Layer Folding: PReLU / LeakyRelu slopes),
"lacoot" (residual blocks: max-sliced Wasserstein distance between block input and output).
Activation scores are keyed by keys.display_key (the torch module path when the exporter left
it); LaCoOT's by residual-block key (onnx.blocks). The model is never modified.
torch_hooks.module_scores computes the same scores on a torch.nn.Module (torch imported there only).
"""
from __future__ import annotations

import onnx

from ..errors import CollapseError
from ._common import ScoreResult, binary_entropy, gaussian_p_off

METHODS = ("tlc", "easier", "prelu", "lacoot")

__all__ = ["METHODS", "ScoreResult", "compute_scores", "binary_entropy", "gaussian_p_off"]


def compute_scores(method: str, model: onnx.ModelProto, calib=None, calib_batches=None,
                   activations=None) -> ScoreResult:
    """Scores of `method` on `model` (a ModelProto or a path); calib: .npz / folder / dict of arrays.

    activations: (graph, activations with keys resolved) of `model` when the caller already has them
    (collapse() does): the activation methods then do not search the graph again."""
    name = str(method).strip().lower() if method is not None else ""
    if name not in METHODS:
        raise CollapseError(f"unknown score method {method!r}; valid methods: {', '.join(METHODS)}")
    if calib_batches is not None:
        try:
            ok = not isinstance(calib_batches, bool) and int(calib_batches) == calib_batches and calib_batches >= 1
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise CollapseError(f"--calib-batches must be a whole number >= 1, got {calib_batches!r}")
    if not isinstance(model, onnx.ModelProto):
        from ..onnx.graph import as_model

        model, _ = as_model(model)
    if name == "tlc":
        from .tlc import tlc_scores as fn
    elif name == "easier":
        from .easier import easier_scores as fn
    elif name == "prelu":
        from .prelu import prelu_scores as fn
    else:
        from .lacoot import lacoot_scores

        return lacoot_scores(model, calib=calib, calib_batches=calib_batches)
    return fn(model, calib=calib, calib_batches=calib_batches, activations=activations)
