"""Findings of differential testing (tests/test_adv17_differential.py's generator), each a regression test.

F.pad before a conv, and a permute pair that undoes itself, must not cut a linear chain. Found by differential
testing (random nets, both exporters, torch front end): the TorchScript exporter keeps
F.pad as an ONNX Pad node (the dynamo exporter fuses it into the conv), so a collapsed
conv -> act -> F.pad -> conv chain merged on one exporter and not on the other, and the torch front end
never merged it; x.permute(0, 3, 1, 2).permute(0, 2, 3, 1) between two NHWC Linears (both exporters drop
the pair) kept the torch front end's Linears apart; a conv with padding="same" was no conv to the torch front
end (no BatchNorm fold, no merge; its ONNX export merged). The asymmetric pads these folds give hold at any
size (no size guard). A residual Add absorbed the second way round must not also be reported as kept.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import collapse_passes as cp
from models.export import export_onnx

pytestmark = pytest.mark.filterwarnings("ignore")


class PadNet(nn.Module):
    """1x1 conv, ReLU (collapsed), asymmetric F.pad, 3x3 conv: an exact merge (pointwise first, bias map)."""

    def __init__(self, pad=(1, 2, 0, 1), value=0.0):
        super().__init__()
        self.c1 = nn.Conv2d(3, 16, 1)
        self.act = nn.ReLU()
        self.c2 = nn.Conv2d(16, 16, 3)
        self.pad, self.value = pad, value

    def forward(self, x):
        return self.c2(F.pad(self.act(self.c1(x)), self.pad, value=self.value))


def _requested(net, x):
    with torch.no_grad():
        return net.c2(F.pad(net.c1(x), net.pad, value=net.value)).numpy()


def _ort(model, x):
    import onnxruntime as ort

    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(None, {s.get_inputs()[0].name: x})[0]


def _net(**kw):
    torch.manual_seed(0)
    net = PadNet(**kw).eval()
    with torch.no_grad():
        net.c1.bias.uniform_(-1, 1)
    return net


@pytest.mark.parametrize("dynamo", [False, True])
def test_onnx_pad_folds_into_the_conv_and_the_chain_merges(tmp_path, dynamo):
    net = _net()
    path = export_onnx(net, tmp_path / "pad.onnx", (2, 3, 13, 11), dynamo=dynamo)
    res = cp.collapse(path, collapse=["act"])
    assert len(res.report["merges"]) == 1, res.report["notes"]
    assert "Pad" not in {n.op_type for n in res.model.graph.node}
    x = torch.randn(2, 3, 13, 11, generator=torch.Generator().manual_seed(7))
    np.testing.assert_allclose(_ort(res.model, x.numpy()), _requested(net, x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("pad, value", [((1, 2, 0, 1), 0.5), ((-1, 1, 0, 1), 0.0), ((1, 1, 1, 1, 1, 0), 0.0)])
def test_onnx_pad_that_is_not_zero_padding_of_space_stays(tmp_path, pad, value):
    """A non-zero value, a crop, or a channel pad is no conv padding: left as it is, result still exact."""
    net = _net(pad=pad, value=value)
    if len(pad) == 6:
        net.c2 = nn.Conv2d(17, 16, 3).eval()
    path = export_onnx(net, tmp_path / "pad.onnx", (1, 3, 9, 10))
    res = cp.collapse(path, collapse=["act"])
    assert "Pad" in {n.op_type for n in res.model.graph.node}
    x = torch.randn(1, 3, 9, 10, generator=torch.Generator().manual_seed(3))
    np.testing.assert_allclose(_ort(res.model, x.numpy()), _requested(net, x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("program", [False, True])
def test_torch_pad_folds_into_the_conv_and_the_chain_merges(program):
    net = _net()
    x = torch.randn(2, 3, 13, 11)
    model = torch.export.export(net, (x,)) if program else net
    res = cp.collapse(model, collapse=["act"], example_inputs=None if program else (x,))
    assert [m["nodes"] for m in res.report["merges"]] == [["conv2d", "conv2d_1"] if program else ["c1", "c2"]]
    run = res.model.module() if program else res.model
    y = torch.randn(2, 3, 13, 11, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        np.testing.assert_allclose(run(y).numpy(), _requested(net, y), rtol=1e-4, atol=1e-5)


class NHWCNet(nn.Module):
    """Two NHWC Linears with a permute pair that undoes itself between them."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(4, 12)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(12, 4)

    def forward(self, x):
        t = self.act(self.fc1(x.permute(0, 2, 3, 1)))
        t = t.permute(0, 3, 1, 2).permute(0, 2, 3, 1)   # a layer boundary in NCHW, as stacked blocks write it
        return self.fc2(t).permute(0, 3, 1, 2)


