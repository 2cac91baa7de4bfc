"""Models and inputs on the 'meta' device (no data) are refused in one line: the StateGuard's torch.equal raised
NotImplementedError from deep inside torch. The check's random inputs are put on the example inputs' device (a
model on a GPU got CPU tensors for its 2nd and 3rd check runs)."""
import pytest
import torch
import torch.nn as nn

import collapse_passes as cp
from collapse_passes.fx.api import _feeds


def _net():
    return nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), nn.Conv2d(4, 4, 1)).eval()


@pytest.mark.parametrize("model_on, input_on", [("meta", "meta"), ("meta", "cpu"), ("cpu", "meta")])
def test_meta_is_one_line(model_on, input_on):
    m = _net().to(model_on)
    x = torch.randn(1, 3, 4, 4, device=input_on)
    with pytest.raises(cp.CollapseError, match="'meta' device") as e:
        cp.collapse(m, collapse=["1"], example_inputs=(x,))
    assert len(str(e.value).splitlines()) == 1
    assert ("weights" in str(e.value)) == (model_on == "meta")


def test_meta_program_is_one_line():
    ep = torch.export.export(_net().to("meta"), (torch.randn(1, 3, 4, 4, device="meta"),))
    with pytest.raises(cp.CollapseError, match="'meta' device"):
        cp.collapse(ep, collapse=["1"])
    with pytest.raises(cp.CollapseError, match="'meta' device"):
        cp.list_keys(_net().to("meta"), (torch.randn(1, 3, 4, 4),))


def test_check_inputs_are_drawn_on_the_example_device():
    x = torch.randn(1, 3, 4, 4, device="meta")   # any device but the CPU (no GPU needed to see the bug)
    feeds = _feeds((x, 3), 3, 0)
    assert [f[0].device.type for f in feeds] == ["meta"] * 3 and feeds[1][1] == 3
    cpu = _feeds((torch.zeros(1, 3, 4, 4),), 3, 0)
    assert torch.equal(cpu[1][0], torch.randn(1, 3, 4, 4, generator=torch.Generator().manual_seed(0)))
