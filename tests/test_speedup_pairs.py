"""--target-speedup's greedy choice takes activations that pay only together (a MobileNetV2 block merges
into one conv when both of its ReLU6 go; neither alone enables a merge)."""
from __future__ import annotations

from collapse_passes.speedup import choose_for_speedup


def _cost(items):
    """a and b pay only together (-30), c alone (-10), d never."""
    s = set(items)
    return 100.0 - (30.0 if {"a", "b"} <= s else 0.0) - (10.0 if "c" in s else 0.0) + (5.0 if "d" in s else 0.0)


def test_a_pair_that_pays_only_together_is_taken():
    taken, hist = choose_for_speedup(["a", "b", "d", "c"], _cost, target=10.0, base_cost=100.0)
    assert sorted(taken) == ["a", "b", "c"]
    rows = {h["item"]: h for h in hist}
    assert rows["a"]["taken"] and rows["b"]["taken"] and rows["b"]["with"] == ["a"] and not rows["d"]["taken"]


def test_stops_at_the_target_and_one_at_a_time_when_items_pay_alone():
    taken, _ = choose_for_speedup(["c", "a", "b"], _cost, target=1.1, base_cost=100.0)
    assert taken == ["c"]   # 100/90 >= 1.1: a and b are not needed
    taken, _ = choose_for_speedup(["a", "d", "b"], _cost, target=10.0, base_cost=100.0, window=1)
    assert taken == []      # with a window of one, d between them hides the pair
    taken, _ = choose_for_speedup(["a", "d", "b"], _cost, target=10.0, base_cost=100.0, window=2)
    assert sorted(taken) == ["a", "b"]


def test_target_speedup_run_does_not_warn_that_nothing_was_collapsed(exported):
    """--target-speedup chooses from the scores: the 'scores without --threshold' warning was said
    beside a run that collapsed several activations."""
    import collapse_passes as cp

    path = exported("mobilenet_v2")
    keys = [r["key"] for r in cp.list_keys(path)]
    res = cp.collapse(path, scores={k: 0.0 for k in keys}, target_speedup=1.05)
    assert res.report["target_speedup"]["tried"]
    assert sum(r["collapsed"] for r in res.report["activations"]) >= 2
    assert not any("nothing collapsed" in w for w in res.report["warnings"]), res.report["warnings"]
