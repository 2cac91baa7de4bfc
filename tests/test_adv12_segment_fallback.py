"""Per-merge fallback (core/merge_fallback.py): a merged result that fails verification keeps the merges that
verify and refuses only the ones that break it, on ONNX, the torch front end and the torch.compile backend.

The model has two collapsed conv chains: `good` (ordinary weights) and `bad`, whose merged 1x1 kernel has
entries ~1e5 in rows that differ by ~0.1; the model outputs their difference, so rounding the merged kernel to
float32 (1e5 * 6e-8 per entry) is ~1e-2 of the output: the merge fails (in float64 too), the layers one by one
are the requested semantics op for op."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import collapse_passes as cp
from collapse_passes.core import merge_fallback as mf
from collapse_passes.core.runtime import Comparison
from conftest import export_quiet


class TwoChains(nn.Module):
    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.b1, self.bact, self.b2 = nn.Conv2d(3, 8, 1), nn.ReLU(), nn.Conv2d(8, 8, 1)
        self.g1, self.gact, self.g2 = nn.Conv2d(3, 8, 1), nn.ReLU(), nn.Conv2d(8, 4, 1)
        with torch.no_grad():
            big = torch.randn(4, 8, generator=g) * 1e5
            self.b2.weight.copy_(torch.cat([big, big + 0.1 * torch.randn(4, 8, generator=g)])[:, :, None, None])

    def forward(self, x):
        y = self.b2(self.bact(self.b1(x)))
        return y[:, :4] - y[:, 4:], self.g2(self.gact(self.g1(x)))


KEYS = ["bact", "gact"]


def _check(report, front, names=True):
    """names: the records name the modules (dynamo's graph names its nodes conv2d, conv2d_1, ...)."""
    fb = report["merge_fallback"]
    [r] = fb["refused"]
    assert not names or any("b1" in n for n in r["nodes"]) and any("b2" in n for n in r["nodes"]), (front, r)
    assert r["max_rel_merged"] > 1e-3 and r["max_rel_without"] < 1e-4
    if front != "torch_backend":   # the gate's float64 second look disagrees too: no float32 artefact
        assert r["max_rel_float64_merged"] > 1e-3
    assert fb["kept"] == 1 and not fb["untried"]
    [m] = report["merges"]
    assert not names or any("g1" in n for n in m["nodes"]), (front, m)   # the benign chain stays merged
    assert not set(m["nodes"]) & set(r["nodes"])
    [w] = [w for w in report["warnings"] if "merging refused after verification" in w]
    assert "1 merge(s) not merged" in w and "1 merge(s) kept" in w and "with it merged" in w


def test_onnx_keeps_the_benign_merge_and_refuses_the_bad_one(tmp_path):
    path = tmp_path / "two.onnx"
    export_quiet(TwoChains().eval(), path, (1, 3, 8, 8), dynamo=False)
    r = cp.collapse(str(path), collapse=KEYS)
    assert r.passed
    _check(r.report, "onnx")
    assert r.report["after"]["nodes"] < r.report["before"]["nodes"]
    from collapse_passes.core.runtime import outputs

    x = np.random.default_rng(5).standard_normal((1, 3, 8, 8)).astype(np.float32)
    for got, want in zip(outputs(r.model, {"input": x}), outputs(r.requested, {"input": x})):
        assert np.allclose(got, want, rtol=1e-4, atol=1e-4)


def test_torch_front_end_keeps_the_benign_merge():
    m = TwoChains().eval()
    x = torch.randn(1, 3, 8, 8)
    r = cp.collapse(m, collapse=KEYS, example_inputs=(x,))
    assert r.passed
    _check(r.report, "torch")


def test_torch_compile_backend_falls_back_per_merge():
    m = TwoChains().eval()
    x = torch.randn(1, 3, 8, 8)
    be = cp.torch_backend(collapse=KEYS, inductor=False)
    got = torch.compile(m, backend=be)(x)
    [rep] = be.reports
    _check(rep, "torch_backend", names=False)
    with torch.no_grad():   # the requested semantics: both ReLUs linearized
        y = m.b2(m.b1(x))
        want = (y[:, :4] - y[:, 4:], m.g2(m.g1(x)))
    for a, b in zip(got, want):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5)


def test_a_model_that_merges_fine_runs_no_search(tmp_path, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("search ran")

    monkeypatch.setattr(mf, "search", boom)
    import collapse_passes.fx.api as fx_api

    monkeypatch.setattr(fx_api, "merge_search", boom)
    m = TwoChains().eval()
    with torch.no_grad():
        m.b2.weight.normal_()
    x = torch.randn(1, 3, 8, 8)
    assert len(cp.collapse(m, collapse=KEYS, example_inputs=(x,)).report["merges"]) == 2
    path = tmp_path / "fine.onnx"
    export_quiet(m, path, (1, 3, 8, 8), dynamo=False)
    assert len(cp.collapse(str(path), collapse=KEYS).report["merges"]) == 2


# ------------------------------------------------------------------------------ the search itself

def _oracle(n, bad, calls):
    """A trial: fails when any merge in `bad` is allowed (records of merges named by their join)."""
    records = [{"kind": "conv", "nodes": [f"c{i}", f"d{i}"], "joins": [f"c{i}>d{i}"]} for i in range(n)]

    def trial(allowed):
        calls.append(allowed)
        idx = [i for i in range(n) if f"c{i}>d{i}" in allowed]
        ok = not any(i in bad for i in idx)
        return idx, Comparison(0.0 if ok else 1.0, 0.0 if ok else 1.0, ok, 1), [records[i] for i in idx]

    return records, trial


@pytest.mark.parametrize("bad", [{0}, {7}, {3, 11}, {0, 1, 2}])
def test_search_refuses_exactly_the_bad_merges(bad):
    calls = []
    records, trial = _oracle(16, bad, calls)
    fb = mf.search(records, trial)
    assert {int(r["nodes"][0][1:]) for r in fb.refused} == bad
    assert fb.payload == [i for i in range(16) if i not in bad] and fb.kept == 16 - len(bad)
    assert fb.trials == len(calls) <= 2 + len(bad) * (1 + 4)   # log2(16) per bad merge, plus the ends
    seeded = []   # the caller's failing run is the trial allowing every merge: given, it is not run again
    fb2 = mf.search(records, _oracle(16, bad, seeded)[1], failed=Comparison(1.0, 1.0, False, 1))
    assert fb2.payload == fb.payload and len(seeded) == len(calls) - 1
    assert frozenset(k for r in records for k in r["joins"]) not in seeded


def test_search_budget_leaves_the_rest_unmerged_and_verified():
    calls = []
    records, trial = _oracle(16, set(range(16)), calls)
    fb = mf.search(records, trial, limit=6)
    assert len(calls) == 6 and fb.comparison.passed
    assert {int(r["nodes"][0][1:]) for r in fb.refused} | {int(r["nodes"][0][1:]) for r in fb.untried} == set(range(16))
    assert fb.untried and "untried" in fb.warning(Comparison(1.0, 1.0, False, 1), 16)


def test_search_gives_up_when_the_unmerged_result_fails_too():
    records, _ = _oracle(4, {1}, [])
    assert mf.search(records, lambda allowed: (None, Comparison(1.0, 1.0, False, 1), [])) is None
