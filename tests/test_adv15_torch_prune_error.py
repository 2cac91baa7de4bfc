"""Round-15 (H9): prune_module measures and reports the error of an approximate prune, as the ONNX path does
(pruning/api_hook: report["ratio"]["error_vs_unpruned"], report["calib_dead_error"], each said in a warning).
It returned a ratio-pruned model 0.9 off (relative, MobileNetV3-large at 224) or a calib-pruned one without a
number or a word; and it silently dropped forward hooks registered on the module itself."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from collapse_passes.errors import CollapseError
from collapse_passes.pruning.fx_adapter import prune_module


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.b1, self.r1 = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU()
        self.c2, self.r2 = nn.Conv2d(16, 16, 3, padding=1), nn.ReLU()
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        x = self.r2(self.c2(self.r1(self.b1(self.c1(x)))))
        return self.fc(x.mean((2, 3)))


def _net():
    torch.manual_seed(0)
    m = Net().eval()
    with torch.no_grad():
        m.c1.bias[4] = -50.0   # channel 4 is off on any input of this scale: a calib-dead channel
        m.c2.bias[:3] = -0.5   # channels 0-2 are off on some inputs only
    return m


def _own_error(a, b, x_list):
    with torch.no_grad():
        return max(float((a(x) - b(x)).abs().max()) for x in x_list)


def _feeds(x, n, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(x.shape, generator=g) for _ in range(n)]   # fx.api._feeds after the example input


def test_ratio_prune_reports_its_error_on_random_inputs():
    m, x = _net(), torch.randn(1, 3, 8, 8)
    with pytest.warns(UserWarning, match=r"prune ratio 0.5: approximate, max abs error"):
        pm, rep = prune_module(m, x, ratio=0.5, check=2, seed=3)
    err = rep["ratio"]["error_vs_unpruned"]
    assert err["inputs"] == "2 random input(s)"
    assert err["max_abs"] == pytest.approx(_own_error(pm, m, _feeds(x, 2, 3)), rel=1e-5)
    assert err["max_abs"] > 0 and np.isfinite(err["max_rel"])


def test_calib_removal_reports_its_error_on_random_inputs():
    m, x = _net(), torch.randn(1, 3, 8, 8)
    calib = [torch.randn(2, 3, 8, 8) * 0.1]   # small inputs: channels 0-2 of c2 are off on them, not in general
    with pytest.warns(UserWarning, match=r"calib: channels removed .* max abs"):
        pm, rep = prune_module(m, x, calib=calib, check=3)
    assert rep["data_dependent"] and rep["removed_channels"] >= 2
    err = rep["calib_dead_error"]
    assert err["max_abs"] == pytest.approx(_own_error(pm, m, _feeds(x, 3, 0)), rel=1e-5)
    assert err["max_abs"] > 0   # channels 0-2 are on for some random inputs


def test_ratio_and_calib_errors_are_measured_apart():
    """With both: the ratio's error against the unpruned module, the calib removal's against the ratio-pruned one."""
    m, x = _net(), torch.randn(1, 3, 8, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm, rep = prune_module(m, x, ratio=0.25, calib=[torch.randn(2, 3, 8, 8) * 0.1], check=2)
    assert "error_vs_unpruned" in rep["ratio"] and "calib_dead_error" in rep
    total = _own_error(pm, m, _feeds(x, 2, 0))
    assert rep["ratio"]["error_vs_unpruned"]["max_abs"] <= total + rep["calib_dead_error"]["max_abs"] + 1e-6


def test_exact_removal_measures_nothing_and_check_zero_turns_it_off():
    m, x = _net(), torch.randn(1, 3, 8, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # exact removal is exact: no warning
        _, rep = prune_module(m, x)
    assert "calib_dead_error" not in rep
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, rep = prune_module(m, x, ratio=0.5, check=0)
    assert "error_vs_unpruned" not in rep["ratio"]


@pytest.mark.parametrize("bad", [-1, 1.5, "3", True])
def test_bad_check_is_one_line(bad):
    with pytest.raises(CollapseError, match="check must be an integer"):
        prune_module(_net(), torch.randn(1, 3, 8, 8), ratio=0.5, check=bad)


def test_hooks_on_the_module_itself_are_refused_not_dropped():
    """symbolic_trace traces forward() alone: a hook on the root module vanished from the pruned result."""
    m, x = _net(), torch.randn(1, 3, 8, 8)
    m.register_forward_hook(lambda mod, i, o: o * 2)
    with pytest.raises(CollapseError, match="forward hooks of its own") as e:
        prune_module(m, x)
    assert "\n" not in str(e.value)
