"""A tiny tuning budget says its plan and its price before tuning starts. --tune-trials 32 on torchvision
MobileNetV3-Small (49 tasks) became 16 rounds of 2 trials, each round carrying 30-57 s of fixed search cost on a busy
2-core host: 26 minutes for both models, 33 tasks without a trial, and nothing said beforehand but "2 per round".
The plan (tuning.plan_trials) still reaches as many tasks as it can (test_tvm_tune); the line before tuning
(tuning.describe_plan) now gives the rounds, the tasks left without a trial, the minutes the rounds' fixed cost comes
to and the budget docs/tvm.md measured as useful. Found by the small-gaps round (2026-11-29)."""
from __future__ import annotations

import pytest

pytest.importorskip("tvm")
pytest.importorskip("xgboost")

from tvm_integration import compile as tc  # noqa: E402
from tvm_integration import tuning  # noqa: E402
from tvm_integration.targets import resolve_target  # noqa: E402
from tvm_integration.testing import tiny_cnn_onnx  # noqa: E402


def test_the_plan_names_rounds_untried_tasks_and_the_cost_of_a_small_budget():
    per_iter, per_task = tuning.plan_trials(32, 49)
    line = tuning.describe_plan(32, 49, per_iter, per_task)
    rounds = -(-32 // per_iter)
    assert f"{rounds} round(s) of {per_iter} trial(s)" in line, line
    assert f"the {49 - rounds} lightest task(s) get no trial" in line, line
    lo, hi = (round(rounds * s / 60) for s in tuning.ROUND_FIXED_S)
    assert f"about {lo}-{hi} min" in line and "512 trials" in line, line
    big = tuning.describe_plan(1024, 17, *tuning.plan_trials(1024, 17))   # rounds of 16+: no warning, all reached
    assert "small budget" not in big and "no trial" not in big, big


def test_the_plan_is_said_before_any_tuning(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")  # noqa: F841 - tiny_cnn_onnx exports with torch
    said, seen_at_start = [], []

    def no_tuning(*args, **kwargs):   # MetaSchedule proper: what was said by then is what the user saw first
        seen_at_start.extend(said)

    monkeypatch.setattr(tuning, "_run_tune_tasks", no_tuning)
    target, info = resolve_target("cpu")
    mod = tc.import_onnx(tiny_cnn_onnx(channels=8, size=16)[0])
    tuning.tune_with_report(mod, target, info, work_dir=str(tmp_path / "db"), trials=4, shared_database=False,
                            progress=False, log=said.append)
    assert any("round(s) of" in m and "a small budget" in m and "512 trials" in m for m in seen_at_start), said
