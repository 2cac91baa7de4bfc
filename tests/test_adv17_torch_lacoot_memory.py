"""LaCoOT on the torch front end holds a bounded amount of tapped data, whatever the calibration batch size.

Before 2026-11-29 the fx tap ran each calibration batch whole and copied every identity block's input and output
to float64 at once: ResNet-50 at 224, `collapse(method="lacoot", calib=[one batch of 32])` peaked at 4.6 GB and
took 90 s (1.6 GB at a batch of 8). The tap now keeps the model's precision (float32, as onnxruntime's taps) and
runs a batch in pieces whose tapped values fit `fx.tap.TAP_BYTES` (same run: 1.6 GB, 30 s).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import collapse_passes as cp
from collapse_passes.fx import tap


def _model():
    from models import build
    from models.tv_init import calibrate_bn

    torch.manual_seed(0)
    m = build("resnet18_tv", width=8, num_classes=10)
    return calibrate_bn(m, (4, 3, 32, 32))


def _scores(m, x, calib):
    r = cp.collapse(m, example_inputs=(x,), method="lacoot", calib=calib, remove_blocks=0.0)
    return {b["key"]: b["score"] for b in r.report["blocks"]}


def test_taps_are_float32_pieces_under_the_budget(monkeypatch):
    from collapse_passes.fx.api import trace_module
    from collapse_passes.fx.blocks import find_residual_blocks
    from collapse_passes.fx.graph import propagate_shapes

    m, x = _model(), torch.randn(1, 3, 32, 32)
    gm = trace_module(m, (x,))
    propagate_shapes(gm, (x,))
    nodes = [n for b in find_residual_blocks(gm) if b.identity for n in (b.input, b.output)]
    per_sample = sum(int(np.prod(n.meta["tensor_meta"].shape[1:])) * 4 for n in nodes)
    monkeypatch.setattr(tap, "TAP_BYTES", per_sample * 5)
    got = list(tap.tapped_values(gm, nodes, [torch.randn(16, 3, 32, 32)], "lacoot"))
    assert [next(iter(g.values())).shape[0] for g in got] == [5, 5, 5, 1]
    assert all(v.dtype == np.float32 and sum(a.nbytes for a in g.values()) <= per_sample * 5
               for g in got for v in g.values())


def test_pieces_give_the_scores_of_the_whole_batch(monkeypatch):
    m, x = _model(), torch.randn(1, 3, 32, 32)
    calib = [torch.randn(24, 3, 32, 32, generator=torch.Generator().manual_seed(1))]
    whole = _scores(m, x, calib)
    monkeypatch.setattr(tap, "TAP_BYTES", 1 << 16)   # a few samples per piece
    pieces = _scores(m, x, calib)
    assert whole.keys() == pieces.keys() and len(whole) >= 3
    for k in whole:
        if whole[k] is None:
            assert pieces[k] is None
        else:
            assert pieces[k] == pytest.approx(whole[k], rel=1e-5, abs=1e-7)
