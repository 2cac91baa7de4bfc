"""MAC formulas and the cost model on known cases."""
from __future__ import annotations

import numpy as np
import pytest

from collapse_passes.algebra import (
    ConvParams,
    CostModel,
    LinearParams,
    compose_conv,
    compose_linear,
    conv_chain_macs,
    conv_macs,
    conv_signature,
    linear_macs,
    linear_signature,
    merged_conv_macs,
)


def conv(cin, cout, k, s=1, p=0, g=1):
    return ConvParams(np.ones((cout, cin // g, k, k)), None, (s, s), (p,) * 4, (1, 1), g)


def test_dense_conv_macs():
    assert conv_macs(conv(16, 16, 3, p=1), (8, 8)) == 16 * 16 * 9 * 64


def test_depthwise_and_grouped_macs():
    assert conv_macs(conv(16, 16, 3, p=1, g=16), (8, 8)) == 16 * 9 * 64
    assert conv_macs(conv(16, 32, 3, p=1, g=4), (8, 8)) == 32 * 4 * 9 * 64
    assert conv_macs(conv(4, 8, 1), (5,)) == 8 * 4 * 5


def test_chain_macs_follow_output_sizes():
    a, b = conv(3, 8, 3, s=2, p=1), conv(8, 8, 1)
    assert conv_chain_macs([a, b], (16, 16)) == 8 * 3 * 9 * 64 + 8 * 8 * 64


def test_merging_3x3_3x3_raises_macs():
    a, b = conv(16, 16, 3), conv(16, 16, 3)
    seq = conv_chain_macs([a, b], (12, 12))
    merged = merged_conv_macs(a, b, (12, 12))
    assert seq == 16 * 16 * 9 * (100 + 64)
    assert merged == 16 * 16 * 25 * 64  # one 5x5 on the 8x8 output
    assert merged > seq / 2  # per output pixel 25 vs 18: merging costs more MACs


def test_mobilenet_block_merge_is_cheaper():
    """Pointwise(6x expand) - depthwise 3x3 - pointwise, unpadded: 9C^2 vs 12C^2 + 54C per pixel."""
    C, E = 8, 48
    a, b, c = conv(C, E, 1), conv(E, E, 3, g=E), conv(E, C, 1)
    m = compose_conv(compose_conv(a, b).params, c)
    assert m.params.kernel_shape == (3, 3) and m.params.group == 1
    assert conv_macs(m.params, (1, 1)) == 9 * C * C
    assert conv_macs(a, (1, 1)) + conv_macs(b, (1, 1)) + conv_macs(c, (1, 1)) == 12 * C * C + 54 * C


def test_mlp_merge_lowers_macs_8x():
    C = 16
    fc1 = LinearParams(np.ones((4 * C, C)))
    fc2 = LinearParams(np.ones((C, 4 * C)))
    seq = linear_macs(fc1, rows=10) + linear_macs(fc2, rows=10)
    merged = linear_macs(compose_linear(fc1, fc2), rows=10)
    assert seq == 10 * 8 * C * C and merged == 10 * C * C and seq == 8 * merged


def test_cost_model():
    cm = CostModel()
    assert cm.per_op_overhead_macs == pytest.approx(20_000)
    assert cm.op_cost("Conv", 1000) == pytest.approx(21_000)
    # two small ops cost more than one op with their summed MACs: the overhead rewards merging
    assert cm.chain_cost([("Conv", 1000), ("Conv", 1000)]) > cm.op_cost("Conv", 2000)
    a = conv(4, 4, 3)
    sig = conv_signature(a, (8, 8))
    cm2 = CostModel(measured_seconds={sig: 1e-5}, macs_per_second=1e9, per_kind_overhead_macs={"Add": 5000})
    assert cm2.op_cost("Conv", 123, sig) == pytest.approx(1e4)
    assert cm2.op_cost("Conv", 123, ("other",)) == pytest.approx(123 + 20_000)
    assert cm2.op_cost("Add", 10) == pytest.approx(5010)
    assert cm2.seconds(1e9) == pytest.approx(1.0)
    assert linear_signature(LinearParams(np.ones((3, 2))), 4) == ("Linear", 2, 3, 4)
    hash(sig)


def test_algebra_is_pure_numpy():
    """Both front ends share the algebra, so it must not pull in onnx, onnxruntime, torch or graph code."""
    import ast
    from pathlib import Path

    import collapse_passes.algebra as alg

    allowed = {"numpy", "math", "dataclasses", "__future__", "errors"}
    for path in Path(alg.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level == 1:  # sibling modules inside algebra/
                    continue
                names = [node.module or ""]
            else:
                continue
            for name in names:
                assert name.split(".")[0] in allowed, f"{path.name} imports {name}"
