"""Adversarial round 15 (H10): the merge fallback's trials evaluate the requested semantics in float64 once.

--method tlc --target-speedup 1.2 on a torchvision-layout EfficientNetV2-S collapses 95 SiLUs (outputs ~1e11):
the merged result fails, and the fallback bisects over 11 trials, each verified with a float64 second look
(onnx's reference evaluator) of the requested semantics AND the trial's result. The request and the check
inputs are the same in every trial, so its float64 outputs are now evaluated once (verify(reference_cache=)):
the run took 49 s, 23 s of it in the evaluator, half of that on the same request again and again.
"""
from __future__ import annotations

import hashlib

import collapse_passes as cp
from collapse_passes import verify as verify_mod
from conftest import export_quiet
from test_adv12_segment_fallback import KEYS, TwoChains, _check


def test_the_request_is_evaluated_in_float64_once_per_collapse(tmp_path, monkeypatch):
    path = tmp_path / "two.onnx"
    export_quiet(TwoChains().eval(), path, (1, 3, 8, 8), dynamo=False)
    calls = []
    real = verify_mod._reference_run

    def counting(model, feeds):
        calls.append(hashlib.sha1(model.SerializeToString()).hexdigest())   # not id(): trial models are freed
        return real(model, feeds)

    monkeypatch.setattr(verify_mod, "_reference_run", counting)
    r = cp.collapse(str(path), collapse=KEYS)
    assert r.passed
    _check(r.report, "onnx")                  # the same fallback outcome as without the cache
    assert len(calls) >= 3                    # the first look and the trials' results
    assert max(calls.count(c) for c in set(calls)) == 1, calls   # each graph once: the request not per trial


def test_target_speedup_says_what_the_written_result_predicts_after_the_fallback(tmp_path):
    """--target-speedup plans with every merge made; when the check then refuses some (the fallback), the note's
    "predicted speed-up" described a graph that was not written (EfficientNetV2-S: 1.224x planned, 1.046x
    written, all 7 merges refused). A warning and report["target_speedup"]["predicted_written"] say it."""
    path = tmp_path / "two.onnx"
    export_quiet(TwoChains().eval(), path, (1, 3, 8, 8), dynamo=False)
    r = cp.collapse(str(path), scores={k: 0.0 for k in KEYS}, target_speedup=1.05)
    assert r.passed and r.report["merge_fallback"]["refused"]
    [planned] = [n for n in r.report["notes"] if n.startswith("--target-speedup")]
    written = r.report["target_speedup"]["predicted_written"]
    planned_x = float(planned.split("predicted speed-up ")[1].split("x")[0])
    assert written < planned_x
    assert any(w.startswith("--target-speedup") and f"{written:.3f}x" in w for w in r.report["warnings"])
