"""--target-speedup with --cost measured planned every candidate's merges with the MAC model and priced it by
MACs, while the result was planned with the measured one: the prediction could describe another graph than
the one written. Candidates are now planned and priced with the run's own cost model."""
from __future__ import annotations

import collapse_passes as cp
from collapse_passes.onnx import measure
from test_adv13_activation_pricing import _conv_act_dw


def test_measured_cost_model_plans_and_prices_the_candidates(monkeypatch):
    asked = []
    real = measure.MeasuredCostModel.time_signature

    def spy(self, signature):
        asked.append(signature[0])
        return real(self, signature)

    monkeypatch.setattr(measure.MeasuredCostModel, "time_signature", spy)
    r = cp.collapse(_conv_act_dw("HardSwish"), scores={"act0": 0.1, "act1": 0.9}, target_speedup=1.001,
                    cost="measured")
    assert r.report["passed"]
    note = next(n for n in r.report["notes"] if n.startswith("--target-speedup"))
    assert "op latencies measured on onnxruntime" in note
    assert asked   # the choice priced convs by their measured latency, not by MACs


def test_mac_model_note_is_unchanged():
    r = cp.collapse(_conv_act_dw("HardSwish"), scores={"act0": 0.1, "act1": 0.9}, target_speedup=1.001)
    assert "MACs + per-op cost of the merged graph" in next(n for n in r.report["notes"]
                                                            if n.startswith("--target-speedup"))
