"""The Relax pass reads the two-op activation spellings the ONNX and torch front ends read (H60, 2026-11-29).

Min(Max(x, lo), hi) / Max(Min(x, hi), lo) (ReLU6 for 0, 6, else a clip) and Max(x, a*x) (LeakyReLU, scalar
0 < a < 1), as tf2onnx / TFLite converters write them, are one site each on ONNX (onnx/patterns._two_op_forms) and
torch. from_onnx writes an ONNX Max / Min of two tensors as R.max / R.min over R.stack of the operands, which the
Relax pass did not read: none of them (nor a lone Max(x, c), the dynamo exporter's clamp_min) was a site. Each is
now one site with the kind a one-op spelling gets in the Relax pass, and linearizing it gives the ONNX front end's
collapsed model's outputs."""
from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.tvm
tvm = pytest.importorskip("tvm")
pytest.importorskip("onnxruntime")

from onnx import helper  # noqa: E402

import collapse_passes as cp  # noqa: E402
from conftest import make_model, rnd, vinfo  # noqa: E402
from tvm_integration import compile as tc  # noqa: E402
from tvm_integration.relax_pass import LinearizeActivations, collapse_sequence, list_activations  # noqa: E402

D = 6
X = (np.random.default_rng(1).standard_normal((3, D)) * 4).astype(np.float32)


def _model(act_nodes, consts):
    """x @ W1 -> h -> the activation's nodes (h -> a) -> @ W2 -> y."""
    inits = {"w1": rnd(D, D, seed=1), "w2": rnd(D, D, seed=2),
             **{k: np.array(v, np.float32) for k, v in consts.items()}}
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"), *act_nodes,
             helper.make_node("MatMul", ["a", "w2"], ["y"], name="fc2")]
    return make_model(nodes, [vinfo("x", [3, D])], [vinfo("y", [3, D])], inits)


def _n(op, ins, out, name):
    return helper.make_node(op, ins, [out], name=name)


#: name -> (two-op spelling, its one-op twin, the ONNX kind)
FORMS = {
    "relu6 max-min": ([_n("Max", ["h", "zero"], "m", "lo"), _n("Min", ["m", "six"], "a", "hi")],
                      [helper.make_node("Clip", ["h", "zero", "six"], ["a"], name="act")], "relu6"),
    "relu6 min-max": ([_n("Min", ["h", "six"], "m", "hi"), _n("Max", ["m", "zero"], "a", "lo")],
                      [helper.make_node("Clip", ["h", "zero", "six"], ["a"], name="act")], "relu6"),
    "clip": ([_n("Max", ["h", "neg1"], "m", "lo"), _n("Min", ["m", "two"], "a", "hi")],
             [helper.make_node("Clip", ["h", "neg1", "two"], ["a"], name="act")], "clip"),
    "clip lower": ([_n("Max", ["h", "half"], "a", "act")],   # the dynamo exporter's clamp_min(0.5)
                   [helper.make_node("Clip", ["h", "half"], ["a"], name="act")], "clip"),
    "leaky x, a*x": ([_n("Mul", ["h", "alpha"], "m", "scale"), _n("Max", ["h", "m"], "a", "act")],
                     [helper.make_node("LeakyRelu", ["h"], ["a"], name="act", alpha=0.2)], "leaky_relu"),
    "leaky a*x, x": ([_n("Mul", ["alpha", "h"], "m", "scale"), _n("Max", ["m", "h"], "a", "act")],
                     [helper.make_node("LeakyRelu", ["h"], ["a"], name="act", alpha=0.2)], "leaky_relu"),
}
CONSTS = {"zero": 0.0, "six": 6.0, "neg1": -1.0, "two": 2.0, "alpha": 0.2, "half": 0.5}


def _relax_kinds(model):
    return [s.kind for s in list_activations(tc.import_onnx(model))]


@pytest.mark.parametrize("name", sorted(FORMS))
def test_a_two_op_spelling_is_the_one_op_sites_kind_and_collapses_as_on_onnx(name):
    two, one, onnx_kind = FORMS[name]
    m, twin = _model(two, CONSTS), _model(one, CONSTS)
    rows = cp.list_keys(m)
    assert [r["kind"] for r in rows] == [onnx_kind]
    kinds = _relax_kinds(m)
    assert kinds == _relax_kinds(twin) and len(kinds) == 1, (kinds, _relax_kinds(twin))

    res = cp.collapse(m, collapse=[rows[0]["key"]])   # the ONNX front end, the same site chosen
    want = tc.run_ort(res.model, {"x": X})[0]
    alone = LinearizeActivations(kinds[0])(tc.import_onnx(m))   # its ops dropped by the pass itself, none dangling
    text = alone.script()
    assert list_activations(alone) == [] and not any(op in text for op in ("stack", "R.max", "R.min", "multiply"))
    np.testing.assert_allclose(tc.run(tc.build(alone, "cpu"), {"x": X})[0], want, rtol=1e-5, atol=1e-5)
    mod = collapse_sequence(kinds[0])(tc.import_onnx(m))
    assert list_activations(mod) == []
    text = mod.script()
    assert "maximum" not in text and "minimum" not in text and "multiply" not in text, text   # both ops gone
    got = tc.run(tc.build(mod, "cpu"), {"x": X})[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert not np.allclose(tc.run_ort(m, {"x": X})[0], want, atol=1e-3)   # the activation did act on X


def test_a_maximum_of_another_tensors_product_or_of_a_gain_is_no_leaky_relu():
    """Max(h, a*g) of another tensor g, and Max(h, 2*h) (a >= 1), are left alone on both front ends."""
    other = [_n("Mul", ["x", "alpha"], "m", "scale"), _n("Max", ["h", "m"], "a", "act")]
    gain = [_n("Mul", ["h", "big"], "m", "scale"), _n("Max", ["h", "m"], "a", "act")]
    for nodes in (other, gain):
        m = _model(nodes, {**CONSTS, "big": 2.0})
        assert cp.list_keys(m) == [] and _relax_kinds(m) == []


def test_the_exported_programs_spelling_is_one_site_too():
    """from_exported_program keeps torch.maximum / torch.minimum as R.maximum / R.minimum: the same sites."""
    torch = pytest.importorskip("torch")
    from torch import nn

    class M(nn.Module):
        def __init__(self, form):
            super().__init__()
            torch.manual_seed(0)
            self.a, self.b, self.form = nn.Linear(D, D), nn.Linear(D, D), form

        def forward(self, x):
            h = self.a(x)
            if self.form == "leaky":
                return self.b(torch.maximum(h, 0.2 * h))
            return self.b(torch.minimum(torch.maximum(h, self.zero), self.six))

    for form, kind in (("leaky", "leakyrelu"), ("relu6", "relu6")):
        m = M(form).eval()
        m.register_buffer("zero", torch.zeros(()))
        m.register_buffer("six", torch.full((), 6.0))
        mod = tc.import_exported_program(torch.export.export(m, (torch.from_numpy(X),)))
        assert [s.kind for s in list_activations(mod)] == [kind], form
        out = tc.run(tc.build(collapse_sequence(kind)(mod), "cpu"), {"x": X})[0]
        with torch.no_grad():
            want = m.b(m.a(torch.from_numpy(X))).numpy()
        np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)
