"""pruning/select._round_every_layer (--round-to per layer) gives back units a layer lost until it keeps a multiple
of N. A layer of 5 channels (a concat branch) whose every removed unit was given back keeps all it has, yet it was
still asked for a multiple of 8: no unit left to give back, max() of nothing, a traceback ("internal error") on
both front ends, for any --prune-ratio. It now keeps its 5."""
import warnings

import pytest
import torch
from torch import nn

import collapse_passes as cp
from models.export import export_onnx


class _Concat(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 5, 3, padding=1), nn.Conv2d(3, 5, 3, padding=1)
        self.c = nn.Conv2d(10, 4, 3, padding=1)

    def forward(self, x):
        return self.c(torch.relu(torch.cat([self.a(x), self.b(x)], 1)))


def _onnx_convs(model):
    inits = {i.name: i for i in model.graph.initializer}
    return [int(inits[n.input[1]].dims[0]) for n in model.graph.node if n.op_type == "Conv"]


@pytest.mark.parametrize("scope", ["global", "layer"])
@pytest.mark.parametrize("ratio", [0.2, 0.5])
def test_branches_that_cannot_round_keep_all_they_have(tmp_path, scope, ratio):
    torch.manual_seed(0)
    m = _Concat().eval()
    x = torch.randn(1, 3, 8, 8)
    path = export_onnx(m, tmp_path / "m.onnx", (1, 3, 8, 8), dynamo=False)
    kw = dict(prune_ratio=ratio, round_to=8, prune_scope=scope, force=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ro = cp.collapse(path, **kw)
        rt = cp.collapse(m, example_inputs=(x,), **kw)
    assert _onnx_convs(ro.model) == [5, 5, 4]
    assert [mod.out_channels for mod in rt.model.modules() if isinstance(mod, nn.Conv2d)] == [5, 5, 4]
