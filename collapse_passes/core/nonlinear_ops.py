"""The ops the nonlinear depth counts, one table for every front end: ONNX op type -> the torch / aten call
names of the same op. The ONNX front end reads the keys (onnx/patterns.NONLINEAR_OPS), the torch front end the
names (fx/api: an ExportedProgram's graph calls functions only), so the two depths count the same ops.
Pure python."""
from __future__ import annotations

NONLINEAR = {
    "Relu": ("relu",), "Clip": ("relu6", "clip", "clamp", "hardtanh"), "LeakyRelu": ("leaky_relu",),
    "PRelu": ("prelu",), "HardSwish": ("hardswish",), "HardSigmoid": ("hardsigmoid",),
    "Sigmoid": ("sigmoid", "silu"),   # ONNX writes SiLU as Sigmoid * x
    "Tanh": ("tanh",), "Elu": ("elu",), "Selu": ("selu",), "Celu": ("celu",), "Gelu": ("gelu",), "Erf": ("erf",),
    "Softplus": ("softplus",), "Softsign": ("softsign",), "Mish": ("mish",), "ThresholdedRelu": (),
    # F.scaled_dot_product_attention: one torch call, its softmax is the nonlinear op the exports write as Softmax
    "Softmax": ("softmax", "scaled_dot_product_attention"), "LogSoftmax": ("log_softmax",),
    "MaxPool": ("max_pool1d", "max_pool2d", "max_pool3d", "adaptive_max_pool1d", "adaptive_max_pool2d",
                "adaptive_max_pool3d"),
    "GlobalMaxPool": (), "Exp": ("exp",), "Log": ("log",), "Pow": ("pow",),
    "Sqrt": ("sqrt", "rsqrt"),   # rsqrt: Sqrt + Reciprocal in ONNX
    "Abs": ("abs",), "Sin": ("sin",), "Cos": ("cos",),
    "LayerNormalization": ("layer_norm", "native_layer_norm"), "InstanceNormalization": ("instance_norm",),
    "GroupNormalization": ("group_norm", "native_group_norm"), "LpNormalization": ("normalize",),
    "ReduceMax": ("amax", "max"), "ReduceMin": ("amin", "min"), "Max": ("maximum",), "Min": ("minimum",),
    "Floor": ("floor",), "Ceil": ("ceil",), "Round": ("round",), "Sign": ("sign",), "Reciprocal": ("reciprocal",),
}

#: ONNX op types that are always nonlinear
NONLINEAR_OPS = frozenset(NONLINEAR)
#: torch function / method / aten names of the same ops
NONLINEAR_CALLS = frozenset(name for names in NONLINEAR.values() for name in names)
