"""The result of collapse() on an ExportedProgram owns its weights: torch.export keeps the tensors it is given,
so the re-exported result held the input program's (and the exported module's) Parameters for every layer the
collapse left as it was, and fine-tuning res.model.module() trained the user's model."""
import torch
import torch.nn as nn

import collapse_passes as cp


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(6, 6)
        self.r = nn.ReLU()
        self.b = nn.Linear(6, 6)
        self.t = nn.Tanh()     # never collapsed: c stays a layer of its own, with the caller's tensors
        self.c = nn.Linear(6, 6)
        self.register_buffer("shift", torch.ones(6))

    def forward(self, x):
        return self.c(self.t(self.b(self.r(self.a(x))))) + self.shift


def test_exported_program_result_owns_its_weights():
    torch.manual_seed(0)
    m = _Net().eval()
    x = torch.randn(3, 6)
    ep = torch.export.export(m, (x,))
    before = {k: v.detach().clone() for k, v in m.state_dict().items()}
    res = cp.collapse(ep, collapse=["r"], example_inputs=(x,))
    theirs = {t.data_ptr() for t in [*m.parameters(), *m.buffers(), *ep.state_dict.values()]}
    assert not [k for k, t in res.model.state_dict.items() if t.data_ptr() in theirs]
    mod = res.model.module()
    assert torch.allclose(mod(x), m.c(m.t(m.b(m.a(x)))) + m.shift, atol=1e-5)
    opt = torch.optim.SGD(mod.parameters(), lr=0.5)
    mod(x).square().sum().backward()
    opt.step()
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    assert all(torch.equal(before[k], ep.state_dict[k]) for k in before)
