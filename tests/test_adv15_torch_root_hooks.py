"""Round-15 (H9): forward hooks on the model itself. symbolic_trace traces forward() and never calls the model,
so such a hook was left out of the graph: collapse() then refused the model, blaming "Python branches tracing
cannot see" and pointing at torch.export, which does keep them. Such a model is now traced with torch.export
(example_inputs given) and the result keeps the hooks' ops; without example_inputs the error names the hooks."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import collapse_passes as cp
from collapse_passes.errors import CollapseError


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.r1, self.c2 = nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.c2(self.r1(self.c1(x)))


def _net():
    torch.manual_seed(0)
    m = Net().eval()
    m.register_forward_pre_hook(lambda mod, args: (args[0] - 0.5,))
    m.register_forward_hook(lambda mod, args, out: out * 2 + 1)
    return m


def test_root_hooks_are_kept_in_the_collapsed_model():
    m, x = _net(), torch.randn(1, 3, 8, 8)
    res = cp.collapse(m, collapse=["r1"], example_inputs=(x,))
    with torch.no_grad():   # my own reference: r1 linearized (identity), both hooks applied
        want = m.c2(m.c1(x - 0.5)) * 2 + 1
        torch.testing.assert_close(res.model(x), want, rtol=1e-5, atol=1e-5)
    assert [r["key"] for r in cp.list_keys(m, (x,))] == ["r1"]


def test_root_hooks_without_example_inputs_are_named():
    with pytest.raises(CollapseError, match="forward hooks on the model itself") as e:
        cp.collapse(_net(), collapse=["r1"])
    assert "\n" not in str(e.value)
