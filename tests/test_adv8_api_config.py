"""Library settings: a config that is not a CollapseConfig is one clear error even with keyword arguments
beside it (it was a TypeError from setattr), the caller's config object is never changed by the keyword
arguments of one call, and --prune-calib-dead needs --calib and channel removal (one line, exit 2)."""
from __future__ import annotations

import os

import pytest

import collapse_passes as cp
from collapse_passes.cli import main
from collapse_passes.config import CollapseConfig
from collapse_passes.errors import CollapseError

EXAMPLE = os.path.join(os.path.dirname(os.path.dirname(__file__)), "models", "examples",
                       "mobilenet_v2_digits_prelu.onnx")


def test_a_dict_config_with_keyword_arguments_is_named():
    with pytest.raises(CollapseError, match="CollapseConfig, got dict"):
        cp.collapse(EXAMPLE, config={"check": 3}, collapse=["x"])


def test_keyword_arguments_do_not_change_the_callers_config():
    cfg = CollapseConfig(check=2)
    res = cp.collapse(EXAMPLE, config=cfg, check=1, seed=5, method="prelu", threshold=0.1)
    assert res.passed and "1 random input(s), seed 5" in res.report["verification"]["inputs"]
    assert (cfg.check, cfg.seed) == (2, 0)


@pytest.mark.parametrize("flags,needle", [(["--prune-calib-dead"], "--calib"),
                                          (["--prune-calib-dead", "--no-prune", "--calib", "c.npz"], "--no-prune")])
def test_prune_calib_dead_needs_calibration_data_and_channel_removal(tmp_path, monkeypatch, capsys, flags, needle):
    monkeypatch.chdir(tmp_path)
    assert main([EXAMPLE, "-o", "o.onnx", *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and needle in err, err
    assert os.listdir(tmp_path) == []


def test_prune_calib_dead_on_a_torch_model_names_the_torch_way():
    torch = pytest.importorskip("torch")
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU()).eval()
    x = torch.randn(1, 3, 8, 8)
    with pytest.raises(CollapseError, match="prune_module"):
        cp.collapse(m, example_inputs=(x,), method="tlc", calib=[x], prune_calib_dead=True)
