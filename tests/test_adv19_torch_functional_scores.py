"""method= scores on a torch module cover activations called as functions (F.relu, torch.relu, x.relu(),
F.hardswish, x * torch.sigmoid(x)): they are scored on the traced graph's values (scores/torch_hooks._GraphSites)
with the keys the torch front end collapses, equal to the ONNX front end's scores on the TorchScript export.
Before, only activation modules were hooked: collapse(module, method=...) scored fewer sites than collapse(onnx)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import collapse_passes as cp
from collapse_passes.scores import compute_scores
from collapse_passes.scores._common import activation_gaussian_regimes, layer_summary
from collapse_passes.scores.torch_hooks import module_scores
from conftest import export_quiet


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv, self.bn, self.relu = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU()
        self.conv2, self.bn2 = nn.Conv2d(c, c, 1), nn.BatchNorm2d(c)

    def forward(self, x):
        y = self.relu(self.bn(self.conv(x)))
        return F.relu(self.bn2(self.conv2(y)) + x)        # functional, inside a module: key "b1"


class Mixed(nn.Module):
    """nn.ReLU modules, F.relu / torch.relu / x.relu(), a shared ReLU module called twice, F.hardswish and a
    spelled-out SiLU."""

    def __init__(self, c=8):
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.b1, self.b2 = Block(c), Block(c)
        self.shared = nn.ReLU()
        self.c1, self.c2, self.c3, self.c4 = (nn.Conv2d(c, c, 1) for _ in range(4))
        self.fc = nn.Linear(c, 10)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = self.b2(self.b1(x))
        x = self.shared(self.c1(x))
        x = F.hardswish(3 * self.c2(x))
        x = self.shared(self.c3(x))
        y = self.c4(x) - 0.1
        x = (y * torch.sigmoid(y)).relu()
        return self.fc(x.mean((2, 3)))


KEYS = {"relu():0", "b1.relu", "b1", "b2.relu", "b2", "shared:0", "hardswish()", "shared:1", "silu()", "relu():1"}


def _mixed():
    torch.manual_seed(0)
    m = Mixed()
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.weight.uniform_(0.5, 1.5), mod.bias.uniform_(-0.5, 0.5)
                mod.running_mean.uniform_(-0.2, 0.2), mod.running_var.uniform_(0.5, 1.5)
    return m.eval()


def _calib(n=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(4, 3, 12, 12, generator=g) for _ in range(n)]


@pytest.fixture(scope="module")
def onnx_path(tmp_path_factory):
    return export_quiet(_mixed(), tmp_path_factory.mktemp("fn") / "mixed.onnx", (1, 3, 12, 12), dynamo=False)


def _npz(tmp_path, calib):
    path = tmp_path / "calib.npz"
    np.savez(path, input=torch.cat(calib).numpy())
    return str(path)


@pytest.mark.parametrize("method", ["easier", "tlc"])
def test_every_site_scored_as_on_onnx(method, onnx_path, tmp_path):
    calib = _calib()
    t = module_scores(_mixed(), method, calib_batches=calib)
    o = compute_scores(method, onnx_path, _npz(tmp_path, calib))
    assert set(t.scores) == set(o.scores) == KEYS
    assert list(t.scores) == list(o.scores)   # model (call) order, as ONNX: ties rank the same
    # TorchScript folds the BatchNorms into the convs, so ONNX's TLC is empirical where torch reads the BN
    same = [k for k in KEYS if t.details[k]["source"] != "bn"]
    assert {k for k in KEYS if k not in same} == ({"b1.relu", "b2.relu"} if method == "tlc" else set())
    assert max(abs(t.scores[k] - o.scores[k]) for k in same) < 1e-4
    assert len({round(t.scores[k], 3) for k in same}) > 3   # not all 0 / 1: the numbers mean something
    assert not any("no activation module" in n or "get no score" in n for n in t.notes)


def test_collapse_chooses_the_same_sites_as_onnx(onnx_path, tmp_path):
    calib, x = _calib(), torch.randn(1, 3, 12, 12)
    rt = cp.collapse(_mixed(), method="easier", calib=calib, threshold=0.3, example_inputs=(x,))
    ro = cp.collapse(onnx_path, method="easier", calib=_npz(tmp_path, calib), threshold=0.3)
    st, so = rt.report["score_details"]["scores"], ro.report["score_details"]["scores"]
    assert set(st) == set(so) == KEYS and max(abs(st[k] - so[k]) for k in st) < 1e-4
    chosen_t = sorted(a["key"] for a in rt.report["activations"] if a["collapsed"])
    chosen_o = sorted(a["key"] for a in ro.report["activations"] if a["collapsed"])
    assert chosen_t == chosen_o and any(k in chosen_t for k in ("relu():0", "b1", "b2", "silu()", "relu():1"))
    assert rt.passed and not any("no easier score" in n for n in rt.report["notes"])


class FunctionalOnly(nn.Module):
    """No activation module at all: module_scores refused it ("no activation modules")."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6)
        self.lin = nn.Linear(6, 6)

    def forward(self, x):
        x = F.relu(self.bn(self.conv(x)))                       # a BatchNorm module feeds it: TLC's bn variant
        t = x.flatten(2).transpose(1, 2)                        # (B, L, C) tokens: channels last
        return F.gelu(self.lin(t) + 0.3)


