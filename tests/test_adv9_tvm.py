"""Adversarial findings on the TVM hand-off, round 9 (judged families, both exporters, torch route).

1. The torch route refused every model the torch front end hands back as torch.export's unlifted module
   (`ep.module()`, a `_StatefulGraphModule`: what `collapse` returns for Swin-T): relax_from_torch called
   `model.eval()` before re-exporting, and that module raises NotImplementedError("Calling eval() is not
   supported yet"), so the user got `TVMError: torch.export failed: Calling eval() ...` for a model TVM
   compiles fine. Its train/eval behaviour was fixed when it was exported; eval() is now skipped there.
"""
from __future__ import annotations

import os

import numpy as np
import pytest

pytestmark = pytest.mark.tvm
EXAMPLE = os.path.join(os.path.dirname(os.path.dirname(__file__)), "models", "examples",
                       "mobilenet_v2_digits_prelu.onnx")
tvm = pytest.importorskip("tvm")
torch = pytest.importorskip("torch")


class _Small(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(4)
        self.drop = torch.nn.Dropout(0.5)   # would make a train-mode module nondeterministic

    def forward(self, x):
        return self.drop(torch.relu(self.bn(self.conv(x))))


def _random_bn(m):
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.weight.uniform_(0.5, 1.5, generator=g)
                mod.bias.normal_(0, 0.2, generator=g)
                mod.running_mean.normal_(0, 0.2, generator=g)
                mod.running_var.uniform_(0.5, 1.5, generator=g)
    return m


def _tvm_out(mod, x):
    from tvm_integration import build, run

    return run(build(mod, "cpu"), {"x": x.numpy()})[0]


def test_relax_from_torch_takes_torch_exports_unlifted_module():
    from tvm_integration.from_torch import relax_from_torch

    torch.manual_seed(0)
    m = _random_bn(_Small()).eval()
    x = torch.randn(1, 3, 8, 8)
    gm = torch.export.export(m, (x,)).module()
    with pytest.raises(NotImplementedError):   # the premise: this module refuses eval()
        gm.eval()
    x2 = torch.randn(1, 3, 8, 8)
    out = _tvm_out(relax_from_torch(gm, (x,)), x2)
    with torch.no_grad():
        ref = m(x2).numpy()
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)


def test_relax_from_torch_still_puts_a_plain_module_in_eval_mode():
    from tvm_integration.from_torch import relax_from_torch

    torch.manual_seed(0)
    m = _random_bn(_Small()).train()   # train-mode BN/Dropout would make TVM's output differ from eval's
    x = torch.randn(1, 3, 8, 8)
    out = _tvm_out(relax_from_torch(m, (x,)), x)
    assert not m.training
    with torch.no_grad():
        ref = m(x).numpy()
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)


def test_build_logs_tvms_per_gather_warning_once(capfd):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from tvm_integration import build, import_onnx, run

    idx = numpy_helper.from_array(np.array([[0, 2], [1, 3]], "int64"), "I")
    nodes = [helper.make_node("Gather", ["x", "I"], ["g"], axis=1),
             helper.make_node("Gather", ["g", "I"], ["y"], axis=0)]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [idx])
    mod = import_onnx(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))
    capfd.readouterr()
    ex = build(mod, "cpu")
    err = capfd.readouterr().err
    assert err.count("Fast mode segfaults") == 1, err   # TVM logs it once per Gather (2 here)
    x = np.arange(16, dtype="float32").reshape(4, 4)
    i = np.array([[0, 2], [1, 3]])
    np.testing.assert_array_equal(run(ex, {"x": x})[0], x[:, i][i])


def _failing_importer(*a, **k):
    print("Error converting operator Reshape, with inputs: [pages of Relax]")
    raise tvm.error.InternalError("Check failed: (data_ty->shape.has_value()) is false: Reshape expects ...")


def test_importer_internal_error_is_one_line_naming_the_op(monkeypatch, capsys):
    import tvm.relax.frontend.onnx as tvm_onnx

    from tvm_integration import import_onnx
    from tvm_integration.errors import TVMError

    monkeypatch.setattr(tvm_onnx, "from_onnx", _failing_importer)
    with pytest.raises(TVMError, match="at a Reshape node: Check failed") as exc:
        import_onnx(EXAMPLE)
    assert "\n" not in str(exc.value)
    assert "pages of Relax" not in capsys.readouterr().out


def test_an_importer_failure_after_the_collapse_is_one_line_and_the_model_stays_written(tmp_path, monkeypatch,
                                                                                      capsys):
    import tvm.relax.frontend.onnx as tvm_onnx

    from collapse_passes.cli import main

    monkeypatch.setattr(tvm_onnx, "from_onnx", _failing_importer)
    out = tmp_path / "out.onnx"
    rc = main([EXAMPLE, "-o", str(out), "--target", "cpu", "--tune-trials", "0"])
    captured = capsys.readouterr()
    errors = [ln for ln in captured.err.splitlines() if ln.startswith("error")]
    assert rc != 0 and len(errors) == 1 and "Reshape" in errors[0], captured.err
    assert "Traceback" not in captured.err and "pages of Relax" not in captured.out
    assert out.exists()   # verified before TVM ran: written, and the error says so
