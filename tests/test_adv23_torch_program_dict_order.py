"""collapse(ep, example_inputs=...) takes a dict input with the program's keys in any order, as ep.module() does
(torch's pytree matching): the structure check refused {"gain", "image"} for a program exported with
{"image", "gain"} (H71's leftover; before round 22 it failed with "tuple index out of range")."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import collapse_passes as cp  # noqa: E402
from collapse_passes.errors import CollapseError  # noqa: E402


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.act, self.c2 = nn.Conv2d(3, 8, 1), nn.ReLU(), nn.Conv2d(8, 4, 1)

    def forward(self, inputs):
        return self.c2(self.act(self.c1(inputs["image"]))) * inputs["gain"]


def test_a_dict_input_in_another_key_order_is_read_by_key():
    torch.manual_seed(0)
    m = Net().eval()
    x, g = torch.randn(1, 3, 4, 4), torch.rand(1, 4, 1, 1) + 0.5
    ep = torch.export.export(m, ({"image": x, "gain": g},))
    res = cp.collapse(ep, collapse=["act"], example_inputs=({"gain": g, "image": x},))
    ref = Net().eval()
    ref.load_state_dict(m.state_dict())
    ref.act = nn.Identity()
    want = ref({"image": x, "gain": g})
    torch.testing.assert_close(res.model.module()({"gain": g, "image": x}), want, rtol=1e-5, atol=1e-5)
    assert res.report["after"]["depth_nonlinear"] == 0


def test_a_dict_with_other_keys_is_still_refused():
    m = Net().eval()
    x, g = torch.randn(1, 3, 4, 4), torch.rand(1, 4, 1, 1)
    ep = torch.export.export(m, ({"image": x, "gain": g},))
    with pytest.raises(CollapseError, match="do not match the inputs the program was exported with"):
        cp.collapse(ep, collapse=["act"], example_inputs=({"gain": g, "img": x},))
