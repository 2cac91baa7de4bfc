"""iterative_collapse on a model torch.fx cannot trace (data-dependent control flow, a DataParallel wrapper).

find_sites then gives one site per module, while the score hooks key each call of a shared module
(`b.relu:0`, `b.relu:1`): the loop matched keys only, so every shared module (both ReLUs of each
torchvision BasicBlock: 16 of ResNet-18's 17 sites under DataParallel) was silently no candidate and the
run stopped at "no candidate left" after the stem ReLU. Such a site now scores as its highest call (its
swap collapses all of them) and the result's notes say so.
"""
import torch
from torch import nn

from collapse_passes.train import accuracy, find_sites, iterative_collapse


class _Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.c2, self.relu = nn.Linear(8, 8), nn.Linear(8, 8), nn.ReLU()

    def forward(self, x):
        return self.relu(self.c2(self.relu(self.c1(x))) + x)   # one ReLU module, two calls


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.b, self.act, self.fc = _Block(), nn.ReLU(), nn.Linear(8, 3)

    def forward(self, x):
        if x.sum() > -1e9:   # data-dependent branch: torch.fx cannot trace it
            x = self.b(x)
        return self.fc(self.act(x))


def _data():
    g = torch.Generator().manual_seed(0)
    return torch.randn(64, 8, generator=g), torch.randint(0, 3, (64,), generator=g)


def test_shared_module_of_an_untraceable_model_is_a_candidate():
    torch.manual_seed(0)
    m = _Net().eval()
    assert [(s.key, s.calls) for s in find_sites(m)] == [("b.relu", 1), ("act", 1)]   # untraceable: per module
    x, y = _data()
    res = iterative_collapse(m, "easier", (x, y), (x, y), max_rounds=5, steps_per_round=1, max_accuracy_drop=1.0,
                             predict=False)
    assert sorted(res.collapsed) == ["act", "b.relu"]
    row = next(r for r in res.history if r["key"] == "b.relu")
    assert 0 < row["score"] <= 1
    assert any("torch.fx cannot trace" in n and "b.relu" in n for n in res.notes)
    assert isinstance(res.model.b.relu, nn.Module) and type(res.model.b.relu).__name__ == "LinearRegime"
    assert abs(accuracy(res.model, [(x, y)]) - res.accuracy) < 1e-12


def test_traceable_model_keeps_per_call_sites_and_no_note():
    class Traceable(_Net):
        def forward(self, x):
            return self.fc(self.act(self.b(x)))
    torch.manual_seed(0)
    m = Traceable().eval()
    x, y = _data()
    res = iterative_collapse(m, "easier", (x, y), (x, y), max_rounds=1, steps_per_round=1, max_accuracy_drop=1.0,
                             predict=False)
    assert not any("torch.fx cannot trace" in n for n in res.notes)
    assert all(":" in r["key"] or r["key"] == "act" for r in res.history)
