"""TorchScript exports of torchvision's Swin pad before the window partition with sizes computed from
constants (`pad_r = (window - W % window) % window`: Mod -> Sub -> Concat -> Cast -> Reshape -> Pad).
onnxruntime folds that arithmetic when it loads; TVM 0.27's ONNX importer does not and fails ("Reshape
expects the input tensor to have known shape"). The fold_shapes pass now folds small integer arithmetic
on constants too (the collapsed model imports), and tvm_integration.import_onnx retries a model it fails
on with that arithmetic folded (the *input* model, which the TVM hand-off compiles beside the result)."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

import collapse_passes as cp
from conftest import export_quiet


def _padding_net():
    import torch.nn as nn
    import torch.nn.functional as F

    class Pad(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):   # B, H, W, C, padded to a multiple of the window as torchvision's Swin does
            b, h, w, c = x.shape
            x = F.pad(self.fc(x), (0, 0, 0, (7 - w % 7) % 7, 0, (7 - h % 7) % 7))
            return x.reshape(b, -1, c).mean(1)

    return Pad().eval()


@pytest.fixture(scope="module")
def padded(tmp_path_factory):
    pytest.importorskip("torch")
    path = tmp_path_factory.mktemp("pad") / "pad_ts.onnx"
    export_quiet(_padding_net(), path, (1, 10, 12, 4), dynamo=False)
    model = onnx.load(path)
    assert any(n.op_type == "Mod" for n in model.graph.node)   # the exporter left the arithmetic in
    return model


def test_fold_shapes_folds_integer_arithmetic_on_constants(padded):
    r = cp.collapse(padded)
    ops = [n.op_type for n in r.model.graph.node]
    assert not {"Mod", "ConstantOfShape", "Cast"} & set(ops), ops
    assert r.report["passed"]


@pytest.mark.tvm
def test_tvm_imports_the_unfolded_input_model(padded):
    pytest.importorskip("tvm")
    from tvm_integration import compile as tc
    from tvm_integration.compile import fold_size_arithmetic

    x = {padded.graph.input[0].name: np.random.default_rng(0).standard_normal((1, 10, 12, 4)).astype(np.float32)}
    got = tc.run(tc.build(tc.import_onnx(padded), "llvm"), x)
    np.testing.assert_allclose(got[0], tc.run_ort(padded, x)[0], rtol=1e-5, atol=1e-5)
    folded = cp.collapse(padded).model
    assert fold_size_arithmetic(folded) is folded   # nothing left to fold: the model itself, not a copy
