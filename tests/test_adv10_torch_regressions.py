"""Regression hunt on the torch front end after keys by call path and fewer model runs (2026-11-28).

The copies collapse() keeps (original, requested semantics) share the user's weight tensors, so a pass that wrote
one in place would change the user's model *and* the gate's reference: the gate could not fail. These tests pin
that the user's model stays bit-identical, that the result equals a reference built here independently (forward
hooks replacing the chosen calls by their linear regime), that the gate fails on a corrupted merged weight, that
an in-place write to a shared weight is refused (fx/graph.py SharedWeightWrites), and that the keys agree
between the nn.Module, its ExportedProgram and the ONNX export on a torchvision-style ResNet whose one
`relu` module is called twice per block (keys layer1.0.relu:0 / :1)."""
from __future__ import annotations

import copy
import dataclasses
import re

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import collapse_passes as cp  # noqa: E402
from collapse_passes.core.activations import linear_regime  # noqa: E402
from collapse_passes.errors import VerificationError  # noqa: E402
from collapse_passes.fx.graph import SharedWeightWrites  # noqa: E402
from models.resnet_tv import resnet18_tv  # noqa: E402
from models.tv_init import calibrate_bn  # noqa: E402

SIZE = 48


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    m = resnet18_tv(width=8, num_classes=10)
    calibrate_bn(m, (4, 3, SIZE, SIZE))   # outputs depend on the input (fresh eval BNs would not)
    x = torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    return m, x


def _state(m):
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


def _same_state(a, m):
    b = m.state_dict()
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _hook_reference(model, keys):
    """A deepcopy of model whose chosen calls (module path, :i = i-th call in one forward) output their linear
    regime: built without collapse_passes' tracer or call-path code."""
    ref = copy.deepcopy(model)
    want: dict[str, set] = {}
    for k in keys:
        path, _, i = re.match(r"(.*?)(:(\d+))?$", k).groups()
        want.setdefault(path, set()).add(None if i is None else int(i))
    calls: dict[str, int] = {}
    for path, idx in want.items():
        mod = ref.get_submodule(path)
        assert isinstance(mod, nn.ReLU)
        mod.inplace = False
        s, b = linear_regime("relu")

        def pre(m, args, path=path):
            calls[path] = calls.get(path, -1) + 1

        def post(m, args, out, path=path, idx=idx, s=s, b=b):
            if None in idx or calls[path] in idx:
                return args[0] * s + b

        mod.register_forward_pre_hook(pre)
        mod.register_forward_hook(post)

    def run(x):
        calls.clear()
        with torch.no_grad():
            return ref(x.clone())
    return run


def _rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


def test_result_matches_independent_reference_and_model_untouched(resnet):
    m, x = resnet
    keys = [r["key"] for r in cp.list_keys(m, example_inputs=(x,))]
    assert "layer1.0.relu:1" in keys   # BasicBlock's relu is called twice
    chosen = keys[1::2]
    before = _state(m)
    res = cp.collapse(m, collapse=chosen, example_inputs=(x,))
    assert _same_state(before, m)
    ref = _hook_reference(m, chosen)
    for xx in (x, torch.randn(x.shape, generator=torch.Generator().manual_seed(2))):
        with torch.no_grad():
            got = res.model(xx.clone())
        want = ref(xx)
        assert _rel(got, want) < 1e-4
        assert _rel(m(xx.clone()), want) > 1e-3   # the collapse changed something the reference sees
    assert _same_state(before, m)


def test_gate_refuses_a_corrupted_folded_weight(resnet, monkeypatch):
    import collapse_passes.fx.passes.fold_batchnorm as fb

    m, x = resnet
    before = _state(m)
    real, calls = fb.insert_linear, []

    def corrupt(gm, before_node, x_node, kind, p, *a, **k):
        calls.append(kind)
        if len(calls) == 3:
            p = dataclasses.replace(p, weight=p.weight * 1.01)
        return real(gm, before_node, x_node, kind, p, *a, **k)

    monkeypatch.setattr(fb, "insert_linear", corrupt)
    # the corrupted result is never written: the gate refuses it and, as its last resort, writes the result
    # with the activation linearized and nothing folded (the request's own ops), saying why
    r = cp.collapse(m, collapse=["layer1.0.relu:1"], example_inputs=(x,))
    assert r.passed and r.report["fold_fallback"]["max_rel_folded"] > 1e-4
    assert any("folding refused after verification" in w for w in r.report["warnings"])
    assert r.report["verification"]["against_requested"]["max_rel"] < 1e-4
    assert len(calls) >= 3 and _same_state(before, m)


