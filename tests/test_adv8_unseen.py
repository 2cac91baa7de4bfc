"""Layouts models/ does not have (ShuffleNetV2 split/shuffle, SqueezeNet Fire, Inception and DenseNet
concats, pre-activation ResNet, a bias-free conv + BN + constant Add, a ViT with nn.MultiheadAttention,
a model full of non-collapsible activations), collapsed and checked against an independent torch
reference: the chosen call sites' outputs replaced by their linear regime with forward hooks, in float64.
Plus the three defects found on them: a torch module returning a tuple crashed the fx front end's
pruning counts; --prune-ratio emptied a Concat branch and refused the run; a root-level activation's
saved key was an exporter's node name that the other exporter does not have."""
from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

import collapse_passes as cp  # noqa: E402
from collapse_passes.cli import main  # noqa: E402
from conftest import export_quiet, randomize_bn  # noqa: E402

SELU_SCALE = 1.0507009873554805
#: module class -> its linear regime (what a collapsed call site computes); None = never collapsed
LINEAR = {nn.ReLU: lambda x: x, nn.LeakyReLU: lambda x: x, nn.ELU: lambda x: x, nn.Mish: lambda x: x,
          nn.GELU: lambda x: x, nn.SELU: lambda x: SELU_SCALE * x, nn.Hardsigmoid: lambda x: x / 6 + 0.5,
          nn.Tanh: None, nn.Sigmoid: None, nn.Softplus: None}


def reference(model, x, keys):
    """model(x) in float64 with the activation modules at `keys` (module paths) replaced by their linear
    regime; in-place modules read the input they would have overwritten."""
    m = model.double()
    names = {mod: n for n, mod in m.named_modules()}
    saved, handles = {}, []

    def pre(mod, inp):
        if getattr(mod, "inplace", False):
            saved[mod] = inp[0].clone()

    def post(mod, inp, out):
        x0 = saved.pop(mod, inp[0])
        lin = LINEAR[type(mod)]
        return lin(x0) if names[mod] in keys and lin is not None else None

    for mod in m.modules():
        if type(mod) in LINEAR:
            handles += [mod.register_forward_pre_hook(pre), mod.register_forward_hook(post)]
    try:
        with torch.no_grad():
            return m(x.double()).numpy()
    finally:
        for h in handles:
            h.remove()
        model.float()


def close(out, ref):
    scale = max(1.0, float(np.abs(ref).max()))
    return np.allclose(out, ref, rtol=1e-4, atol=1e-4 * scale)


def ort_out(path_or_model, x):
    m = path_or_model if isinstance(path_or_model, str) else path_or_model.SerializeToString()
    s = ort.InferenceSession(m, providers=["CPUExecutionProvider"])
    return s.run(None, {s.get_inputs()[0].name: x.numpy()})[0]


# ------------------------------------------------------------------------------------------ layouts

def bn(c):
    return nn.BatchNorm2d(c)


class ShuffleUnit(nn.Module):
    def __init__(self, c):
        super().__init__()
        b = c // 2
        self.branch2 = nn.Sequential(nn.Conv2d(b, b, 1, bias=False), bn(b), nn.ReLU(inplace=True),
                                     nn.Conv2d(b, b, 3, 1, 1, groups=b, bias=False), bn(b),
                                     nn.Conv2d(b, b, 1, bias=False), bn(b), nn.ReLU(inplace=True))

    def forward(self, x):
        x1, x2 = x.chunk(2, dim=1)
        out = torch.cat((x1, self.branch2(x2)), 1)
        n, c, h, w = out.shape
        return out.view(n, 2, c // 2, h, w).transpose(1, 2).contiguous().view(n, c, h, w)


class ShuffleNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), bn(16), nn.ReLU(inplace=True))
        self.stage = nn.Sequential(ShuffleUnit(16), ShuffleUnit(16))
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        return self.fc(self.stage(self.conv1(x)).mean([2, 3]))


class Fire(nn.Module):
    def __init__(self, cin, sq, e):
        super().__init__()
        self.squeeze, self.squeeze_activation = nn.Conv2d(cin, sq, 1), nn.ReLU(inplace=True)
        self.expand1x1, self.expand1x1_activation = nn.Conv2d(sq, e, 1), nn.ReLU(inplace=True)
        self.expand3x3, self.expand3x3_activation = nn.Conv2d(sq, e, 3, padding=1), nn.ReLU(inplace=True)

    def forward(self, x):
        x = self.squeeze_activation(self.squeeze(x))
        return torch.cat([self.expand1x1_activation(self.expand1x1(x)), self.expand3x3_activation(self.expand3x3(x))], 1)


class SqueezeNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 16, 3, 2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, ceil_mode=True),
                                      Fire(16, 8, 8), Fire(16, 8, 8))
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        return self.fc(self.features(x).mean([2, 3]))


class PreActBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.bn1, self.relu1, self.conv1 = bn(c), nn.ReLU(), nn.Conv2d(c, c, 3, 1, 1, bias=False)
        self.bn2, self.relu2, self.conv2 = bn(c), nn.ReLU(), nn.Conv2d(c, c, 3, 1, 1, bias=False)

    def forward(self, x):
        return x + self.conv2(self.relu2(self.bn2(self.conv1(self.relu1(self.bn1(x))))))


