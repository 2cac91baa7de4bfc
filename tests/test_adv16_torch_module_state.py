"""The torch front end's results keep what torch.fx's copies drop from the caller's modules: non-persistent
buffers stay out of state_dict(), and a train-mode model (no BatchNorm / dropout to make it random) comes back
in train mode, an eval-mode BatchNorm inside it still in eval (collapse() and prune_module)."""
import warnings

import pytest
import torch
from torch import nn

import collapse_passes as cp
from collapse_passes.pruning.fx_adapter import prune_module


class Net(nn.Module):
    def __init__(self, bn_train=False):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.r = nn.ReLU()
        self.c2 = nn.Conv2d(8, 8, 1)
        self.bn = nn.BatchNorm2d(8)
        self.register_buffer("scale", torch.tensor(2.0), persistent=False)
        self.register_buffer("keep", torch.tensor(3.0))
        self.sub = nn.Module()
        self.sub.register_buffer("off", torch.linspace(0, 1, 8).reshape(8, 1, 1), persistent=False)

    def forward(self, x):
        y = self.c2(self.r(self.c1(x)))
        # the buffers after the ReLU: right after the conv they fold into it (per-channel Mul/Add) and are gone
        return torch.relu(self.bn(y)) * self.scale + self.sub.off + self.keep


def _model(train=True):
    torch.manual_seed(0)
    m = Net()
    with torch.no_grad():
        m.bn.running_mean.uniform_(-0.5, 0.5)
        m.bn.running_var.uniform_(0.5, 1.5)
    m.train(train)
    m.bn.eval()   # a frozen BatchNorm in a model being fine-tuned: the model is in train mode, this BN is not
    return m


X = torch.randn(2, 3, 8, 8)


def _state_keys(mod):
    return sorted(mod.state_dict())


@pytest.mark.parametrize("kw", [dict(collapse=["r"]), dict(), dict(prune_ratio=0.25)])
def test_collapse_keeps_non_persistent_buffers_and_modes(kw):
    m = _model()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = cp.collapse(m, example_inputs=(X,), **kw)
    out = res.model
    keys = _state_keys(out)
    assert "keep" in keys and "scale" not in keys and "sub.off" not in keys, keys
    assert out.training, "a train-mode model came back in eval mode"
    bns = [mod for mod in out.modules() if isinstance(mod, nn.BatchNorm2d)]
    assert all(not b.training for b in bns), "the frozen (eval) BatchNorm was put in train mode"
    if "prune_ratio" not in kw:
        torch.testing.assert_close(out(X), m(X) if not kw else res.requested(X), rtol=1e-4, atol=1e-5)
    # the same model in eval mode comes back in eval mode
    res = cp.collapse(_model(train=False), example_inputs=(X,), **kw) if not kw.get("prune_ratio") else None
    if res is not None:
        assert not res.model.training


def test_exported_program_keeps_non_persistent_buffers():
    m = _model(train=False)
    ep = torch.export.export(m, (X,))
    res = cp.collapse(ep, collapse=["r"])
    assert set(res.model.graph_signature.non_persistent_buffers) == {"scale", "sub.off"}, \
        res.model.graph_signature.non_persistent_buffers
    assert "keep" in res.model.state_dict and "scale" not in res.model.state_dict
    assert "scale" not in res.model.module().state_dict() and "sub.off" not in res.model.module().state_dict()


def test_prune_module_keeps_non_persistent_buffers_and_modes():
    m = _model()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm, rep = prune_module(m, (X,), ratio=0.25, check=0)
    assert "scale" not in pm.state_dict() and "sub.off" not in pm.state_dict(), _state_keys(pm)
    assert pm.training and not pm.get_submodule("bn").training


def test_prune_module_training_batchnorm_comes_back_in_eval_with_a_note():
    m = _model()
    m.bn.train()   # batch statistics: pruned with the running ones, so the result is in eval mode, said
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm, rep = prune_module(m, (X,), ratio=0.25, check=0)
    assert not pm.training and not pm.get_submodule("bn").training
    assert any("training mode" in n and "eval mode" in n for n in rep["notes"]), rep.get("notes")
