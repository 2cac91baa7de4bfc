"""torchvision-layout MobileNetV2 / V3 / EfficientNet-B0 with torchvision's init and BatchNorm statistics set from
data: their outputs depend on the input, so the collapse is checked against our own torch reference (the module
with the chosen activations replaced by their linear regime), and a corrupted result must fail the verification.
With PyTorch's default init (or torchvision's with fresh BN statistics) the logits differ by ~1e-8 between inputs:
every comparison on them passed whatever the collapse computed; the verification now warns about such models."""
from __future__ import annotations

import copy
import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import helper, numpy_helper
from torch import nn

import collapse_passes as cp
from collapse_passes.onnx.driver import requested_semantics
from collapse_passes.onnx.graph import to_graph
from collapse_passes.onnx.patterns import find_activations
from collapse_passes.verify import random_inputs, verify
from conftest import export_quiet, make_model, randomize_bn, rnd, vinfo
from models import build
from models.tv_init import calibrate_bn, torchvision_init

TINY = {"mobilenet_v2_tv": dict(width_mult=0.25, num_classes=10),
        "mobilenet_v3_small": dict(width_mult=0.25, num_classes=10, last_channel=64),
        "efficientnet_b0": dict(width_mult=0.25, depth_mult=0.34, num_classes=10)}
SIZE = 32


def _tiny(name, seed=0):
    torch.manual_seed(seed)
    return calibrate_bn(build(name, **TINY[name]), (8, 3, SIZE, SIZE), seed=seed)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    d = tmp_path_factory.mktemp("tv_init")
    cache = {}

    def get(name, dynamo):
        if (name, dynamo) not in cache:
            m = _tiny(name)
            cache[name, dynamo] = (export_quiet(m, d / f"{name}_{int(dynamo)}.onnx", (1, 3, SIZE, SIZE), dynamo), m)
        return cache[name, dynamo]

    return get


class _HardsigmoidLinear(nn.Module):
    def forward(self, x):
        return x / 6.0 + 0.5   # torch's Hardsigmoid on its linear piece


def _linearized(model, keys):
    """A copy of `model` with the activation modules at `keys` replaced by their linear regime."""
    m = copy.deepcopy(model)
    for k in keys:
        parent, _, attr = k.rpartition(".")
        owner = m.get_submodule(parent) if parent else m
        old = owner[int(attr)] if attr.isdigit() else getattr(owner, attr)
        assert type(old).__name__ in ("ReLU", "ReLU6", "Hardswish", "SiLU", "Hardsigmoid"), (k, old)
        new = _HardsigmoidLinear() if isinstance(old, nn.Hardsigmoid) else nn.Identity()
        if attr.isdigit():
            owner[int(attr)] = new
        else:
            setattr(owner, attr, new)
    return m.eval()


def _ort(model, x):
    s = ort.InferenceSession(model if isinstance(model, str) else model.SerializeToString(),
                             providers=["CPUExecutionProvider"])
    return np.concatenate([s.run(None, {"input": x[i:i + 1]})[0] for i in range(len(x))])


def _rel(a, b):
    return float(np.max(np.abs(a - b)) / np.sqrt(np.mean(b.astype(np.float64) ** 2)))


# ------------------------------------------------------------------------------------------ the models


@pytest.mark.parametrize("name", ["mobilenet_v2_tv", "mobilenet_v3_small", "efficientnet_b0"])
def test_torchvision_init_and_calibrated_outputs_depend_on_the_input(name):
    m = _tiny(name)
    for mod in m.modules():
        if isinstance(mod, nn.Conv2d):   # Kaiming normal, fan_out = out_channels * k * k (groups ignored)
            fan_out = mod.out_channels * mod.kernel_size[0] * mod.kernel_size[1]
            if mod.weight.numel() >= 256:
                assert mod.weight.std().item() == pytest.approx(math.sqrt(2.0 / fan_out), rel=0.25)
            assert mod.bias is None or not mod.bias.any()
        elif isinstance(mod, nn.Linear):
            bound = 1.0 / math.sqrt(mod.out_features)
            if name == "efficientnet_b0":
                assert mod.weight.abs().max().item() <= bound
            else:
                assert mod.weight.std().item() == pytest.approx(0.01, rel=0.25)
    x = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = m(x).numpy()
    assert _rel(y[0], y[1]) > 0.05   # the logits of two inputs differ on the scale of the logits


def test_torchvision_init_refuses_an_unknown_linear_rule():
    with pytest.raises(ValueError):
        torchvision_init(nn.Linear(2, 2), linear="xavier")


# ----------------------------------------------------------------------- collapse vs our torch reference


# MobileNetV2-tv against its eager reference: test_adv5_shapes (dynamic batch) and test_bias_maps
@pytest.mark.parametrize("name,dynamo", [("mobilenet_v3_small", False), ("mobilenet_v3_small", True),
                                         ("efficientnet_b0", False)])
def test_collapse_matches_own_torch_reference(exported, name, dynamo):
    p, m = exported(name, dynamo)
    keys = [d["key"] for d in cp.list_keys(p)]
    # every third key from the third: EfficientNet-B0 with keys[::3] collapsed has logits ~4e5 and is so
    # ill-conditioned that float32 programs differ by 2e-3 among themselves (torch with 1 or 2 threads, onnxruntime)
    chosen = keys[2::3]
    r = cp.collapse(p, collapse=chosen)
    assert r.passed and sorted(a["key"] for a in r.report["activations"] if a["collapsed"]) == sorted(chosen)
    x = np.random.default_rng(2).standard_normal((2, 3, SIZE, SIZE)).astype(np.float32)
    with torch.no_grad():
        want = _linearized(m, chosen)(torch.from_numpy(x)).numpy()
        orig = m(torch.from_numpy(x)).numpy()
    got = _ort(r.model, x)
    assert _rel(got, want) < 1e-3
    assert _rel(got, orig) > 1e-2   # the collapse changed the function: the comparison above can fail


