"""The one activation catalogue (core/activations.py) against torch, and the front ends against it."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from collapse_passes.core import activations as A
from collapse_passes.core import runtime
from collapse_passes.core.torch_kinds import function_kind, module_kind

PROBE = np.concatenate([np.linspace(-7.0, 7.0, 141), [-1e-3, 1e-3, 2.9, 3.1, 5.9, 6.1]])


def _modules():
    import torch.nn as nn

    return [nn.ReLU(), nn.ReLU6(), nn.Hardtanh(0.0, 6.0), nn.Hardtanh(-1.0, 2.5), nn.LeakyReLU(0.1), nn.PReLU(),
            nn.GELU(), nn.GELU(approximate="tanh"), nn.SiLU(), nn.Hardswish(), nn.Hardsigmoid(), nn.ELU(0.5),
            nn.SELU(), nn.CELU(0.7), nn.Mish(), nn.Softplus(beta=2.0), nn.Tanh(), nn.Sigmoid()]


def _scalar_params(params):
    return {k: (float(np.asarray(v).reshape(-1)[0]) if np.size(v) == 1 else v) for k, v in params.items()}


def test_every_kind_has_a_torch_module_whose_output_is_the_reference():
    import torch

    x = torch.tensor(PROBE, dtype=torch.float64)
    seen = set()
    for mod in _modules():
        kind, params = module_kind(mod)
        seen.add(kind)
        with torch.no_grad():
            want = mod.double()(x).numpy()
        got = A.reference(kind, PROBE, _scalar_params(params))
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12, err_msg=f"{type(mod).__name__} -> {kind}")
    assert seen == set(A.CATALOGUE), set(A.CATALOGUE) ^ seen


@pytest.mark.parametrize("kind", sorted(A.CATALOGUE))
def test_linear_regime_is_what_the_activation_becomes_when_always_on(kind):
    entry = A.get(kind)
    params = {"clip": {"min": -1.0, "max": 2.5}}.get(kind, {})
    scale, shift = A.linear_regime(kind, params)
    kink, upper = A.activation_kink(kind, params), A.upper_bound(kind, params)
    if entry.piecewise_linear:
        on = PROBE[(PROBE >= kink) & (PROBE <= (np.inf if upper is None else upper))]
        assert on.size > 10
        np.testing.assert_allclose(A.reference(kind, on, params), scale * on + shift, rtol=1e-12, atol=1e-12)
        # and it really switches at the kink: just below it, it is off the linear regime
        below = np.array([kink - 0.5])
        assert abs(A.reference(kind, below, params)[0] - (scale * below[0] + shift)) > 1e-3
        if upper is not None:
            assert abs(A.reference(kind, [upper + 0.5], params)[0] - (scale * (upper + 0.5) + shift)) > 1e-3
    else:  # smooth gates: the asymptote as x -> +inf
        far = np.array([30.0, 40.0])
        np.testing.assert_allclose(A.reference(kind, far, params), scale * far + shift, rtol=1e-6)
    assert A.is_collapsible(kind) == (kind not in ("softplus", "tanh", "sigmoid"))


def test_selu_and_hardsigmoid_regimes_are_not_identity():
    assert A.linear_regime("selu") == (A.SELU_GAMMA, 0.0)
    assert A.linear_regime("hardsigmoid", {"alpha": 1 / 6, "beta": 0.5}) == (1 / 6, 0.5)
    assert A.activation_kink("hardsigmoid", {"alpha": 1 / 6, "beta": 0.5}) == pytest.approx(-3.0)
    assert A.canonical("swish") == "silu" and A.canonical("leakyrelu") == "leaky_relu"
    with pytest.raises(KeyError):
        A.get("no_such_activation")


def test_torch_functions_and_aten_ops_map_to_the_same_kinds_as_modules():
    import torch
    import torch.nn.functional as F

    aten = torch.ops.aten
    cases = [
        (F.relu, (None,), {}, ("relu", {})), (torch.relu, (None,), {}, ("relu", {})),
        (aten.relu.default, (None,), {}, ("relu", {})), ("relu_", (None,), {}, ("relu", {})),
        (F.relu6, (None,), {}, ("relu6", {})), (F.hardtanh, (None, 0.0, 6.0), {}, ("relu6", {})),
        (aten.hardtanh.default, (None, -1.0, 2.0), {}, ("clip", {"min": -1.0, "max": 2.0})),
        (torch.clamp, (None,), {"min": 0.0, "max": 6.0}, ("relu6", {})),
        (F.leaky_relu, (None, 0.2), {}, ("leaky_relu", {"alpha": 0.2})),
        (F.gelu, (None,), {"approximate": "tanh"}, ("gelu_tanh", {})), (aten.gelu.default, (None,), {}, ("gelu", {})),
        (F.silu, (None,), {}, ("silu", {})), (F.hardswish, (None,), {}, ("hardswish", {})),
        (F.hardsigmoid, (None,), {}, ("hardsigmoid", {"alpha": 1 / 6, "beta": 0.5})),
        (aten.elu.default, (None, A.SELU_ALPHA, A.SELU_GAMMA), {}, ("selu", {"gamma": A.SELU_GAMMA, "alpha": A.SELU_ALPHA})),
        (aten.elu.default, (None, 0.5, 1.0, 2.0), {}, ("celu", {"alpha": 0.5})),
        (F.elu, (None,), {"alpha": 0.3}, ("elu", {"alpha": 0.3})), (F.mish, (None,), {}, ("mish", {})),
        (torch.tanh, (None,), {}, ("tanh", {})), (torch.sigmoid, (None,), {}, ("sigmoid", {})),
        (F.softplus, (None,), {}, ("softplus", {"beta": 1.0})),
    ]
    for target, args, kwargs, want in cases:
        assert function_kind(target, args, kwargs) == want, target
    assert function_kind(torch.add, (None, None)) is None
    assert function_kind(F.hardtanh, (None, 2.0, 1.0)) is None  # not monotone: not an activation


# ------------------------------------------------------------------- the ONNX front end agrees

def _one_node_model(op, attrs=None, extra_inits=()):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, len(PROBE)])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    inits = [numpy_helper.from_array(np.asarray(v, np.float32), n) for n, v in extra_inits]
    node = helper.make_node(op, ["x"] + [n for n, _ in extra_inits], ["y"], name="act", **(attrs or {}))
    graph = helper.make_graph([node], "g", [x], [y], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])


ONNX_CASES = [
    ("Relu", {}, (), "relu"), ("LeakyRelu", {"alpha": 0.1}, (), "leaky_relu"),
    ("Clip", {}, (("lo", 0.0), ("hi", 6.0)), "relu6"), ("Clip", {}, (("lo", -1.0), ("hi", 2.5)), "clip"),
    ("PRelu", {}, (("slope", [[0.3], [0.1], [0.2]]),), "prelu"), ("HardSwish", {}, (), "hardswish"),
    ("HardSigmoid", {"alpha": 0.3, "beta": 0.4}, (), "hardsigmoid"), ("Elu", {"alpha": 0.5}, (), "elu"),
    ("Celu", {"alpha": 0.7}, (), "celu"), ("Selu", {}, (), "selu"), ("Gelu", {}, (), "gelu"),
    ("Gelu", {"approximate": "tanh"}, (), "gelu_tanh"), ("Mish", {}, (), "mish"),
]


@pytest.mark.parametrize("op,attrs,inits,kind", ONNX_CASES, ids=[f"{c[0]}-{c[3]}" for c in ONNX_CASES])
def test_onnx_patterns_take_kind_and_regime_from_the_catalogue(op, attrs, inits, kind):
    from collapse_passes.onnx.graph import to_graph
    from collapse_passes.onnx.patterns import find_activations

    model = _one_node_model(op, attrs, inits)
    (act,) = find_activations(to_graph(model))
    assert act.kind == kind
    assert (act.linear_scale, act.linear_shift) == pytest.approx(A.linear_regime(kind, act.params))
    # onnxruntime's output of the node is the catalogue's reference with the params the pattern read
    feed = {"x": np.broadcast_to(PROBE.astype(np.float32), (1, 3, len(PROBE))).copy()}
    got = runtime.outputs(model, feed)[0]
    params = dict(act.params)
    if "slope" in params:
        params["slope"] = np.asarray(params["slope"]).reshape(3, 1)
    want = A.reference(kind, feed["x"][0].astype(np.float64), params)[None]
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=2e-6)


def test_onnx_softplus_is_not_collapsible():
    from collapse_passes.onnx.graph import to_graph
    from collapse_passes.onnx.patterns import find_activations

    assert find_activations(to_graph(_one_node_model("Softplus"))) == []


# ---------------------------------------------------------------- the Relax front end agrees

@pytest.mark.tvm
def test_relax_pass_uses_the_catalogue_regimes():
    """SELU becomes gamma*x (as in ONNX), Softplus is left alone (ONNX refuses it too)."""
    pytest.importorskip("tvm")
    torch = pytest.importorskip("torch")
    from torch import nn

    from tvm_integration import compile as tc
    from tvm_integration.relax_pass import collapse_sequence, list_activations
    from tvm_integration.targets import resolve_target

    torch.manual_seed(0)

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.l1, self.l2 = nn.Linear(6, 6), nn.Linear(6, 6)
            self.selu, self.softplus = nn.SELU(), nn.Softplus()

        def forward(self, x):
            return self.l2(self.softplus(self.selu(self.l1(x))))

    m = M().eval()
    x = torch.randn(2, 6) * 4
    mod = tc.import_exported_program(torch.export.export(m, (x,)), run_ep_decomposition=False)
    assert [s.kind for s in list_activations(mod)] == ["selu"]
    got = tc.run(tc.build(collapse_sequence(None)(mod), resolve_target("cpu")[0]), {"x": x.numpy()})[0]
    with torch.no_grad():
        scale, shift = A.linear_regime("selu")
        want = m.l2(m.softplus(scale * m.l1(x) + shift)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_runtime_compare_uses_one_rule():
    ref = [[np.array([1.0, -2.0, 1e-9])]]
    ok = runtime.compare(ref, [[np.array([1.0 + 1e-5, -2.0, 0.0])]], ["y"], rtol=1e-4, atol=0.0)
    assert ok.passed and ok.max_abs == pytest.approx(1e-5)
    bad = runtime.compare(ref, [[np.array([1.01, -2.0, 0.0])]], ["y"], rtol=1e-4, atol=0.0)
    assert not bad.passed and bad.worst_output == "y"
    assert not runtime.compare(ref, [[np.zeros(2)]], ["y"], 1e-4, 1e-5).passed
