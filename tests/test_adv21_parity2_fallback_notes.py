"""After the per-merge fallback (core/merge_fallback.py), a pair the planner keeps apart keeps its own reason in
the notes, not "refused: ... failed verification" (core/chains.plan_conv_chain names REFUSED_JOIN only where the
plan without refused joins would have fused the pair).

A fallback trial allows only the joins of the kept merges, and every other join read as refused by verification:
a TorchScript export of MobileNetV3-Small at 64x64 (every other activation collapsed) had one merge refused and 17
such notes, while its dynamo export, which verified at once, said "kept ... separate: merging is exact but costs
more" for the same pairs (EfficientNet-B0 alike, H64).

`bad` is test_adv12_segment_fallback's chain whose merged kernel fails in float32 (refused); `g` a benign pair the
fallback keeps (so the passes run again with its join only allowed); `w1`/`w2` a 16->2->16 unpadded 3x3 pair, exact
to merge but dearer merged (a 5x5 16->16 kernel). The unit tests on plan_conv_chain are H64's."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

import collapse_passes as cp
from collapse_passes.algebra.conv import ConvParams
from collapse_passes.algebra.cost import CostModel
from collapse_passes.core.chains import plan_conv_chain
from collapse_passes.core.merge_fallback import REFUSED_JOIN
from conftest import export_quiet


class BadAndWide(nn.Module):
    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.b1, self.bact, self.b2 = nn.Conv2d(3, 8, 1), nn.ReLU(), nn.Conv2d(8, 8, 1)
        self.g1, self.gact, self.g2 = nn.Conv2d(3, 8, 1), nn.ReLU(), nn.Conv2d(8, 4, 1)
        self.w0, self.w0act = nn.Conv2d(3, 16, 1), nn.ReLU()
        self.w1, self.wact, self.w2 = nn.Conv2d(16, 2, 3), nn.ReLU(), nn.Conv2d(2, 16, 3)
        with torch.no_grad():
            big = torch.randn(4, 8, generator=g) * 1e5
            self.b2.weight.copy_(torch.cat([big, big + 0.1 * torch.randn(4, 8, generator=g)])[:, :, None, None])

    def forward(self, x):
        y = self.b2(self.bact(self.b1(x)))
        return y[:, :4] - y[:, 4:], self.g2(self.gact(self.g1(x))), self.w2(self.wact(self.w1(self.w0act(self.w0(x)))))


KEYS = ["bact", "gact", "wact"]


def _check(report):
    fb = report["merge_fallback"]
    assert fb["refused"] and fb["kept"] == 1, fb   # the fallback ran, the g merge kept
    refused = [n for n in report["notes"] if REFUSED_JOIN in n]
    assert refused and all("b1" in n and "b2" in n for n in refused), refused   # only the refused merge says so
    assert not any("w1" in n and "w2" in n for n in refused), report["notes"]


def test_onnx_fallback_notes_keep_the_cost_reason(tmp_path):
    path = tmp_path / "bw.onnx"
    export_quiet(BadAndWide().eval(), path, (1, 3, 8, 8), dynamo=False)
    r = cp.collapse(str(path), collapse=KEYS)
    assert r.passed
    _check(r.report)
    [wide] = [n for n in r.report["notes"] if "w1" in n and "w2" in n]
    assert "costs more" in wide, wide


def test_torch_fallback_notes_keep_the_cost_reason():
    r = cp.collapse(BadAndWide().eval(), collapse=KEYS, example_inputs=(torch.randn(1, 3, 8, 8),))
    assert r.passed
    _check(r.report)


RNG = np.random.default_rng(0)


def _conv(o, i, k=1, pad=0):
    return ConvParams(RNG.standard_normal((o, i, k, k)).astype(np.float32), np.zeros(o, np.float32),
                      pads=(pad,) * 4)


def _plan(params, joins_ok):
    sp = [(8, 8)] * len(params)
    return plan_conv_chain(params, sp, sp, CostModel(), joins_ok=joins_ok, values=False)


def test_inexact_pair_keeps_its_reason():
    plan = _plan([_conv(4, 4, 3, 1), _conv(4, 4, 3, 1)], [False])   # zero-padded 3x3 then 3x3: border differs
    assert plan.segments == [(0, 1), (1, 2)]
    assert (0, 2) in plan.refused and plan.refused[(0, 2)] != REFUSED_JOIN, plan.refused


def test_costlier_pair_is_a_candidate_not_a_refusal():
    plan = _plan([_conv(4, 64), _conv(64, 4)], [False])   # bottleneck 64->4->64: merged it costs 8x the MACs
    assert plan.segments == [(0, 1), (1, 2)]
    assert (0, 2) not in plan.refused and (0, 2) in plan.candidates, (plan.refused, list(plan.candidates))


def test_refused_join_of_a_paying_merge_says_verification():
    params = [_conv(4, 64), _conv(4, 4)]   # 64->4 then 4->4: one 64->4 conv, fewer MACs and one op less
    assert _plan(params, [True]).segments == [(0, 2)]
    plan = _plan(params, [False])
    assert plan.segments == [(0, 1), (1, 2)] and plan.refused.get((0, 2)) == REFUSED_JOIN
