"""Adversarial round H6 on the TVM hand-off and --prune-calib-dead (2026-11-29).

prune_module(calib=...): a module with no ReLU-like activation (LeakyReLU only) died with "calib holds no
batches" although the batches were there (the batch count was read off the activation taps); a run that
removes nothing now warns, as the ONNX run does. The functional forms F.hardswish and F.hardtanh(x, 0., hi)
(a clip from 0) were never read as activations whose off side is 0, so their dead channels stayed, while
the ONNX export of the same module had them removed."""
from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from collapse_passes.pruning.fx_adapter import prune_module


class _Fn(nn.Module):
    """1x1 conv -> a functional activation -> 1x1 conv; channels 0-2 far below the kink on any N(0, 1) input."""

    def __init__(self, act):
        super().__init__()
        self.act = act
        self.c1, self.c2 = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 4, 1)
        with torch.no_grad():
            self.c1.bias[:3] = -20.0
            self.c1.bias[3:] = 5.0

    def forward(self, x):
        return self.c2(self.act(self.c1(x)))


def _calib():
    torch.manual_seed(1)
    return [torch.randn(4, 3, 8, 8) for _ in range(2)]


def test_prune_module_calib_on_a_model_without_relu_like_activations_warns_instead_of_failing():
    torch.manual_seed(0)
    m = _Fn(F.leaky_relu).eval()   # LeakyReLU is negative, not 0, below its kink: never a dead channel
    with pytest.warns(UserWarning, match="calib removed no channel"):
        pruned, report = prune_module(m, torch.randn(1, 3, 8, 8), calib=_calib())
    assert report["removed_channels"] == 0
    assert any("calib removed no channel" in n for n in report["notes"])


def test_prune_module_calib_with_no_batches_is_still_refused():
    from collapse_passes.errors import CollapseError

    with pytest.raises(CollapseError, match="calib holds no batches"):
        prune_module(_Fn(F.relu).eval(), torch.randn(1, 3, 8, 8), calib=[])


@pytest.mark.parametrize("act", [F.hardswish, lambda t: F.hardtanh(t, 0.0, 2.0), F.relu6],
                         ids=["hardswish", "hardtanh_from_0", "relu6"])
def test_prune_module_removes_dead_channels_of_functional_activations(act):
    torch.manual_seed(0)
    m = _Fn(act).eval()
    calib = _calib()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # the measured error of the removal is said in a warning (round 15)
        warnings.filterwarnings("error", message=".*removed no channel")   # channels were removed: not this one
        pruned, report = prune_module(m, torch.randn(1, 3, 8, 8), calib=calib)
    assert pruned.c1.out_channels == 5
    for b in calib:   # exact on the calibration data
        torch.testing.assert_close(pruned(b), m(b), rtol=1e-5, atol=1e-6)


def test_prune_module_keeps_hardtanh_channels_not_clipped_at_0():
    torch.manual_seed(0)
    m = _Fn(F.hardtanh).eval()   # clip to [-1, 1]: those channels sit at -1, not 0
    with pytest.warns(UserWarning, match="calib removed no channel"):
        pruned, _ = prune_module(m, torch.randn(1, 3, 8, 8), calib=_calib())
    assert pruned.c1.out_channels == 8


def test_tuned_build_skips_a_record_whose_trace_does_not_replay_on_another_epilogue(tmp_path):
    """A conv tuned with a ReLU epilogue is, by anchor block, the record of the same conv with a HardSwish
    epilogue too (MobileNetV3, --tune-trials 8: its input model's tuned build died with "TVM build for llvm
    failed: Check failed: old_outputs.size() == new_outputs.size() (1 vs. 2)"). That function now keeps
    its default schedule and the build goes on."""
    pytest.importorskip("tvm")
    import numpy as np

    from conftest import export_quiet
    from tvm_integration import compile as tc
    from tvm_integration.targets import resolve_target
    from tvm_integration.tuning import open_database, tune_with_report

    class _Conv(nn.Module):
        def __init__(self, act):
            super().__init__()
            self.c, self.act = nn.Conv2d(8, 16, 3, padding=1), act

        def forward(self, x):
            return self.act(self.c(x))

    target, info = resolve_target("cpu")
    paths = {}
    for name, act in (("relu", nn.ReLU()), ("hs", nn.Hardswish())):
        torch.manual_seed(0)
        paths[name] = export_quiet(_Conv(act).eval(), tmp_path / f"{name}.onnx", (1, 8, 8, 8), False)
    work = str(tmp_path / "tune")
    # a population of 8 (the default is 64 here): a round's search in about a second, and the record still fails
    # to replay on the HardSwish conv (without _replayable_only the build dies)
    tune_with_report(tc.import_onnx(paths["relu"]), target, info, work_dir=work, trials=4, progress=False,
                     shared_database=False, seed=0, population_size=8)
    ex = tc.build(tc.import_onnx(paths["hs"]), target, database=open_database(work))
    x = {"input": np.random.default_rng(0).standard_normal((1, 8, 8, 8)).astype(np.float32)}
    np.testing.assert_allclose(tc.run(ex, x)[0], tc.run_ort(paths["hs"], x)[0], rtol=1e-4, atol=1e-5)
    assert ex.unreplayable or ex.tuned_functions


@pytest.mark.parametrize("bad", ["0", "-3"])
def test_standalone_tvm_entry_refuses_a_tvm_repeat_below_1(tmp_path, bad, capsys):
    """python -m tvm_integration took --tvm-repeat 0 as the default (20, lowered for slow builds) and -3 as 1,
    silently; the core CLI refuses both."""
    pytest.importorskip("tvm")
    from conftest import export_quiet
    from tvm_integration.__main__ import main

    path = export_quiet(_Fn(F.relu).eval(), tmp_path / "m.onnx", (1, 3, 8, 8), False)
    assert main([path, "--target", "cpu", "--tvm-repeat", bad]) == 2
    assert f"--tvm-repeat must be in [1, 10000], got {bad}" in capsys.readouterr().err   # the core CLI's words


def test_dynamic_size_model_tvm_cannot_compile_at_the_timed_sizes_either_names_the_way_out(tmp_path, capsys,
                                                                                             monkeypatch):
    """A TorchScript Swin with dynamic H/W, timed at 1x1 (dynamic dims run as 1): TVM fails on it with its
    dynamic sizes and at 1x1; the error was the importer's alone, with no word of --input-shape. Since
    2026-11-29 python -m tvm_integration draws its input at the core check's sizes (65 x 65 here), where TVM
    compiles this model: the 1x1 input is drawn here as it was, to keep the error path tested."""
    pytest.importorskip("tvm")
    from collapse_passes.core.runtime import random_inputs
    from models import build
    from models.export import export_onnx
    from tvm_integration import __main__ as tvm_main
    from tvm_integration.__main__ import main

    monkeypatch.setattr(tvm_main, "random_inputs", lambda model, seed=0: random_inputs(model, 1, seed)[0])

    torch.manual_seed(0)
    m = build("swin_t_tv", embed_dim=8, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1), num_classes=4)
    path = str(tmp_path / "swin_hw.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_onnx(m, path, (1, 3, 64, 64), dynamic_axes={"input": {0: "N", 2: "H", 3: "W"}, "logits": {0: "N"}})
    assert main([path, "--target", "cpu", "--tvm-repeat", "1"]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
    assert len(err) == 1 and "input 1x3x1x1" in err[0] and "--input-shape" in err[0]