class PreAct(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, 2, 1, bias=False)
        self.layer1 = nn.Sequential(PreActBlock(8), PreActBlock(8))
        self.bn, self.relu, self.fc = bn(8), nn.ReLU(), nn.Linear(8, 10)

    def forward(self, x):
        return self.fc(self.relu(self.bn(self.layer1(self.conv1(x)))).mean([2, 3]))


class BiasFreeAddConst(nn.Module):
    def __init__(self, c=8):
        super().__init__()
        self.conv1, self.bn1, self.act1 = nn.Conv2d(3, c, 3, 2, 1, bias=False), bn(c), nn.ReLU()
        self.conv2, self.bn2, self.act2 = nn.Conv2d(c, c, 3, 1, 1, bias=False), bn(c), nn.ReLU()
        self.register_buffer("offset", torch.linspace(-0.5, 0.5, c).view(1, c, 1, 1))
        self.conv3, self.fc = nn.Conv2d(c, c, 1, bias=False), nn.Linear(c, 10)

    def forward(self, x):
        x = self.act1(self.bn1(self.conv1(x)) + 0.25)
        x = self.act2(self.bn2(self.conv2(x)) + self.offset)
        return self.fc((self.conv3(x) - 1.0).mean([2, 3]))


class ActZoo(nn.Module):
    """Collapsible (LeakyReLU, ELU, Mish, Hardsigmoid, SELU) between non-collapsible (Tanh, Sigmoid, Softplus)."""

    def __init__(self, c=8):
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, 2, 1)
        acts = [nn.LeakyReLU(0.1), nn.Tanh(), nn.ELU(0.7), nn.Sigmoid(), nn.Mish(), nn.Softplus(), nn.Hardsigmoid(),
                nn.SELU()]
        self.body = nn.Sequential(*[m for a in acts for m in (nn.Conv2d(c, c, 1), a)])
        self.fc = nn.Linear(c, 10)

    def forward(self, x):
        return self.fc(self.body(self.stem(x)).mean([2, 3]))


LAYOUTS = {"shufflenet": ShuffleNet, "squeezenet": SqueezeNet, "preact": PreAct, "biasfree": BiasFreeAddConst,
           "actzoo": ActZoo}
SHAPE = (1, 3, 64, 64)


def _build(name):
    torch.manual_seed(0)
    return randomize_bn(LAYOUTS[name]().eval())


@pytest.fixture(scope="module")
def exported_ts(tmp_path_factory):
    d = tmp_path_factory.mktemp("adv8")
    return {n: export_quiet(_build(n), d / f"{n}.onnx", SHAPE, False) for n in LAYOUTS}


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_collapse_every_activation_matches_an_independent_torch_reference(exported_ts, name):
    path = exported_ts[name]
    keys = [r["key"] for r in cp.list_keys(path)]
    model = _build(name)
    paths = {n for n, m in model.named_modules() if type(m) in LINEAR and LINEAR[type(m)] is not None}
    assert set(keys) == paths   # every collapsible module is a key, and nothing else (no Tanh/Sigmoid/Softplus)
    res = cp.collapse(path, scores={k: 0.0 for k in keys}, threshold=0.5)
    assert sorted(a["key"] for a in res.report["activations"] if a["collapsed"]) == sorted(keys)
    x = torch.randn(*SHAPE, generator=torch.Generator().manual_seed(1))
    assert close(ort_out(res.model, x), reference(model, x, set(keys)))
    if name == "actzoo":   # the non-collapsible activations are still there
        ops = [n.op_type for n in res.model.graph.node]
        assert ops.count("Tanh") >= 1 and ops.count("Sigmoid") >= 1 and ops.count("Softplus") >= 1
    # the torch front end, on half of the sites
    half = keys[::2]
    tres = cp.collapse(model, collapse=half, example_inputs=(x,))
    with torch.no_grad():
        assert close(tres.model(x).numpy(), reference(_build(name), x, set(half)))


# ------------------------------------------------------------------ defect 1: tuple-returning module

class TinyViT(nn.Module):
    def __init__(self, dim=16):
        super().__init__()
        self.conv_proj = nn.Conv2d(3, dim, 8, 8)
        self.cls = nn.Parameter(0.02 * torch.randn(1, 1, dim))
        self.ln = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, 2, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.head = nn.Linear(dim, 10)

    def forward(self, x):
        x = self.conv_proj(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], 1)
        y = self.ln(x)
        x = x + self.attn(y, y, y, need_weights=False)[0]
        return self.head((x + self.mlp(x))[:, 0])


