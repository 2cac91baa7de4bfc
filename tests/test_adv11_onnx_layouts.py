"""Real-world layouts the command line had not seen (ShuffleNetV2's channel split and shuffle, torch.clamp as an
activation, LaCoOT flags), exported by both torch exporters; each test fails without its fix."""
from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest

import collapse_passes as cp
from collapse_passes.cli import main
from collapse_passes.errors import CollapseError
from conftest import export_quiet


def _shufflenet():
    """torchvision's ShuffleNetV2 unit at tiny width: torch.chunk channel split, concat, channel shuffle (view /
    transpose / view); BN statistics from data."""
    import torch
    import torch.nn as nn

    from models.tv_init import calibrate_bn

    def shuffle(x):
        b, c, h, w = x.size()
        return torch.transpose(x.view(b, 2, c // 2, h, w), 1, 2).contiguous().view(b, -1, h, w)

    def cbr(i, o, k=1, s=1, g=1, relu=True):
        return [nn.Conv2d(i, o, k, s, k // 2, groups=g, bias=False), nn.BatchNorm2d(o)] + ([nn.ReLU()] if relu else [])

    class Unit(nn.Module):
        def __init__(self, inp, oup, stride):
            super().__init__()
            self.stride, bf = stride, oup // 2
            self.branch1 = nn.Sequential(*cbr(inp, inp, 3, stride, inp, relu=False), *cbr(inp, bf)) \
                if stride > 1 else nn.Sequential()
            self.branch2 = nn.Sequential(*cbr(inp if stride > 1 else bf, bf), *cbr(bf, bf, 3, stride, bf, relu=False),
                                         *cbr(bf, bf))

        def forward(self, x):
            if self.stride == 1:
                x1, x2 = x.chunk(2, dim=1)
                return shuffle(torch.cat((x1, self.branch2(x2)), 1))
            return shuffle(torch.cat((self.branch1(x), self.branch2(x)), 1))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Sequential(*cbr(3, 8, 3, 2))
            self.stage2 = nn.Sequential(Unit(8, 16, 2), Unit(16, 16, 1))
            self.conv5 = nn.Sequential(*cbr(16, 32))
            self.fc = nn.Linear(32, 10)

        def forward(self, x):
            return self.fc(self.conv5(self.stage2(self.conv1(x))).mean([2, 3]))

    torch.manual_seed(0)
    return calibrate_bn(Net(), (8, 3, 32, 32))


def test_ratio_prune_sees_through_torchscript_chunk(tmp_path):
    """The TorchScript exporter writes torch.chunk as a Slice ending at Shape -> Gather -> Div; ONNX inference
    stops there, so ratio pruning froze every channel group behind a stride-1 ShuffleNet unit ('unknown
    shapes') and pruned other channels than on the torch.export-based export of the same model (28 vs 36 of
    a ShuffleNetV2). It now analyses the graph with the shape arithmetic folded, as the pipeline does."""
    m = _shufflenet()
    reps = {}
    for dyn in (False, True):
        p = export_quiet(m, tmp_path / f"s{int(dyn)}.onnx", (1, 3, 32, 32), dyn)
        reps[dyn] = cp.collapse(p, prune_ratio=0.3).report["pruning"]["ratio"]
    ts, dy = reps[False], reps[True]
    assert not [f for f in ts["frozen_ops"] if "unknown" in f["reason"]], ts["frozen_ops"]
    assert ts["prunable_groups"] == dy["prunable_groups"]
    assert ts["removed_channels"] == dy["removed_channels"] > 0
    assert ts["error_vs_unpruned"]["max_abs"] == pytest.approx(dy["error_vs_unpruned"]["max_abs"], rel=1e-3)


class _Clamp:
    @staticmethod
    def build():
        import torch
        import torch.nn as nn

        class Net(nn.Module):
            """x.clamp(min=0) (an int bound: torch.export writes Max) as an activation, and F.normalize's
            clamp_min(eps) that is none."""

            def __init__(self):
                super().__init__()
                self.c1, self.c2 = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 6, 1)
                self.fc = nn.Linear(6, 4)

            def forward(self, x):
                x = self.c2(self.c1(x).clamp(min=0))
                return self.fc(nn.functional.normalize(x.mean((2, 3)), dim=1))

        torch.manual_seed(0)
        return Net().eval()


def test_clamp_min_is_one_activation_on_both_exporters(tmp_path):
    """torch.export writes x.clamp(min=0) (an int bound) as Max(x, 0), the TorchScript exporter as Clip: the Max
    was not recognised, so the activation that --list-keys showed on one export (and the torch front end) did not
    exist on the other. F.normalize's eps guard stays no activation on both."""
    import torch

    m = _Clamp.build()
    x = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)
    with torch.no_grad():
        y = m.c1(torch.from_numpy(x))
        want = m.fc(torch.nn.functional.normalize(m.c2(y).mean((2, 3)), dim=1)).numpy()   # clamp removed
    for dyn in (False, True):
        p = export_quiet(m, tmp_path / f"c{int(dyn)}.onnx", (1, 3, 8, 8), dyn)
        keys = [(d["key"], d["kind"]) for d in cp.list_keys(p)]
        assert keys == [("clip()", "clip")], (dyn, keys)
        r = cp.collapse(p, collapse="clip()")
        assert r.report["collapsed"] == 1
        got = ort.InferenceSession(r.model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
            None, {"input": x})[0]
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_max_of_integers_or_tensors_is_no_activation():
    """Only Max(float tensor, float scalar constant) is a clamp, and not an eps guard (as Clip(min=eps)): shape
    arithmetic (int64 Max) and Max of two tensors stay as they are."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    g = helper.make_graph(
        [helper.make_node("Max", ["a0", "zero"], ["a"], name="clamp0"),
         helper.make_node("Max", ["eps", "b0"], ["b"], name="eps_guard"),
         helper.make_node("Max", ["a", "b"], ["m"], name="two_tensors"),
         helper.make_node("Shape", ["m"], ["s"], name="shape"),
         helper.make_node("Max", ["s", "one"], ["s1"], name="int_max"),
         helper.make_node("Reshape", ["m", "s1"], ["y"], name="reshape")],
        "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 4]) for n in ("a0", "b0")],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [numpy_helper.from_array(np.asarray([1], np.int64), "one"), numpy_helper.from_array(np.float32(0), "zero"),
         numpy_helper.from_array(np.float32(1e-12), "eps")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    assert [(d["key"], d["kind"]) for d in cp.list_keys(model)] == [("clamp0", "clip")]


def test_lacoot_without_activation_scores_refuses_threshold_and_remove(tmp_path, capsys):
    """--method lacoot scores residual blocks only: --threshold / --remove then selected no activation and the
    run wrote an unchanged model with exit 0 (a threshold meant for the blocks silently did nothing). Refused
    up front, on every front end, naming --remove-blocks; with activation scores given, still allowed."""
    for kw in (dict(threshold=0.5), dict(remove=2), dict(target_speedup=1.2)):
        with pytest.raises(CollapseError, match="remove-blocks"):
            cp.collapse("unused.onnx", method="lacoot", calib={"input": np.zeros((1, 3, 8, 8), np.float32)}, **kw)
    m = _Clamp.build()
    p = export_quiet(m, tmp_path / "c.onnx", (1, 3, 8, 8), False)
    calib = tmp_path / "calib.npz"
    np.savez(calib, input=np.zeros((4, 3, 8, 8), np.float32))
    out = tmp_path / "o.onnx"
    assert main([p, "-o", str(out), "-q", "--method", "lacoot", "--calib", str(calib), "--threshold", "0.5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--remove-blocks" in err[0]
    assert not out.exists()
    from collapse_passes.core.selection import check_selection
    from collapse_passes.config import CollapseConfig

    check_selection(CollapseConfig(method="lacoot", scores={"clip()": 0.0}, threshold=0.5))   # no error


def test_shufflenet_cli_matrix_on_both_exporters(tmp_path):
    """The ShuffleNet unit through the command line: every activation collapsed, verified, and equal to the
    torch model with its ReLUs removed, on both exporters (keys identical)."""
    import torch

    m = _shufflenet()
    x = np.random.default_rng(1).standard_normal((1, 3, 32, 32)).astype(np.float32)
    relus = [n for n, mod in m.named_modules() if isinstance(mod, torch.nn.ReLU)]
    for n in relus:
        parent, _, last = n.rpartition(".")
        dict(m.named_modules())[parent][int(last)] = torch.nn.Identity()
    with torch.no_grad():
        want = m(torch.from_numpy(x)).numpy()
    m = _shufflenet()
    keys = {}
    for dyn in (False, True):
        p = export_quiet(m, tmp_path / f"s{int(dyn)}.onnx", (1, 3, 32, 32), dyn)
        keys[dyn] = [d["key"] for d in cp.list_keys(p)]
        out, rep = tmp_path / f"o{int(dyn)}.onnx", tmp_path / f"r{int(dyn)}.json"
        assert main([p, "-o", str(out), "--report", str(rep), "-q", "--collapse", ",".join(keys[dyn])]) == 0
        assert json.loads(rep.read_text())["collapsed"] == len(relus)
        got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    assert keys[False] == keys[True] == relus
