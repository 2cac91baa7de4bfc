"""benchmarks/gpu_check.py: an untuned row carries its verdict ("ok") as soon as it is written (adversarial round 23,
H71). Round 22 moved the tuning after every untuned row so that a run cut off by its device time keeps them, but
also moved the check of every row to the end of the run: a run killed while tuning (the device call's `timeout`)
left rows with no "ok", so a wrong untuned GPU result was nowhere said. TVM and the GPU are faked as in
test_adv22_gpu_check_order."""
import json

import pytest
from test_adv22_gpu_check_order import _fake
from test_gpu_torch_check import _gpu_check


def test_a_run_killed_while_tuning_keeps_the_untuned_verdicts(tmp_path, monkeypatch):
    from tvm_integration import compile as tc
    from tvm_integration import tuning

    _fake(monkeypatch, [])
    run = tc.run
    monkeypatch.setattr(tc, "run", lambda ex, feed: [o * 1.5 for o in run(ex, feed)] if ex.model.graph.initializer[0]
                        .float_data[0] == 2.0 else run(ex, feed))   # the dense model computes wrong on the "GPU"

    def killed(*a, **k):
        raise KeyboardInterrupt   # what the device call's timeout does to a tuning in progress

    monkeypatch.setattr(tuning, "tune_with_report", killed)
    g = _gpu_check()
    monkeypatch.setattr(g, "_gpu_name", lambda: "Fake GPU")
    out = tmp_path / "o"
    with pytest.raises(KeyboardInterrupt):
        g.main(["--out", str(out), "--batches", "1", "--trials", "8"])
    rows = json.load(open(out / "gpu_check.json"))["rows"]
    assert [(r["model"][1], r.get("ok")) for r in rows] == [("c", True), ("a", False)]
