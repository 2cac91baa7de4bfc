"""Tests for the reference models in ``models/`` (tiny sizes, CPU, fast)."""

from __future__ import annotations

import ast
import os

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from models import MODELS, build
from models.export import export_onnx, node_module_path



@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models: one intra-op thread is faster (and immune to OpenMP spinning
    on a busy 2-core machine, which made some calls ~50x slower)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


# name -> (tiny builder kwargs, input shape)
TINY = {
    "resnet18": (dict(width=4), (2, 3, 16, 16)),
    "mobilenet_v2": (dict(width_mult=0.25), (2, 3, 16, 16)),
    "vgg16_bn": (dict(width=4, pools=3, in_channels=1), (2, 1, 8, 8)),
    "swin_t": (dict(img_size=8, patch=2, dim=16, depth=2, heads=2), (2, 3, 8, 8)),
}


def _tiny(name: str, num_classes: int = 10) -> tuple[nn.Module, tuple]:
    kw, shape = TINY[name]
    torch.manual_seed(0)
    model = build(name, num_classes=num_classes, **kw)
    _randomize_norm_stats(model)
    return model.eval(), shape


def _randomize_norm_stats(model: nn.Module) -> None:
    """Non-trivial BN/LN parameters so an exported folding error would show."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            elif isinstance(m, nn.LayerNorm):
                m.weight.copy_(torch.rand(m.normalized_shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.normalized_shape, generator=g) * 0.1)


# --------------------------------------------------------------------------- build


def test_registry_names():
    assert set(MODELS) == {"resnet18", "resnet18_tv", "mobilenet_v2", "mobilenet_v2_tv", "mobilenet_v3_small",
                           "mobilenet_v3_large", "efficientnet_b0", "vgg16_bn", "swin_t", "swin_t_tv",
                           "resnet50_tv", "resnext50_32x4d_tv", "wide_resnet50_2_tv",
                           "efficientnet_v2_s", "swin_v2_t"}
    with pytest.raises(KeyError):
        build("nope")


@pytest.mark.parametrize("name", sorted(TINY))
def test_forward_shape(name):
    model, shape = _tiny(name, num_classes=7)
    with torch.no_grad():
        y = model(torch.randn(*shape))
    assert y.shape == (shape[0], 7)
    assert torch.isfinite(y).all()


# parameter counts of the standard CIFAR variants (10 classes)
FULL_PARAMS = {
    "resnet18": 11_173_962,
    "mobilenet_v2": 2_236_682,
    "vgg16_bn": 14_728_266,
    "swin_t": 459_370,
}


@pytest.mark.parametrize("name", sorted(FULL_PARAMS))
def test_full_size_param_count(name):
    model = build(name)
    assert sum(p.numel() for p in model.parameters()) == FULL_PARAMS[name]


def test_full_size_resnet_forward():
    model = build("resnet18").eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_resnet18_relus():
    model = build("resnet18", width=8)
    relus = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.ReLU)]
    assert len(relus) == 17
    assert len({id(m) for _, m in relus}) == 17  # no shared instance
    names = [n for n, _ in relus]
    assert names[0] == "relu"
    assert "layer1.0.relu1" in names and "layer4.1.relu2" in names
    expected = ["relu"] + [f"layer{s}.{b}.relu{k}" for s in range(1, 5) for b in range(2) for k in (1, 2)]
    assert names == expected
    # shortcut convs exactly where the shape changes
    sc = [n for n, m in model.named_modules() if n.endswith("shortcut") and isinstance(m, nn.Sequential)]
    assert sc == ["layer2.0.shortcut", "layer3.0.shortcut", "layer4.0.shortcut"]
    # width scales all stages
    assert model.layer4[1].conv2.out_channels == 64 and model.fc.in_features == 64


def test_mobilenet_structure():
    model = build("mobilenet_v2")
    acts = {n for n, m in model.named_modules() if isinstance(m, nn.ReLU6)}
    n_blocks = sum(n for _, _, n, _ in [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2),
                                        (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)])
    assert n_blocks == 17 and len(model.features) == 18
    # stem + head + 1 (first block, no expand) + 2 per other block
    assert len(acts) == 2 + 1 + 2 * 16
    assert "features.3.act1" in acts and "features.3.act2" in acts
    assert "features.1.act1" not in acts and "features.1.act2" in acts
    assert not hasattr(model.features[1], "expand")
    ids = [id(m) for m in model.modules() if isinstance(m, nn.ReLU6)]
    assert len(set(ids)) == len(ids)
    res = [i for i in range(1, 18) if model.features[i].use_residual]
    assert res == [3, 5, 6, 8, 9, 10, 12, 13, 15, 16]


def test_vgg_structure_and_pools():
    model = build("vgg16_bn", width=8)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    pools = [m for m in model.modules() if isinstance(m, nn.MaxPool2d)]
    assert len(convs) == 13 and len(relus) == 13 and len(pools) == 5
    assert isinstance(model.features[2], nn.ReLU)
    small = build("vgg16_bn", width=8, pools=3).eval()
    assert sum(isinstance(m, nn.MaxPool2d) for m in small.modules()) == 3
    with torch.no_grad():
        assert small(torch.randn(1, 3, 8, 8)).shape == (1, 10)


def test_swin_structure():
    model = build("swin_t", dim=16, depth=3, heads=2)
    names = dict(model.named_modules())
    for i in range(3):
        act = names[f"blocks.{i}.mlp.act"]
        assert isinstance(act, nn.GELU) and act.approximate == "none"
        assert names[f"blocks.{i}.mlp.fc1"].out_features == 64
        assert isinstance(names[f"blocks.{i}.norm1"], nn.LayerNorm)
        assert isinstance(names[f"blocks.{i}.norm2"], nn.LayerNorm)
    assert not any(isinstance(m, nn.MultiheadAttention) for m in model.modules())


# --------------------------------------------------------------------------- export


def _node_scopes(node) -> list[str]:
    for p in node.metadata_props:
        if p.key == "pkg.torch.onnx.name_scopes":
            return ast.literal_eval(p.value)
    return []


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
@pytest.mark.parametrize("name", sorted(TINY))
def test_export_matches_torch(name, dynamo, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    model, shape = _tiny(name)
    out = export_onnx(model, tmp_path / f"{name}.onnx", shape, dynamo=dynamo)
    assert out == str(tmp_path / f"{name}.onnx")
    assert os.listdir(tmp_path) == [f"{name}.onnx"]  # self-contained, no external data

    proto = onnx.load(out)
    onnx.checker.check_model(proto, full_check=True)
    assert not any(
        t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer
    )
    opset = {o.domain: o.version for o in proto.opset_import}[""]
    assert opset == (18 if dynamo else 17)
    assert [i.name for i in proto.graph.input] == ["input"]
    assert [o.name for o in proto.graph.output] == ["logits"]
    in_dims = [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert in_dims == list(shape)  # static

    # every node the exporter attributes to a module maps to a real module path
    modules = dict(model.named_modules())
    paths = [node_module_path(n) for n in proto.graph.node]
    if dynamo:
        assert all(p is not None for p in paths)
    resolved = {p for p in paths if p is not None}
    assert resolved <= set(modules), sorted(resolved - set(modules))
    act_type = {"resnet18": nn.ReLU, "vgg16_bn": nn.ReLU, "mobilenet_v2": nn.ReLU6, "swin_t": nn.GELU}[name]
    acts = {n for n, m in modules.items() if isinstance(m, act_type)}
    assert acts <= resolved  # every activation module is visible in the graph

    x = torch.randn(*shape)
    with torch.no_grad():
        ref = model(x).numpy()
    sess = ort.InferenceSession(out, providers=["CPUExecutionProvider"])
    got = sess.run(["logits"], {"input": x.numpy()})[0]
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_export_resnet_relu_names(dynamo, tmp_path):
    """Module paths can be recovered from each exporter's node names / metadata."""
    model, shape = _tiny("resnet18")
    proto = onnx.load(export_onnx(model, tmp_path / "r.onnx", shape, dynamo=dynamo))
    relus = [n for n in proto.graph.node if n.op_type == "Relu"]
    assert len(relus) == 17
    expected = ["relu"] + [f"layer{s}.{b}.relu{k}" for s in range(1, 5) for b in range(2) for k in (1, 2)]
    if dynamo:
        # names like node_relu_3; module path in metadata name_scopes[-2]
        assert relus[1].name == "node_relu_1"
        assert _node_scopes(relus[1]) == ["", "layer1", "layer1.0", "layer1.0.relu1", "relu_1"]
        assert [_node_scopes(n)[-2] for n in relus] == expected
    else:
        # names like /layer1/layer1.0/relu1/Relu, no metadata
        assert relus[1].name == "/layer1/layer1.0/relu1/Relu"
        assert not relus[1].metadata_props
    assert [node_module_path(n) for n in relus] == expected


