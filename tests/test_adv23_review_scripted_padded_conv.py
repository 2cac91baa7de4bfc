"""torch.jit.script of a collapsed result leaves it a model collapse_passes still reads (adversarial round 23, H71).

torch.jit.script swaps each submodule's __prepare_scriptable__ form into the module it scripts: the caller's result.
Round 22 made that form a class of its own (_ScriptedPaddedConv), so after `torch.jit.script(res.model)` the result
held no PaddedConv: no pass read it as a conv and the counts left it out (collapse(res.model) reported 36,864 MACs
where it had 64,512). The form is a PaddedConv now (conv_params, in_spatial, op_count), computing the same."""
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
        self.act0 = nn.ReLU()
        self.pw = nn.Conv2d(8, 8, 1)
        self.act1 = nn.ReLU()
        self.conv = nn.Conv2d(8, 4, 3, padding=1)

    def forward(self, x):
        return self.conv(self.act1(self.pw(self.act0(self.stem(x)))))


def test_a_scripted_result_still_counts_and_runs_as_before():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 16, 16)
    res = cp.collapse(_Net().eval(), collapse=["act0", "act1"], example_inputs=(x,))
    assert any(isinstance(m, PaddedConv) for m in res.model.modules())
    before = cp.collapse(res.model, collapse=[], example_inputs=(x,)).report["after"]["macs"]
    with torch.no_grad():
        want = res.model(x)
    scripted = torch.jit.script(res.model)
    assert any(isinstance(m, PaddedConv) for m in res.model.modules())   # torch swapped its form in: still one
    assert cp.collapse(res.model, collapse=[], example_inputs=(x,)).report["after"]["macs"] == before
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), want, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(res.model(x), want, rtol=1e-6, atol=1e-6)
    with pytest.raises(Exception, match="planned for inputs of another spatial size"):
        scripted(torch.randn(1, 3, 20, 20))
