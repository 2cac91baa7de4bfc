"""ONNX layouts our tests had not covered (Inception / DenseNet concat, U-Net decoder, grouped / dilated / 1D convs,
ViT block, MLP, pooling, two inputs and outputs, PReLU networks), exported by both torch exporters; each test fails
without its fix."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

import collapse_passes as cp
from conftest import export_quiet


def _prelu_net(scalar: bool):
    """conv -> PReLU -> conv -> PReLU -> 1x1 conv (the Layer Folding / bundled-example layout) at tiny width."""
    import torch
    import torch.nn as nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.p1 = nn.Conv2d(3, 8, 3, 1, 1), nn.PReLU(1 if scalar else 8, init=0.3)
            self.c2, self.p2 = nn.Conv2d(8, 8, 3, 1, 1), nn.PReLU(1 if scalar else 8, init=0.2)
            self.c3 = nn.Conv2d(8, 4, 1)

        def forward(self, x):
            return self.c3(self.p2(self.c2(self.p1(self.c1(x)))))

    torch.manual_seed(0)
    m = Net().eval()
    with torch.no_grad():
        for p in (m.p1, m.p2):
            p.weight.uniform_(0.05, 0.6)   # a different slope per channel: slicing it wrongly shows
    return m


def _run(path, x):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]


def _zero_removed_filters(src, pruned):
    """The original model with the output channels the pruned one dropped zeroed (weight rows and bias; PReLU(0) = 0,
    so a zeroed channel contributes nothing, as a removed one): kept rows found by their bias values."""
    m, p = onnx.load(src), onnx.load(pruned)
    init = {t.name: t for t in m.graph.initializer}
    pinit = {t.name: numpy_helper.to_array(t) for t in p.graph.initializer}
    pconv = {n.name: n for n in p.graph.node if n.op_type == "Conv"}
    zeroed = 0
    for n in m.graph.node:
        if n.op_type != "Conv" or n.name not in pconv:
            continue
        w, b = (numpy_helper.to_array(init[n.input[i]]).copy() for i in (1, 2))
        pb = pinit[pconv[n.name].input[2]]
        if len(pb) == len(b):
            continue
        keep = {int(np.argmin(np.abs(b - v))) for v in pb}
        gone = [i for i in range(len(b)) if i not in keep]
        w[gone], b[gone] = 0, 0
        zeroed += len(gone)
        for i, a in ((1, w), (2, b)):
            init[n.input[i]].CopyFrom(numpy_helper.from_array(a, n.input[i]))
    return m, zeroed


@pytest.mark.parametrize("dynamo", [False, True])
@pytest.mark.parametrize("scalar", [False, True])
def test_ratio_prune_sees_through_prelu(tmp_path, dynamo, scalar):
    """The channel graph did not understand PRelu ("PRelu_scalar" in its list matched no op), so every group behind
    a PReLU froze: on the bundled MobileNetV2-PReLU `--prune-ratio 0.3` froze 55 of 60 groups. PRelu is now an
    elementwise op whose per-channel slope is sliced with the channels; the pruned model equals the original
    with the removed filters zeroed (checked here independently of the tool's own verification)."""
    src = export_quiet(_prelu_net(scalar), tmp_path / "m.onnx", (1, 3, 32, 32), dynamo)
    out = tmp_path / "p.onnx"
    res = cp.collapse(src, prune_ratio=0.3)
    res.save(out)
    ratio = res.report["pruning"]["ratio"]
    assert not [f for f in ratio["frozen_ops"] if f["op_type"] == "PRelu"], ratio["frozen_ops"]
    assert ratio["removed_channels"] > 0 and ratio["prunable_groups"] >= 2
    ref, zeroed = _zero_removed_filters(src, out)
    assert zeroed == ratio["removed_channels"]
    x = np.random.RandomState(3).randn(2, 1, 3, 32, 32).astype(np.float32)
    ref_path = tmp_path / "ref.onnx"
    onnx.save(ref, str(ref_path))
    np.testing.assert_allclose(_run(out, x[0]), _run(ref_path, x[0]), rtol=1e-4, atol=1e-5)
    assert np.abs(_run(out, x[1]) - _run(src, x[1])).max() > 1e-3   # something was pruned


@pytest.mark.parametrize("dynamo", [False, True])
def test_constant_channel_through_prelu_is_removed_exactly(tmp_path, dynamo):
    """A zero filter with a negative bias before a per-channel PReLU is the constant slope*bias: exact removal now
    folds it into the 1x1 conv that reads it (before, the PRelu froze the group and the channel stayed)."""
    import torch

    m = _prelu_net(False)
    with torch.no_grad():
        m.c2.weight[5].zero_()
        m.c2.bias[5] = -0.8
    src = export_quiet(m, tmp_path / "m.onnx", (1, 3, 32, 32), dynamo)
    out = tmp_path / "c.onnx"
    res = cp.collapse(src)
    res.save(out)
    assert res.report["pruning"]["removed_channels"] == 1
    x = np.random.RandomState(4).randn(1, 3, 32, 32).astype(np.float32)
    np.testing.assert_allclose(_run(out, x), _run(src, x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("scalar", [False, True])
def test_torch_front_end_prunes_through_prelu(tmp_path, scalar):
    """The fx channel graph froze nn.PReLU too ('module not understood'): a PReLU network pruned nothing from an
    nn.Module. Its per-channel weight is now sliced with the channels; the result equals the original with the
    removed filters zeroed, and prunes what the ONNX export of the same model prunes."""
    import torch

    m = _prelu_net(scalar)
    x = torch.randn(1, 3, 32, 32)
    res = cp.collapse(m, prune_ratio=0.3, example_inputs=(x,))
    ratio = res.report["pruning"]["ratio"]
    assert not ratio["frozen_ops"] and ratio["removed_channels"] > 0
    onnx_ratio = cp.collapse(export_quiet(m, tmp_path / "m.onnx", (1, 3, 32, 32), False),
                             prune_ratio=0.3).report["pruning"]["ratio"]
    assert ratio["removed_channels"] == onnx_ratio["removed_channels"]
    pruned = res.model
    ref = _prelu_net(scalar)
    with torch.no_grad():
        for name in ("c1", "c2"):
            b, pb = getattr(ref, name).bias, pruned.get_submodule(name).bias
            gone = [i for i in range(len(b)) if not torch.isclose(pb, b[i]).any()]
            getattr(ref, name).weight[gone] = 0
            getattr(ref, name).bias[gone] = 0
        if not scalar:
            assert pruned.get_submodule("p1").weight.numel() == pruned.get_submodule("c1").out_channels
        y = torch.randn(2, 3, 32, 32)
        torch.testing.assert_close(pruned(y), ref(y), rtol=1e-4, atol=1e-5)


def test_ratio_prune_sees_through_tanh_gelu_pow(tmp_path):
    """The torch.export-based exporter writes a tanh-GELU with Pow(x, 3); the channel graph did not understand Pow
    and froze the hidden axis of the MLP on that export (the TorchScript export, without Pow, pruned it). Pow by a
    constant scalar is now elementwise; the pruned model equals the original with the removed hidden units' fc1
    columns zeroed (GELU(0) = 0)."""
    import torch
    import torch.nn as nn

    class Mlp(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm, self.fc1, self.act, self.fc2 = nn.LayerNorm(8), nn.Linear(8, 32), nn.GELU("tanh"), nn.Linear(32, 8)

        def forward(self, x):
            return x + self.fc2(self.act(self.fc1(self.norm(x))))

    torch.manual_seed(0)
    m = Mlp().eval()
    src = export_quiet(m, tmp_path / "m.onnx", (1, 5, 8), True)
    assert any(n.op_type == "Pow" for n in onnx.load(src).graph.node)
    res = cp.collapse(src, prune_ratio=0.3)
    ratio = res.report["pruning"]["ratio"]
    assert not [f for f in ratio["frozen_ops"] if f["op_type"] == "Pow"], ratio["frozen_ops"]
    assert ratio["removed_channels"] > 0
    out = res.save(tmp_path / "p.onnx")
    b = m.fc1.bias.detach().numpy()
    kept = [v for t in res.model.graph.initializer for v in [numpy_helper.to_array(t)]
            if v.ndim == 1 and len(v) == 32 - ratio["removed_channels"] and np.isin(v, b).all()]
    assert len(kept) == 1
    with torch.no_grad():
        gone = [i for i in range(32) if b[i] not in kept[0]]
        m.fc1.weight[gone] = 0
        m.fc1.bias[gone] = 0
        x = torch.randn(1, 5, 8)
        np.testing.assert_allclose(_run(out, x.numpy()), m(x).numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dynamo", [False, True])
def test_target_speedup_on_a_graph_that_costs_nothing(tmp_path, dynamo):
    """A model of one ReLU costs 0 (a fused activation counts nothing, no MACs): `--target-speedup` divided by that
    cost and ended in a ZeroDivisionError traceback (exit 3). Nothing to nothing is now a 1.0x speed-up: the
    run chooses nothing, says the target is not reached, and writes the model."""
    import torch

    from collapse_passes.cli import main

    src = export_quiet(torch.nn.Sequential(torch.nn.ReLU()), tmp_path / "r.onnx", (1, 3, 8, 8), dynamo)
    calib = tmp_path / "c.npz"
    np.savez(calib, input=np.random.RandomState(0).randn(8, 3, 8, 8).astype(np.float32))
    out = tmp_path / "o.onnx"
    rc = main([src, "--target-speedup", "1.2", "--method", "easier", "--calib", str(calib), "-o", str(out), "-q",
               "--report", str(tmp_path / "r.json")])
    assert rc == 0 and out.exists()
    import json

    notes = json.loads((tmp_path / "r.json").read_text())["notes"]
    assert any("predicted speed-up 1.000x" in n and "target not reached" in n for n in notes), notes
