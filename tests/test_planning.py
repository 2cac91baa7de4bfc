"""The merge planner: the DP optimum equals brute force, never costs more than leaving the chain alone."""
import itertools

import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import helper

import collapse_passes as cp
from collapse_passes.planning import plan_segments
from conftest import make_model, rnd, vinfo


def brute_force(n, cost, max_len):
    best = None
    for cuts in itertools.product([0, 1], repeat=n - 1):
        bounds = [0] + [i + 1 for i, c in enumerate(cuts) if c] + [n]
        segs = list(zip(bounds, bounds[1:]))
        if any(j - i > max_len for i, j in segs):
            continue
        costs = [cost(i, j) for i, j in segs]
        if any(c is None for c in costs):
            continue
        total = sum(costs)
        if best is None or total < best - 1e-9:
            best = total
    return best


@settings(max_examples=300, deadline=None)
@given(n=st.integers(1, 7), max_len=st.integers(1, 4), data=st.data())
def test_dp_matches_brute_force(n, max_len, data):
    table = {}
    for i in range(n):
        for j in range(i + 1, n + 1):
            if j - i == 1:
                table[(i, j)] = data.draw(st.floats(0.1, 10))
            else:
                table[(i, j)] = data.draw(st.one_of(st.none(), st.floats(0.1, 30)))
    cost = table.get
    segs = plan_segments(n, cost, max_len)
    assert segs[0][0] == 0 and segs[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(segs, segs[1:]))
    total = sum(cost(i, j) for i, j in segs)
    assert total == pytest.approx(brute_force(n, cost, max_len))
    assert total <= sum(cost(i, i + 1) for i in range(n)) + 1e-9


def test_ties_prefer_fewer_ops():
    assert plan_segments(2, {(0, 1): 1.0, (1, 2): 1.0, (0, 2): 2.0}.get) == [(0, 2)]


def test_measured_cost_model_runs_and_stays_exact():
    c = 8
    inits = {"w1": rnd(c, c, 1, 1, seed=1), "w2": rnd(c, 1, 3, 3, seed=2), "w3": rnd(c, c, 1, 1, seed=3)}
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], kernel_shape=[1, 1]), helper.make_node("Relu", ["a"], ["ar"], name="r1"),
             helper.make_node("Conv", ["ar", "w2"], ["b"], kernel_shape=[3, 3], pads=[1] * 4, group=c),
             helper.make_node("Relu", ["b"], ["br"], name="r2"),
             helper.make_node("Conv", ["br", "w3"], ["y"], kernel_shape=[1, 1])]
    m = make_model(nodes, [vinfo("x", [1, c, 8, 8])], [vinfo("y", [1, c, 8, 8])], inits)
    r = cp.collapse(m, collapse=["r1", "r2"], cost="measured")
    assert r.report["passed"]
    with pytest.raises(cp.CollapseError, match="unknown cost model"):
        cp.collapse(m, collapse=["r1"], cost="flops")
