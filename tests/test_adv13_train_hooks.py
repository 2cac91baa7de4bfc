"""The training loop's linearize() replaced a collapsed activation module by a LinearRegime without its
hooks: a forward hook the user put on that layer (to log or probe it) stopped firing, while the torch
front end keeps such hooks (traced with them). The LinearRegime now shares the replaced module's hook
tables, so the hook fires on the linear regime's output and the user's handle still removes it."""
from __future__ import annotations

import torch
import torch.nn as nn

from collapse_passes.train import LinearRegime, linearize


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 1)
        self.act, self.shared = nn.ReLU(), nn.ReLU()

    def forward(self, x):
        x = self.shared(self.act(self.c1(x)))
        return self.shared(self.c2(x))


def test_hooks_survive_whole_module_and_call_site_linearization():
    m, seen = _Net().eval(), []
    h1 = m.act.register_forward_hook(lambda mod, i, o: seen.append(("act", o.clone())))
    h2 = m.shared.register_forward_pre_hook(lambda mod, i: seen.append(("shared", i[0].clone())))
    out = linearize(m, ["act", "shared:1"])   # the whole module `act`, the second call of `shared`
    regimes = [mod for mod in out.modules() if isinstance(mod, LinearRegime)]
    assert len(regimes) == 2
    x = torch.randn(1, 3, 8, 8)
    y = out(x)
    assert [k for k, _ in seen] == ["act", "shared", "shared"]   # every call still reaches its hook
    pre = m.c1(x)
    assert torch.equal(seen[0][1], pre)   # the collapsed act is identity: its output is the conv's
    assert torch.allclose(y, m.c2(torch.relu(pre)))
    h1.remove()
    h2.remove()
    seen.clear()
    out(x)
    assert seen == []
