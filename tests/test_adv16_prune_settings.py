"""Ratio-prune settings without a ratio are refused in the library too (H16, 2026-11-29).

The CLI refused `--round-to 8` / `--prune-scope layer` / `--prune-importance l2` / `--prune-max-error E` without
`--prune-ratio` (one line, exit 2), but `collapse(model, round_to=8)` (ONNX or torch) and
`prune_module(m, x, round_to=8)` ran, pruned nothing to a ratio and said nothing. config.check_settings (every
front end) and prune_module now refuse them with one line.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

import collapse_passes as cp
from collapse_passes.errors import CollapseError
from collapse_passes.pruning.fx_adapter import prune_module
from conftest import export_quiet


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.b1, self.c2 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.c2(torch.relu(self.b1(self.c1(x))))


SETTINGS = [({"round_to": 8}, "round_to"), ({"prune_scope": "layer"}, "prune_scope"),
            ({"prune_importance": "l2"}, "prune_importance"), ({"prune_max_error": 100.0}, "prune_max_error")]


@pytest.mark.parametrize("kw,named", SETTINGS)
def test_library_refuses_ratio_settings_without_a_ratio(tmp_path, kw, named):
    torch.manual_seed(0)
    m = Net().eval()
    x = torch.randn(1, 3, 8, 8)
    with pytest.raises(CollapseError, match=rf"{named}.*effect only with --prune-ratio \(prune_ratio\)"):
        cp.collapse(m, example_inputs=(x,), **kw)
    path = export_quiet(m, tmp_path / "m.onnx", (1, 3, 8, 8), False)
    with pytest.raises(CollapseError, match=rf"{named}.*effect only with --prune-ratio"):
        cp.collapse(path, **kw)
    # with a ratio they run
    assert cp.collapse(path, prune_ratio=0.25, check=1, **kw).report["pruning"]["ratio"]


@pytest.mark.parametrize("kw", [{"round_to": 4}, {"scope": "layer"}, {"importance": "l2"},
                                {"channel_scores": {"c1": [1.0] * 8}}])
def test_prune_module_refuses_ratio_settings_without_a_ratio(kw):
    torch.manual_seed(0)
    m = Net().eval()
    with pytest.raises(CollapseError, match="effect only with ratio="):
        prune_module(m, torch.randn(1, 3, 8, 8), **kw)
