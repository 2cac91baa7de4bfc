"""LaCoOT searches its max-sliced W_2 in the span of the calibration points (scores/lacoot.py).

W_2 along theta depends on theta only through theta . x_i and theta . y_i, so the part of theta
orthogonal to S = span{x_i, y_i} only shrinks the projections: W_2(theta) = |P theta| W_2(P theta /
|P theta|), and the max over unit directions lies in S (dimension <= 2n). These tests pin that fact,
that the span coordinates keep every inner product whatever the chunking, that the span search
reaches at least what the former full-space search (random directions + mean difference + power steps
in R^d) found, and that several passes over the calibration data (blocks left to a later pass, or
kept in feature slices) give the numbers of one."""
from __future__ import annotations

import numpy as np
import pytest

from collapse_passes.scores import lacoot


def _pair(seed: int, n: int, d: int, shift: float = 0.5):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d))
    return x, x + shift * rng.standard_normal((n, d)) ** 2 + 0.1 * rng.standard_normal(d)


def _w2(x, y, theta):
    return lacoot.w2_sorted(x @ theta.T, y @ theta.T)


@pytest.mark.parametrize("seed", range(3))
def test_w2_along_a_direction_is_its_span_part_length_times_w2_along_the_span_part(seed):
    x, y = _pair(seed, n=5, d=120)
    q, _ = np.linalg.qr(np.concatenate([x, y]).T)          # orthonormal basis of the span (d x 2n)
    theta = np.random.default_rng(10 + seed).standard_normal((50, 120))
    theta /= np.linalg.norm(theta, axis=1, keepdims=True)
    a = theta @ q @ q.T
    length = np.linalg.norm(a, axis=1)
    assert np.all(length < 1.0)                              # a random direction is mostly outside the span
    np.testing.assert_allclose(_w2(x, y, theta), length * _w2(x, y, a / length[:, None]), rtol=1e-10)


@pytest.mark.parametrize("n, d", [(4, 300), (7, 5), (3, 40)])
def test_span_coordinates_keep_inner_products_whatever_the_chunking(n, d, monkeypatch):
    x, y = _pair(1, n, d)
    cx, cy = lacoot.span_coordinates(x.astype(np.float32), y.astype(np.float32))
    assert cx.shape == (n, d if d <= 8 * n else 2 * n) == cy.shape   # the points themselves up to d = 8n
    z = np.concatenate([x, y]).astype(np.float32).astype(np.float64)
    c = np.concatenate([cx, cy])
    np.testing.assert_allclose(c @ c.T, z @ z.T, rtol=1e-10, atol=1e-10 * np.abs(z @ z.T).max())
    monkeypatch.setattr(lacoot, "_GROUP_BYTES", 1)           # the Gram matrix summed feature by feature
    cx2, cy2 = lacoot.span_coordinates(x.astype(np.float32), y.astype(np.float32))
    np.testing.assert_allclose(np.concatenate([cx2, cy2]), c, atol=1e-10 * np.abs(c).max())


def _full_space_search(x, y, k: int, seed: int):
    """The former estimator: k seeded Gaussian directions of R^d and the mean-difference direction,
    the best refined by power steps in R^d (lacoot._refine)."""
    theta = np.random.default_rng(seed).standard_normal((k, x.shape[1]))
    theta /= np.linalg.norm(theta, axis=1, keepdims=True)
    md = y.mean(0) - x.mean(0)
    theta = np.concatenate([theta, md[None] / np.linalg.norm(md)])
    w = _w2(x, y, theta)
    j = int(np.argmax(w))
    return float(w[j]), lacoot._refine(x, y, theta[j], float(w[j]), 100)[1]


