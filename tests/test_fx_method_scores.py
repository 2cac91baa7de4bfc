"""method= scores on a torch model: collapse(module, method=..., calib=[batches]) scores the activation
modules with forward hooks (scores/torch_hooks.py) and selects as the ONNX path does."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import collapse_passes as cp
from collapse_passes.errors import CollapseError
from conftest import export_quiet


class Net(nn.Module):
    """conv-BN-ReLU x3 with shifted BN means (some ReLUs mostly on, some mostly off), then a functional
    ReLU that no hook can see."""

    def __init__(self):
        super().__init__()
        self.c1, self.b1, self.r1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()
        self.c2, self.b2, self.r2 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()
        self.c3, self.b3, self.r3 = nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8), nn.ReLU()
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = self.r1(self.b1(self.c1(x)))
        x = self.r2(self.b2(self.c2(x)))
        x = self.r3(self.b3(self.c3(x)))
        return self.fc(F.relu(x.mean((2, 3))))


def _net():
    torch.manual_seed(0)
    m = Net().eval()
    with torch.no_grad():
        for bn, shift in ((m.b1, 3.0), (m.b2, -0.2), (m.b3, 0.5)):
            bn.bias.fill_(shift)
    return m


def _calib(n=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(4, 3, 12, 12, generator=g) for _ in range(n)]


def test_easier_on_the_module_scores_and_chooses_as_the_onnx_path(tmp_path):
    m, calib, x = _net(), _calib(), torch.randn(1, 3, 12, 12)
    rt = cp.collapse(m, method="easier", calib=calib, remove=2, example_inputs=(x,))
    path = export_quiet(m, tmp_path / "net.onnx", (1, 3, 12, 12), dynamo=False)
    ro = cp.collapse(path, method="easier", calib={"input": torch.cat(calib).numpy()}, remove=2)
    st, so = rt.report["score_details"]["scores"], ro.report["score_details"]["scores"]
    # every site is scored on both sides, the functional ReLU too (the traced graph's values: torch_hooks._GraphSites)
    assert {"r1", "r2", "r3"} < set(st) and set(st) == set(so)
    assert max(abs(st[k] - so[k]) for k in st) < 1e-6
    # so the same rule picks the same two lowest scores on each side
    chosen = sorted(a["key"] for a in rt.report["activations"] if a["collapsed"])
    assert chosen == sorted(sorted(st, key=st.get)[:2])
    assert sorted(a["key"] for a in ro.report["activations"] if a["collapsed"]) == chosen
    assert rt.passed and isinstance(rt.model, torch.fx.GraphModule)
    assert not any("no easier score" in n for n in rt.report["notes"])
    y = rt.model(x)
    assert torch.allclose(y, rt.requested(x), atol=1e-5)


def test_calib_batches_caps_the_batches_read():
    m = _net()
    calls = []

    def batches():
        for b in _calib(6):
            calls.append(1)
            yield b

    r = cp.collapse(m, method="easier", calib=batches(), calib_batches=2, threshold=0.5,
                    example_inputs=(torch.randn(1, 3, 12, 12),))
    assert len(calls) == 2 and any("over 2 calibration batch(es)" in n for n in r.report["notes"])


def test_tlc_on_the_module_reads_the_batchnorm_data_free():
    r = cp.collapse(_net(), method="tlc", threshold=0.5, example_inputs=(torch.randn(1, 3, 12, 12),))
    assert r.report["score_details"]["variant"] == "bn"
    # r1's BN bias is 3 sigma on: its ReLU is almost never off, the lowest TLC score
    st = r.report["score_details"]["scores"]
    assert min(st, key=st.get) == "r1"


def test_method_errors_are_one_line():
    m, x = _net(), torch.randn(1, 3, 12, 12)
    ep = torch.export.export(m, (x,))
    cases = [
        # an ExportedProgram is scored on its own graph (since 2026-11-29, tests/test_adv19_ep_method_scores.py);
        # batches its static shapes reject are refused
        (dict(model=ep, method="easier", calib=[torch.randn(4, 3, 16, 16)]), "ExportedProgram's static shapes"),
        # every case passes threshold=: without method= it has no scores to choose by (refused first since
        # 2026-11-29, as the CLI refuses it), and the line says what calib= is for
        (dict(model=m, calib=_calib()), r"none are given \(calib= is the data a method= scores with"),
        (dict(model=m, method="easier", calib=torch.randn(4, 3, 12, 12)), "iterable of input batches"),
        (dict(model=m, method="easier"), r"easier needs calib=\[batch"),
        (dict(model=m, method="nope", calib=_calib()), "unknown score method"),
    ]
    for kw, match in cases:
        model = kw.pop("model")
        with pytest.raises(CollapseError, match=match) as e:
            cp.collapse(model, threshold=0.5, example_inputs=(x,), **kw)
        assert "\n" not in str(e.value)
