"""Torch front end on layouts outside models/ (adversarial round 11, H2): state written in forward is refused
without touching the caller's model, and the collapsed model owns its weights."""
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import fx

import collapse_passes as cp


class BufferUpdate(nn.Module):
    """An EMA of the activations and a call counter, both updated in eval-mode forward."""

    def __init__(self, guarded=False):
        super().__init__()
        self.guarded = guarded
        self.c1 = nn.Conv2d(3, 8, 1)
        self.act = nn.ReLU()
        self.c2 = nn.Conv2d(8, 8, 1)
        self.register_buffer("calls", torch.zeros(()))
        self.register_buffer("ema", torch.full((8,), 0.5))

    def forward(self, x):
        y = self.act(self.c1(x))
        if self.training or not self.guarded:
            self.calls += 1
            self.ema.mul_(0.9).add_(0.1 * y.mean([0, 2, 3]))
        return self.c2(y) + self.ema.view(1, -1, 1, 1)


class CounterOnly(nn.Module):
    """`self.calls += 1` on a buffer: symbolic_trace runs it eagerly and keeps nothing of it in the graph."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 4, 1)
        self.act = nn.ReLU()
        self.c2 = nn.Conv2d(4, 4, 1)
        self.register_buffer("calls", torch.zeros(()))

    def forward(self, x):
        self.calls += 1
        return self.c2(self.act(self.c1(x)))


def _state(module_or_ep):
    sd = module_or_ep.state_dict if isinstance(module_or_ep, torch.export.ExportedProgram) else module_or_ep.state_dict()
    return {k: v.detach().clone() for k, v in sd.items()}


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


X = torch.randn(1, 3, 8, 8)


@pytest.mark.parametrize("kind", ["nn", "gm"])
def test_state_written_in_forward_is_refused_and_model_untouched(kind):
    m = BufferUpdate().eval()
    given = m if kind == "nn" else fx.symbolic_trace(m)   # (symbolic_trace itself runs `self.calls += 1` eagerly)
    before = _state(m)
    with pytest.raises(cp.CollapseError) as e:
        cp.collapse(given, collapse=["act"], example_inputs=(X,))
    msg = str(e.value)
    assert len(msg.splitlines()) == 1 and "ema" in msg and "self.training" in msg
    assert _same(before, _state(m))   # neither the trace nor the check's runs left a write behind


def test_counter_dropped_by_symbolic_trace_is_refused_and_restored():
    m = CounterOnly().eval()
    with pytest.raises(cp.CollapseError, match="calls"):
        cp.collapse(m, collapse=["act"], example_inputs=(X,))
    assert float(m.calls) == 0.0 and "calls" in m._buffers


def test_exported_program_writing_state_is_refused_and_untouched():
    m = BufferUpdate().eval()
    ep = torch.export.export(m, (X,))
    before = _state(ep)
    with pytest.raises(cp.CollapseError, match="ema"):
        cp.collapse(ep, collapse=["act"])
    assert _same(before, _state(ep)) and float(m.calls) == 0.0


def test_backend_refuses_state_written_in_forward():
    torch._dynamo.reset()
    m = BufferUpdate().eval()
    compiled = torch.compile(m, backend=cp.torch_backend(collapse=["act"], inductor=False))
    with pytest.raises(Exception) as e, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        compiled(X)
    assert "CollapseError" in str(e.value) and "ema" in str(e.value)   # not a VerificationError by chance
    torch._dynamo.reset()


def test_state_update_under_self_training_collapses_in_eval():
    m = BufferUpdate(guarded=True).eval()
    before = _state(m)
    res = cp.collapse(m, collapse=["act"], example_inputs=(X,))
    want = m.c2(m.c1(X)) + m.ema.view(1, -1, 1, 1)
    assert torch.allclose(res.model(X), want, atol=1e-5)
    assert _same(before, _state(m))


class TiedHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(6, 6)
        self.act = nn.ReLU()
        self.mid = nn.Linear(6, 6)
        self.act2 = nn.Tanh()
        self.out = nn.Linear(6, 6)
        self.out.weight = self.inp.weight

    def forward(self, x):
        return self.out(self.act2(self.mid(self.act(self.inp(x)))))


@pytest.mark.parametrize("kind", ["nn", "gm"])
def test_result_owns_its_weights(kind):
    """Fine-tuning the collapsed model must not train the model it came from (the unmerged layers were the
    caller's own Parameters); tied weights stay tied in the result."""
    torch.manual_seed(0)
    m = TiedHead().eval()
    given = m if kind == "nn" else fx.symbolic_trace(m)
    before = _state(m)
    x = torch.randn(3, 6)
    res = cp.collapse(given, collapse=["act"], example_inputs=(x,))
    mine = {id(p) for p in [*m.parameters(), *m.buffers()]}
    assert not any(id(p) in mine for p in [*res.model.parameters(), *res.model.buffers()])
    opt = torch.optim.SGD(res.model.parameters(), lr=0.5)
    res.model(x).square().sum().backward()
    opt.step()
    assert _same(before, _state(m))
    assert res.model.out.weight is not None and any(p.grad is not None for p in res.model.parameters())


class ConvNeXtBlock(nn.Module):
    def __init__(self, c=4):
        super().__init__()
        self.dwconv = nn.Conv2d(c, c, 7, padding=3, groups=c)
        self.norm = nn.LayerNorm(c, eps=1e-6)
        self.pwconv1 = nn.Linear(c, 4 * c)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * c, c)
        self.gamma = nn.Parameter(torch.full((c,), 0.5))

    def forward(self, x):
        y = self.norm(self.dwconv(x).permute(0, 2, 3, 1))
        y = self.gamma * self.pwconv2(self.act(self.pwconv1(y)))
        return x + y.permute(0, 3, 1, 2)