def _functional_only():
    torch.manual_seed(2)
    m = FunctionalOnly()
    with torch.no_grad():
        m.bn.bias.uniform_(-1, 1), m.bn.weight.uniform_(0.5, 1.5)
    return m.eval()


def test_functional_only_model_and_tlc_bn_variant(tmp_path):
    m, calib = _functional_only(), _calib()
    e = module_scores(m, "easier", calib_batches=calib)
    assert set(e.scores) == {"relu()", "gelu()"} and e.details["gelu()"]["channel_axis"] == 2
    path = export_quiet(m, tmp_path / "f.onnx", (1, 3, 12, 12), dynamo=False)
    o = compute_scores("easier", path, _npz(tmp_path, calib))
    assert max(abs(e.scores[k] - o.scores[k]) for k in e.scores) < 1e-4
    # data-free TLC: the F.relu after self.bn reads the BatchNorm, as an nn.ReLU there would
    t = module_scores(m, "tlc")
    d = t.details["relu()"]
    assert d["source"] == "bn" and d["bn"] == "bn" and set(t.scores) == {"relu()"}
    want = layer_summary(*activation_gaussian_regimes(m.bn.bias.detach().double().numpy(),
                                                      m.bn.weight.detach().double().numpy(), "relu", {}))
    assert abs(t.scores["relu()"] - want["score"]) < 1e-12
    assert any("gelu()" in n and "get no score" in n for n in t.notes)
    # with data, the GELU gets its empirical score as ONNX computes it
    tc = module_scores(m, "tlc", calib_batches=calib)
    oc = compute_scores("tlc", path, _npz(tmp_path, calib))
    assert tc.variant == "mixed" and abs(tc.scores["gelu()"] - oc.scores["gelu()"]) < 1e-4


class NeedsExport(nn.Module):
    """symbolic_trace fails (a branch on the input's rank); the torch front end's torch.export fallback traces it."""

    def __init__(self):
        super().__init__()
        self.conv, self.act = nn.Conv2d(3, 4, 3), nn.ReLU()

    def forward(self, x):
        if x.dim() == 3:
            x = x.unsqueeze(0)
        y = self.act(self.conv(x))
        return F.relu(y - 0.2) + F.hardswish(2 * y)


def test_export_fallback_scores_functional_sites(tmp_path):
    torch.manual_seed(3)
    m, calib = NeedsExport().eval(), _calib()
    keys = [k["key"] for k in cp.list_keys(m, (calib[0],))]
    r = module_scores(m, "easier", calib_batches=calib)
    assert list(r.scores) == keys and len(keys) == 3
    path = export_quiet(m, tmp_path / "e.onnx", (1, 3, 12, 12), dynamo=False)
    o = compute_scores("easier", path, _npz(tmp_path, calib))
    assert set(o.scores) == set(keys) and max(abs(r.scores[k] - o.scores[k]) for k in keys) < 1e-4


