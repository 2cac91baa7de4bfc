"""Results of models written under `from __future__ import annotations` script and pickle.

Under PEP 563 fx copied each forward annotation as the string 'torch.Tensor' and wrote it into the generated
code as `_torch_Tensor_`: torch.jit.script of collapse()'s result failed ("Unknown type name '_torch_Tensor_'")
and torch.save of the whole GraphModule raised AttributeError ('str' object has no attribute '__name__'), on
every layout in models/ (all of them use the future import). Same for prune_module's result and the training
loop's traced blocks.
"""
from __future__ import annotations

import copy
import io
from typing import Optional

import pytest
import torch
from torch import nn

import collapse_passes as cp


class _Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor, scale: Optional[torch.Tensor] = None) -> torch.Tensor:
        y = self.conv2(self.relu(self.bn(self.conv1(x))))
        return y if scale is None else y * scale


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = _Block()
        self.b = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.a(x))


def _model():
    torch.manual_seed(0)
    m = _Net().eval()
    with torch.no_grad():
        m.a.bn.running_mean.uniform_(-0.5, 0.5)
        m.a.bn.running_var.uniform_(0.5, 1.5)
    return m


def _scripts_and_pickles(g, x):
    with torch.no_grad():
        y = g(x)
        assert torch.allclose(torch.jit.script(g)(x), y, atol=1e-6)
        buf = io.BytesIO()
        torch.save(g, buf)
        buf.seek(0)
        assert torch.allclose(torch.load(buf, weights_only=False)(x), y, atol=1e-6)


def test_placeholders_carry_types_not_strings():
    m, x = _model(), torch.randn(2, 3, 8, 8)
    res = cp.collapse(m, example_inputs=(x,), collapse=["a.relu"])
    types = {n.op: n.type for n in res.model.graph.nodes if n.op in ("placeholder", "output")}
    assert types == {"placeholder": torch.Tensor, "output": torch.Tensor}
    assert "_torch_Tensor_" not in res.model.code


def test_collapse_result_scripts_and_pickles():
    m, x = _model(), torch.randn(2, 3, 8, 8)
    _scripts_and_pickles(cp.collapse(m, example_inputs=(x,), collapse=["a.relu"]).model, x)


def test_models_layout_result_scripts_and_pickles():
    from models import build

    m, x = build("mobilenet_v3_small", width_mult=0.25, num_classes=10).eval(), torch.randn(1, 3, 32, 32)
    _scripts_and_pickles(cp.collapse(m, example_inputs=(x,), collapse=["features.1.block.1.activation"]).model, x)


def test_prune_module_result_scripts_and_pickles():
    from collapse_passes.pruning.fx_adapter import prune_module

    m, x = _model(), torch.randn(2, 3, 8, 8)
    g = prune_module(m, (x,), ratio=0.25)[0]
    _scripts_and_pickles(g, x)


def test_unresolvable_annotation_is_dropped_not_kept_as_a_name():
    class Odd(nn.Module):
        def forward(self, x: NoSuchType) -> torch.Tensor:  # noqa: F821 - a name the module does not define
            return torch.relu(x) * 2

    x = torch.randn(2, 3)
    res = cp.collapse(Odd().eval(), example_inputs=(x,))
    assert [n.type for n in res.model.graph.nodes if n.op == "placeholder"] == [None]
    _scripts_and_pickles(res.model, x)


def test_training_loop_result_scripts_and_pickles():
    """One call of torchvision's shared BasicBlock.relu collapsed: the loop traces the block (train/sites.py)."""
    from collapse_passes.train import iterative_collapse
    from models import build

    torch.manual_seed(0)
    m = build("resnet18_tv", width=8, num_classes=10).eval()
    x, y = torch.randn(128, 3, 16, 16), torch.randint(0, 10, (128,))
    r = iterative_collapse(m, "easier", (x, y), (x, y), max_rounds=1, steps_per_round=1, max_accuracy_drop=1.0,
                           predict=False)
    assert r.collapsed and ":" in r.collapsed[0]   # a call of a shared module: its block was traced
    _scripts_and_pickles(r.model.eval(), x[:2])
