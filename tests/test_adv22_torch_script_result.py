"""torch.jit.script of collapse()'s result works when a merge left a PaddedConv (bias map, pads, size guard).

docs/torch.md says the result scripts (its annotation fix, tests/test_adv17_torch_annotations.py), but a merged conv
that needs a per-position bias map or a size guard is a PaddedConv, whose size-guard property and conv function
attribute are outside TorchScript: scripting such a result (a pointwise conv merged into a padded one, a stride-2
stem merged with the conv after it) failed with "cannot statically infer the expected size of a list" before
2026-11-29. PaddedConv.__prepare_scriptable__ hands TorchScript the same arithmetic in its subset."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import collapse_passes as cp  # noqa: E402
from collapse_passes.fx.graph import PaddedConv  # noqa: E402


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, 2, 1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.act0 = nn.ReLU()
        self.pw = nn.Conv2d(8, 8, 1)
        self.act1 = nn.ReLU()
        self.conv = nn.Conv2d(8, 4, 3, padding=1)

    def forward(self, x):
        return self.conv(self.act1(self.pw(self.act0(self.bn(self.stem(x))))))


def test_result_with_padded_convs_scripts_and_computes_the_same():
    torch.manual_seed(0)
    model = _Net().eval()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 1.5)
    x = torch.randn(2, 3, 16, 16)
    res = cp.collapse(model, collapse=["act0", "act1"], example_inputs=(x,))
    assert any(isinstance(m, PaddedConv) for m in res.model.modules())   # what this test is about
    x2 = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        want = model.conv(model.pw(model.bn(model.stem(x2))))   # both ReLUs in their linear regime
        eager = res.model(x2)
    scripted = torch.jit.script(res.model)
    with torch.no_grad():
        got = scripted(x2)
        again = res.model(x2)   # torch swaps the scriptable form into the module it scripts: still the same
    torch.testing.assert_close(eager, want, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got, eager, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(again, eager, rtol=1e-6, atol=1e-6)
    with pytest.raises(Exception, match="planned for inputs of another spatial size"):
        scripted(torch.randn(1, 3, 20, 20))   # the size guard holds in the scripted module too
