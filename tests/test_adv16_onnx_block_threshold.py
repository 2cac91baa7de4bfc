"""--remove-blocks T that removes no block was silent: the run wrote the input's clean-up and said only that "the
selection chose no activation". It now warns, as --threshold does, with the lowest block score (both front ends
share core/selection.blocks_to_remove)."""
from __future__ import annotations

import json

import numpy as np
import torch

import collapse_passes as cp
from collapse_passes.core.selection import blocks_to_remove
from conftest import export_quiet
from models import build


def test_blocks_to_remove_warns_when_none_pass():
    w = []
    assert blocks_to_remove({"a": 0.3, "b": 0.5}, 0.05, w) == [] and w == [
        "remove-blocks 0.05 removes nothing: the lowest block score is 0.3"]
    w = []
    assert blocks_to_remove({"a": 0.3, "b": 0.5}, 0.4, w) == ["a"] and w == []
    assert blocks_to_remove({}, 0.4, w) == [] and w == []


def test_onnx_run_with_saved_block_scores_says_nothing_was_removed(tmp_path):
    torch.manual_seed(0)
    m = build("resnet18_tv", num_classes=10, width=8).eval()
    p = str(tmp_path / "m.onnx")
    export_quiet(m, p, (1, 3, 16, 16), dynamo=False)
    keys = ["layer1.0", "layer1.1", "layer2.1"]
    scores = tmp_path / "s.json"
    scores.write_text(json.dumps({"kind": "block", "scores": {k: 0.4 + 0.1 * i for i, k in enumerate(keys)}}))
    res = cp.collapse(p, scores=str(scores), remove_blocks=0.1)
    assert res.passed and not any(b["removed"] for b in res.report["blocks"])
    assert "remove-blocks 0.1 removes nothing: the lowest block score is 0.4" in res.report["warnings"]
    res = cp.collapse(p, scores=str(scores), remove_blocks=0.45)
    assert [b["key"] for b in res.report["blocks"] if b["removed"]] == ["layer1.0"]
    assert not any("removes nothing" in w for w in res.report["warnings"])
