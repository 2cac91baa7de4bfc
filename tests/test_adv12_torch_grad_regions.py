"""A `with torch.no_grad():` block in forward: torch.export puts it in a wrap_with_set_grad_enabled region (a
submodule called by a higher-order op), whose activations were no sites: list_keys of the ExportedProgram gave
none of them (symbolic_trace of the same module lists `r`), and collapse(ep, collapse=["r"]) refused the key."""
import torch
import torch.nn as nn

import collapse_passes as cp


class _NoGradStem(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 1)
        self.r = nn.ReLU()
        self.c2 = nn.Conv2d(8, 4, 1)
        self.r2 = nn.ReLU()

    def forward(self, x):
        with torch.no_grad():
            x = self.r(self.c1(x))
        return self.r2(self.c2(x))


def test_activations_in_a_no_grad_block_of_a_program_are_sites():
    torch.manual_seed(0)
    m = _NoGradStem().eval()
    x = torch.randn(2, 3, 5, 5)
    ep = torch.export.export(m, (x,))
    keys = [k["key"] for k in cp.list_keys(ep)]
    assert keys == [k["key"] for k in cp.list_keys(m, (x,))] == ["r", "r2"]
    res = cp.collapse(ep, collapse=["r"])
    assert res.passed and res.report["after"]["nodes"] < res.report["before"]["nodes"]
    with torch.no_grad():
        want = m.r2(m.c2(m.c1(x)))
    assert torch.allclose(res.model.module()(x), want, rtol=1e-4, atol=1e-5)
    assert any(n.target is torch.ops.higher_order.wrap_with_set_grad_enabled for n in ep.graph.nodes)   # untouched