@pytest.mark.parametrize("seed, n, d", [(0, 6, 40), (1, 8, 200), (2, 5, 1000), (3, 12, 30)])
def test_span_search_reaches_the_full_space_search(seed, n, d):
    x, y = _pair(seed, n, d, shift=0.2 + 0.3 * seed)
    random_max, refined_max = _full_space_search(x, y, k=4096, seed=seed)
    cx, cy = lacoot.span_coordinates(x, y)
    w, start, _ = lacoot.span_search(cx, cy, lacoot.N_DIRECTIONS, np.random.default_rng(seed))
    assert w >= refined_max * (1 - 1e-9) and w >= random_max
    # the paired coupling bounds W_2 along any direction: the max is at most the top paired difference
    assert w <= np.linalg.norm(y - x, 2) / np.sqrt(n) * (1 + 1e-9)
    # and it is a W_2 actually reached: some unit direction of R^d gives it
    assert start


def test_span_coordinates_are_the_points_in_an_orthonormal_basis():
    """There is a d x r matrix Q with orthonormal columns and x = cx Q^T, y = cy Q^T: W_2 along a unit u
    of the coordinates is W_2 along the unit direction Q u of R^d (a value reached, not an overestimate)."""
    x, y = _pair(4, 6, 80, shift=1e-4)                        # a small branch keeps its precision too
    cx, cy = lacoot.span_coordinates(x, y)
    c, z = np.concatenate([cx, cy]), np.concatenate([x, y])
    qt = np.linalg.lstsq(c, z, rcond=None)[0]
    np.testing.assert_allclose(qt @ qt.T, np.eye(c.shape[1]), atol=1e-8)
    np.testing.assert_allclose(c @ qt, z, atol=1e-10)
    np.testing.assert_allclose(cy - cx, (y - x) @ qt.T, rtol=1e-6, atol=1e-10 * np.abs(y - x).max())
    u = np.random.default_rng(0).standard_normal((20, c.shape[1]))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    np.testing.assert_allclose(_w2(cx, cy, u), _w2(x, y, u @ qt), rtol=1e-6)


class _Block:
    def __init__(self, key, identity=True):
        self.key, self.identity = key, identity

    def describe(self):
        return {"key": self.key}


def _batches(dims=(300, 120, 40), n_batches=4, batch=3):
    rng = np.random.default_rng(5)
    out = []
    for _ in range(n_batches):
        got = {}
        for i, d in enumerate(dims):
            x = rng.standard_normal((batch, d)).astype(np.float32)
            got[f"b{i}"] = (x, x + ((0.2 + i) * rng.standard_normal((batch, d)) ** 2).astype(np.float32))
        out.append(got)
    return out


def test_several_passes_give_the_numbers_of_one(monkeypatch):
    """Points over budget: the last blocks are scored in further passes over the calibration data, with
    the same numbers; the source is asked again only for the blocks still to score."""
    data = _batches()
    blocks = [_Block("b0"), _Block("p", identity=False), _Block("b1"), _Block("b2")]
    asked = []

    def source(keys):
        asked.append(list(keys))
        return ({k: v for k, v in got.items() if k in keys} for got in data)

    one = lacoot.mswd_scores(blocks, source)
    assert asked == [["b0", "b1", "b2"]] and not any("passes" in n for n in one.notes)
    # b0 alone: 12 samples x 300 x 4 bytes x 2 = 28800 bytes; b1 and b2 then fit together
    monkeypatch.setattr(lacoot, "POINT_BUDGET_BYTES", 30000)
    asked.clear()
    many = lacoot.mswd_scores(blocks, source)
    assert asked == [["b0", "b1", "b2"], ["b1", "b2"]]
    assert any("2 passes over the calibration data" in n and "slices" not in n for n in many.notes)
    for k in ("b0", "b1", "b2"):
        assert many.scores[k] == pytest.approx(one.scores[k], rel=1e-12)
        assert many.details[k]["start"] == one.details[k]["start"]
        # r = 2n = 24 in the span; b2 (d = 40 <= 8n) is searched in its own coordinates
        assert one.details[k]["search_dim"] == {"b0": 24, "b1": 24, "b2": 40}[k] and one.details[k]["samples"] == 12
    assert many.details["p"]["score"] is None
    # the ranking follows the branch size (0.2, 1.2, 2.2 times a squared Gaussian)
    assert [k for k, _ in one.ranked()] == ["b0", "b1", "b2"]


