"""The torch front end on layouts its authors did not write it for: torchvision-style nesting (Sequential
inside Sequential), in-place activations whose result is unused or whose input is read again, a model that
writes into its own input, a root module called twice. Each result is checked against an eager reference
built without the passes (the module with the collapsed activations swapped out), never against the
passes' own LinearizeActivations."""
from __future__ import annotations

import copy
import warnings

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import collapse_passes as cp  # noqa: E402
from collapse_passes.errors import CollapseError  # noqa: E402
from tests.conftest import export_quiet, randomize_bn  # noqa: E402


class CloneIdentity(nn.Module):
    """The linear regime of ReLU as a value: y = x now (nn.Identity would alias x, and a later in-place
    write into x would change y too)."""

    def forward(self, x):
        return x.clone()


def _close(a, b, rtol=1e-4):
    a, b = a.detach(), b.detach()
    scale = max(float(b.abs().max()), 1e-6)
    return float((a - b).abs().max()) <= rtol * scale + 1e-5


# ----------------------------------------------------------------------------------- keys


class Nested(nn.Module):
    """Sequential in a custom module in a Sequential, and a ModuleList element called directly: the
    TorchScript exporter writes such scopes relative to the nearest non-container ancestor
    ("/a/a.0/c/c.0/c.0.1/Relu" is a.0.c.0.1)."""

    class Inner(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Sequential(nn.Sequential(nn.Conv2d(3, 3, 1), nn.ReLU()), nn.Sequential(nn.ReLU6()))
            self.m = nn.ModuleList([nn.Hardswish()])

        def forward(self, x):
            return self.m[0](self.c(x))

    def __init__(self):
        super().__init__()
        self.a = nn.Sequential(self.Inner(), self.Inner())

    def forward(self, x):
        return self.a(x)


def test_torchscript_keys_of_nested_containers_equal_the_torch_keys(tmp_path):
    model = Nested().eval()
    x = torch.randn(1, 3, 4, 4)
    torch_keys = [k["key"] for k in cp.list_keys(model, (x,))]
    assert "a.0.c.0.1" in torch_keys and "a.1.m.0" in torch_keys
    onnx_keys = [k["key"] for k in cp.list_keys(export_quiet(model, tmp_path / "n.onnx", (1, 3, 4, 4), False))]
    assert onnx_keys == torch_keys


@pytest.mark.slow
@pytest.mark.parametrize("dynamo", [False, True])
def test_mobilenet_v3_keys_equal_across_front_ends(tmp_path, dynamo):
    from models.mobilenet_v3 import mobilenet_v3_small

    torch.manual_seed(0)
    model = randomize_bn(mobilenet_v3_small(width_mult=0.25, num_classes=10, last_channel=32)).eval()
    x = torch.randn(1, 3, 32, 32)
    torch_keys = [k["key"] for k in cp.list_keys(model, (x,))]
    assert "features.1.block.1.scale_activation" in torch_keys   # SE gate (Hardsigmoid)
    onnx_keys = [k["key"] for k in cp.list_keys(export_quiet(model, tmp_path / "m.onnx", (1, 3, 32, 32), dynamo))]
    assert onnx_keys == torch_keys


# ----------------------------------------------------------------------------------- in-place writes


class UnusedInplaceRelu(nn.Module):
    """self.relu(x) with inplace=True and its result unused: x is changed, and the skip reads it."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, 1, 1)
        self.conv = nn.Conv2d(4, 4, 3, 1, 1)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        x = self.stem(x)
        h = self.conv(x)
        self.relu(x)
        return h + x


class WritesItsInput(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, 1, 1)
        self.act = nn.ReLU()

    def forward(self, x):
        x.mul_(2)
        return self.act(self.conv(x))


class BatchNormAfterInplaceWrite(nn.Module):
    """conv reads x, then x is written in place, then BN(conv): the folded conv must read x as conv did."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, 1, 1)
        self.bn = nn.BatchNorm2d(4)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        x = x * 1.0
        z = self.bn(self.conv(x))
        self.relu(x)
        return z + x.mean()


class IdentityThenInplaceWrite(nn.Module):
    """act (collapsed: identity) reads h, then h is written in place by r2: act's output keeps h's old value
    (as in the ONNX export, where the write is functionalized), it is not an alias of h."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 1)
        self.act, self.r2 = nn.ReLU(), nn.ReLU(inplace=True)

    def forward(self, x):
        h = self.c1(x)
        a = self.act(h)
        self.r2(h)
        return self.c2(a) + h


@pytest.mark.parametrize("cls,keys,shape", [
    (UnusedInplaceRelu, [], (1, 3, 8, 8)),
    (WritesItsInput, ["act"], (1, 3, 8, 8)),
    (BatchNormAfterInplaceWrite, [], (1, 3, 8, 8)),
    (IdentityThenInplaceWrite, ["act"], (1, 4, 8, 8)),
])
def test_in_place_writes_are_kept_and_read_in_order(cls, keys, shape):
    torch.manual_seed(0)
    model = randomize_bn(cls()).eval()
    ref = copy.deepcopy(model)
    for k in keys:
        setattr(ref, k, CloneIdentity())
    x = torch.randn(shape)
    x0 = x.clone()
    res = cp.collapse(model, collapse=keys, example_inputs=(x,))
    assert torch.equal(x, x0), "the caller's example input was written"
    assert res.passed
    with torch.no_grad():
        assert _close(res.model(x.clone()), ref(x.clone()))
        y = torch.randn(shape)
        assert _close(res.model(y.clone()), ref(y.clone()))


def test_one_call_of_a_shared_root_module_collapses_alone():
    """fx names the first call of root module `act` "act", the bare path that names both calls."""

    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.act = nn.Conv2d(4, 4, 1), nn.ReLU()

        def forward(self, x):
            return self.act(self.conv(self.act(self.conv(x))))

    torch.manual_seed(0)
    model = Shared().eval()
    x = torch.randn(1, 4, 8, 8)
    res = cp.collapse(model, collapse=["act:0"], example_inputs=(x,))
    with torch.no_grad():
        assert _close(res.model(x), model.act(model.conv(model.conv(x))))
    assert res.report["after"]["activations"] == 1


def test_torch_compile_backend_on_inplace_torchvision_resnet_matches_collapse():
    from models import build

    torch.manual_seed(0)
    model = randomize_bn(build("resnet18_tv", width=8, num_classes=10)).eval()
    x = torch.randn(1, 3, 32, 32)
    keys = [k["key"] for k in cp.list_keys(model, (x,))][::2]
    backend = cp.torch_backend(collapse=keys, inductor=False)
    torch._dynamo.reset()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = torch.compile(copy.deepcopy(model), backend=backend)(x.clone())
    want = cp.collapse(model, collapse=keys, example_inputs=(x,)).model(x.clone())
    assert backend.reports and backend.reports[0]["verification"]["passed"]
    assert _close(got, want)
    torch._dynamo.reset()


# ----------------------------------------------------------------------------------- whole models


def _relus_to_identity(model):
    for name, mod in list(model.named_modules()):
        for cname, child in list(mod.named_children()):
            if isinstance(child, (nn.ReLU, nn.ReLU6)):
                setattr(mod, cname, nn.Identity())
    return model


@pytest.mark.slow
@pytest.mark.parametrize("name,kw", [("resnet18_tv", dict(width=8, num_classes=10)),
                                     ("mobilenet_v2_tv", dict(width_mult=0.25, num_classes=10))])
def test_torchvision_layouts_at_224_collapse_everything_exactly(name, kw):
    from models import build

    from models.tv_init import calibrate_bn

    torch.manual_seed(0)
    model = build(name, **kw)
    # MobileNetV2: BN statistics from data (with fresh ones its logits differ by ~1e-8 between inputs)
    model = calibrate_bn(model, (2, 3, 224, 224)) if name == "mobilenet_v2_tv" else randomize_bn(model).eval()
    x = torch.randn(1, 3, 224, 224)
    keys = [k["key"] for k in cp.list_keys(model, (x,))]
    res = cp.collapse(model, collapse=keys, example_inputs=(x,))
    assert isinstance(res.model, torch.fx.GraphModule)
    ref = _relus_to_identity(copy.deepcopy(model))
    with torch.no_grad():
        assert _close(res.model(x.clone()), ref(x.clone()))
    assert res.report["after"]["nodes"] < res.report["before"]["nodes"]


# ----------------------------------------------------------------------------------- bad input


def test_bad_input_on_unseen_layouts_is_one_line():
    from models.mobilenet_v3 import mobilenet_v3_small

    model = mobilenet_v3_small(width_mult=0.25, num_classes=10, last_channel=32)
    x = torch.randn(1, 3, 32, 32)
    with pytest.raises(CollapseError, match="eval") as e:
        cp.collapse(model.train(), collapse=[], example_inputs=(x,))
    assert "\n" not in str(e.value)
    with pytest.raises(CollapseError, match="unknown layer key") as e:
        cp.collapse(model.eval(), collapse=["features.1.block.9.activation"], example_inputs=(x,))
    assert "\n" not in str(e.value)
    with pytest.raises(CollapseError, match="does not run on example_inputs of shape \\(1, 5, 32, 32\\)") as e:
        cp.collapse(model.eval(), collapse=[], example_inputs=(torch.randn(1, 5, 32, 32),))
    assert "\n" not in str(e.value)
