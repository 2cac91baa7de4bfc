"""Which merges pay: dynamic programming over each chain of linear ops, by cost.

A chain of n ops can be cut into contiguous segments; each segment becomes one op (a single op
is its own segment, at its original cost). The plan minimises the total cost, so it can never
cost more than leaving the chain alone: the tool never makes a model slower by its own model.
"""
from __future__ import annotations

from typing import Callable, Sequence


def plan_segments(n: int, segment_cost: Callable[[int, int], float | None], max_len: int = 8) -> list[tuple[int, int]]:
    """Cut range(n) into [i, j) segments minimising the sum of segment_cost(i, j).

    segment_cost returns None where a segment cannot be merged (inexact, incompatible); single-op
    segments must always have a cost. Ties go to fewer segments (a shallower graph).
    """
    INF = float("inf")
    best = [(0.0, 0)] + [(INF, 0)] * n      # (cost, number of segments)
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        for i in range(max(0, j - max_len), j):
            c = segment_cost(i, j)
            if c is None or best[i][0] == INF:
                continue
            cand = (best[i][0] + c, best[i][1] + 1)
            cur = best[j]
            tol = 1e-9 * max(1.0, abs(cand[0]))
            if cur[0] == INF or cand[0] < cur[0] - tol or (abs(cand[0] - cur[0]) <= tol and cand[1] < cur[1]):
                best[j] = cand
                cut[j] = i
    if best[n][0] == INF:
        raise ValueError("plan_segments: a single-op segment has no cost")
    segs = []
    j = n
    while j > 0:
        segs.append((cut[j], j))
        j = cut[j]
    return segs[::-1]


def cheapest_point(costs: Sequence[float]) -> int:
    """Index of the cheapest of equivalent places to put one op (ties go to the last, i.e. the place
    the values flow to anyway). Used to place a summed bias map anywhere on a chain it passes intact."""
    if not costs:
        raise ValueError("cheapest_point: no candidate places")
    best = 0
    for i, c in enumerate(costs):
        if c <= costs[best] + 1e-9 * max(1.0, abs(costs[best])):
            best = i
    return best


def rewrite_pays(cost_before: Sequence[float], cost_after: Sequence[float]) -> bool:
    """A rewrite that moves or sums ops pays only if it strictly lowers the model's own total (so a
    fixed-point loop over it terminates and never makes the model slower by its count)."""
    b, a = float(sum(cost_before)), float(sum(cost_after))
    return a < b - 1e-9 * max(1.0, abs(b))
