"""Per-channel pruning scores keyed alike on ONNX (both exporters) and torch (adversarial round 25, H77).

`collapse(nn.Module, prune_importance={module path: [...]})` took torch module paths; the ONNX path took node or
tensor names only, which differ between the exporters (/conv1/Conv, node_Conv_151), so one scores file could not be
used on a model and its exports. The library's dict was not checked at all on ONNX (a typo or a NaN left channels
unranked without a word, as the .json file's check prevents), a module called at several places was ranked by its
last call on torch and refused as unknown on ONNX, prune_module printed ShapeProp's traceback before its one line, and
the torch report's ratio prune lacked keys the ONNX one has (importance, group counts, params_saved, macs_saved).
"""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

import collapse_passes as cp
from collapse_passes.errors import CollapseError
from collapse_passes.pruning.fx_adapter import prune_module
from models.export import export_onnx


class _Body(nn.Module):
    """conv-BN-ReLU twice with one ReLU module called twice, as torchvision's BasicBlock.relu. In a submodule: a root
    module's path (relu) is also a tensor name on the torch.export-based exporter and an fx node name on torch, and
    those name its first call."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x))))))


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body, self.fc = _Body(), nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(self.body(x).mean((2, 3)))


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    m = _Net()
    for bn in (m.body.bn1, m.body.bn2):
        bn.running_mean.uniform_(-0.2, 0.2)
        bn.running_var.uniform_(0.5, 1.5)
    return m.eval()


@pytest.fixture(scope="module")
def exports(net, tmp_path_factory):
    d = tmp_path_factory.mktemp("keys")
    return {ex: export_onnx(net, d / f"{ex}.onnx", (1, 3, 8, 8), dynamo=ex == "dynamo") for ex in ("ts", "dynamo")}


# body.conv1 ranks its channels 7, 6, ..., 0 (the l1 norms would rank them otherwise), conv2 0, 1, ..., 7
SCORES = {"body.conv1": list(np.arange(8.0)[::-1]), "body.conv2": list(np.arange(8.0))}


def _run(model, x):
    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(None, {s.get_inputs()[0].name: x.numpy()})[0]


def test_module_path_scores_prune_the_same_channels_on_both_exporters_and_torch(net, exports):
    x = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    ref = cp.collapse(net, example_inputs=(x,), prune_ratio=0.25, prune_importance=SCORES)
    with torch.no_grad():
        want = ref.model(x).numpy()
    rows = sorted((g["channels_before"], g["channels_after"]) for g in ref.report["pruning"]["ratio"]["groups"])
    assert rows == [(8, 6), (8, 6)]
    for ex, path in exports.items():
        r = cp.collapse(path, prune_ratio=0.25, prune_importance=SCORES)
        got = sorted((g["channels_before"], g["channels_after"]) for g in r.report["pruning"]["ratio"]["groups"])
        assert got == rows, ex
        # the same channels went: the pruned models compute the same function
        np.testing.assert_allclose(_run(r.model, x), want, rtol=1e-4, atol=1e-5, err_msg=ex)


def test_library_dict_with_an_unknown_name_is_one_line(exports):
    bad = {"/body/conv1/Conv": list(np.arange(8.0)), "body.conv_2": list(np.arange(8.0))}   # a typo of conv2
    with pytest.raises(CollapseError, match="'body.conv_2' names no tensor or node"):
        cp.collapse(exports["ts"], prune_ratio=0.25, prune_importance=bad)


def test_library_dict_with_nan_is_one_line(exports):
    with pytest.raises(CollapseError, match="finite numbers"):
        cp.collapse(exports["ts"], prune_ratio=0.25, prune_importance={"/body/conv1/Conv": [float("nan")] * 8})


def test_a_module_called_twice_is_refused_on_every_front_end(net, exports):
    shared = {"body.relu": list(np.arange(8.0))}
    for ex, path in exports.items():
        with pytest.raises(CollapseError, match="'body.relu' is called at 2 places"):
            cp.collapse(path, prune_ratio=0.25, prune_importance=shared)
    with pytest.raises(CollapseError, match="'body.relu' is called at 2 places"):   # ranked its last call only before
        cp.collapse(net, example_inputs=(torch.randn(1, 3, 8, 8),), prune_ratio=0.25, prune_importance=shared)


def test_prune_module_on_wrong_inputs_prints_no_traceback(net, capfd):
    with pytest.raises(CollapseError, match="does not run on example_inputs"):
        prune_module(net, torch.randn(1, 5, 8, 8))
    assert "Traceback" not in capfd.readouterr().err


def test_the_ratio_report_has_the_onnx_keys_on_torch(net, exports):
    """report["pruning"]["ratio"] of collapse(nn.Module) lacked importance, the group counts and what the ratio prune
    saved (params_saved, macs_saved), which the ONNX path reports."""
    x = torch.randn(1, 3, 8, 8)
    t = cp.collapse(net, example_inputs=(x,), prune_ratio=0.25)
    for ex, path in exports.items():
        o = cp.collapse(path, prune_ratio=0.25)
        a, b = t.report["pruning"]["ratio"], o.report["pruning"]["ratio"]
        assert set(b) <= set(a), (ex, set(b) - set(a))
        for k in ("importance", "graph_groups", "frozen_groups", "prunable_groups", "removed_channels", "macs_saved"):
            assert a[k] == b[k], (ex, k, a[k], b[k])
        assert a["macs_saved"] > 0 and a["params_saved"] > 0


def test_a_torch_ratio_prune_that_removes_nothing_says_why_as_onnx_does(net, exports):
    """0.05 of the 8 ranked channels is none: torch said "0 op(s) froze channel groups ..., round_to keeps multiples
    of it" (no op froze anything, round_to was 1); it now says what the ONNX path says."""
    imp = list(np.arange(8.0))
    t = cp.collapse(net, example_inputs=(torch.randn(1, 3, 8, 8),), prune_ratio=0.05,
                    prune_importance={"body.conv1": imp})
    o = cp.collapse(exports["ts"], prune_ratio=0.05, prune_importance={"/body/conv1/Conv": imp})
    (tw,) = [w for w in t.report["warnings"] if "removed no channel" in w]
    (ow,) = [w for w in o.report["warnings"] if "removed no channel" in w]
    assert "op(s) froze" not in tw
    groups = ow.split("removed no channel: ")[1].split(" (report")[0]   # "N prunable group(s), M frozen"
    assert groups in tw, (tw, ow)


def test_numpy_numbers_in_a_library_dict_are_numbers(exports):
    """A list of numpy float32 scores (list(arr)) is what the torch front end takes; true / false are no scores."""
    scores = list(np.arange(8, dtype=np.float32))
    r = cp.collapse(exports["ts"], prune_ratio=0.25, prune_importance={"/body/conv1/Conv": scores})
    assert r.report["pruning"]["ratio"]["removed_channels"] == 2
    with pytest.raises(CollapseError, match="finite numbers"):
        cp.collapse(exports["ts"], prune_ratio=0.25, prune_importance={"/body/conv1/Conv": [True, False] * 4})
