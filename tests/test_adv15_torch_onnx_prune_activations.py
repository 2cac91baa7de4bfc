"""Round-15 (H9): the same activations in the ONNX channel graph (pruning/onnx_adapter.py), as the torch
exporters write them: torch.export writes x.clamp(min=0) as Max(x, 0), which froze every group it touched; Celu
froze too; Selu (and Celu) stopped a constant channel, so exact removal kept a zero filter's channel."""
from __future__ import annotations

import os
import sys
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import collapse_passes as cp
from models.export import export_onnx

sys.path.insert(0, os.path.dirname(__file__))
from test_adv15_torch_prune_functional import _net  # noqa: E402

ACTS = ["torch.clamp min=0", "F.selu", "nn.CELU", "x.clamp(0, 6)"]


def _export(act, tmp_path, dynamo, dead_bias=None):
    m = _net(act, dead_bias=dead_bias)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = export_onnx(m, tmp_path / f"m_{dynamo}.onnx", (2, 3, 8, 8), dynamo=dynamo)
    return m, p


def _run(model, x):
    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(None, {s.get_inputs()[0].name: x.numpy()})[0]


@pytest.mark.parametrize("dynamo", [False, True])
@pytest.mark.parametrize("act", ACTS)
def test_ratio_prune_is_not_frozen(act, dynamo, tmp_path):
    _, p = _export(act, tmp_path, dynamo)
    res = cp.collapse(p, prune_ratio=0.25, force=True)
    ratio = res.report["pruning"]["ratio"]
    assert ratio["removed_channels"] > 0, ratio.get("frozen_ops")


@pytest.mark.parametrize("dynamo", [False, True])
@pytest.mark.parametrize("act", ACTS)
def test_constant_channel_is_removed_exactly(act, dynamo, tmp_path):
    m, p = _export(act, tmp_path, dynamo, dead_bias=-0.7)
    res = cp.collapse(p)
    assert res.report["pruning"].get("removed_channels", 0) >= 1
    conv = [i for i in res.model.graph.initializer if len(i.dims) == 4 and i.dims[1] == 3]
    assert conv and conv[0].dims[0] == 7   # the first conv lost the zero filter
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        np.testing.assert_allclose(_run(res.model, x), m(x).numpy(), rtol=1e-4, atol=1e-5)
