"""LaCoOT scoring generates each block's random directions once per projection pass instead of once
per calibration batch (scores/lacoot.py). These tests pin that the way the points are buffered,
chunked, cached, kept or streamed does not change the numbers: every path is compared with a plain
reference that draws the whole K x d direction matrix at once and projects all points in float64."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

from collapse_passes.onnx.blocks import find_residual_blocks
from collapse_passes.onnx.graph import node_key_names, to_graph
from collapse_passes.scores import compute_scores, lacoot
from collapse_passes.scores._common import tapped_batches
from test_scores_helpers import export_ts, residual_net

K = 16  # directions in the reference checks (small: the reference draws them all at once)


def _reference_random_max(x: np.ndarray, y: np.ndarray, k: int, seed: int, block: int, chunk: int):
    """(best W_2 over the k seeded directions, its index): the directions drawn chunk by chunk as whole
    (k, width) matrices from default_rng([seed, block, chunk index]), all points projected at once."""
    d = x.shape[1]
    theta = np.concatenate([np.random.default_rng([seed, block, c]).standard_normal((k, min(lo + chunk, d) - lo))
                            for c, lo in enumerate(range(0, d, chunk))], axis=1)
    theta /= np.linalg.norm(theta, axis=1, keepdims=True)
    w = lacoot.w2_sorted(x.astype(np.float64) @ theta.T, y.astype(np.float64) @ theta.T)
    return float(w.max()), int(w.argmax())


def test_directions_rows_and_single_vector_match_whole_matrix_draws():
    """The row-wise generation (kept generator states) gives the same draws as one (k, width) call."""
    d, k = 250, 7
    dirs = lacoot._Directions(d, k, seed=3, block_index=2, cache=False)
    pts = np.random.default_rng(9).standard_normal((5, d))
    (raw,) = dirs.project_raw([pts])
    whole = np.concatenate([np.random.default_rng([3, 2, c]).standard_normal((k, min(lo + lacoot._CHUNK, d) - lo))
                            for c, lo in enumerate(range(0, d, lacoot._CHUNK))], axis=1)
    np.testing.assert_allclose(dirs.norm, np.linalg.norm(whole, axis=1), rtol=1e-13)
    np.testing.assert_allclose(raw, pts @ whole.T, rtol=1e-12, atol=1e-12)
    for j in (0, 4, k - 1):
        np.testing.assert_array_equal(dirs.vector(j), whole[j] / dirs.norm[j])


class _Block:
    def __init__(self, key, identity=True):
        self.key, self.identity = key, identity

    def describe(self):
        return {"key": self.key}


def _points(seed=0, n_batches=7, batch=3, dims=(230, 90), dtype=np.float64):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_batches):
        got = {}
        for i, d in enumerate(dims):
            x = rng.standard_normal((batch, d))
            got[f"b{i}"] = (x.astype(dtype), (x + (0.3 + i) * rng.standard_normal((batch, d)) ** 2).astype(dtype))
        out.append(got)
    return out


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_streamed_scores_equal_reference_however_buffered(monkeypatch, dtype):
    """Points over budget (streamed, not refined): the score is the reference maximum over the random
    directions / input RMS, whether projected per batch, in a few passes, or once; cached or not."""
    batches = _points(dtype=dtype)
    blocks = [_Block("b0"), _Block("p", identity=False), _Block("b1")]
    monkeypatch.setattr(lacoot, "POINT_BUDGET_BYTES", 8 * 3 * 230 * 2)  # over budget at the 2nd batch
    monkeypatch.setattr(lacoot, "_CHUNK", 64)
    results = []
    for buffer, cache, group in [(1, 0, 1 << 30), (5000, 0, 8 * 64 * 4), (1 << 30, 1 << 30, 1)]:
        monkeypatch.setattr(lacoot, "PROJECTION_BUFFER_BYTES", buffer)
        monkeypatch.setattr(lacoot, "DIRECTION_BUDGET_BYTES", cache)
        monkeypatch.setattr(lacoot, "_GROUP_BYTES", group)
        results.append(lacoot.mswd_scores(blocks, iter(batches), n_directions=K, seed=5))
    for i, key in enumerate(["b0", "b1"]):
        x = np.concatenate([b[key][0] for b in batches])
        y = np.concatenate([b[key][1] for b in batches])
        w, j = _reference_random_max(x, y, K, seed=5, block=i, chunk=64)
        rms = np.sqrt(np.mean(np.sum(x.astype(np.float64) ** 2, axis=1)))
        for res in results:
            det = res.details[key]
            assert not det["refined"] and det["start"] == f"random direction {j} of {K}"
            assert det["samples"] == x.shape[0] and det["dim"] == x.shape[1]
            assert res.scores[key] == pytest.approx(w / rms, rel=1e-12)
    assert set(results[0].scores) == {"b0", "b1"} and results[0].details["p"]["score"] is None


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("lacoot_speed")
    path = export_ts(residual_net(zero_block=1, width=6), d / "res.onnx", (1, 1, 8, 8))
    x = np.random.default_rng(1).standard_normal((12, 1, 8, 8)).astype(np.float32)
    return onnx.load(path), x


def _scores(model, x, monkeypatch, **budgets):
    for name, value in budgets.items():
        monkeypatch.setattr(lacoot, name, value)
    return compute_scores("lacoot", model, calib={"input": x})


def test_kept_points_scores_equal_per_batch_projection(tiny, monkeypatch):
    """Kept path (refined): one projection pass at the end == a pass per batch with uncached, chunked,
    one-row-at-a-time directions (the old per-batch streaming), to float rounding, same start/steps."""
    model, x = tiny
    once = _scores(model, x, monkeypatch)
    per_batch = _scores(model, x, monkeypatch, PROJECTION_BUFFER_BYTES=1, DIRECTION_BUDGET_BYTES=0, _CHUNK=100,
                        _GROUP_BYTES=1)
    assert once.scores.keys() == per_batch.scores.keys() and len(once.scores) == 3
    for k, det in once.details.items():
        assert det["refined"] and per_batch.details[k]["refined"]
        assert per_batch.scores[k] == pytest.approx(once.scores[k], rel=1e-9, abs=1e-12)
        for f in ("start", "refine_steps", "samples", "dim"):
            assert per_batch.details[k][f] == det[f]
        for f in ("input_rms", "relative_branch_rms"):
            assert per_batch.details[k][f] == pytest.approx(det[f], rel=1e-12)


def test_streamed_model_scores_equal_reference(tiny, monkeypatch):
    """On a model: points over budget mid-stream (the kept ones are projected, later batches buffered):
    the scores are the reference random-direction maxima of the tapped points, below the refined ones."""
    model, x = tiny
    kept = _scores(model, x, monkeypatch)
    streamed = _scores(model, x, monkeypatch, POINT_BUDGET_BYTES=4 * 8 * 6 * 8 * 8 * 3, PROJECTION_BUFFER_BYTES=5000)
    assert any("not refined" in n for n in streamed.notes)
    blocks = find_residual_blocks(to_graph(model), node_key_names(model))
    ident = [b for b in blocks if b.identity]
    names = [t for b in ident for t in (b.input.name, b.output.name)]
    taps = [got for got, _ in tapped_batches(model, names, {"input": x}, None, 2, "lacoot")]
    for i, b in enumerate(ident):
        px = np.concatenate([t[b.input.name] for t in taps]).reshape(len(x), -1)
        py = np.concatenate([t[b.output.name] for t in taps]).reshape(len(x), -1)
        w, j = _reference_random_max(px, py, lacoot.N_DIRECTIONS, lacoot.SEED, i, lacoot._CHUNK)
        rms = np.sqrt(np.mean(np.sum(px.astype(np.float64) ** 2, axis=1)))
        det = streamed.details[b.key]
        assert not det["refined"] and det["start"] == f"random direction {j} of {lacoot.N_DIRECTIONS}"
        assert streamed.scores[b.key] == pytest.approx(w / rms, rel=1e-9, abs=1e-12)
        assert kept.scores[b.key] >= streamed.scores[b.key] - 1e-12
        assert kept.details[b.key]["input_rms"] == pytest.approx(det["input_rms"], rel=1e-12)
