"""The maths of merging, in one place: pure numpy, no ONNX / torch / graph code.

Both front ends (ONNX, torch.fx) call these functions; see docs in each module for exactness rules.
`fold_affine_after` / `fold_affine_before` exist for convs and linears: use the module-qualified names
(`conv.fold_affine_after`) or the `*_conv` / `*_linear` aliases exported here.
"""
from . import conv, cost, linear, prune
from ._common import AlgebraError
from .conv import (
    ConvParams,
    MergedConv,
    add_identity_skip,
    add_pointwise_skip,
    bn_to_affine,
    compose_conv,
    compose_conv_chain,
    constant_through_conv,
    conv_nd,
    densify_weight,
    exact_output_region,
    max_block_diagonal_groups,
    pointwise_as_linear,
    regroup_weight,
    trim_unread_end_pads,
)
from .conv import fold_affine_after as fold_affine_after_conv
from .conv import fold_affine_before as fold_affine_before_conv
from .cost import (
    DEFAULT_MACS_PER_SECOND,
    DEFAULT_PER_OP_OVERHEAD_MACS,
    CostModel,
    conv_chain_macs,
    conv_macs,
    conv_signature,
    linear_macs,
    linear_signature,
    merged_conv_macs,
)
from .linear import (
    LinearParams,
    add_identity,
    apply_linear,
    compose_linear,
    compose_linear_chain,
    from_gemm,
    from_matmul_const,
    to_gemm,
    to_matmul,
)
from .linear import fold_affine_after as fold_affine_after_linear
from .linear import fold_affine_before as fold_affine_before_linear

__all__ = [
    "conv", "cost", "linear", "prune", "AlgebraError",
    "ConvParams", "MergedConv", "add_identity_skip", "add_pointwise_skip", "bn_to_affine", "compose_conv",
    "compose_conv_chain", "constant_through_conv", "conv_nd", "densify_weight", "exact_output_region", "max_block_diagonal_groups", "pointwise_as_linear",
    "regroup_weight", "trim_unread_end_pads", "fold_affine_after_conv", "fold_affine_before_conv",
    "DEFAULT_MACS_PER_SECOND", "DEFAULT_PER_OP_OVERHEAD_MACS", "CostModel", "conv_chain_macs", "conv_macs",
    "conv_signature", "linear_macs", "linear_signature", "merged_conv_macs",
    "LinearParams", "add_identity", "apply_linear", "compose_linear", "compose_linear_chain", "from_gemm",
    "from_matmul_const", "to_gemm", "to_matmul", "fold_affine_after_linear", "fold_affine_before_linear",
]
