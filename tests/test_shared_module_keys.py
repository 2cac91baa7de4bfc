"""One module object registered at several paths is keyed by call path on every front end (fx/call_path.py):
an nn.ReLU shared by blocks b1 and b2 is b1.2 and b2.2 on an nn.Module (symbolic_trace), its ExportedProgram,
the torch.export-based ONNX export, the torch.compile backend, the scoring hooks and the training loop's sites.
Each collapse is checked against a reference built here in plain torch (the named slot swapped for identity)."""
from __future__ import annotations

import copy
import warnings

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import collapse_passes as cp  # noqa: E402
from collapse_passes.scores.torch_hooks import module_scores  # noqa: E402
from conftest import export_quiet, randomize_bn  # noqa: E402


class Shared(nn.Module):
    """One nn.ReLU object registered in two blocks (b1.2, b2.2)."""

    def __init__(self):
        super().__init__()
        act = nn.ReLU()
        self.b1 = nn.Sequential(nn.Conv2d(3, 8, 1), nn.BatchNorm2d(8), act, nn.Conv2d(8, 8, 1))
        self.b2 = nn.Sequential(nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8), act, nn.Conv2d(8, 4, 1))

    def forward(self, x):
        return self.b2(self.b1(x))


class SeqTwice(nn.Module):
    """One nn.ReLU object held twice by one nn.Sequential (s.1, s.3), and a nested alias (t.1.0)."""

    def __init__(self):
        super().__init__()
        act = nn.ReLU()
        self.s = nn.Sequential(nn.Conv2d(3, 8, 1), act, nn.Conv2d(8, 8, 1), act)
        self.t = nn.Sequential(nn.Conv2d(8, 4, 1), nn.Sequential(act))

    def forward(self, x):
        return self.t(self.s(x))


class CalledTwice(nn.Module):
    """torchvision's BasicBlock layout: one path, called twice (relu:0, relu:1) everywhere."""

    def __init__(self):
        super().__init__()
        self.c1, self.b1, self.c2 = nn.Conv2d(3, 8, 1), nn.BatchNorm2d(8), nn.Conv2d(8, 4, 1)
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.c2(self.relu(self.b1(self.c1(x)))))


