"""--target-speedup prices candidates region by region (speedup.RegionPricer, onnx/regions.py): the
price must be the whole graph's, only cheaper to get."""
from __future__ import annotations

import random

import onnx
import pytest

from collapse_passes import speedup
from collapse_passes.algebra.cost import CostModel
from collapse_passes.calib import model_inputs
from collapse_passes.onnx.analysis import model_stats
from collapse_passes.onnx.driver import run_passes
from collapse_passes.onnx.graph import to_graph
from collapse_passes.onnx.patterns import find_activations


def _pricers(model, forced_count=0):
    acts = find_activations(to_graph(model))
    cm = CostModel()
    shapes = {k: d for k, d, _ in model_inputs(model)}
    forced = acts[:forced_count]
    calls = {"full": 0}

    def full(items):
        calls["full"] += 1
        m, ctx, _ = run_passes(model, {a.name for a in forced + list(items)}, cost_model=cm, input_shapes=shapes)
        return speedup.stats_cost(model_stats(m, graph=ctx.graph).as_dict(), cm)

    region = speedup.RegionPricer(model, acts, forced, full,
                                  lambda sub, names, sh: run_passes(sub, names, cost_model=cm, input_shapes=sh), cm)
    return acts[forced_count:], full, region, calls


@pytest.mark.parametrize("name,dynamo,forced", [("mobilenet_v2", False, 0), ("resnet18", True, 2), ("swin_t", False, 1)])
def test_region_prices_equal_whole_graph_prices(exported, name, dynamo, forced):
    model = onnx.load(exported(name, dynamo))
    acts, full, region, calls = _pricers(model, forced)
    rng = random.Random(0)
    for size in (1, 2, 3, max(1, len(acts) // 2)):
        items = rng.sample(acts, min(size, len(acts)))
        assert region(items) == pytest.approx(full(items), rel=1e-9), [a.name for a in items]
    # the region prices ran without the whole graph (one base run, then regions only)
    calls["full"] = 0
    region(rng.sample(acts, min(2, len(acts))))
    assert calls["full"] == 0


def test_a_region_that_cannot_be_cut_out_is_priced_on_the_whole_graph(exported, monkeypatch):
    from collapse_passes.onnx import regions

    model = onnx.load(exported("mobilenet_v2", False))
    monkeypatch.setattr(regions, "region_model", lambda *a: (None, []))   # as for unnamed nodes
    acts, full, region, calls = _pricers(model)
    region([])
    calls["full"] = 0
    assert region(acts[:2]) == pytest.approx(full(acts[:2]), rel=1e-9)
    assert calls["full"] == 2   # the fallback and the reference
