"""torch_backend with a graph break inside a module (a print, `.item()`, an unsupported call in a block).

Dynamo then compiles the block's forward as a frame of its own, and the rest after the break as a resume
function. Before 2026-11-29, under the backend:
- every instance of the block class ran the first instance's weights: dynamo passes parameters as inputs and
  reused one compiled graph for every block, and the backend froze the first block's into it (ResNet-18 off by
  5-12, each graph's own check passing);
- the block's modules were keyed relative to the block (`relu`, the stem's key), and fx node names, which
  repeat across dynamo graphs, were keys too: collapse=["relu"] collapsed 15 ReLUs of ResNet-18, not the stem's;
- a call index restarted at 0 in the resume graph: `path:0` named the block's second call too.
"""
from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import collapse_passes as cp


class _Blk(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(4, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.c2 = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        y = self.relu(self.c1(x))
        torch._dynamo.graph_break()
        return self.relu(self.c2(y) + x)


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.layer = nn.Sequential(_Blk(), _Blk(), _Blk())

    def forward(self, x):
        return self.layer(self.relu(self.stem(x)))


@pytest.fixture()
def net():
    torch.manual_seed(0)
    torch._dynamo.reset()
    yield _Net().eval(), torch.randn(2, 3, 8, 8)
    torch._dynamo.reset()


def _compiled(m, x, **kw):
    be = cp.torch_backend(inductor=False, **kw)
    c = torch.compile(m, backend=be)
    with torch.no_grad(), warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        c(x)
        y = c(x)   # the second call checks the keys
    return y, be, [str(i.message) for i in w if "torch_backend" in str(i.message)]


def test_each_block_runs_its_own_weights(net):
    m, x = net
    y, _, _ = _compiled(m, x)
    with torch.no_grad():
        assert torch.allclose(y, m(x), atol=1e-5)


@pytest.mark.parametrize("keys", [["relu"], ["layer.1.relu"], ["layer.2.relu:0"], ["layer.0.relu:1"]])
def test_keys_name_the_sites_collapse_names(net, keys):
    m, x = net
    want = cp.collapse(m, example_inputs=(x,), collapse=keys).model
    y, be, warned = _compiled(m, x, collapse=keys)
    collapsed = sorted(k for r in be.reports for k in r["collapsed"])
    if keys == ["layer.0.relu:1"]:   # the second call lies in the resume graph: no call index there, said
        assert collapsed == [] and any("'layer.0.relu:1'" in w and "did you mean" in w for w in warned)
        with torch.no_grad():
            assert torch.allclose(y, m(x), atol=1e-5)
        return
    assert not warned
    with torch.no_grad():
        assert torch.allclose(y, want(x), atol=1e-5)
    expect = {"relu": ["relu"], "layer.1.relu": ["layer.1.relu", "layer.1.relu"],
              "layer.2.relu:0": ["layer.2.relu"]}[keys[0]]
    assert collapsed == expect


def test_node_names_of_module_sites_are_no_backend_keys(net):
    """Each graph names its nodes after local variables (the block's ReLU node is `y`): a key that is only some
    graph's node name matched that node in every graph. Activations outside any module keep theirs (no other key)."""
    m, x = net
    _, be, warned = _compiled(m, x, collapse=["y"])
    assert [k for r in be.reports for k in r["collapsed"]] == []
    assert any("'y'" in w for w in warned)


class _Whole(nn.Module):
    """A block without a break, its ReLU called twice."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(4, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.c2 = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        return self.relu(self.c2(self.relu(self.c1(x))) + x)


class _RootBreak(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.layer = nn.Sequential(_Whole(), _Whole())

    def forward(self, x):
        x = self.layer[0](self.stem(x))
        torch._dynamo.graph_break()
        return self.layer[1](x)


@pytest.mark.parametrize("key", ["layer.1.relu:1", "layer.1.relu:0", "layer.0.relu:1"])
def test_call_indices_of_a_block_after_a_break_in_the_root(key):
    """The resume graph of the root holds every call of layer.1: its call indices stay (only calls the resumed
    frame's own code makes may straddle the break)."""
    torch.manual_seed(0)
    torch._dynamo.reset()
    m, x = _RootBreak().eval(), torch.randn(2, 3, 8, 8)
    want = cp.collapse(m, example_inputs=(x,), collapse=[key]).model
    y, be, warned = _compiled(m, x, collapse=[key])
    torch._dynamo.reset()
    assert not warned and [k for r in be.reports for k in r["collapsed"]] == [key]
    with torch.no_grad():
        assert torch.allclose(y, want(x), atol=1e-5)
