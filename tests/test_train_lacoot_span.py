"""The LaCoOT training term searches its max-sliced W_2 in the span of the batch (train/regularizers.py).

W_2 along theta depends on theta only through theta . x_i and theta . y_i, so the max over unit
directions lies in S = span{x_i, y_i}; 64 random directions of the whole R^d (the former term) see
only ~sqrt(2n / d) of it. These tests check that the term now reaches at least the former full-space
estimate and close to the scorer's fine span search (scores/lacoot.py), never more than the paired
coupling allows, with a finite gradient (also for an exact identity block) that is the gradient of
W_2 along the chosen direction, and the same value for the same seed."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from collapse_passes.scores import lacoot
from collapse_passes.train import LacootTerm, max_sliced_w2


def _pair(seed: int, n: int, d: int, branch: float):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d))
    return x, x + branch * (rng.standard_normal((n, d)) ** 2 + 0.1 * rng.standard_normal(d))


def _full_space(x: torch.Tensor, y: torch.Tensor, k: int, seed: int) -> float:
    """The former term: max over k seeded random unit directions of R^d."""
    theta = torch.randn(x.shape[1], k, generator=torch.Generator().manual_seed(seed), dtype=x.dtype)
    theta = theta / theta.norm(dim=0, keepdim=True)
    px, py = torch.sort(x @ theta, 0)[0], torch.sort(y @ theta, 0)[0]
    return float(((px - py) ** 2).mean(0).sqrt().max())


@pytest.mark.parametrize("seed, n, d, branch", [(0, 6, 40, 0.3), (1, 8, 300, 1.0), (2, 5, 3000, 0.5),
                                                (3, 12, 20, 0.2), (4, 16, 8, 1.0), (5, 10, 2000, 1e-3)])
def test_span_term_reaches_the_full_space_estimate_and_the_fine_search(seed, n, d, branch):
    x, y = _pair(seed, n, d, branch)
    xt, yt = torch.tensor(x), torch.tensor(y)
    new = float(max_sliced_w2(xt, yt, 64, torch.Generator().manual_seed(seed)))
    old = max(_full_space(xt, yt, 64, s) for s in range(4))
    cx, cy = lacoot.span_coordinates(x, y)
    fine = lacoot.span_search(cx, cy, 1024, np.random.default_rng(seed))[0]
    assert new >= old * (1 - 1e-9)
    assert new >= 0.97 * fine                                # the batch search is cheaper, not much worse
    assert new <= np.linalg.norm(y - x, 2) / np.sqrt(n) * (1 + 1e-9)   # the paired coupling's bound
    if d >= 50 * n:                                          # far more than sqrt(2n / d) of the full-space value
        assert new > 3 * old


def test_span_term_beats_a_dense_random_sample_of_the_span():
    """64 random starts and the refinement beat 20000 random directions of the span itself."""
    x, y = _pair(7, 6, 500, 0.5)
    xt, yt = torch.tensor(x), torch.tensor(y)
    new = float(max_sliced_w2(xt, yt, 64, torch.Generator().manual_seed(0)))
    # at least the best of 20000 random directions of the span (the scorer's coordinates, r = 2n = 12)
    cx, cy = lacoot.span_coordinates(x, y)
    u = np.random.default_rng(1).standard_normal((20000, cx.shape[1]))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    sampled = float(lacoot.w2_sorted(cx @ u.T, cy @ u.T).max())
    assert new >= sampled


def test_span_term_gradient_is_finite_and_is_that_of_w2_along_the_chosen_direction():
    torch.manual_seed(0)
    x = torch.randn(8, 3, 10, 10, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    y = x + torch.nn.functional.conv2d(x, w, padding=1)
    val = max_sliced_w2(x, y, 64, torch.Generator().manual_seed(3))
    gx, gw = torch.autograd.grad(val, (x, w))
    assert torch.isfinite(gx).all() and torch.isfinite(gw).all() and gw.abs().sum() > 0
    # Danskin: moving the weights along -grad lowers the max (a small step, the direction re-chosen)
    with torch.no_grad():
        y2 = x + torch.nn.functional.conv2d(x, w - 1e-3 * gw / gw.norm(), padding=1)
        assert float(max_sliced_w2(x, y2, 64, torch.Generator().manual_seed(3))) < float(val)
    # an exact identity block: value 0 and a zero (not nan) gradient
    z = torch.randn(5, 7, requires_grad=True)
    v0 = max_sliced_w2(z, z * 1.0, 16, torch.Generator().manual_seed(0))
    (g0,) = torch.autograd.grad(v0, z)
    assert float(v0.detach()) == 0.0 and torch.isfinite(g0).all()


def test_span_term_is_deterministic_with_the_seed_and_float32_agrees_with_float64():
    x, y = _pair(9, 8, 400, 0.4)
    xt, yt = torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32)
    a = max_sliced_w2(xt, yt, 64, torch.Generator().manual_seed(5))
    b = max_sliced_w2(xt, yt, 64, torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    c = max_sliced_w2(xt.double(), yt.double(), 64, torch.Generator().manual_seed(5))
    assert float(a) == pytest.approx(float(c), rel=1e-4)


def test_lacoot_term_penalty_uses_the_span_search():
    """On a block whose maps have d >> n, the penalty is far above the former full-space estimate."""
    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(4, 4, 3, padding=1)

        def forward(self, x):
            return x + self.conv(x)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.block = Block()

        def forward(self, x):
            return self.block(x)

    torch.manual_seed(0)
    net = Net()
    x = torch.randn(4, 4, 16, 16)                            # n = 4 points in d = 1024
    term = LacootTerm(net, seed=0)
    with term:
        net(x)
        p = term.penalty()
    p.backward()
    y = net(x).detach()
    rms = float(x.flatten(1).pow(2).sum(1).mean().sqrt())
    old = _full_space(x.flatten(1), y.flatten(1), 64, 0) / rms
    assert float(p.detach()) > 3 * old
    assert all(torch.isfinite(q.grad).all() for q in net.parameters())
