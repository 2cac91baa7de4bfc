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
    "ELEMENT_PRICES",
    "DEPTHWISE_MAC_FACTOR",
    "is_depthwise",
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

#: What an op that is not a conv / dense costs per element, in MAC-equivalents (one MAC of a dense conv).
#: Keys: activation kinds (core/activations.py, lowercase: priced per element of the activation's output,
#: however many nodes it is written with) and ONNX op types (priced per element of the node's output; a
#: reduction per element of its input). A key not listed costs 0 per element (size arithmetic, Reshape
#: and other views, small gates), only its per-op overhead.
#: Measured by benchmarks/op_prices.py (raw numbers: benchmarks/results/op_prices_*.json): AMD EPYC (2 cores,
#: AVX-512), onnxruntime 1.32 CPU, full graph optimizations (NCHWc, activation and QuickGelu / Gelu /
#: LayerNorm fusions), one intra-op thread, spinning off; each op timed in place, after the 1x1 conv / MatMul
#: it follows in a network, against the same chain without it, on 3 CNN and 2 Swin-T tensor sizes (the
#: prices vary +-20 % between sizes). A dense 1x1 / 3x3 conv ran at ~8.6 ps per MAC, so one SiLU element
#: (~140 ps) is worth ~16 MACs: pricing it at 1 (as before) predicted 1.02x for EfficientNet-B0 with every
#: SiLU collapsed, onnxruntime measured 1.22x. With two threads the convs scale better than these ops, so
#: the prices are a floor there (see docs/architecture.md, "Cost model").
ELEMENT_PRICES: dict = {
    # activations. Those runtimes fuse into the conv before them (core/activations.fuses) stay at 0 although
    # a fused Clip measured ~6 and a LeakyRelu ~20 (a ReLU ~2, the noise floor): priced, each collapse of one
    # buys ~1 % alone, and --target-speedup's greedy then spends a MobileNetV2 block's first ReLU6 on that
    # instead of on the merge its pair enables (measured: 1.23x instead of 1.30x on
    # tests/test_adv13_target_speedup_partners.py's net at 112)
    "relu": 0.0, "relu6": 0.0, "clip": 0.0, "hardsigmoid": 0.0, "leaky_relu": 0.0,
    "silu": 16.0, "swish": 16.0, "hardswish": 25.0, "hard_swish": 25.0, "sigmoid": 28.0, "tanh": 26.0,
    "gelu": 47.0, "gelu_tanh": 47.0, "elu": 30.0, "celu": 30.0, "selu": 30.0, "mish": 45.0, "softplus": 30.0,
    # onnxruntime's PRelu broadcasts a per-channel slope element by element: ~40x a ReLU6's pass
    "prelu": 350.0,
    # ONNX ops outside activations
    "Add": 15.0, "Sub": 15.0, "Mul": 15.0, "Div": 15.0, "Sum": 15.0, "Max": 15.0, "Min": 15.0, "Where": 15.0,
    "Sigmoid": 28.0, "Tanh": 26.0, "HardSigmoid": 6.0, "HardSwish": 25.0, "Erf": 30.0, "Exp": 25.0,
    "MaxPool": 15.0, "AveragePool": 15.0, "GlobalAveragePool": 2.0, "ReduceMean": 2.0, "ReduceSum": 2.0,
    "LayerNormalization": 47.0, "Softmax": 27.0, "Transpose": 13.0, "Concat": 13.0, "Pad": 13.0,
}
#: ONNX ops priced per element of their (first) input: they read much more than they write
REDUCTION_OPS = frozenset({"GlobalAveragePool", "GlobalMaxPool", "ReduceMean", "ReduceSum", "ReduceMax"})
#: MAC-equivalents per MAC of a depthwise conv (one input channel per group). Alone, a depthwise conv runs
#: 3.7-6.3x slower per MAC than a large dense conv in onnxruntime's MLAS (benchmarks/op_prices.py), but the
#: dense convs a merge puts in their place are small and slow per MAC too (NCHWc pads output channels to
#: blocks of 16): with a factor of 2 the planner merged a test block's depthwise 3x3 + 1x1 (16 -> 4 channels,
#: 8x8) into one dense 3x3 that ran 7.1 us instead of 5.9, and whole networks do not call for one either
#: (MobileNetV2 at 224, every ReLU6 collapsed: predicted 1.63x at 1, 1.70x at 2, measured 1.59x;
#: EfficientNet-B0, every SiLU: 1.23x / 1.22x, measured 1.19x). So 1 by default; CostModel(depthwise_factor=)
#: sets it. Grouped convs with several channels per group always count at 1.
DEPTHWISE_MAC_FACTOR = 1.0


