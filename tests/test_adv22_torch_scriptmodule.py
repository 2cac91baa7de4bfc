"""A TorchScript module (torch.jit.script / torch.jit.trace) given to collapse() or list_keys() is one line.

A ScriptModule is an nn.Module whose forward neither torch.fx nor torch.export can trace. Before 2026-11-29
collapse() tried symbolic_trace, then torch.export ("Exporting a ScriptModule is not supported"), then its state
check iterated the ScriptModule's ParameterDict and a TypeError traceback ("contains(): incompatible function
arguments") came out of collapse_passes, also for a model holding one scripted submodule; now a CollapseError
names the TorchScript module and the ways out."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import collapse_passes as cp  # noqa: E402


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1)).eval()


@pytest.mark.parametrize("how", ["script", "trace"])
@pytest.mark.parametrize("entry", ["collapse", "list_keys"])
def test_torchscript_module_is_one_line(how, entry):
    model, x = _net(), torch.randn(1, 3, 8, 8)
    scripted = torch.jit.script(model) if how == "script" else torch.jit.trace(model, (x,))
    before = {k: v.clone() for k, v in scripted.state_dict().items()}
    with pytest.raises(cp.CollapseError) as info:
        if entry == "collapse":
            cp.collapse(scripted, collapse=["2"], example_inputs=(x,))
        else:
            cp.list_keys(scripted, (x,))
    msg = str(info.value)
    assert "\n" not in msg and "TorchScript" in msg
    assert "nn.Module it was made from" in msg and "onnx" in msg.lower()
    assert all(torch.equal(before[k], v) for k, v in scripted.state_dict().items())


class _WithScripted(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.b = torch.jit.script(nn.Sequential(nn.Conv2d(4, 4, 1), nn.ReLU()))

    def forward(self, x):
        return self.b(self.a(x))


def test_scripted_submodule_is_one_line_naming_it():
    with pytest.raises(cp.CollapseError) as info:
        cp.collapse(_WithScripted().eval(), collapse=["a.2"], example_inputs=(torch.randn(1, 3, 8, 8),))
    assert "\n" not in str(info.value) and "submodule 'b'" in str(info.value) and "TorchScript" in str(info.value)


def test_the_module_itself_still_collapses():
    model, x = _net(), torch.randn(1, 3, 8, 8)
    res = cp.collapse(model, collapse=["2"], example_inputs=(x,))
    with torch.no_grad():
        torch.testing.assert_close(res.model(x), model[3](model[1](model[0](x))), rtol=1e-4, atol=1e-5)
