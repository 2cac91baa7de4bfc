"""The merge planner: the DP optimum equals brute force, never costs more than leaving the chain alone."""
import itertools

import numpy as np
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


def test_shapes_inference_loses_are_priced_from_a_run_not_as_unknown():
    """A Reshape sized at run time (Shape -> Slice -> ReduceProd -> Concat, as TorchScript exports window
    reshapes) hides the rows of a bottleneck MLP 64 -> 16 -> 64 from shape inference. Priced on the unknown
    dim as one row the merge into 64x64 looked cheaper; with the rows read from one onnxruntime run it is
    2x the MACs and is refused, as on the same model with a constant reshape."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)

    def model(lost: bool):
        w = [numpy_helper.from_array((rng.standard_normal(s) / 8).astype(np.float32), n)
             for n, s in (("w1", (64, 16)), ("w2", (16, 64)))]
        ints = [numpy_helper.from_array(np.array(v, np.int64), n)
                for n, v in (("z", [0]), ("two", [2]), ("c64", [64]), ("shc", [256, 64]))]
        pre = [helper.make_node("Shape", ["x"], ["s"], name="shape"),
               helper.make_node("Slice", ["s", "z", "two"], ["s01"], name="slice"),
               helper.make_node("ReduceProd", ["s01"], ["p"], name="prod", keepdims=1),
               helper.make_node("Concat", ["p", "c64"], ["sh"], name="cat", axis=0)] if lost else []
        g = helper.make_graph(pre + [
            helper.make_node("Reshape", ["x", "sh" if lost else "shc"], ["x2"], name="reshape"),
            helper.make_node("MatMul", ["x2", "w1"], ["a"], name="fc1"),
            helper.make_node("Relu", ["a"], ["r"], name="relu1"),
            helper.make_node("MatMul", ["r", "w2"], ["y"], name="fc2")], "bottle",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 64, 64])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [256, 64])], w + ints)
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])

    for lost in (False, True):
        r = cp.collapse(model(lost), scores={"relu1": 0.0}, threshold=0.5)
        assert r.report["collapsed"] == 1 and r.report["verification"]["against_requested"]["passed"]
        assert r.report["merges"] == [], lost
        assert r.report["after"]["macs"] == r.report["before"]["macs"] == 256 * 64 * 16 * 2
