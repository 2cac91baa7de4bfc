"""Round-14 adversarial checks of the torch front end: the way-outs of its errors name what the user can pass,
and a collapsed ExportedProgram exports with both torch exporters."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import collapse_passes as cp
from collapse_passes.errors import CollapseError


class Net(nn.Module):
    """conv-BN-ReLU, conv-BN-ReLU, then a Linear and a ReLU with no BatchNorm before it."""

    def __init__(self):
        super().__init__()
        self.c1, self.b1, self.r1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()
        self.c2, self.b2, self.r2 = nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8), nn.ReLU()
        self.fc, self.act = nn.Linear(8, 4), nn.ReLU()

    def forward(self, x):
        x = self.r2(self.b2(self.c2(self.r1(self.b1(self.c1(x))))))
        return self.act(self.fc(x.mean((2, 3))))


def _net():
    torch.manual_seed(0)
    return Net().eval()


def _one_line(exc) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


@pytest.mark.parametrize("method", ["easier", "tlc"])
def test_missing_calib_names_collapse_argument(method):
    """collapse(method=...) without batches said 'give calib_batches' (torch_hooks' parameter name), and
    collapse()'s calib_batches is a count: following the advice failed with 'must be an integer'."""
    m, x = _net(), torch.randn(1, 3, 8, 8)
    with pytest.raises(CollapseError) as e:
        cp.collapse(m, method=method, remove=1, example_inputs=(x,))
    msg = _one_line(e)
    assert "calib=[" in msg and "calib_batches" not in msg
    # the advice works
    res = cp.collapse(m, method=method, remove=1, example_inputs=(x,), calib=[torch.randn(2, 3, 8, 8)] * 2)
    assert res.passed


def test_dict_example_inputs_is_named():
    """A dict as example_inputs was turned into the tuple of its keys: the model was run on the string 'x'
    and the error spoke of 'example_inputs of shape str'."""
    m, x = _net(), torch.randn(1, 3, 8, 8)
    with pytest.raises(CollapseError) as e:
        cp.collapse(m, collapse=["r1"], example_inputs={"x": x})
    msg = _one_line(e)
    assert "dict" in msg and "example_inputs=(x, ...)" in msg and "shape str" not in msg


def test_function_model_is_named():
    """A plain function with example_inputs was told 'example_inputs is for torch models; ONNX models ...'."""
    with pytest.raises(CollapseError) as e:
        cp.collapse(lambda t: t.relu(), collapse=["relu()"], example_inputs=(torch.randn(2),))
    msg = _one_line(e)
    assert "nn.Module" in msg and "function" in msg and "ONNX models are verified" not in msg


def test_backend_training_batchnorm_names_module_path():
    """torch_backend named a training-mode BatchNorm by its dynamo node name ('input_2'), not its module path."""
    torch._dynamo.reset()
    m = Net()   # training mode
    c = torch.compile(m, backend=cp.torch_backend(collapse=["r1"], inductor=False))
    with pytest.raises(Exception) as e:
        c(torch.randn(2, 3, 8, 8))
    assert "CollapseError: torch_backend: BatchNorm 'b1' runs in training mode" in str(e.value)   # dynamo wraps it
    torch._dynamo.reset()


@pytest.mark.parametrize("dynamo", [False, True])
@pytest.mark.parametrize("as_module", [False, True])
def test_collapsed_program_exports(tmp_path, dynamo, as_module):
    """collapse() of an ExportedProgram returns one; models.export.export_onnx called .eval() on it
    (AttributeError) or on its .module() (NotImplementedError), and the TorchScript exporter's own train()
    call failed the same way: neither exporter could write the result."""
    import onnxruntime as ort
    from models.export import export_onnx

    m, x = _net(), torch.randn(2, 3, 8, 8)
    res = cp.collapse(torch.export.export(m, (x,)), collapse=["r1", "act"])
    want = res.model.module()(x).detach().numpy()
    path = export_onnx(res.model.module() if as_module else res.model, tmp_path / "m.onnx", tuple(x.shape),
                       dynamo=dynamo)
    s = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    got = s.run(None, {s.get_inputs()[0].name: x.numpy()})[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


class Defaults(nn.Module):
    """forward parameters with defaults: a float, and a keyword-only None that selects a branch."""

    def __init__(self):
        super().__init__()
        self.c, self.b, self.r = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()
        self.d, self.a = nn.Conv2d(8, 8, 1), nn.SiLU()

    def forward(self, x, scale: float = 2.0, *, bias=None):
        y = self.a(self.d(self.r(self.b(self.c(x))))) * scale
        return y if bias is None else y + bias


def test_parameters_left_at_their_defaults_are_traced_at_them():
    """symbolic_trace made `scale` and the keyword-only `bias` inputs (proxies: `bias is None` was False), so
    the model was refused with 'give them in example_inputs', which a keyword-only parameter cannot be.
    Traced at the defaults, the result computes model(x) and takes x only."""
    torch.manual_seed(0)
    m, x = Defaults().eval(), torch.randn(2, 3, 9, 9)
    res = cp.collapse(m, collapse=["r", "a"], example_inputs=(x,))
    assert res.passed
    with torch.no_grad():
        ref = m.d(m.b(m.c(x))) * 2.0   # r and a linearized: identity
        np.testing.assert_allclose(res.model(x).numpy(), ref.numpy(), rtol=1e-4, atol=1e-5)
    with pytest.raises(TypeError):   # a value other than the traced default is not silently ignored
        res.model(x, 3.0)


class RootRelu(nn.Module):
    def __init__(self):
        super().__init__()
        self.c, self.r, self.d = nn.Conv2d(3, 8, 1), nn.ReLU(), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.d(torch.nn.functional.relu(self.r(self.c(x))))


@pytest.mark.parametrize("as_program", [False, True])
def test_path_0_names_the_one_call_of_a_module_called_once(as_program):
    """README 'Keys': `path:0` also names the one call of a module called once (and `kind():0` a lone root
    activation), as the ONNX front end resolves it; the torch front end said "'r:0' names no call site"."""
    torch.manual_seed(0)
    m, x = RootRelu().eval(), torch.randn(2, 3, 5, 5)
    model = torch.export.export(m, (x,)) if as_program else m
    res = cp.collapse(model, collapse=["r:0", "relu():0"], example_inputs=(x,))
    assert res.passed
    assert sorted(a["key"] for a in res.report["activations"] if a["collapsed"]) == ["r", "relu()"]
    with pytest.raises(CollapseError, match="names no call site"):
        cp.collapse(model, collapse=["r:1"], example_inputs=(x,))


def test_nonfinite_example_outputs_are_said():
    """NaN example_inputs with check=1: every output NaN on both sides, compared as equal, so the gate verified
    nothing and the report said nothing (the ONNX front end warns that the input model outputs NaN/Inf). Comparing
    nothing now fails the gate (core/runtime.nothing_compared); force=True writes it, the report says why."""
    from collapse_passes.errors import VerificationError

    m = _net()
    nan = (torch.full((1, 3, 8, 8), float("nan")),)
    with pytest.raises(VerificationError, match="nothing was compared"):
        cp.collapse(m, collapse=["r1"], example_inputs=nan, check=1)
    res = cp.collapse(m, collapse=["r1"], example_inputs=nan, check=1, force=True)
    assert not res.passed
    assert any("non-finite" in w and "4 NaN" in w for w in res.report["warnings"])
    clean = cp.collapse(m, collapse=["r1"], example_inputs=(torch.randn(1, 3, 8, 8),), check=1)
    assert not any("non-finite" in w for w in clean.report["warnings"])


def test_graph_module_traced_with_concrete_args():
    """symbolic_trace(model, concrete_args={...}) is fx's own way to trace a parameter at its default; such a
    GraphModule keeps a placeholder for it (read only by fx's asserts) and was refused as 'keeps its default,
    which symbolic tracing cannot follow'."""
    torch.manual_seed(0)
    m, x = Defaults().eval(), torch.randn(2, 3, 9, 9)
    gm = torch.fx.symbolic_trace(m, concrete_args={"scale": 2.0, "bias": None})
    res = cp.collapse(gm, collapse=["r", "a"], example_inputs=(x,))
    assert res.passed
    assert [n.op for n in gm.graph.nodes].count("placeholder") == 3   # the caller's graph is left as it was
    with torch.no_grad():
        np.testing.assert_allclose(res.model(x).numpy(), (m.d(m.b(m.c(x))) * 2.0).numpy(), rtol=1e-4, atol=1e-5)
