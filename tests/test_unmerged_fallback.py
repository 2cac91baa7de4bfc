"""A merged result that fails verification is replaced by the same passes without merging when that one
verifies (api.collapse): merged kernels of an ill-conditioned stack, rounded to float32, can be off where the
layers one by one are not (every SiLU of EfficientNetV2-S collapsed at 224: merged weights in float64 agree with
the requested semantics to 4e-14, rounded to float32 they are 100 % off)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import collapse_passes as cp
from collapse_passes.algebra import conv as conv_alg
from collapse_passes.errors import VerificationError
from conftest import export_quiet


class Chain(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 1)
        self.act = nn.ReLU()
        self.c2 = nn.Conv2d(8, 8, 1)
        self.out = nn.ReLU()

    def forward(self, x):
        return self.out(self.c2(self.act(self.c1(x))))


@pytest.fixture()
def model_path(tmp_path):
    torch.manual_seed(0)
    export_quiet(Chain().eval(), tmp_path / "chain.onnx", (1, 3, 8, 8), dynamo=False)
    return str(tmp_path / "chain.onnx")


def _off_merges(monkeypatch):
    """Merged kernels 1 % off: what float32 rounding does to an ill-conditioned stack, on a model small enough
    to test (the planner still believes the merge exact)."""
    real = conv_alg.compose_conv_chain

    def off(convs, input_spatial=None):
        m = real(convs, input_spatial)
        return conv_alg.MergedConv(m.params.replace(weight=m.params.weight * np.float32(1.01)), m.bias_map,
                                   m.exact, m.reason, shape_only=m.shape_only)

    monkeypatch.setattr(conv_alg, "compose_conv_chain", off)


def test_a_merged_result_that_fails_is_replaced_by_the_unmerged_one(model_path, monkeypatch):
    ok = cp.collapse(model_path, collapse=["act"])
    assert ok.report["merges"] and not any("merging refused" in w for w in ok.report["warnings"])
    _off_merges(monkeypatch)
    r = cp.collapse(model_path, collapse=["act"])
    assert r.passed and r.report["passed"]
    assert r.report["merges"] == []
    assert r.report["verification"]["against_requested"]["max_rel"] < 1e-5
    [w] = [w for w in r.report["warnings"] if "merging refused after verification" in w]
    assert "not merged" in w
    x = np.random.default_rng(3).standard_normal((1, 3, 8, 8)).astype(np.float32)
    from collapse_passes.core.runtime import outputs

    assert np.allclose(outputs(r.model, {"input": x})[0], outputs(r.requested, {"input": x})[0], rtol=1e-5, atol=1e-6)


def test_no_fallback_when_the_unmerged_result_fails_too(model_path, monkeypatch):
    """A wrong fold is no merge: the gate still refuses, with the first failure's numbers."""
    _off_merges(monkeypatch)
    from collapse_passes import verify as verify_mod

    orig = verify_mod.verify

    def always_off(original, requested, result, feeds, rtol, atol, desc, seed=0, **kw):
        v = orig(original, requested, result, feeds, rtol, atol, desc, seed=seed, **kw)
        bad = verify_mod.Comparison(1.0, 1.0, False, v.against_requested.samples, "logits")
        return verify_mod.Verification(bad, v.against_original, rtol, atol, desc)

    monkeypatch.setattr(verify_mod, "verify", always_off)
    with pytest.raises(VerificationError) as exc:
        cp.collapse(model_path, collapse=["act"])
    assert exc.value.report.report["merges"]   # the merged result's report: the first failure


def test_the_torch_front_end_falls_back_the_same_way(monkeypatch):
    torch.manual_seed(0)
    m = Chain().eval()
    x = torch.randn(1, 3, 8, 8)
    ok = cp.collapse(m, collapse=["act"], example_inputs=(x,))
    assert ok.report["merges"]
    _off_merges(monkeypatch)
    r = cp.collapse(m, collapse=["act"], example_inputs=(x,))
    assert r.passed and r.report["merges"] == []
    assert any("merging refused after verification" in w for w in r.report["warnings"])
    want = nn.Sequential(m.c1, m.c2, m.out)(x)
    assert torch.allclose(r.model(x), want, rtol=1e-5, atol=1e-6)
