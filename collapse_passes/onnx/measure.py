"""--cost measured: price ops by their onnxruntime latency on this machine.

Every conv / dense the planner asks about (including hypothetical merged ones) is built as a
one-op ONNX model with random weights and timed once; results are cached per signature, so a
chain plan costs a handful of tiny measurements.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..algebra.cost import CostModel, OnDemandCostModel


def _conv_model(sig) -> tuple[onnx.ModelProto, dict]:
    _, cin, cout, kernel, strides, pads, dilations, group, spatial = sig
    rng = np.random.default_rng(0)
    w = rng.standard_normal((cout, cin // group, *kernel)).astype(np.float32)
    b = np.zeros(cout, np.float32)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin, *spatial])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], kernel_shape=list(kernel), strides=list(strides),
                            pads=list(pads), dilations=list(dilations), group=group)
    g = helper.make_graph([node], "op", [x], [y], [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), \
        {"x": rng.standard_normal((1, cin, *spatial)).astype(np.float32)}


def _dense_model(sig) -> tuple[onnx.ModelProto, dict]:
    _, fin, fout, rows = sig
    rng = np.random.default_rng(0)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [rows, fin])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    node = helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1)
    inits = [numpy_helper.from_array(rng.standard_normal((fout, fin)).astype(np.float32), "w"),
             numpy_helper.from_array(np.zeros(fout, np.float32), "b")]
    g = helper.make_graph([node], "op", [x], [y], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), \
        {"x": rng.standard_normal((rows, fin)).astype(np.float32)}


def _elementwise_model(sig) -> tuple[onnx.ModelProto, dict]:
    """An Add of a constant per-position map (what a bias-map Add is); other kinds are timed as Add too."""
    _, _, shape = sig
    rng = np.random.default_rng(0)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, *shape])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    m = numpy_helper.from_array(rng.standard_normal((1, *shape)).astype(np.float32), "m")
    g = helper.make_graph([helper.make_node("Add", ["x", "m"], ["y"])], "op", [x], [y], [m])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), \
        {"x": rng.standard_normal((1, *shape)).astype(np.float32)}


_BUILDERS = {"Conv": _conv_model, "Linear": _dense_model, "Elementwise": _elementwise_model}


def time_model(model: onnx.ModelProto, feed: dict, repeat: int = 30, warmup: int = 5, threads: int | None = None) -> float:
    """Median seconds of one run, onnxruntime CPU with full graph optimizations."""
    from ..core.runtime import session, time_runs

    return float(np.median(time_runs(session(model, optimize=True, threads=threads), feed, repeat, warmup)))


@dataclass
class MeasuredCostModel(OnDemandCostModel):
    """CostModel whose conv/dense costs are onnxruntime latencies measured on demand."""
    repeat: int = 20
    empty_op_seconds: float = field(default=0.0)

    def time_signature(self, signature) -> float | None:
        if signature[0] not in _BUILDERS:
            return None
        model, feed = _BUILDERS[signature[0]](signature)
        return time_model(model, feed, repeat=self.repeat)


def measured_cost_model(model: onnx.ModelProto, base: CostModel) -> MeasuredCostModel:
    return MeasuredCostModel(per_op_overhead_macs=base.per_op_overhead_macs, macs_per_second=base.macs_per_second,
                             per_kind_overhead_macs=dict(base.per_kind_overhead_macs))