def _write_fc_in_place(gm, via_numpy=False):
    for _, mod in gm.named_modules():
        if isinstance(mod, nn.Linear):
            if via_numpy:   # bypasses the version counter, as a numpy view from fx/graph.py to_numpy would
                mod.weight.detach().numpy()[...] *= 1.01
            else:
                with torch.no_grad():
                    mod.weight.mul_(1.01)
            return
    for name, t in gm.named_buffers():   # torch_backend: the frozen parameters are buffers of the graph
        if "fc" in name and "weight" in name:
            with torch.no_grad():
                t.mul_(1.01)
            return
    raise AssertionError("no fc weight found")


@pytest.mark.parametrize("via_numpy", [False, True])
def test_in_place_write_to_a_shared_weight_is_refused(resnet, monkeypatch, via_numpy):
    """Before the SharedWeightWrites check this passed the gate (reference and result read the same tensor)."""
    import collapse_passes.fx.passes.cleanup as cl

    m, x = resnet
    m = copy.deepcopy(m)   # this test does write into it
    real = cl.Cleanup.call

    def writes(self, gm):
        _write_fc_in_place(gm, via_numpy)
        return real(self, gm)

    monkeypatch.setattr(cl.Cleanup, "call", writes)
    with pytest.raises(VerificationError, match=r"wrote the model's weight\(s\) fc.weight in place"):
        cp.collapse(m, collapse=["layer1.0.relu:1"], example_inputs=(x,))


def test_backend_refuses_in_place_write_to_a_shared_weight(resnet, monkeypatch):
    import collapse_passes.fx.passes.cleanup as cl

    m, x = resnet
    m = copy.deepcopy(m)
    real = cl.Cleanup.call
    monkeypatch.setattr(cl.Cleanup, "call", lambda self, gm: (_write_fc_in_place(gm), real(self, gm))[1])
    torch._dynamo.reset()
    compiled = torch.compile(m, backend=cp.torch_backend(collapse=["layer1.0.relu:1"], inductor=False))
    with pytest.raises(Exception, match="wrote the model's weight"), torch.no_grad():
        compiled(x.clone())
    torch._dynamo.reset()


def test_backend_untouched_model_still_compiles(resnet):
    m, x = resnet
    before = _state(m)
    chosen = ["layer1.0.relu:1", "layer2.1.relu:0"]
    torch._dynamo.reset()
    be = cp.torch_backend(collapse=chosen, inductor=False)
    compiled = torch.compile(copy.deepcopy(m), backend=be)
    with torch.no_grad():
        got = compiled(x.clone())
    torch._dynamo.reset()
    assert be.unmatched_keys() == [] and _same_state(before, m)
    assert _rel(got, _hook_reference(m, chosen)(x)) < 1e-4


def test_fingerprint_sees_writes_that_bypass_the_version_counter():
    w = nn.Parameter(torch.randn(4, 3))
    nan = torch.tensor([float("nan"), 1.0])
    seen = SharedWeightWrites([w, nan, torch.zeros(3, dtype=torch.int64)])
    assert seen.changed() == []   # NaN weights are not "changed" by being NaN
    w.data.mul_(1.01)             # .data: no version bump
    assert seen.changed({id(w): "w"}) == ["w"]


def test_keys_agree_module_and_exported_program(resnet):
    m, x = resnet
    keys = [r["key"] for r in cp.list_keys(m, example_inputs=(x,))]
    ep = torch.export.export(m, (x,))
    assert [r["key"] for r in cp.list_keys(ep)] == keys
    assert {"layer1.0.relu:0", "layer1.0.relu:1", "relu"} <= set(keys)


@pytest.mark.slow
def test_keys_agree_module_and_dynamo_onnx(resnet, tmp_path):
    pytest.importorskip("onnxscript")
    m, x = resnet
    keys = [r["key"] for r in cp.list_keys(m, example_inputs=(x,))]
    path = tmp_path / "r18.onnx"
    torch.onnx.export(copy.deepcopy(m), (x,), str(path), dynamo=True)
    assert [r["key"] for r in cp.list_keys(str(path))] == keys


def test_ratio_prune_leaves_the_model_and_fresh_shapes(resnet):
    from collapse_passes.fx.graph import propagate_shapes, shape_of

    m, x = resnet
    before = _state(m)
    res = cp.collapse(m, collapse=["layer1.0.relu:1"], example_inputs=(x,), prune_ratio=0.3)
    assert _same_state(before, m) and res.report["pruning"]["ratio"]["removed_channels"] > 0
    with torch.no_grad():
        for xx in (x, torch.randn(x.shape, generator=torch.Generator().manual_seed(3))):
            assert _rel(res.model(xx.clone()), res.requested(xx.clone())) < 1e-4
    meta = {n.name: shape_of(n) for n in res.model.graph.nodes}
    propagate_shapes(res.model, (x.clone(),))
    assert {n.name: shape_of(n) for n in res.model.graph.nodes} == meta   # the metadata was not stale
