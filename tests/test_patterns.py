"""Activation patterns and key resolution on graphs from both torch exporters."""
import contextlib
import io
import warnings

import onnx
import pytest

from collapse_passes import list_keys
from collapse_passes.onnx.graph import node_key_names, to_graph
from collapse_passes.onnx.keys import module_path_from_scope_name, resolve_keys
from collapse_passes.onnx.patterns import find_activations


def _zoo():
    import torch.nn as nn

    class Zoo(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(4, 4, 1)
            self.relu = nn.ReLU()
            self.acts = nn.ModuleList([nn.SiLU(), nn.Hardswish(), nn.ReLU6(), nn.LeakyReLU(0.1), nn.PReLU(4),
                                       nn.ELU(), nn.SELU(), nn.GELU(), nn.GELU(approximate="tanh"), nn.Hardsigmoid(),
                                       nn.Mish()])

        def forward(self, x):
            x = self.relu(self.conv(x))
            x = self.conv(x)
            x = self.relu(x)      # the same module called twice
            for a in self.acts:
                x = a(x)
            return x

    return Zoo().eval()


EXPECTED = ["silu", "hardswish", "relu6", "leaky_relu", "prelu", "elu", "selu", "gelu", "gelu_tanh",
            "hardsigmoid", "mish"]


@pytest.mark.parametrize("dynamo", [False, True])
def test_every_activation_kind_found_once_with_module_key(tmp_path, dynamo):
    from conftest import export_quiet

    p = export_quiet(_zoo(), tmp_path / "zoo.onnx", (1, 4, 6, 6), dynamo)
    rows = list_keys(p)
    by_key = {}
    for r in rows:
        by_key.setdefault(r["key"], []).append(r["kind"])
    assert by_key["relu:0"] == ["relu"] and by_key["relu:1"] == ["relu"], "a module called twice: one key per call"
    assert [r["module"] for r in rows[:2]] == ["relu", "relu"] and all("relu" in r["keys"] for r in rows[:2])
    for i, kind in enumerate(EXPECTED):
        assert by_key[f"acts.{i}"] == [kind], (i, kind, by_key.get(f"acts.{i}"))
    assert len(rows) == 2 + len(EXPECTED)


def test_scope_name_paths():
    assert module_path_from_scope_name("/layer1/layer1.0/relu1/Relu") == "layer1.0.relu1"
    assert module_path_from_scope_name("/features/features.3/act1/Clip") == "features.3.act1"
    assert module_path_from_scope_name("/relu/Relu") == "relu"
    assert module_path_from_scope_name("node_relu_3") is None


@pytest.mark.parametrize("dynamo", [False, True])
def test_resnet_keys_are_module_paths(exported, dynamo):
    keys = [r["key"] for r in list_keys(exported("resnet18", dynamo))]
    assert len(keys) == 17
    assert keys[0] == "relu"
    assert "layer1.0.relu1" in keys and "layer4.1.relu2" in keys


def test_region_with_nonscalar_constants_is_not_an_activation():
    import numpy as np
    from onnx import helper

    from conftest import make_model, vinfo

    # x * sigmoid(x * w) with a per-channel w is a gate, not a SiLU: left alone
    nodes = [helper.make_node("Mul", ["x", "w"], ["xw"]), helper.make_node("Sigmoid", ["xw"], ["s"]),
             helper.make_node("Mul", ["x", "s"], ["y"])]
    m = make_model(nodes, [vinfo("x", [1, 3, 2, 2])], [vinfo("y", [1, 3, 2, 2])],
                   {"w": np.arange(1, 4, dtype=np.float32).reshape(1, 3, 1, 1)})
    assert find_activations(to_graph(m)) == []


def test_scaled_silu_is_not_silu():
    import numpy as np
    from onnx import helper

    from conftest import make_model, vinfo

    nodes = [helper.make_node("Sigmoid", ["x"], ["s"]), helper.make_node("Mul", ["x", "s"], ["m"]),
             helper.make_node("Mul", ["m", "c"], ["y"])]
    m = make_model(nodes, [vinfo("x", [1, 3])], [vinfo("y", [1, 3])], {"c": np.float32(2.0)})
    acts = find_activations(to_graph(m))
    # the inner x*sigmoid(x) is a SiLU; the outer *2 is a linear scale and stays outside it
    assert [a.kind for a in acts] == ["silu"]
    assert acts[0].output.name == "m"
