"""Adversarial round 15 on relax_from_torch (tvm_integration/from_torch.py).

A float16 model failed inside TVM's torch importer with a TypeError traceback ("Binary operators must have the
same datatype": the importer makes its matmul float32): relax_from_torch caught only NotImplementedError /
AssertionError / KeyError / ValueError. Any failure of the importer is now one TVMError line naming the ONNX
route as a way out (from_onnx takes the same float16 model).

SELU came out of relax_from_torch 1.0507x too small, silently: torch's decomposition writes it as
aten.elu(x, alpha, scale=1.0507) and TVM 0.27's converter ignores scale (and input_scale).
compile.import_exported_program converts aten.elu itself when scale or input_scale is not 1.
"""
from __future__ import annotations

import pytest

pytestmark = pytest.mark.tvm
tvm = pytest.importorskip("tvm")
torch = pytest.importorskip("torch")


def test_a_model_the_torch_importer_fails_on_is_one_tvm_error():
    from tvm_integration import TVMError, relax_from_torch

    m = torch.nn.Sequential(torch.nn.Linear(6, 6), torch.nn.Hardsigmoid()).half().eval()
    with pytest.raises(TVMError, match="torch importer does not support part of this model: .*ONNX route"):
        relax_from_torch(m, (torch.randn(3, 6).half(),))


def test_selu_through_the_torch_importer_keeps_its_scale():
    import numpy as np

    from tvm_integration import build, relax_from_torch, run

    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(6, 6), torch.nn.SELU(), torch.nn.Linear(6, 6),
                            torch.nn.ELU(0.7)).eval()
    x = torch.randn(4, 6) * 3
    out = run(build(relax_from_torch(m, (x,)), "cpu"), {"x": x.numpy()})[0]
    with torch.no_grad():
        ref = m(x).numpy()
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
