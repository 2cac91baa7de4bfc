"""Inputs inside a dict or list (forward(self, batch) reading batch["img"]): the caller's tensors were copied only
at the top level, so a model writing batch["img"] in place wrote the caller's example input; and the check's
random inputs were drawn for top-level tensors only, so such a model was verified on the example alone, three times."""
import torch
import torch.nn as nn

import collapse_passes as cp
from collapse_passes.fx.api import _feeds


class _DictIn(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 4, 1)
        self.r = nn.ReLU()
        self.d = nn.Conv2d(4, 4, 1)

    def forward(self, batch):
        return self.d(self.r(self.c(batch["img"].relu_())))


def test_a_dict_example_input_is_not_written():
    torch.manual_seed(0)
    m = _DictIn().eval()
    x = torch.randn(2, 3, 4, 4)
    kept = x.clone()
    res = cp.collapse(m, collapse=["r"], example_inputs=({"img": x},))
    assert res.passed and torch.equal(x, kept)
    want = m.d(m.c(kept.clone().relu_()))
    assert torch.allclose(res.model({"img": kept.clone()}), want, rtol=1e-4, atol=1e-5)


def test_check_inputs_inside_a_dict_are_random():
    x = torch.zeros(2, 3)
    feeds = _feeds(({"img": x, "k": 3}, [x]), 3, 0)
    assert len(feeds) == 3 and feeds[0][0]["img"] is x
    for f in feeds[1:]:
        assert f[0]["k"] == 3 and f[0]["img"].shape == x.shape and not torch.equal(f[0]["img"], x)
        assert not torch.equal(f[1][0], x)
    assert not torch.equal(feeds[1][0]["img"], feeds[2][0]["img"])
