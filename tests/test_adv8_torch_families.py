"""Adversarial round 8 (helper-B): the torch front end on the layouts users hand it. Each test checks the result
against a reference built here in plain torch (the chosen modules swapped for their linear regime), not against
the tool's own verification."""
from __future__ import annotations

import copy
import warnings

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import collapse_passes as cp  # noqa: E402
from collapse_passes.errors import CollapseError  # noqa: E402


def _rel(a, b) -> float:
    return float((a - b).abs().max() / a.abs().max().clamp_min(1e-12))


def _live_bn(model, cin, size=8, seed=0):
    """BatchNorm stats read from a train-mode pass on random data, so the output depends on the input."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.num_features, generator=g) - 0.3)
                m.momentum = None
        model.train()(torch.randn(4, cin, size, size, generator=g))
    return model.eval()


class _Small(nn.Module):
    """conv-BN-ReLU twice, the ReLU module called twice (keys act:0, act:1)."""

    def __init__(self):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.c2, self.b2 = nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8)
        self.act = nn.ReLU(inplace=True)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.head(self.act(self.b2(self.c2(self.act(self.b1(self.c1(x)))))))


from tests.test_shared_module_keys import Shared as _Shared  # noqa: E402  one nn.ReLU in two blocks


class _ShapeBranch(nn.Module):
    """symbolic_trace cannot follow the branch on a size (as torchvision's Swin): traced with torch.export."""

    def __init__(self):
        super().__init__()
        self.c, self.act, self.d = nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 1)

    def forward(self, x):
        if x.shape[-1] > 4:
            x = x * 2
        return self.d(self.act(self.c(x)))


def test_compiled_module_takes_the_wrapped_module_keys():
    """torch.compile(model) is an OptimizedModule: its keys were all `_orig_mod.act:1`, so a scores file or the
    keys that torch_backend and the ONNX export use were refused as unknown."""
    torch.manual_seed(0)
    m = _live_bn(_Small(), 3)
    x = torch.randn(1, 3, 8, 8)
    compiled = torch.compile(m)
    assert [k["key"] for k in cp.list_keys(compiled, example_inputs=(x,))] == ["act:0", "act:1"]
    res = cp.collapse(compiled, collapse=["act:1"], example_inputs=(x,))
    ref = copy.deepcopy(m)
    ref.forward = lambda t: ref.head(ref.b2(ref.c2(ref.act(ref.b1(ref.c1(t))))))   # second call linear
    xs = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert _rel(ref(xs.clone()), res.model(xs.clone())) < 1e-4


def test_untraceable_module_result_runs_at_another_batch():
    """A model symbolic_trace cannot trace goes through torch.export; a batch-1 example specialized the batch,
    and the result failed on batch 3 with torch's guard AssertionError (docs: 'the batch may change')."""
    torch.manual_seed(0)
    m = _ShapeBranch().eval()
    res = cp.collapse(m, collapse=["act"], example_inputs=(torch.randn(1, 3, 8, 8),))
    ref = copy.deepcopy(m)
    ref.act = nn.Identity()
    xs = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        assert _rel(ref(xs.clone()), res.model(xs.clone())) < 1e-4


def test_backend_refuses_training_mode_batchnorm():
    """collapse() refuses a train-mode BatchNorm; the backend compiled it, freezing the buffers into the graph
    (the model's running stats then no longer followed eager's updates)."""
    torch._dynamo.reset()
    m = _Small()   # training mode
    before = m.b1.running_mean.clone()
    compiled = torch.compile(m, backend=cp.torch_backend(collapse=["act:0"], inductor=False))
    with pytest.raises(Exception) as info:
        compiled(torch.randn(2, 3, 8, 8))
    assert isinstance(info.value, CollapseError) or isinstance(info.value.__cause__, CollapseError) or \
        "CollapseError" in str(info.value)
    assert "model.eval()" in str(info.value)
    assert torch.equal(m.b1.running_mean, before)
    torch._dynamo.reset()


def test_backend_eval_model_still_compiles_and_matches():
    torch._dynamo.reset()
    torch.manual_seed(0)
    m = _live_bn(_Small(), 3)
    backend = cp.torch_backend(collapse=["act:0"], inductor=False)
    compiled = torch.compile(m, backend=backend)
    x = torch.randn(2, 3, 8, 8)
    ref = copy.deepcopy(m)
    ref.forward = lambda t: ref.head(ref.act(ref.b2(ref.c2(ref.b1(ref.c1(t))))))   # first call linear
    with torch.no_grad():
        got = compiled(x.clone())
        assert _rel(ref(x.clone()), got) < 1e-4
    assert backend.reports and backend.reports[0]["collapsed"] == ["act:0"]
    torch._dynamo.reset()


def test_train_linearize_replaces_exactly_the_named_slots_of_a_shared_module():
    """train.sites.linearize of a module shared by two blocks: its sites are the call paths b1.2 and b2.2 (as
    torch.export names them), each its own slot; naming both replaces both."""
    from collapse_passes.train.sites import linearize

    torch.manual_seed(0)
    m = _live_bn(_Shared(), 3)
    xs = torch.randn(2, 3, 8, 8)
    for keys, slots in ((["b2.2"], ["b2"]), (["b1.2"], ["b1"]), (["b1.2", "b2.2"], ["b1", "b2"])):
        out = linearize(copy.deepcopy(m), keys)
        ref = copy.deepcopy(m)
        for b in slots:
            getattr(ref, b)[2] = nn.Identity()
        with torch.no_grad():
            assert _rel(ref(xs), out(xs)) < 1e-5, keys
            assert _rel(m(xs), out(xs)) > 1e-3, keys   # the named slot did change


def test_shared_module_keys_agree_between_module_and_program():
    """A module object registered in two blocks was keyed b1.2:0/b1.2:1 by symbolic_trace (its first name) but
    b1.2/b2.2 by torch.export; now both name the call path (fx/call_path.py)."""
    torch.manual_seed(0)
    m = _live_bn(_Shared(), 3)
    x = torch.randn(1, 3, 8, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ep = torch.export.export(m, (x,))
    assert [k["key"] for k in cp.list_keys(m, example_inputs=(x,))] == [k["key"] for k in cp.list_keys(ep)]


class _FixedBatch(_ShapeBranch):
    def forward(self, x):
        return super().forward(x).reshape(1, 4, 8, 8)   # batch 1 only


def test_untraceable_module_with_a_fixed_batch_says_so():
    res = cp.collapse(_FixedBatch().eval(), collapse=["act"], example_inputs=(torch.randn(1, 3, 8, 8),))
    assert any("example batch (1)" in n for n in res.report["notes"]), res.report["notes"]
    res = cp.collapse(_ShapeBranch().eval(), collapse=["act"], example_inputs=(torch.randn(1, 3, 8, 8),))
    assert not any("example batch" in n for n in res.report["notes"])
