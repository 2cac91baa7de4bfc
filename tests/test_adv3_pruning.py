"""Channel pruning on layouts the first tests did not cover."""
import torch
from torch import nn

from collapse_passes.pruning.fx_adapter import prune_module


def _padded_constant_model():
    """conv1 has an all-zero filter whose BN shift makes ReLU(beta) = 1 > 0: conv2 reads that constant
    through zero padding, so the exact removal turns conv2 into a ConvWithBiasMap."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                      nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).eval()
    with torch.no_grad():
        m[0].weight[0] = 0
        m[1].bias[0] = 1.0
    return m


def test_ratio_prune_is_not_frozen_by_the_exact_removals_bias_map():
    """prune_module ran the exact removal first; the ConvWithBiasMap it left is a module the channel graph
    does not read, so both groups around conv2 were frozen and ratio=0.5 removed nothing, silently."""
    m, x = _padded_constant_model(), torch.randn(2, 3, 2, 2)   # 2x2: the bias map is smaller than the removal saves
    exact, rep = prune_module(m, x)
    assert rep["removed_channels"] == 1 and any(type(s).__name__ == "ConvWithBiasMap" for s in exact.modules())
    pm, rep = prune_module(m, x, ratio=0.5)
    ratio = rep["ratio"]
    assert not [f for f in ratio["frozen_ops"] if "not understood" in f["reason"]], ratio["frozen_ops"]
    assert ratio["removed_channels"] == 8                       # half of the 16 prunable channels
    assert sum(g["channels_before"] - g["channels_after"] for g in ratio["groups"]) == 8
    kept = sum(mod.out_channels for mod in pm.modules() if isinstance(mod, nn.Conv2d))
    assert kept == 16 - 8 - rep["removed_channels"]
    with torch.no_grad():
        assert pm(x).shape == m(x).shape


# ------------------------------------------------------------- constants through smooth activations (ONNX)

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import pytest  # noqa: E402

from collapse_passes.onnx.graph import to_graph, to_model  # noqa: E402
from collapse_passes.pruning.onnx_prune import exact_removal  # noqa: E402
from collapse_passes.verify import session  # noqa: E402
from conftest import export_quiet  # noqa: E402


class _SmoothSites(nn.Module):
    """The EfficientNet / MobileNetV3 / Swin sites: conv -> SiLU / Hardswish -> 1x1 conv, and a token MLP
    Linear -> GELU -> Linear. Each first layer has an all-zero filter with a nonzero bias: its channel is the
    constant act(bias), which the next layer can take into its bias exactly."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 1)
        self.h1, self.h2 = nn.Conv2d(8, 8, 1), nn.Conv2d(8, 6, 1)
        self.act1, self.act2 = nn.SiLU(), nn.Hardswish()
        self.fc1, self.gelu, self.fc2 = nn.Linear(6, 12), nn.GELU(), nn.Linear(12, 6)
        with torch.no_grad():
            for layer, b in ((self.c1, 0.8), (self.h1, 1.3), (self.fc1, -0.6)):
                layer.weight[1] = 0
                layer.bias[1] = b

    def forward(self, x):
        x = self.c2(self.act1(self.c1(x)))
        x = self.h2(self.act2(self.h1(x)))
        t = x.flatten(2).transpose(1, 2)            # (N, tokens, 6)
        return t + self.fc2(self.gelu(self.fc1(t)))


@pytest.mark.parametrize("dynamo", [pytest.param(False, id="torchscript"),
                                    pytest.param(True, id="dynamo", marks=pytest.mark.slow)])
def test_constant_channel_through_silu_hardswish_gelu_is_removed_exactly(tmp_path, dynamo):
    """Values were propagated through ReLU / Clip / LeakyReLU only, so an all-zero filter before a SiLU,
    Hardswish or GELU (every activation of EfficientNet, most of MobileNetV3, Swin's MLPs) was never
    removed: SiLU(b), Hardswish(b), GELU(b) are constants like ReLU(b)."""
    torch.manual_seed(0)
    m = _SmoothSites().eval()
    model = onnx.load(export_quiet(m, tmp_path / f"s{int(dynamo)}.onnx", (1, 3, 6, 6), dynamo))
    g = to_graph(model)
    rep = exact_removal(g)
    out = to_model(g, model)
    assert rep["removed_channels"] == 3, rep
    x = np.random.default_rng(0).standard_normal((1, 3, 6, 6)).astype(np.float32)
    ref = m(torch.from_numpy(x)).detach().numpy()
    s = session(out)
    got = s.run(None, {s.get_inputs()[0].name: x})[0]
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)
    w = {i.name: onnx.numpy_helper.to_array(i) for i in out.graph.initializer}
    assert sum(v.size for v in w.values()) < sum(p.numel() for p in m.parameters())


def test_constant_channel_through_smooth_activation_modules_fx():
    """The torch front end: same sites as nn modules (SiLU, Hardswish, GELU), removed exactly."""
    torch.manual_seed(0)
    m = _SmoothSites().eval()
    x = torch.randn(1, 3, 6, 6)
    pm, rep = prune_module(m, x)
    assert rep["removed_channels"] == 3, rep
    with torch.no_grad():
        torch.testing.assert_close(pm(x), m(x), rtol=1e-4, atol=1e-5)
    assert sum(p.numel() for p in pm.parameters()) < sum(p.numel() for p in m.parameters())


def test_ratio_prune_that_removes_nothing_says_so(tmp_path):
    """--prune-ratio 0.3 --round-to 64 on 8-channel layers keeps every channel; the report used to say only
    'approximate, max abs error 0', as if a prune had happened."""
    from collapse_passes import api

    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()).eval()
    path = export_quiet(m, tmp_path / "m.onnx", (1, 3, 8, 8), False)
    res = api.collapse(str(path), prune_ratio=0.3, round_to=64)
    assert res.report["pruning"]["ratio"]["removed_channels"] == 0
    assert any("removed no channel" in w and "--round-to 64" in w for w in res.report["warnings"]), res.report["warnings"]
    res = api.collapse(str(path), prune_ratio=0.5, round_to=4)
    assert res.report["pruning"]["ratio"]["removed_channels"] > 0
    assert not any("removed no channel" in w for w in res.report["warnings"])


def test_torch_frozen_ops_name_the_module_class_as_op_type():
    """frozen_ops rows hold the op's kind in op_type (as on ONNX) and its path in op; the torch side put
    the module path in both."""
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem, self.conv = nn.Conv2d(3, 4, 1), nn.Conv2d(4, 4, 1)
            self.head = nn.Conv2d(4, 4, 1)   # stem -> relu -> head: a prunable group (a prune with none is refused)

        def forward(self, x):
            return self.conv(self.conv(self.head(torch.relu(self.stem(x)))))

    _, rep = prune_module(Shared().eval(), torch.randn(1, 3, 4, 4), ratio=0.5)
    rows = [f for f in rep["ratio"]["frozen_ops"] if f["op"].startswith("conv")]
    assert rows and all(f["op_type"] == "Conv2d" for f in rows), rep["ratio"]["frozen_ops"]
