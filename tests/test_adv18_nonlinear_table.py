"""One table of always-nonlinear ops (core/nonlinear_ops) for both front ends' depth: the ONNX op types and the
torch names of the same ops. Each torch name must be one the ONNX exporter writes as (or into) the op it is
filed under, checked here by exporting the function alone."""
import pytest
import torch

from collapse_passes.core.nonlinear_ops import NONLINEAR, NONLINEAR_CALLS, NONLINEAR_OPS
from collapse_passes.fx.api import _NONLINEAR_CALLS
from collapse_passes.onnx.patterns import NONLINEAR_OPS as ONNX_OPS


def test_both_front_ends_read_the_one_table():
    assert _NONLINEAR_CALLS is NONLINEAR_CALLS and ONNX_OPS is NONLINEAR_OPS


FUNCS = {"relu": torch.relu, "sigmoid": torch.sigmoid, "silu": torch.nn.functional.silu, "tanh": torch.tanh,
         "exp": torch.exp, "rsqrt": torch.rsqrt, "abs": torch.abs, "floor": torch.floor, "gelu": torch.nn.functional.gelu,
         "softmax": lambda x: torch.softmax(x, -1), "layer_norm": lambda x: torch.nn.functional.layer_norm(x, (4,)),
         "amax": lambda x: torch.amax(x, -1), "reciprocal": torch.reciprocal, "hardswish": torch.nn.functional.hardswish}


@pytest.mark.parametrize("name", sorted(FUNCS))
def test_torch_name_exports_to_its_onnx_op(tmp_path, name):
    import onnx

    op = next(k for k, names in NONLINEAR.items() if name in names)

    class M(torch.nn.Module):
        def forward(self, x):
            return FUNCS[name](x)

    p = tmp_path / "m.onnx"
    torch.onnx.export(M(), (torch.randn(2, 4),), str(p), dynamo=False, opset_version=20 if name == "gelu" else 17)
    assert op in {n.op_type for n in onnx.load(str(p)).graph.node}