# ------------------------------------------------------------------------------ the verification can fail


def _chosen_names(model, report):
    """ONNX names of the activations the report says were collapsed (what requested_semantics takes)."""
    nodes = {n for a in report["activations"] if a["collapsed"] for n in a["nodes"]}
    return {a.name for a in find_activations(to_graph(model)) if a.name in nodes}


def _corrupt_dense_conv(model):
    """The result with one weight of a dense conv in the middle of the graph scaled by 1.5."""
    bad = onnx.ModelProto()
    bad.CopyFrom(model)
    convs = [n for n in bad.graph.node if n.op_type == "Conv" and all(a.i == 1 for a in n.attribute if a.name == "group")]
    w_name = convs[len(convs) // 2].input[1]
    t = next(t for t in bad.graph.initializer if t.name == w_name)
    w = numpy_helper.to_array(t).copy()
    w.flat[int(np.argmax(np.abs(w)))] *= 1.5
    t.CopyFrom(numpy_helper.from_array(w, w_name))
    return bad


@pytest.mark.parametrize("name", ["mobilenet_v3_small", "efficientnet_b0"])
def test_verification_rejects_a_corrupted_result(exported, name):
    p, _ = exported(name, False)
    original = onnx.load(p)
    # SE gates kept: linearized Hardsigmoid gates multiply the signal up ~1e3x, and one weight off elsewhere is
    # then below rtol of the logits
    keys = [d["key"] for d in cp.list_keys(p) if "scale_activation" not in d["key"]][::3]
    r = cp.collapse(p, collapse=keys)
    result = r.model
    requested = requested_semantics(original, _chosen_names(original, r.report))
    assert len(_chosen_names(original, r.report)) == len(keys)
    feeds = random_inputs(original, 2, 0)
    ok = verify(original, requested, result, feeds, 1e-4, 1e-5, "2 random inputs")
    assert ok.against_requested.passed and not ok.warnings
    bad = verify(original, requested, _corrupt_dense_conv(result), feeds, 1e-4, 1e-5, "2 random inputs")
    assert not bad.against_requested.passed


def test_model_whose_outputs_barely_depend_on_the_input_is_warned(tmp_path):
    """y = relu(conv(1e-6 * x) + 1): distinct inputs give outputs ~1e-6 apart (not identical), inside rtol 1e-4."""
    c = 4
    nodes = [helper.make_node("Mul", ["x", "tiny"], ["h"], name="mul"),
             helper.make_node("Conv", ["h", "w1", "b1"], ["h2"], kernel_shape=[1, 1], name="c1"),
             helper.make_node("Relu", ["h2"], ["y"], name="act")]
    inits = {"w1": rnd(c, c, 1, 1), "b1": np.ones(c, np.float32), "tiny": np.full((1,), 1e-6, np.float32)}
    onnx.save(make_model(nodes, [vinfo("x", [1, c, 6, 6])], [vinfo("y", [1, c, 6, 6])], inits), tmp_path / "k.onnx")
    r = cp.collapse(str(tmp_path / "k.onnx"), collapse=["act"])
    assert any("barely depend on its input" in w for w in r.report["warnings"]), r.report["warnings"]
    inits["tiny"] = np.ones((1,), np.float32)   # the same graph on an input it sees: no warning
    onnx.save(make_model(nodes, [vinfo("x", [1, c, 6, 6])], [vinfo("y", [1, c, 6, 6])], inits), tmp_path / "n.onnx")
    r = cp.collapse(str(tmp_path / "n.onnx"), collapse=["act"])
    assert not any("depend on its input" in w for w in r.report["warnings"]), r.report["warnings"]


def test_fresh_batchnorm_mobilenet_is_warned_not_silently_passed(tmp_path):
    """The degenerate models the tests used before: PyTorch's default init, random BN statistics."""
    torch.manual_seed(0)
    m = randomize_bn(build("mobilenet_v3_small", tv_init=False, **TINY["mobilenet_v3_small"]).eval())
    p = export_quiet(m, tmp_path / "d.onnx", (1, 3, SIZE, SIZE), False)
    r = cp.collapse(p, collapse=[d["key"] for d in cp.list_keys(p)][::3])
    assert any("barely depend on its input" in w for w in r.report["warnings"]), r.report["warnings"]


def test_layers_without_bias_or_affine_parameters_are_left_as_they_are():
    """Swin's layouts hold nn.Linear(bias=False): torchvision_init stopped with an AttributeError on them (H2,
    adversarial round 13); a BatchNorm2d(affine=False) has no weight to set either."""
    import torch.nn as nn

    from models.tv_init import torchvision_init

    m = nn.Sequential(nn.Conv2d(3, 4, 1, bias=False), nn.BatchNorm2d(4, affine=False), nn.Flatten(),
                      nn.Linear(4 * 2 * 2, 3, bias=False))
    for linear in ("normal", "uniform"):
        torchvision_init(m, linear)
    assert m[3].bias is None and m[1].weight is None
