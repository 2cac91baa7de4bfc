"""Activation keys of real-world module names on the ONNX front end (H3, adversarial round 12).

- Modules named like TorchScript's numbered repeat calls (`relu`, `relu_1`, `relu_2`: three modules, as fx
  codegen and many hand-written models name them) were keyed relu:0, relu:1, relu:2 on *both* exporters: the
  TorchScript renumbering was applied to the torch.export exporter's exact module paths too, so
  `--collapse relu` collapsed three modules and the torch front end's keys (relu_1) were refused.
- The key --list-keys / --save-scores / the report print first must name that activation alone and be
  usable in `--collapse K1,K2`: a node named "relu()" (also the name of every root relu) or "re,lu" was
  printed as the key, and giving it back collapsed all root relus / was refused."""
from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper

import collapse_passes as cp
from collapse_passes.cli import main
from conftest import export_quiet, make_model, rnd, vinfo


def _nets():
    import torch.nn as nn

    class Three(nn.Module):
        """Three modules named relu, relu_1, relu_2 (the last a ReLU6), each called once."""

        def __init__(self, c=6):
            super().__init__()
            self.conv, self.conv_1, self.conv_2 = nn.Conv2d(3, c, 3, 1, 1), nn.Conv2d(c, c, 1), nn.Conv2d(c, c, 1)
            self.relu, self.relu_1, self.relu_2 = nn.ReLU(), nn.ReLU(), nn.ReLU6()
            self.fc = nn.Linear(c, 4)

        def forward(self, x):
            x = self.relu_2(self.conv_2(self.relu_1(self.conv_1(self.relu(self.conv(x))))))
            return self.fc(x.mean((2, 3)))

    class Twice(nn.Module):
        """Module relu called twice and a module relu_1 between the calls."""

        def __init__(self, c=6):
            super().__init__()
            self.conv, self.conv_1, self.conv_2 = nn.Conv2d(3, c, 3, 1, 1), nn.Conv2d(c, c, 1), nn.Conv2d(c, c, 1)
            self.relu, self.relu_1 = nn.ReLU(), nn.ReLU()
            self.fc = nn.Linear(c, 4)

        def forward(self, x):
            x = self.relu(self.conv_2(self.relu_1(self.conv_1(self.relu(self.conv(x))))))
            return self.fc(x.mean((2, 3)))

    return Three, Twice


def _build(cls):
    import torch

    torch.manual_seed(0)
    m = cls().eval()
    with torch.no_grad():   # shift the convs so that every ReLU cuts: each collapse changes the output
        for mod in m.modules():
            if isinstance(mod, torch.nn.Conv2d):
                mod.bias.add_(-0.2)
    return m


@pytest.mark.parametrize("which,want", [(0, ["relu", "relu_1", "relu_2"]), (1, ["relu:0", "relu_1", "relu:1"])])
def test_dynamo_keys_are_the_module_paths(tmp_path, which, want):
    """torch.export's metadata names each call's module exactly: the ONNX keys are the torch front end's."""
    import torch

    m = _build(_nets()[which])
    x = torch.randn(1, 3, 11, 9)
    assert [r["key"] for r in cp.list_keys(m, example_inputs=(x,))] == want
    p = export_quiet(m, tmp_path / "m.onnx", (1, 3, 11, 9), True)
    assert [r["key"] for r in cp.list_keys(p)] == want


def test_dynamo_bare_path_collapses_only_its_module(tmp_path):
    """`--collapse relu` on a model with modules relu and relu_1 collapses relu alone (it collapsed both)."""
    import torch

    m = _build(_nets()[0])
    p = export_quiet(m, tmp_path / "m.onnx", (1, 3, 11, 9), True)
    out = tmp_path / "o.onnx"
    assert main([p, "--collapse", "relu", "-o", str(out), "--report", str(tmp_path / "r.json"), "-q"]) == 0
    rep = json.loads((tmp_path / "r.json").read_text())
    assert [a["key"] for a in rep["activations"] if a["collapsed"]] == ["relu"]
    x = np.random.default_rng(0).standard_normal((1, 3, 11, 9)).astype(np.float32)
    m.relu.forward = lambda t: t   # the reference by hand: module relu in its linear regime, the others kept
    with torch.no_grad():
        want = m(torch.from_numpy(x)).numpy()
        orig = _build(_nets()[0])(torch.from_numpy(x)).numpy()
    got = ort.InferenceSession(str(out)).run(None, {"input": x})[0]
    assert np.abs(want - orig).max() > 1e-3          # the collapse matters
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_torchscript_numbered_scope_of_another_kind_is_its_own_module(tmp_path):
    """TorchScript writes a module relu_1 and relu's second call alike (`/relu_1/Relu`), so those stay read as
    calls of relu (README: the exporter's documented exception); but `/relu_2/Clip` cannot be a call of the
    ReLU `relu`: it is the module relu_2."""
    m = _build(_nets()[0])
    p = export_quiet(m, tmp_path / "m.onnx", (1, 3, 11, 9), False)
    keys = [r["key"] for r in cp.list_keys(p)]
    assert keys == ["relu:0", "relu:1", "relu_2"]
    res = cp.collapse(p, collapse=["relu"])
    assert [a["key"] for a in res.report["activations"] if a["collapsed"]] == ["relu:0", "relu:1"]


def _chain(names, path):
    nodes, inits, x = [], {}, "x"
    for i in range(len(names) + 1):
        inits[f"w{i}"], inits[f"b{i}"] = rnd(6, 6 if i else 3, 1, 1, seed=i), rnd(6, seed=10 + i)
        nodes.append(helper.make_node("Conv", [x, f"w{i}", f"b{i}"], [f"c{i}"], name=f"conv{i}"))
        x = f"c{i}"
        if i < len(names):
            nodes.append(helper.make_node("Relu", [x], [f"r{i}"], name=names[i]))
            x = f"r{i}"
    nodes[-1].output[0] = "y"
    onnx.save(make_model(nodes, [vinfo("x", [1, 3, 5, 4])], [vinfo("y", [1, 6, 5, 4])], inits), str(path))
    return str(path)


def test_listed_keys_name_one_activation_and_go_back_to_collapse(tmp_path, capsys):
    """Every key --list-keys prints first is accepted by --collapse and collapses that activation alone."""
    names = ["re,lu", "relu()", "a\tb", "plain"]
    p = _chain(names, tmp_path / "w.onnx")
    capsys.readouterr()
    assert main([p, "--list-keys"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(names)                  # a tab or newline in a name breaks no line
    keys = [ln.split("\t")[0] for ln in lines]
    assert keys[1] != "relu()" and keys[3] == "plain"
    for i, k in enumerate(keys):
        rep = tmp_path / f"r{i}.json"
        assert main([p, "--collapse", k, "--dry-run", "--report", str(rep), "-q"]) == 0, k
        got = [a["key"] for a in json.loads(rep.read_text())["activations"] if a["collapsed"]]
        assert got == [k], (k, got)
