"""The cost of LaCoOT scoring (scores/lacoot.py): the only work that grows with the feature count d is
one pass of every feature of every block into the block's Gram matrix (O(d n^2)); the direction
search runs in at most 2n dimensions (the span of the n input and n output points), not d, so no
K x d direction matrix is ever drawn (the former search drew 256 x d Gaussians per block: ~114-134 s
on ResNet-50 at 224 px). Memory is bounded by the budget through more passes over the calibration
data, with the numbers of one pass."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

from collapse_passes.scores import compute_scores, lacoot
from test_scores_helpers import export_ts, residual_net

N, D = 12, 6 * 8 * 8    # calibration samples, features per block of the tiny model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("lacoot_speed")
    path = export_ts(residual_net(zero_block=1, width=6), d / "res.onnx", (1, 1, 8, 8))
    x = np.random.default_rng(1).standard_normal((N, 1, 8, 8)).astype(np.float32)
    return onnx.load(path), x


def _scores(model, x, monkeypatch, budget=None):
    """The scores, and the feature columns each block's Gram matrix received (block = its sample count
    and the first value of its first point, enough to tell the three blocks apart)."""
    seen = []
    real = lacoot.add_gram

    def counting(gram, xs, ys):
        seen.append(xs.shape[1])
        return real(gram, xs, ys)

    monkeypatch.setattr(lacoot, "add_gram", counting)
    if budget is not None:
        monkeypatch.setattr(lacoot, "POINT_BUDGET_BYTES", budget)
    return compute_scores("lacoot", model, calib={"input": x}), seen


@pytest.mark.parametrize("budget, passes", [
    (None, 1),                      # all blocks in one pass
    (N * D * 8 + 100, 3),           # one block per pass
    (N * D * 8 // 3, None),         # every block alone over budget: feature slices, many passes
])
def test_every_feature_enters_the_gram_once_whatever_the_budget(tiny, monkeypatch, budget, passes):
    model, x = tiny
    ref, _ = _scores(model, x, monkeypatch)
    res, seen = _scores(model, x, monkeypatch, budget)
    assert sum(seen) == 3 * D                    # three identity blocks, each feature once
    pass_notes = [n for n in res.notes if "passes over the calibration data" in n]
    if passes == 1:
        assert seen == [D] * 3 and not pass_notes
    elif passes:
        assert seen == [D] * 3 and pass_notes and f"{passes} passes" in pass_notes[0]
    else:
        assert len(seen) > 3 and "in slices" in pass_notes[0]
    for k, det in res.details.items():
        # the search runs in the 2n-dimensional span (d = 384 > 8n), whatever the budget
        assert det["search_dim"] == 2 * N and det["dim"] == D and det["samples"] == N
        assert res.scores[k] == pytest.approx(ref.scores[k], rel=1e-9, abs=1e-12)
        assert det["start"] == ref.details[k]["start"]
        for f in ("input_rms", "relative_branch_rms"):
            assert det[f] == pytest.approx(ref.details[k][f], rel=1e-12)
    assert res.scores["layers.1"] == 0.0 and res.details["layers.1"]["start"] == "output equal to input on every sample"