@pytest.mark.parametrize("program", [False, True])
def test_torch_permute_pair_is_dropped_and_the_linears_merge(program):
    torch.manual_seed(0)
    net = NHWCNet().eval()
    x = torch.randn(2, 4, 7, 5)
    model = torch.export.export(net, (x,)) if program else net
    res = cp.collapse(model, collapse=["act"], example_inputs=None if program else (x,))
    assert res.report["merges"], res.report["notes"]
    run = res.model.module() if program else res.model
    assert [m["ops_before"] for m in res.report["merges"]][-1:] == [2]
    linears = [n for n in run.graph.nodes if n.op == "call_function" and "linear" in str(n.target)
               or n.op == "call_module" and isinstance(run.get_submodule(n.target), nn.Linear)]
    assert len(linears) == 1
    with torch.no_grad():
        ref = net.fc2((net.fc1(x.permute(0, 2, 3, 1)))).permute(0, 3, 1, 2)
        np.testing.assert_allclose(run(x).numpy(), ref.numpy(), rtol=1e-4, atol=1e-5)


class ProjFirst(nn.Module):
    """y = proj1x1(x) + conv3x3(x): the Add's first operand is the 1x1 projection."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Conv2d(4, 8, 1)
        self.conv = nn.Conv2d(4, 8, 3, padding=1)

    def forward(self, x):
        return self.proj(x) + self.conv(x)


def _absorbed_without_contradiction(report):
    assert [m["kind"] for m in report["merges"]] == ["residual-projection"]
    assert not [n for n in report["notes"] if "kept" in n], report["notes"]


def test_absorbed_projection_leaves_no_kept_note_onnx(tmp_path):
    """Tried the wrong way round first (the 3x3 as the skip), the absorb used to note 'residual at /Add kept:
    skip conv must be 1x1' next to the record of the same Add absorbed."""
    torch.manual_seed(0)
    net = ProjFirst().eval()
    res = cp.collapse(export_onnx(net, tmp_path / "p.onnx", (1, 4, 6, 6)))
    _absorbed_without_contradiction(res.report)


def test_absorbed_projection_leaves_no_kept_note_torch():
    torch.manual_seed(0)
    net = ProjFirst().eval()
    res = cp.collapse(net, example_inputs=(torch.randn(1, 4, 6, 6),))
    _absorbed_without_contradiction(res.report)


class SameNet(nn.Module):
    """conv(padding="same") -> BN -> ReLU (collapsed) -> 1x1 conv; the ONNX export of it merged, the torch front
    end did not read a "same" conv as a conv at all (no fold, no merge)."""

    def __init__(self, k):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, k, padding="same")
        self.bn = nn.BatchNorm2d(8)
        self.act = nn.ReLU()
        self.c2 = nn.Conv2d(8, 8, 1)

    def forward(self, x):
        return self.c2(self.act(self.bn(self.c1(x))))


@pytest.mark.parametrize("k", [3, 4])
def test_torch_same_padding_conv_folds_merges_and_runs_at_any_size(k):
    torch.manual_seed(0)
    net = SameNet(k).eval()
    with torch.no_grad():
        net.bn.running_mean.uniform_(-1, 1)
    res = cp.collapse(net, collapse=["act"], example_inputs=(torch.randn(2, 3, 9, 8),))
    assert [m["nodes"] for m in res.report["merges"]] == [["c1", "c2"]]
    for shape in [(2, 3, 9, 8), (3, 3, 14, 11)]:   # an even "same" kernel's asymmetric pads hold at any size
        x = torch.randn(*shape)
        with torch.no_grad():
            np.testing.assert_allclose(res.model(x).numpy(), net.c2(net.bn(net.c1(x))).numpy(), rtol=1e-4, atol=1e-5)