def test_convnext_block_all_front_ends():
    """Channels-last LayerNorm, Linear-GELU-Linear, layer scale: the three input kinds give the requested
    semantics with fewer ops and the same keys, the user's model unchanged."""
    torch.manual_seed(0)
    m = ConvNeXtBlock().eval()
    x = torch.randn(2, 4, 8, 8)
    before = _state(m)
    with torch.no_grad():
        y = m.norm(m.dwconv(x).permute(0, 2, 3, 1))
        want = x + (m.gamma * m.pwconv2(m.pwconv1(y))).permute(0, 3, 1, 2)
    ep = torch.export.export(m, (x,))
    assert [r["key"] for r in cp.list_keys(m, (x,))] == [r["key"] for r in cp.list_keys(ep)] == ["act"]
    for given, kind in ((m, fx.GraphModule), (fx.symbolic_trace(m), fx.GraphModule), (ep, torch.export.ExportedProgram)):
        res = cp.collapse(given, collapse=["act"], example_inputs=None if kind is torch.export.ExportedProgram else (x,))
        assert isinstance(res.model, kind)
        run = res.model.module() if kind is torch.export.ExportedProgram else res.model
        with torch.no_grad():
            assert torch.allclose(run(x), want, rtol=1e-4, atol=1e-5)
        assert res.report["after"]["nodes"] < res.report["before"]["nodes"]
    assert _same(before, _state(m))


class ScaledByCount(nn.Module):
    """The counter scales the output: the trace check's run changes what the traced graph computes."""

    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 4, 1)
        self.act = nn.ReLU()
        self.register_buffer("calls", torch.ones(()))

    def forward(self, x):
        self.calls.add_(1.0)
        return self.act(self.c(x)) * self.calls


def test_counter_read_in_forward_names_the_write_not_a_branch():
    m = ScaledByCount().eval()
    with pytest.raises(cp.CollapseError, match="writes its own state"):
        cp.collapse(m, collapse=["act"], example_inputs=(X,))
    assert float(m.calls) == 1.0
