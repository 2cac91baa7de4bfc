"""cost="measured" for torch models: price ops by their eager torch latency on this machine.

The planner's signatures (algebra/cost.py: conv_signature, linear_signature, elementwise_signature)
are front-end neutral; here each one the planner asks about (hypothetical merged ops included) is
built as one torch op with random weights and timed with torch.utils.benchmark (median, after a
warm-up), cached per signature. The ONNX path times the same signatures on onnxruntime
(onnx/measure.py): each front end prices ops on the runtime its result runs on."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..algebra.cost import OnDemandCostModel

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def _conv(sig):
    _, cin, cout, kernel, strides, pads, dilations, group, spatial = sig
    n = len(kernel)
    if n not in _CONV:
        return None
    g = torch.Generator().manual_seed(0)
    w = torch.randn(cout, cin // group, *kernel, generator=g)
    b = torch.zeros(cout)
    x = torch.randn(1, cin, *spatial, generator=g)
    pad = tuple(v for a in reversed(range(n)) for v in (pads[a], pads[n + a]))   # F.pad order: last axis first
    conv = _CONV[n]
    if any(pad):
        return (lambda t: conv(F.pad(t, pad), w, b, strides, 0, dilations, group)), x
    return (lambda t: conv(t, w, b, strides, 0, dilations, group)), x


def _linear(sig):
    _, fin, fout, rows = sig
    g = torch.Generator().manual_seed(0)
    w, b = torch.randn(fout, fin, generator=g), torch.zeros(fout)
    return (lambda t: F.linear(t, w, b)), torch.randn(rows, fin, generator=g)


def _elementwise(sig):
    _, _, shape = sig
    g = torch.Generator().manual_seed(0)
    m = torch.randn(1, *shape, generator=g)
    return (lambda t: t + m), torch.randn(1, *shape, generator=g)


_BUILDERS = {"Conv": _conv, "Linear": _linear, "Elementwise": _elementwise}


def time_op(fn, x, min_run_time: float = 0.02) -> float:
    """Median seconds of fn(x) in eager torch (torch.utils.benchmark, this process's thread setting)."""
    from torch.utils import benchmark

    with torch.no_grad():
        fn(x)
        return float(benchmark.Timer("fn(x)", globals={"fn": fn, "x": x}).blocked_autorange(
            min_run_time=min_run_time).median)


@dataclass
class TorchMeasuredCostModel(OnDemandCostModel):
    """CostModel whose conv / linear / elementwise costs are eager torch latencies measured on demand."""
    min_run_time: float = 0.02

    def time_signature(self, signature) -> float | None:
        built = _BUILDERS[signature[0]](signature) if signature[0] in _BUILDERS else None
        return None if built is None else time_op(*built, self.min_run_time)
