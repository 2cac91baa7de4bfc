"""--prune-ratio R with --remove-blocks T: the ratio prune ran on the input model, before the blocks went, so
channels inside the removed blocks' branches were candidates and counted in the ratio's denominator although
they disappear anyway: the model written was pruned less than asked where it matters. They are now left out
(pruning/onnx_prune.ratio_prune remove_blocks), and the report says how many (ratio.removed_block_channels).
The torch front end prunes after RemoveResidualBlocks, so its branches are already gone."""
from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
import torch

import collapse_passes as cp
from collapse_passes.onnx.passes.fold_static_shapes import folded_graph
from collapse_passes.pruning.onnx_adapter import build_channel_graph
from conftest import export_quiet
from models import build

GONE = {"layer1.0": 0.0, "layer3.1": 0.1}          # removed (score <= 0.5)
KEPT = {"layer1.1": 1.0, "layer2.1": 2.0, "layer4.1": 3.0}


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    d = tmp_path_factory.mktemp("prb")
    torch.manual_seed(0)
    m = build("resnet18_tv", num_classes=10, width=8).eval()
    return export_quiet(m, d / "r.onnx", (1, 3, 32, 32), dynamo=False)


def _prunable_channels(path) -> int:
    cg = build_channel_graph(folded_graph(onnx.load(path)))
    return sum(len(cg.prunable_units(g)) * cg.unit_width(g) for g in cg.groups())


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_ratio_prune_leaves_out_channels_of_removed_blocks(net, scope):
    res = cp.collapse(net, scores={"kind": "block", "scores": {**GONE, **KEPT}}, remove_blocks=0.5,
                      prune_ratio=0.3, prune_scope=scope, check=2)
    assert res.passed
    assert sorted(b["key"] for b in res.report["blocks"] if b["removed"]) == sorted(GONE)
    ratio = res.report["pruning"]["ratio"]
    # the only groups inside the two removed basic blocks: their conv1 outputs (width 8: 8 and 32 channels)
    assert ratio["removed_block_channels"] == 8 + 32
    assert not [r for r in ratio["groups"] if any(f"/{k.split('.')[0]}/{k}/" in r["group"] for k in GONE)]
    if scope == "global":   # R of the channels that stay, not of all of them
        assert ratio["removed_channels"] == math.floor(0.3 * (_prunable_channels(net) - 40))
    assert any("40 channel(s) inside the 2 removed block(s) left out" in w for w in res.report["warnings"])


def test_without_removed_blocks_nothing_is_left_out(net):
    res = cp.collapse(net, prune_ratio=0.3, check=2)
    ratio = res.report["pruning"]["ratio"]
    assert "removed_block_channels" not in ratio
    assert ratio["removed_channels"] == math.floor(0.3 * _prunable_channels(net))


def test_onnx_and_torch_front_ends_prune_the_same_count(net):
    """The torch front end removes the blocks before its ratio prune: both now prune R of the channels that stay."""
    torch.manual_seed(0)
    m = build("resnet18_tv", num_classes=10, width=8).eval()
    s = {"kind": "block", "scores": {**GONE, **KEPT}}
    t = cp.collapse(m, scores=s, remove_blocks=0.5, prune_ratio=0.3, example_inputs=(torch.randn(1, 3, 32, 32),),
                    check=2)
    o = cp.collapse(net, scores=s, remove_blocks=0.5, prune_ratio=0.3, check=2)
    tr, orr = t.report["pruning"]["ratio"], o.report["pruning"]["ratio"]
    assert not [r for r in tr["groups"] if r["group"].startswith(("layer1_0_", "layer3_1_"))]
    assert orr["removed_channels"] == tr["removed_channels"]
