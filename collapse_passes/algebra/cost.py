"""Cost numbers for deciding whether a merge pays off (merging is a cost decision, not a rule).

MACs are counted for the weight product only (per-channel bias adds ride along with the op). Ops a
rewrite *creates* are charged too: a per-position bias-map Add, a layout op (Transpose) or an extra
Concat is one elementwise pass over its output tensor (`elementwise_macs`), plus the per-op overhead,
so a plan that needs one must beat the plan without it by the same count. A `CostModel` turns MACs into
a comparable cost by adding a fixed per-op overhead, or uses a measured latency when the caller has one
for that op's signature. The planner does the dynamic programming; this module only prices ops.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from math import prod

from .conv import ConvParams, compose_conv
from .linear import LinearParams

__all__ = [
    "conv_macs",
    "linear_macs",
    "conv_chain_macs",
    "merged_conv_macs",
    "conv_signature",
    "linear_signature",
    "elementwise_macs",
    "elementwise_signature",
    "CostModel",
    "DEFAULT_PER_OP_OVERHEAD_MACS",
    "DEFAULT_MACS_PER_SECOND",
]

# How the default overhead was chosen: on a CPU runtime (ONNX Runtime / PyTorch eager) one op costs
# about 2-10 us of dispatch, allocation and memory traffic that does not shrink with its FLOPs; one core
# sustains roughly 2-10 GMAC/s fp32 on the small shapes where this matters. 5 us x 4 GMAC/s = 20k MACs.
# It only has to be the right order of magnitude: it decides ties between "one bigger op" and "two
# smaller ops"; measured tables override it.
DEFAULT_PER_OP_OVERHEAD_MACS = 20_000.0
DEFAULT_MACS_PER_SECOND = 4e9


def conv_macs(p: ConvParams, output_spatial) -> int:
    """MACs of one conv: out positions x O x (I/group) x prod(kernel) (groups cut the inner sum)."""
    return int(prod(int(n) for n in output_spatial)) * p.out_channels * (p.in_channels // p.group) \
        * int(prod(p.kernel_shape))


def linear_macs(p: LinearParams, rows: int = 1) -> int:
    """MACs of x @ W.T for `rows` rows (tokens x batch)."""
    return int(rows) * p.out_features * p.in_features


def conv_chain_macs(convs, input_spatial) -> int:
    """Total MACs of convs applied in order to an input of spatial size input_spatial."""
    total, sp = 0, tuple(input_spatial)
    for c in convs:
        sp = c.output_spatial(sp)
        total += conv_macs(c, sp)
    return total


def merged_conv_macs(first: ConvParams, second: ConvParams, input_spatial) -> int:
    """MACs of the single conv that compose_conv would produce (bias_map Add not counted)."""
    m = compose_conv(first, second, input_spatial)
    return conv_macs(m.params, m.params.output_spatial(input_spatial))


def conv_signature(p: ConvParams, input_spatial) -> tuple:
    """Hashable key for a measured-latency table: everything that decides a conv's speed."""
    return ("Conv", p.in_channels, p.out_channels, p.kernel_shape, p.strides, p.pads, p.dilations,
            p.group, tuple(int(n) for n in input_spatial))


def linear_signature(p: LinearParams, rows: int = 1) -> tuple:
    return ("Linear", p.in_features, p.out_features, int(rows))


def elementwise_macs(shape) -> int:
    """One pass over a tensor of `shape` (batch excluded, like conv_macs): an Add of a bias map, a
    Transpose, a Concat's copy. Counted as one MAC-equivalent per element."""
    return int(prod(int(n) for n in shape))


def elementwise_signature(kind: str, shape) -> tuple:
    """Key for a measured-latency table of an elementwise op on a (1, *shape) tensor."""
    return ("Elementwise", str(kind), tuple(int(n) for n in shape))


@dataclass
class CostModel:
    """Cost of an op in MAC-equivalents: macs + per_op_overhead_macs, or a measured time.

    measured_seconds maps a signature (conv_signature / linear_signature or any hashable the caller
    uses) to seconds; macs_per_second converts it to the same unit so measured and modelled ops can
    be mixed in one plan. per_kind_overhead_macs overrides the overhead for an op kind ("Add", ...).
    """

    per_op_overhead_macs: float = DEFAULT_PER_OP_OVERHEAD_MACS
    measured_seconds: dict = field(default_factory=dict)
    macs_per_second: float = DEFAULT_MACS_PER_SECOND
    per_kind_overhead_macs: dict = field(default_factory=dict)

    def op_cost(self, kind: str, macs: float, signature=None) -> float:
        """Cost of one op: the measured time if the signature is known, else macs + overhead."""
        if signature is not None and signature in self.measured_seconds:
            return float(self.measured_seconds[signature]) * self.macs_per_second
        return float(macs) + float(self.per_kind_overhead_macs.get(kind, self.per_op_overhead_macs))

    def elementwise_cost(self, kind: str, shape) -> float:
        """Cost of an elementwise op the rewrite creates (bias-map Add, Transpose, Concat) on one sample
        of `shape` (channels and spatial axes, no batch)."""
        return self.op_cost(kind, elementwise_macs(shape), elementwise_signature(kind, shape))

    def chain_cost(self, ops) -> float:
        """Sum of op_cost over (kind, macs) or (kind, macs, signature) tuples."""
        return sum(self.op_cost(*op) for op in ops)

    def seconds(self, cost: float) -> float:
        """MAC-equivalents back to (modelled) seconds."""
        return float(cost) / self.macs_per_second


@dataclass
class OnDemandCostModel(CostModel):
    """A CostModel that measures a signature the first time the planner asks for it: time_signature
    (overridden by each front end: onnxruntime in onnx/measure.py, eager torch in fx/measure.py) gives
    seconds, or None for an op it cannot build (priced by MACs then); results stay in measured_seconds."""

    def time_signature(self, signature) -> float | None:
        return None

    def op_cost(self, kind: str, macs: float, signature=None) -> float:
        if signature is not None and signature not in self.measured_seconds:
            t = self.time_signature(signature)
            if t is not None:
                self.measured_seconds[signature] = t
        return super().op_cost(kind, macs, signature)