def test_torch_front_end_takes_a_module_that_returns_a_tuple():
    # nn.MultiheadAttention is a leaf of symbolic_trace returning (out, weights): the pruning pass's MAC
    # count read .shape of its tuple of tensor metas (AttributeError traceback on every collapse call)
    torch.manual_seed(0)
    model = TinyViT().eval()
    x = torch.randn(2, 3, 32, 32)
    res = cp.collapse(model, collapse=["mlp.1"], example_inputs=(x,))
    with torch.no_grad():
        assert close(res.model(x).numpy(), reference(model, x, {"mlp.1"}))
    assert [a["key"] for a in res.report["activations"] if a["collapsed"]] == ["mlp.1"]


# ------------------------------------------------------------ defect 2: ratio pruning empties a branch

class Inception(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU())
        self.b1 = nn.Sequential(nn.Conv2d(8, 8, 1), nn.ReLU())
        self.b3 = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.bp = nn.Sequential(nn.MaxPool2d(3, 1, 1), nn.Conv2d(8, 4, 1), nn.ReLU())
        self.fc = nn.Linear(20, 10)
        with torch.no_grad():   # one branch of weak filters: global ranking takes all of them first
            self.bp[1].weight.mul_(1e-3)

    def forward(self, x):
        x = self.stem(x)
        return self.fc(torch.cat([self.b1(x), self.b3(x), self.bp(x)], 1).mean([2, 3]))


def _out_channels(model):
    inits = {t.name: t for t in model.graph.initializer}
    return {n.name: inits[n.input[1]].dims[0] for n in model.graph.node if n.op_type == "Conv"}


@pytest.mark.parametrize("scope,round_to", [("global", 1), ("layer", 1), ("global", 4)])
def test_ratio_pruning_keeps_a_channel_in_every_concat_branch(tmp_path, scope, round_to):
    # the Concat output is one group; its global ranking removed every filter of the weak branch and the
    # conv slice refused ("conv outputs: pruning would remove all 4 channels", exit 2)
    torch.manual_seed(0)
    model = Inception().eval()
    path = export_quiet(model, tmp_path / "inc.onnx", SHAPE, False)
    res = cp.collapse(path, prune_ratio=0.4, prune_scope=scope, round_to=round_to)
    before, after = _out_channels(onnx.load(path)), _out_channels(res.model)
    assert set(before) == set(after) and all(c >= 1 for c in after.values())
    ratio = res.report["pruning"]["ratio"]
    if round_to > 1:
        # every layer keeps a multiple of round_to or all it has (since 2026-11-29: the group's total alone was
        # rounded, a branch kept 1 of 4); on these 4- and 8-channel branches rounding up gives every channel back,
        # and a warning says --round-to did it
        assert all(c % round_to == 0 or c == before[k] for k, c in after.items())
        if ratio["removed_channels"] == 0:
            assert any("removed no channel" in w and f"--round-to {round_to}" in w for w in res.report["warnings"])
            return
    assert sum(after.values()) < sum(before.values())
    assert ratio["removed_channels"] > 0
    # a kept branch channel does not break --round-to: every group keeps a multiple of it (or all)
    assert all(g["channels_after"] % round_to == 0 or g["channels_after"] == g["channels_before"]
               for g in ratio["groups"])
    if round_to > 1:
        return
    x = torch.randn(*SHAPE)
    assert np.isfinite(ort_out(res.model, x)).all()
    # the torch front end shares the selection
    tres = cp.collapse(model, example_inputs=(x,), prune_ratio=0.4, prune_scope=scope)
    assert all(m.out_channels >= 1 for m in tres.model.modules() if isinstance(m, nn.Conv2d))
    assert tres.report["pruning"]["ratio"]["removed_channels"] > 0


# ------------------------------------------------- defect 3: root-level keys in a saved scores file

class RootRelu(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, 2, 1)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 8, 1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = F.relu(self.conv2(self.relu(self.conv(x))))   # DenseNet's root F.relu after the last norm
        return self.fc(x.mean([2, 3]))


def test_a_root_activation_is_listed_and_saved_by_its_exporter_neutral_key(tmp_path):
    torch.manual_seed(0)
    model = RootRelu().eval()
    x = torch.randn(*SHAPE)
    ts = export_quiet(model, tmp_path / "ts.onnx", SHAPE, False)
    dyn = export_quiet(model, tmp_path / "dyn.onnx", SHAPE, True)
    for src in (ts, dyn):
        assert [r["key"] for r in cp.list_keys(src)] == ["relu", "relu()"]
    assert [r["key"] for r in cp.list_keys(model, example_inputs=(x,))] == ["relu", "relu()"]
    # scores saved from the dynamo export select the same site on the TorchScript export
    saved = tmp_path / "s.json"
    calib = tmp_path / "c.npz"
    np.savez(calib, input=np.random.default_rng(0).standard_normal((4,) + SHAPE[1:]).astype(np.float32))
    assert main([dyn, "--method", "easier", "--calib", str(calib), "--threshold", "0.3", "--save-scores", str(saved),
                 "--dry-run", "-q"]) == 0
    assert set(json.load(open(saved))["scores"]) == {"relu", "relu()"}
    out = str(tmp_path / "o.onnx")
    assert main([ts, "--scores", str(saved), "--remove", "2", "-o", out, "-q"]) == 0
    assert not any(n.op_type == "Relu" for n in onnx.load(out).graph.node)