class TwoNames(nn.Module):
    """One nn.ReLU under two attribute names of the same module: hooks cannot tell them apart, so both calls
    keep the first name (a:0, a:1) on the torch front end (torch.export says a, b: documented)."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 4, 1)
        self.a = nn.ReLU()
        self.b = self.a

    def forward(self, x):
        return self.b(self.c2(self.a(self.c1(x))))


EXPECTED = {Shared: ["b1.2", "b2.2"], SeqTwice: ["s.1", "s.3", "t.1.0"], CalledTwice: ["relu:0", "relu:1"]}


def _model(cls):
    torch.manual_seed(0)
    return randomize_bn(cls()).eval()


def _collapsed(res) -> list[str]:
    return [a["key"] for a in res.report["activations"] if a["collapsed"]]


def _keys(model, **kw):
    return [k["key"] for k in cp.list_keys(model, **kw)]


def _export(m, x):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.export.export(m, (x,))


def _rel(a, b) -> float:
    a, b = torch.as_tensor(a), torch.as_tensor(b)
    return float((a - b).abs().max() / a.abs().max().clamp_min(1e-12))


def _slot_linear(m, path):
    """m with the slot at `path` (only) holding nn.Identity: the reference for collapsing that site."""
    ref = copy.deepcopy(m)   # keeps the sharing: the other slots still hold the one ReLU
    head, _, name = path.rpartition(".")
    setattr(ref.get_submodule(head), name, nn.Identity())
    return ref


@pytest.mark.parametrize("cls", list(EXPECTED), ids=lambda c: c.__name__)
def test_module_and_exported_program_keys_agree(cls):
    m, x = _model(cls), torch.randn(1, 3, 8, 8)
    assert _keys(m, example_inputs=(x,)) == EXPECTED[cls]
    assert _keys(_export(m, x)) == EXPECTED[cls]


@pytest.mark.parametrize("cls", [Shared, SeqTwice], ids=lambda c: c.__name__)
def test_dynamo_onnx_export_keys_agree(cls, tmp_path):
    m = _model(cls)
    path = export_quiet(m, tmp_path / "m.onnx", (1, 3, 8, 8), dynamo=True)
    assert _keys(path) == EXPECTED[cls]


def test_torchscript_onnx_export_keys_shared_modules_by_first_name(tmp_path):
    """The TorchScript exporter (dynamo=False) names a module object by its first path (documented exception):
    the shared ReLU's second call is under b2's scope as /b2/b1.2/Relu. The one-path layout agrees."""
    ts = _keys(export_quiet(_model(Shared), tmp_path / "s.onnx", (1, 3, 8, 8), dynamo=False))
    assert ts[0] == "b1.2" and len(set(ts)) == 2 and "b2.2" not in ts
    two = export_quiet(_model(CalledTwice), tmp_path / "t.onnx", (1, 3, 8, 8), dynamo=False)
    assert _keys(two) == EXPECTED[CalledTwice]


def test_collapse_b2_2_replaces_that_site_on_module_program_and_onnx(tmp_path):
    import onnxruntime as ort

    m, xs = _model(Shared), torch.randn(2, 3, 8, 8)
    ref = _slot_linear(m, "b2.2")
    with torch.no_grad():
        want, before = ref(xs), m(xs)
    assert _rel(want, before) > 1e-3   # the site matters: a collapse of the wrong one would show
    for model in (copy.deepcopy(m), _export(m, xs)):   # the program at its example batch
        res = cp.collapse(model, collapse=["b2.2"], example_inputs=(xs.clone(),))
        assert _collapsed(res) == ["b2.2"]
        out = res.model.module() if isinstance(res.model, torch.export.ExportedProgram) else res.model
        with torch.no_grad():
            assert _rel(want, out(xs.clone())) < 1e-4, type(model).__name__
    path = export_quiet(m, tmp_path / "m.onnx", (2, 3, 8, 8), dynamo=True)
    res = cp.collapse(path, collapse=["b2.2"])
    assert _collapsed(res) == ["b2.2"]
    sess = ort.InferenceSession(res.model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: xs.numpy()})[0]
    assert _rel(want, got) < 1e-4


def test_collapse_one_of_two_slots_in_a_sequential():
    m, x = _model(SeqTwice), torch.randn(2, 3, 8, 8)
    for key in ("s.3", "t.1.0"):
        res = cp.collapse(copy.deepcopy(m), collapse=[key], example_inputs=(x,))
        with torch.no_grad():
            assert _rel(_slot_linear(m, key)(x), res.model(x.clone())) < 1e-4, key


def test_backend_collapses_b2_2():
    torch._dynamo.reset()
    m, x = _model(Shared), torch.randn(2, 3, 8, 8)
    backend = cp.torch_backend(collapse=["b2.2"], inductor=False)
    with torch.no_grad():
        got = torch.compile(copy.deepcopy(m), backend=backend)(x.clone())
        assert _rel(_slot_linear(m, "b2.2")(x), got) < 1e-4
    assert backend.reports and backend.reports[0]["collapsed"] == ["b2.2"]
    torch._dynamo.reset()


@pytest.mark.parametrize("method", ["easier", "tlc"])
def test_hook_scores_key_the_sites_the_front_end_finds(method):
    """module_scores (forward hooks) keys each call of a shared module by its call path, as the sites."""
    for cls in (Shared, SeqTwice, CalledTwice, TwoNames):
        m, x = _model(cls), torch.randn(4, 3, 8, 8)
        got = module_scores(m, method, calib_batches=[x]).scores
        assert sorted(got) == sorted(_keys(m, example_inputs=(x[:1],))), cls.__name__


def test_hook_scores_tell_the_two_slots_apart():
    """b1.2 and b2.2 see different inputs: their easier scores are each call's own statistics."""
    m, x = _model(Shared), torch.randn(16, 3, 8, 8)
    with torch.no_grad():
        m.b2[1].bias.fill_(5.0)   # b2's ReLU input almost always positive: score near 0
    got = module_scores(m, "easier", calib_batches=[x]).scores
    assert got["b2.2"] < 0.05 < got["b1.2"]


def test_two_attribute_names_keep_the_first_with_call_indices():
    m, x = _model(TwoNames), torch.randn(2, 3, 8, 8)
    assert _keys(m, example_inputs=(x[:1],)) == ["a:0", "a:1"]
    res = cp.collapse(copy.deepcopy(m), collapse=["a:1"], example_inputs=(x,))
    with torch.no_grad():
        want = m.c2(m.a(m.c1(x)))   # second call linear
        assert _rel(want, res.model(x.clone())) < 1e-4


def test_train_sites_and_linearize_use_call_paths():
    from collapse_passes.train.sites import find_sites, linearize

    m, x = _model(SeqTwice), torch.randn(2, 3, 8, 8)
    assert [s.key for s in find_sites(m)] == EXPECTED[SeqTwice]
    out = linearize(copy.deepcopy(m), ["s.3"])
    with torch.no_grad():
        assert _rel(_slot_linear(m, "s.3")(x), out(x)) < 1e-5
    t = _model(TwoNames)   # both calls named: both attribute slots replaced
    out = linearize(copy.deepcopy(t), ["a:0", "a:1"])
    with torch.no_grad():
        assert _rel(t.c2(t.c1(x)), out(x)) < 1e-5
        assert _rel(t(x), out(x)) > 1e-3


def test_a_traced_graph_module_keeps_the_call_paths():
    """A GraphModule made by the call-path tracer holds the shared ReLU at both paths and calls it from its
    root: re-tracing it and hooking it (the training loop scores its edited GraphModules) give the same keys."""
    from collapse_passes.fx.api import trace_module

    m, x = _model(Shared), torch.randn(4, 3, 8, 8)
    gm = trace_module(m)
    assert _keys(gm) == EXPECTED[Shared]
    assert _keys(trace_module(gm)) == EXPECTED[Shared]
    assert sorted(module_scores(gm, "easier", calib_batches=[x]).scores) == EXPECTED[Shared]