class Untraceable(nn.Module):
    """Data-dependent control flow: neither symbolic_trace nor torch.export traces it."""

    def __init__(self):
        super().__init__()
        self.conv, self.act = nn.Conv2d(3, 4, 3), nn.ReLU()

    def forward(self, x):
        y = self.act(self.conv(x))
        if y.mean() > 0:
            y = F.relu(y - 0.1)
        return y


def test_untraceable_model_keeps_the_hooks_with_a_note():
    r = module_scores(Untraceable().eval(), "easier", calib_batches=_calib())
    assert set(r.scores) == {"act"}
    assert any("called as functions" in n and "get no score" in n for n in r.notes)


def test_graph_failing_on_the_data_leaves_functional_sites_with_a_note():
    """torch.export's graph is specialized to example_inputs' spatial size; calibration batches of another size run
    on the model (hooks) but not on the graph: the functional sites are left unscored with a note (the retry in
    pieces of fx/tap.tapped_values raised the guard's AssertionError as a traceback)."""
    torch.manual_seed(3)
    m = NeedsExport().eval()
    calib = [torch.randn(4, 3, 16, 16) for _ in range(2)]
    r = cp.collapse(m, method="easier", calib=calib, threshold=0.0, example_inputs=(torch.randn(2, 3, 12, 12),))
    assert set(r.report["score_details"]["scores"]) == {"act"} and r.passed
    assert any("get no score: the traced graph failed on the calibration data" in n for n in r.report["notes"])


class Tokens1d(nn.Module):
    """Traced with torch.export only (a branch on the rank): a conv-fed (B, C, L) F.relu (channels on axis 1), one
    fed by a BatchNorm1d (TLC reads it), and a (B, L, C) F.gelu after a Linear (channels last)."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn, self.lin = nn.Conv1d(4, 6, 3), nn.BatchNorm1d(6), nn.Linear(6, 5)

    def forward(self, x):
        if x.dim() == 2:
            x = x.unsqueeze(0)
        y = F.relu(self.conv(x))
        z = F.relu(self.bn(y))
        return F.gelu(self.lin(z.transpose(1, 2)))


@pytest.mark.parametrize("method", ["easier", "tlc"])
def test_export_graph_channel_axes_and_batchnorm_as_onnx(method, tmp_path):
    torch.manual_seed(0)
    m = Tokens1d().eval()
    with torch.no_grad():
        m.bn.bias.uniform_(-1, 1)
    g = torch.Generator().manual_seed(1)
    calib = [torch.randn(4, 4, 10, generator=g) for _ in range(3)]
    r = module_scores(m, method, calib_batches=calib)
    path = export_quiet(m, tmp_path / "t.onnx", (1, 4, 10), dynamo=False)
    o = compute_scores(method, path, _npz(tmp_path, calib))
    assert list(r.scores) == list(o.scores) == ["relu():0", "relu():1", "gelu()"]
    assert max(abs(r.scores[k] - o.scores[k]) for k in r.scores) < 1e-4
    assert [r.details[k].get("channel_axis") for k in ("relu():0", "gelu()")] == [1, 2]
    if method == "tlc":
        assert r.details["relu():1"]["source"] == "bn" and r.details["relu():1"]["bn"] == "bn"


def test_a_generator_of_batches_is_read_for_both_hooks_and_graph():
    """The module hooks and the graph's functional sites each read the batches: a one-shot generator is held once."""
    m = _mixed()
    want = module_scores(m, "easier", calib_batches=_calib()).scores
    got = module_scores(m, "easier", calib_batches=(b for b in _calib())).scores
    assert set(got) == KEYS and got == pytest.approx(want, abs=1e-12)
    untraced = module_scores(Untraceable().eval(), "easier", calib_batches=(b for b in _calib()))
    assert set(untraced.scores) == {"act"} and untraced.details["act"]["samples"] == 12


def test_a_long_trace_error_is_cut_at_a_word():
    """The "could not be traced (...)" note cut the error mid-word at 200 characters (H45)."""
    from collapse_passes.scores.torch_hooks import _line

    text = _line(ValueError("alpha beta " * 40))
    assert text.endswith("beta ...") or text.endswith("alpha ...")
    assert len(text) <= 204 and "  " not in text
    assert _line(ValueError("")) == "ValueError"