def test_export_opset_clamped_for_dynamo(tmp_path):
    model, shape = _tiny("vgg16_bn")
    p = export_onnx(model, tmp_path / "v.onnx", shape, dynamo=True, opset=17)
    assert {o.domain: o.version for o in onnx.load(p).opset_import}[""] == 18


# --------------------------------------------------------------------------- digits


def test_digits_tensors():
    pytest.importorskip("sklearn")
    from models.digits import load_digits_tensors

    x_tr, y_tr, x_te, y_te = load_digits_tensors()
    assert x_tr.shape == (1397, 1, 8, 8) and x_te.shape == (400, 1, 8, 8)
    assert x_tr.dtype == torch.float32 and y_tr.dtype == torch.int64
    assert abs(float(x_tr.mean())) < 1e-3 and abs(float(x_tr.std()) - 1) < 1e-2
    assert set(y_te.tolist()) == set(range(10))
    x2, y2, _, _ = load_digits_tensors()
    assert torch.equal(x2, x_tr) and torch.equal(y2, y_tr)  # fixed split
    x3, _, x3_te, _ = load_digits_tensors(size=16, channels=3)
    assert x3.shape == (1397, 3, 16, 16) and x3_te.shape == (400, 3, 16, 16)
    assert torch.equal(x3[:, 0], x3[:, 2])


@pytest.mark.slow
def test_digits_training_and_cache(tmp_path):
    pytest.importorskip("sklearn")
    from models.digits import train_digits_model

    model, acc = train_digits_model("swin_t", epochs=4, cache_dir=tmp_path)
    assert acc > 0.3  # well above chance (0.1) even after a very short run
    files = [f for f in os.listdir(tmp_path) if f.endswith(".pt")]
    assert len(files) == 1 and not any(f.startswith(".tmp") for f in os.listdir(tmp_path))
    model2, acc2 = train_digits_model("swin_t", epochs=4, cache_dir=tmp_path)
    assert acc2 == acc
    for (k, v), (k2, v2) in zip(model.state_dict().items(), model2.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    assert model2.digits_input_shape == (1, 1, 8, 8)
