"""Adversarial round 15 on the Relax-level pass (tvm_integration/relax_pass.py), on what TVM's two importers make
of the judged layouts' activations (from_onnx of both torch exporters, from_exported_program).

1. HardSwish was listed as the "relu6" inside it (from_onnx: x * clip(x + 3, 0, 6) / 6) or as two "clip"s
   (from_exported_program: clip(x + 3, 0, inf) then clip(., -inf, 6)); linearizing that "relu6" left
   x * (x + 3) / 6, a quadratic, where the catalogue's regime (and the ONNX front end's result) is x. MobileNetV3
   got 21 such sites. Composites are now found by the ONNX and fx front ends' rule (core/gates): one
   "hardswish" site whose input is x.
2. HardSigmoid (MobileNetV3's SE gate) was "clip" (from_onnx) or two "clip"s (from_exported_program): now one
   "hardsigmoid" site with the catalogue's regime alpha*x + beta.
3. The erf GELU and the tanh GELU that both torch exporters write as several ONNX ops (Swin-T's 12 GELUs)
   were not listed at all by from_onnx's module.
4. ONNX Clip(0, 6) (MobileNetV2's 35 ReLU6) was "clip", so LinearizeActivations("relu6") did nothing on a
   from_onnx module; a lower-only Clip was not listed; an upper-only clamp and clamp_min(eps) before a
   division ("the Relax eps-only clip") were listed as "clip" by from_exported_program's module, though
   the catalogue's front ends do not count them as activations.
5. ELU and SELU (both importers write relu(x) - alpha * relu(1 - exp(x))) were two "relu"s, Mish was not
   listed; the max(x, 0) inside from_onnx's Softplus must not become a "clip" (Softplus is not collapsible).
6. func_names="main" was the set {'m', 'a', 'i', 'n'} (nothing transformed, no error); a misspelt function
   name did nothing; selection=2.5 raised "'float' object is not iterable"; list_activations of a Relax
   function raised AttributeError.
"""
from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.tvm
tvm = pytest.importorskip("tvm")
torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from tvm_integration import compile as tc  # noqa: E402
from tvm_integration.relax_pass import LinearizeActivations, collapse_sequence, list_activations  # noqa: E402


def _gelu_tanh_pow(x):   # the tanh GELU as written out (the TorchScript exporter keeps Pow)
    return 0.5 * x * (1.0 + torch.tanh(0.7978845608028654 * (x + 0.044715 * torch.pow(x, 3))))


#: activation -> (its linear regime as the catalogue gives it, the Relax kind expected)
ACTS = {
    "hardswish": (F.hardswish, lambda x: x, "hardswish"),
    "hardsigmoid": (F.hardsigmoid, lambda x: x / 6 + 0.5, "hardsigmoid"),
    "gelu": (F.gelu, lambda x: x, "gelu"),
    "gelu_tanh": (_gelu_tanh_pow, lambda x: x, "gelu_tanh"),
    "relu6": (F.relu6, lambda x: x, "relu6"),
    "silu": (F.silu, lambda x: x, "swish"),
    "elu": (lambda x: F.elu(x, 0.7), lambda x: x, "elu"),
    "selu": (F.selu, lambda x: 1.0507009873554805 * x, "selu"),
    "mish": (F.mish, lambda x: x, "mish"),
}


class _Tiny(nn.Module):
    def __init__(self, act):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b, self.act = nn.Linear(6, 6), nn.Linear(6, 6), act

    def forward(self, x):
        return self.b(self.act(self.a(x)))


X = torch.randn(3, 6, generator=torch.Generator().manual_seed(1)) * 4


def _onnx(act, path):
    from models.export import export_onnx

    export_onnx(_Tiny(act), path, tuple(X.shape), dynamo=False)
    return tc.import_onnx(str(path))


def _ep(act):
    return tc.import_exported_program(torch.export.export(_Tiny(act).eval(), (X,)))


def _kinds(mod):
    return [s.kind for s in list_activations(mod)]


@pytest.mark.parametrize("name", sorted(ACTS))
def test_each_decomposed_activation_is_one_site_of_its_catalogue_kind(tmp_path, name):
    act, _, kind = ACTS[name]
    assert _kinds(_onnx(act, tmp_path / "m.onnx")) == [kind]
    assert _kinds(_ep(act)) == [kind]


