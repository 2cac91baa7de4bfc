"""The CLI refused `--no-merge --per-op-overhead X --target-speedup S` while the library accepts the same
settings (--target-speedup prices the collapse with the per-op overhead even when nothing merges): one
check (config.check_settings) now decides for both."""
from __future__ import annotations

import json

import pytest

import collapse_passes as cp
from collapse_passes.cli import main
from test_adv13_misc_duplicate_names import _dup_model


@pytest.fixture
def model_and_scores(tmp_path):
    import onnx

    m = _dup_model()
    src, scores = tmp_path / "m.onnx", tmp_path / "s.json"
    onnx.save(m, src)
    scores.write_text(json.dumps({"scores": {"relu": 0.1, "relu_1": 0.2}}))
    return m, src, scores


def test_cli_accepts_per_op_overhead_for_target_speedup_without_merging(model_and_scores, tmp_path):
    m, src, scores = model_and_scores
    out = tmp_path / "o.onnx"
    args = ["--scores", str(scores), "--no-merge", "--per-op-overhead", "5", "--target-speedup", "1.1"]
    assert main([str(src), *args, "-o", str(out)]) == 0
    assert out.exists()
    cp.collapse(m, scores={"relu": 0.1, "relu_1": 0.2}, merge=False, per_op_overhead=5.0, target_speedup=1.1)


def test_both_refuse_per_op_overhead_that_nothing_reads(model_and_scores, tmp_path, capsys):
    m, src, _ = model_and_scores
    out = tmp_path / "o.onnx"
    assert main([str(src), "--no-merge", "--per-op-overhead", "5", "-o", str(out)]) == 2
    cli_err = capsys.readouterr().err.strip()
    assert not out.exists() and "--no-merge" in cli_err and len(cli_err.splitlines()) == 1
    with pytest.raises(cp.CollapseError, match="--no-merge"):
        cp.collapse(m, merge=False, per_op_overhead=5.0)
