"""Composite activations written functionally (x * F.relu6(x + 3) / 6, x * torch.sigmoid(x), x * F.hardsigmoid(x),
the erf GELU spelled out) and single functional calls (F.hardswish, F.silu, F.gelu, x.relu()): the torch.fx
front end finds each as ONE site of the kind the ONNX front end gives it (core/gates.py, one rule for both),
linearize removes the whole composite, and the keys agree with the ONNX exports of the same module.
References are built without the passes: the module with the activation swapped for nn.Identity (the
linear regime of every kind here)."""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

import collapse_passes as cp  # noqa: E402
from tests.conftest import export_quiet, near_identity_convs  # noqa: E402


class HardSwishFn(nn.Module):
    def forward(self, x):
        return x * F.relu6(x + 3) / 6


class SwishFn(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(x)


class HardSigmoidGate(nn.Module):
    def forward(self, x):
        return x * F.hardsigmoid(x)


class GeluErf(nn.Module):
    def forward(self, x):
        return x * 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))


class GeluTanh(nn.Module):
    def forward(self, x):
        return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3))))


class MishFn(nn.Module):
    def forward(self, x):
        return x * torch.tanh(F.softplus(x))


class QuickGelu(nn.Module):
    """x * sigmoid(1.702 x): close to GELU but no catalogue kind: left alone by both front ends."""

    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


class HardSwishCall(nn.Module):
    def forward(self, x):
        return F.hardswish(x)


class SiluCall(nn.Module):
    def forward(self, x):
        return F.silu(x)


class GeluCall(nn.Module):
    def forward(self, x):
        return F.gelu(x)


class ReluMethod(nn.Module):
    def forward(self, x):
        return x.relu()


# key -> (module, kind, ops of the composite)
COMPOSITES = {
    "hs": (HardSwishFn, "hardswish", 4),
    "sw": (SwishFn, "silu", 2),
    "hsig": (HardSigmoidGate, "hardswish", 2),
    "gelu_erf": (GeluErf, "gelu", 5),
    "gelu_tanh": (GeluTanh, "gelu_tanh", 8),
    "mish": (MishFn, "mish", 3),
    "hswish_call": (HardSwishCall, "hardswish", 1),
    "silu_call": (SiluCall, "silu", 1),
    "gelu_call": (GeluCall, "gelu", 1),
    "relu_method": (ReluMethod, "relu", 1),
}


class Net(nn.Module):
    """conv, composite, conv, composite, ...: each composite a module of its own (its key)."""

    def __init__(self, names=tuple(COMPOSITES) + ("quick_gelu",)):
        super().__init__()
        self.names = list(names)
        self.convs = nn.ModuleList(nn.Conv2d(4, 4, 1) for _ in self.names)
        for n in self.names:
            setattr(self, n, QuickGelu() if n == "quick_gelu" else COMPOSITES[n][0]())

    def forward(self, x):
        for conv, n in zip(self.convs, self.names):
            x = getattr(self, n)(conv(x))
        return x


def _model():
    torch.manual_seed(0)
    return near_identity_convs(Net().eval()), 3 * torch.randn(2, 4, 5, 5)


def identity_reference(model, keys):
    ref = copy.deepcopy(model)
    for k in keys:
        setattr(ref, k, nn.Identity())
    return ref


def assert_close(out, ref, rtol=1e-4):
    out, ref = out.detach(), ref.detach()
    assert float((out - ref).abs().max()) <= rtol * float(ref.abs().max()) + 1e-6


def test_each_composite_is_one_site_of_its_catalogue_kind():
    model, x = _model()
    found = {k["key"]: (k["kind"], len(k["nodes"])) for k in cp.list_keys(model, (x,))}
    assert found == {k: (kind, n) for k, (_, kind, n) in COMPOSITES.items()}


@pytest.mark.parametrize("key", list(COMPOSITES))
def test_collapsing_a_composite_removes_all_its_ops_and_equals_the_identity_reference(key):
    model, x = _model()
    res = cp.collapse(model, collapse=[key], example_inputs=(x,), merge=False)
    assert res.passed
    before, after = res.report["before"], res.report["after"]
    assert before["nodes"] - after["nodes"] == COMPOSITES[key][2]
    assert after["activations"] == before["activations"] - 1
    ref = identity_reference(model, [key])
    with torch.no_grad():
        assert_close(res.model(x), ref(x))
        y = torch.randn(x.shape)
        assert_close(res.model(y), ref(y))
        # and it changed something: the composite is not the identity on these inputs
        assert not torch.allclose(model(y), ref(y), rtol=1e-3, atol=1e-4)