def test_a_block_over_budget_alone_is_kept_in_feature_slices(monkeypatch):
    """A block whose points alone exceed the budget keeps a slice of its features per pass, its Gram
    matrix summed over the passes: the same scores (to rounding), a note says so."""
    data = _batches(dims=(300, 120, 60))
    blocks = [_Block("b0"), _Block("b1"), _Block("b2")]
    asked = []

    def source(keys):
        asked.append(list(keys))
        return iter(data)

    one = lacoot.mswd_scores(blocks, source)
    monkeypatch.setattr(lacoot, "POINT_BUDGET_BYTES", 20000)     # b0 needs 28800
    asked.clear()
    res = lacoot.mswd_scores(blocks, source)
    assert asked[0] == ["b0", "b1", "b2"] and asked[1][0] == "b0" and len(asked) > 2
    assert any("in slices" in n and "b0" in n for n in res.notes)
    for k in ("b0", "b1", "b2"):
        assert res.scores[k] == pytest.approx(one.scores[k], rel=1e-9)
        assert res.details[k]["start"] == one.details[k]["start"]
        assert res.details[k]["input_rms"] == pytest.approx(one.details[k]["input_rms"], rel=1e-12)


@pytest.mark.parametrize("seed", range(2))
def test_span_scores_are_deterministic_and_bounded_by_the_paired_coupling(seed):
    data = _batches()
    blocks = [_Block("b0"), _Block("b1"), _Block("b2")]
    a = lacoot.mswd_scores(blocks, iter(data), seed=seed)
    b = lacoot.mswd_scores(blocks, iter(data), seed=seed)
    assert a.scores == b.scores
    for k, det in a.details.items():
        assert det["score"] <= det["relative_branch_rms"] * (1 + 1e-9)


@pytest.mark.slow
def test_small_resnet_ranking_follows_the_branch_scale_and_passes_do_not_change_it(monkeypatch):
    """A ResNet-18 layout whose identity blocks' last BN is scaled by known factors: the scores rank the
    blocks by that factor (the sensible order), on the torch front end; forcing one pass per block over
    the calibration data (a tiny budget) gives the same scores."""
    import torch

    import collapse_passes as cp
    from models import build

    torch.manual_seed(0)
    m = build("resnet18_tv", num_classes=10, width=16).eval()
    factors = {"layer1.0": 1.0, "layer1.1": 0.02, "layer2.1": 3.0, "layer3.1": 0.2, "layer4.1": 0.005}
    with torch.no_grad():
        for k, f in factors.items():
            m.get_submodule(k).bn2.weight.mul_(f)
            m.get_submodule(k).bn2.bias.mul_(f)
    g = torch.Generator().manual_seed(1)
    calib = [torch.randn(6, 3, 32, 32, generator=g) for _ in range(2)]
    x = torch.randn(1, 3, 32, 32)

    def scores():
        rep = cp.collapse(m, method="lacoot", calib=calib, example_inputs=(x,)).report
        return {b["key"]: b["score"] for b in rep["blocks"] if b["score"] is not None}, rep["notes"]

    one, _ = scores()
    assert sorted(one, key=one.get) == sorted(factors, key=factors.get)
    # a layer1 block holds 12 samples x 16 x 8 x 8 float64 (fx taps) x 2 = 196608 bytes: one per pass
    monkeypatch.setattr(lacoot, "POINT_BUDGET_BYTES", 200_000)
    many, notes = scores()
    assert any(" passes over the calibration data" in n and "lacoot: " in n for n in notes), notes
    assert many == pytest.approx(one, rel=1e-9)