def test_torch_pad_fold_runs_at_another_size():
    """F.pad folded into the conv it feeds computes what the two did, at any size (no size guard); the merge
    with a bias map it enables stays guarded."""
    net = _net()
    res = cp.collapse(net, collapse=[], example_inputs=(torch.randn(1, 3, 13, 11),))
    assert res.report["folds"] == [{"kind": "pad-before", "nodes": ["pad", "c2"]}]
    x = torch.randn(2, 3, 20, 17)
    with torch.no_grad():
        np.testing.assert_allclose(res.model(x).numpy(), net(x).numpy(), rtol=1e-4, atol=1e-5)
    merged = cp.collapse(net, collapse=["act"], example_inputs=(torch.randn(1, 3, 13, 11),))
    with pytest.raises(ValueError, match="planned for inputs of spatial size"):
        merged.model(x)


def _pad_conv_model(pads, axes=None, value=0.0, mode="constant"):
    """x -> Pad(pads, value, axes) -> Conv 3x3 (opset 18, hand-built: other converters write Pad this way)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    ax = list(range(4)) if axes is None else list(axes)
    c = 3 + sum(pads[k] + pads[len(ax) + k] for k, a in enumerate(ax) if a == 1)   # a channel pad widens the input
    inits = [numpy_helper.from_array(rng.standard_normal((4, c, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(np.asarray(pads, np.int64), "pads"),
             numpy_helper.from_array(np.asarray(value, np.float32), "value")]
    pad_in = ["x", "pads", "value"]
    if axes is not None:
        inits.append(numpy_helper.from_array(np.asarray(axes, np.int64), "axes"))
        pad_in.append("axes")
    nodes = [helper.make_node("Pad", pad_in, ["p"], mode=mode), helper.make_node("Conv", ["p", "w"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 7])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return onnx.helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])


@pytest.mark.parametrize("pads, axes, value, mode, folds", [
    ([1, 0, 2, 1], [2, 3], 0.0, "constant", True),           # axes input: H begin 1, W begin 0, H end 2, W end 1
    ([0, 0, 1, 2, 0, 0, 0, 1], None, 0.0, "constant", True),  # all four axes, zero on N and C
    ([1, 1, 1, 1], [1, 2], 0.0, "constant", False),          # pads channels
    ([1, 1, 1, 1], [2, 3], 0.0, "reflect", False),
    ([1, 1, 1, 1], [2, 3], 1.0, "constant", False),
])
def test_onnx_pad_forms(pads, axes, value, mode, folds):
    model = _pad_conv_model(pads, axes, value, mode)
    res = cp.collapse(model)   # nothing to collapse: the exact clean-ups run, and verification
    assert ("Pad" not in {n.op_type for n in res.model.graph.node}) == folds
    x = np.random.default_rng(1).standard_normal((1, 3, 8, 7)).astype(np.float32)
    np.testing.assert_allclose(_ort(res.model, x), _ort(model, x), rtol=1e-4, atol=1e-5)


class ShiftThenChain(nn.Module):
    """ReLU (kept) -> Hardsigmoid (collapsed: x/6 + 1/2 as new Mul/Add tensors) -> 3x3 conv -> ReLU (collapsed)
    -> 1x1 conv: nothing folds in the pass loop's first round (the shift cannot cross the 3x3's padding)."""

    def __init__(self):
        super().__init__()
        self.keep, self.hs, self.b, self.act, self.c = nn.ReLU(), nn.Hardsigmoid(), nn.Conv2d(3, 4, 3, padding=1), \
            nn.ReLU(), nn.Conv2d(4, 8, 1)

    def forward(self, x):
        return self.c(self.act(self.b(self.hs(self.keep(x)))))


@pytest.mark.parametrize("dynamo", [False, True])
def test_chain_after_a_linearized_shift_merges_in_the_first_round(tmp_path, dynamo):
    """The chain read 'shapes unknown' (the linearized regime's tensors had none yet) and the loop, changed by
    nothing else, stopped: merged on one model, not on a nearly identical one (found on a dynamo export)."""
    torch.manual_seed(0)
    net = ShiftThenChain().eval()
    res = cp.collapse(export_onnx(net, tmp_path / "m.onnx", (2, 3, 10, 9), dynamo=dynamo), collapse=["hs", "act"])
    assert [len(m["nodes"]) for m in res.report["merges"]] == [2], res.report["notes"]
    assert not [n for n in res.report["notes"] if "shapes unknown" in n]
    x = torch.randn(2, 3, 10, 9)
    with torch.no_grad():
        ref = net.c(net.b(torch.relu(x) / 6 + 0.5)).numpy()
    np.testing.assert_allclose(_ort(res.model, x.numpy()), ref, rtol=1e-4, atol=1e-5)