def is_depthwise(in_channels: int, group: int) -> bool:
    """One input channel per group (group > 1): MobileNet / EfficientNet's depthwise convs."""
    return group > 1 and in_channels == group


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
    element_prices: MAC-equivalents per element of an op that is not a conv / dense (ELEMENT_PRICES), and
    depthwise_factor: MAC-equivalents per MAC of a depthwise conv (DEPTHWISE_MAC_FACTOR), the one pricing of
    non-MAC work every front end uses (the merge planner, speedup.stats_cost / graph_cost, the training
    loop's predictor).
    """

    per_op_overhead_macs: float = DEFAULT_PER_OP_OVERHEAD_MACS
    measured_seconds: dict = field(default_factory=dict)
    macs_per_second: float = DEFAULT_MACS_PER_SECOND
    per_kind_overhead_macs: dict = field(default_factory=dict)
    element_prices: dict = field(default_factory=lambda: dict(ELEMENT_PRICES))
    depthwise_factor: float = DEPTHWISE_MAC_FACTOR

    def op_cost(self, kind: str, macs: float, signature=None) -> float:
        """Cost of one op: the measured time if the signature is known, else macs + overhead (a depthwise
        conv's MACs, told by its conv_signature, at depthwise_factor each)."""
        if signature is not None and signature in self.measured_seconds:
            return float(self.measured_seconds[signature]) * self.macs_per_second
        if signature is not None and len(signature) == 9 and signature[0] == "Conv" \
                and is_depthwise(signature[1], signature[7]):
            macs = float(macs) * self.depthwise_factor
        return float(macs) + float(self.per_kind_overhead_macs.get(kind, self.per_op_overhead_macs))

    def element_price(self, kind: str) -> float:
        """MAC-equivalents per element of an activation kind or ONNX op type (0 when not listed)."""
        return float(self.element_prices.get(kind, 0.0)) * self.element_scale()

    def element_scale(self) -> float:
        """MAC-equivalents of this model per dense-conv MAC: 1 here (a model of MACs)."""
        return 1.0

    def elementwise_cost(self, kind: str, shape) -> float:
        """Cost of an elementwise op the rewrite creates (bias-map Add, Transpose, Concat) on one sample
        of `shape` (channels and spatial axes, no batch): element_price(kind) per element + overhead."""
        return self.op_cost(kind, elementwise_macs(shape) * self.element_price(kind), elementwise_signature(kind, shape))

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

    #: the dense conv timed once to put ELEMENT_PRICES (in dense-conv MACs) on this model's scale
    REFERENCE_CONV = ("Conv", 128, 128, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1, (28, 28))

    def element_scale(self) -> float:
        """Measured ops cost seconds x macs_per_second, so a dense-conv MAC is worth what the reference conv
        measures per MAC here (macs_per_second is a nominal rate, not this machine's); 1.0 when the
        reference cannot be timed."""
        if getattr(self, "_element_scale", None) is None:
            sig = self.REFERENCE_CONV
            t = self.measured_seconds.get(sig)
            if t is None:
                t = self.time_signature(sig)
                if t is not None:
                    self.measured_seconds[sig] = t
            macs = 28 * 28 * 128 * 128 * 9
            self._element_scale = float(t) * self.macs_per_second / macs if t else 1.0
        return self._element_scale

    def op_cost(self, kind: str, macs: float, signature=None) -> float:
        if signature is not None and signature not in self.measured_seconds:
            t = self.time_signature(signature)
            if t is not None:
                self.measured_seconds[signature] = t
        return super().op_cost(kind, macs, signature)