def test_all_composites_collapsed_merge_to_fewer_ops_than_the_reference():
    model, x = _model()
    keys = list(COMPOSITES)
    ref = identity_reference(model, keys)
    for inp in (model, torch.export.export(model, (x,))):
        res = cp.collapse(inp, collapse=keys, example_inputs=(x,))
        out = res.model.module() if isinstance(res.model, torch.export.ExportedProgram) else res.model
        with torch.no_grad():
            assert_close(out(x), ref(x))
        # the reference's convs around the collapsed sites merged into fewer ops; QuickGelu's 3 ops stay
        assert res.report["after"]["nodes"] < len(model.convs)
        assert res.report["after"]["activations"] == 0


def test_composites_in_the_root_forward_are_found_too():
    """At the root there is no module path: the key is the fx node name (see docs/torch.md on root keys)."""

    class Root(nn.Module):
        def __init__(self, linear=False):
            super().__init__()
            self.linear = linear
            self.c1, self.c2 = nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 1)

        def forward(self, x):
            h = self.c1(x)
            h = h if self.linear else h * torch.sigmoid(h)
            return self.c2(h)

    torch.manual_seed(0)
    model, x = Root().eval(), torch.randn(1, 4, 5, 5)
    ((key, kind),) = [(k["key"], k["kind"]) for k in cp.list_keys(model, (x,))]
    assert kind == "silu"
    res = cp.collapse(model, collapse=[key], example_inputs=(x,))
    ref = Root(linear=True).eval()
    ref.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert_close(res.model(x), ref(x))
    assert res.report["after"]["nodes"] == 1


def test_torch_compile_backend_collapses_a_composite():
    torch._dynamo.reset()
    model, x = _model()
    backend = cp.torch_backend(collapse=["hs", "sw"], inductor=False)
    compiled = torch.compile(copy.deepcopy(model), backend=backend)
    with torch.no_grad():
        assert_close(compiled(x), identity_reference(model, ["hs", "sw"])(x))
    assert sorted(backend.reports[0]["collapsed"]) == ["hs", "sw"]
    torch._dynamo.reset()


@pytest.mark.slow
@pytest.mark.parametrize("dynamo", [False, True])
def test_keys_and_kinds_agree_with_the_onnx_front_end_and_collapse_alike(tmp_path, dynamo):
    """Same keys, same kinds as the ONNX front end on either export; collapsing all of them by those keys
    on the ONNX file and on the module gives the same outputs."""
    import onnx

    from collapse_passes.core.runtime import run as ort_run

    model, x = _model()
    torch_keys = [(k["key"], k["kind"]) for k in cp.list_keys(model, (x,))]
    path = export_quiet(model, tmp_path / "m.onnx", tuple(x.shape), dynamo)
    onnx_keys = [(k["key"], k["kind"]) for k in cp.list_keys(path)]
    assert onnx_keys == torch_keys
    keys = [k for k, _ in torch_keys]
    onnx_res = cp.collapse(path, collapse=keys)
    torch_res = cp.collapse(model, collapse=keys, example_inputs=(x,))
    feed = {onnx.load(path).graph.input[0].name: x.numpy()}
    got = ort_run(onnx_res.model, [feed])[0][0][0]
    with torch.no_grad():
        np.testing.assert_allclose(got, torch_res.model(x).numpy(), rtol=1e-4, atol=1e-5)


class SharedSwish(nn.Module):
    """One functional Swish module called twice: one key per call site, numbered alike by both front ends."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2, self.c3 = nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 1)
        self.sw = SwishFn()

    def forward(self, x):
        return self.c3(self.sw(self.c2(self.sw(self.c1(x)))))


@pytest.mark.slow
@pytest.mark.parametrize("dynamo", [False, True])
def test_a_composite_module_called_twice_has_the_same_call_site_keys_as_on_onnx(tmp_path, dynamo):
    torch.manual_seed(0)
    model, x = SharedSwish().eval(), torch.randn(1, 4, 5, 5)
    torch_keys = [(k["key"], k["kind"]) for k in cp.list_keys(model, (x,))]
    assert torch_keys == [("sw:0", "silu"), ("sw:1", "silu")]
    path = export_quiet(model, tmp_path / "s.onnx", tuple(x.shape), dynamo)
    assert [(k["key"], k["kind"]) for k in cp.list_keys(path)] == torch_keys
    res = cp.collapse(model, collapse=["sw:1"], example_inputs=(x,))
    with torch.no_grad():
        assert_close(res.model(x), model.c3(model.c2(model.sw(model.c1(x)))))