@pytest.mark.parametrize("name", ["hardswish", "hardsigmoid", "gelu", "selu"])
def test_linearizing_gives_the_catalogue_regime(tmp_path, name):
    act, regime, kind = ACTS[name]
    with torch.no_grad():
        ref = _Tiny(regime)(X).numpy()
    for mod, feed in ((_onnx(act, tmp_path / "m.onnx"), "input"), (_ep(act), "x")):
        new = collapse_sequence(kind)(mod)
        assert _kinds(new) == []
        out = tc.run(tc.build(new, "cpu"), {feed: X.numpy()})[0]
        np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bound, kinds", [
    (lambda x: x.clamp_min(1e-6), []),             # a division guard (catalogue.is_eps_guard)
    (lambda x: x.clamp(max=1.0), []),              # upper-only: no activation in the catalogue's front ends
    (lambda x: x.clamp_min(0.5), ["clip"]),        # lower-only: from_onnx writes a lone maximum kernel
    (F.softplus, []),                              # from_onnx: max(x, 0) + log(1 + exp(-|x|)), no "clip"
])
def test_one_sided_clamps_as_the_front_ends_read_them(tmp_path, bound, kinds):
    assert _kinds(_onnx(bound, tmp_path / "m.onnx")) == kinds
    assert _kinds(_ep(bound)) == kinds


def test_relax_kinds_agree_with_the_onnx_front_end(tmp_path):
    """One ONNX file, two readers: TVM's module listed by the Relax pass, the graph by collapse_passes."""
    import onnx_graphsurgeon as gs

    from collapse_passes.core import activations as catalogue
    from collapse_passes.onnx.patterns import find_activations
    from models.export import export_onnx

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.l = nn.ModuleList(nn.Linear(6, 6) for _ in range(7))

        def forward(self, x):
            l = self.l
            x = F.hardswish(l[0](x))
            x = F.relu6(l[1](x)) * F.hardsigmoid(l[2](x))
            x = F.gelu(l[3](x)) + F.silu(l[4](x))
            return l[6](F.relu(l[5](x)).clamp_min(1e-6))

    path = export_onnx(M(), tmp_path / "m.onnx", tuple(X.shape), dynamo=False)
    relax = [catalogue.canonical(k) for k in _kinds(tc.import_onnx(path))]
    onnx_side = [a.kind for a in find_activations(gs.import_onnx(__import__("onnx").load(path)))]
    assert sorted(relax) == sorted(onnx_side) == sorted(["hardswish", "relu6", "hardsigmoid", "gelu", "silu",
                                                         "relu"])


def test_selection_errors_are_one_clear_line(tmp_path):
    mod = _onnx(F.relu6, tmp_path / "m.onnx")
    assert _kinds(LinearizeActivations("relu6", func_names="main")(mod)) == []
    with pytest.raises(ValueError, match="no Relax function named 'mian'.*'main'"):
        LinearizeActivations("relu6", func_names=["mian"])(mod)
    with pytest.raises(TypeError, match="unsupported activation selection 2.5"):
        LinearizeActivations(2.5)
    with pytest.raises(TypeError, match="unsupported activation selection"):
        LinearizeActivations({"relu6": True})
    with pytest.raises(TypeError, match=r"expected a tvm.IRModule.*tvm.IRModule\(\{'main': func\}\)"):
        list_activations(mod["main"])
    with pytest.raises(ValueError, match="no Relax function named 'mian'"):
        list_activations(mod, "mian")


def test_float16_regime_constants_take_the_input_dtype(tmp_path):
    """HardSigmoid's alpha*x + beta was emitted with float32 constants (a Relax Var has no .dtype): a float16
    module failed to build ("Binary operators must have the same datatype")."""
    m = _Tiny(F.hardsigmoid).half().eval()
    x = X.half()
    torch.onnx.export(m, (x,), str(tmp_path / "h.onnx"), dynamo=False, input_names=["input"])
    new = collapse_sequence("hardsigmoid")(tc.import_onnx(str(tmp_path / "h.onnx")))
    out = tc.run(tc.build(new, "cpu"), {"input": x.numpy()})[0]
    with torch.no_grad():
        ref = m.b((m.a(x).float() / 6 + 0.5).half()).float().numpy()
    assert out.dtype == np.float16
    np.testing.assert_allclose(out.astype(np.float32), ref, rtol=1e-2, atol=2e-3)
