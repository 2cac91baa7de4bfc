"""method= on a torch.export.ExportedProgram (H47): collapse(ep, method="easier"|"tlc", calib=[...]) was refused
("its aten graph has no activation modules to hook"). The program's sites (the keys list_keys and collapse=[...]
use) are now scored on its own graph module (scores/torch_hooks._GraphSites) with the same ChannelStats, so the
numbers equal the nn.Module's it was exported from and its ONNX export's; TLC reads the BN variant from the
graph's batch_norm op. Batches the program's static shapes reject are one line naming the way out."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import collapse_passes as cp
from collapse_passes.errors import CollapseError
from conftest import export_quiet


class Net(nn.Module):
    """conv-BN-ReLU twice, a shared nn.ReLU called at two places (keys r:0, r:1), a functional hardswish, a
    functional ReLU after the pool (no module to hook on the nn.Module either)."""

    def __init__(self, bn=True):
        super().__init__()
        norm = (lambda c: nn.BatchNorm2d(c)) if bn else (lambda c: nn.Identity())
        self.c1, self.b1, self.r1 = nn.Conv2d(3, 8, 3, padding=1), norm(8), nn.ReLU()
        self.c2, self.b2, self.r2 = nn.Conv2d(8, 8, 3, padding=1), norm(8), nn.ReLU()
        self.c3, self.c4, self.r = nn.Conv2d(8, 8, 1), nn.Conv2d(8, 8, 1), nn.ReLU()
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = self.r1(self.b1(self.c1(x)))
        x = self.r2(self.b2(self.c2(x)))
        x = self.r(self.c3(x))
        x = F.hardswish(self.r(self.c4(x)))
        return self.fc(F.relu(x.mean((2, 3)) - 0.1))


def _net(bn=True):
    torch.manual_seed(0)
    m = Net(bn).eval()
    if bn:
        with torch.no_grad():
            for b, shift in ((m.b1, 2.0), (m.b2, -0.3)):
                b.bias.fill_(shift)
                b.running_mean.uniform_(-0.2, 0.2)
                b.running_var.uniform_(0.5, 2.0)
    return m


def _calib(n=3, size=12, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(4, 3, size, size, generator=g) for _ in range(n)]


X = torch.randn(1, 3, 12, 12)


def _scores(res):
    return res.report["score_details"]["variant"], res.report["score_details"]["scores"]


def _close(a: dict, b: dict):
    assert list(a) == list(b)
    assert max(abs(a[k] - b[k]) for k in a) < 1e-5


@pytest.mark.parametrize("method", ["easier", "tlc"])
def test_method_on_the_program_equals_the_module_and_the_onnx_export(method, tmp_path):
    """BN-free model: EASIER and TLC-empirical from the program's graph = the nn.Module's hooks = the ONNX path."""
    m = _net(bn=False)
    ep = torch.export.export(m, (X,))
    rm = cp.collapse(m, method=method, calib=_calib(), remove=2, example_inputs=(X,))
    re = cp.collapse(ep, method=method, calib=_calib(), remove=2)
    path = export_quiet(m, tmp_path / "net.onnx", (1, 3, 12, 12), dynamo=False)
    ro = cp.collapse(path, method=method, calib={"input": torch.cat(_calib()).numpy()}, remove=2)
    (vm, sm), (ve, se), (vo, so) = _scores(rm), _scores(re), _scores(ro)
    assert vm == ve == vo == "empirical"
    # the program's own keys: those list_keys and collapse(ep, collapse=[...]) use, every one scored
    assert set(se) == {r["key"] for r in cp.list_keys(ep)} == set(so)
    assert {"r:0", "r:1", "r1", "r2"} < set(se)
    _close(sm, se)
    assert max(abs(se[k] - so[k]) for k in se) < 1e-5
    chosen = sorted(a["key"] for a in re.report["activations"] if a["collapsed"])
    assert chosen == sorted(a["key"] for a in rm.report["activations"] if a["collapsed"]) and len(chosen) == 2
    assert re.passed and isinstance(re.model, torch.export.ExportedProgram)
    assert torch.allclose(re.model.module()(X), re.requested(X), atol=1e-5)
    assert not any("no " + method + " score" in n for n in re.report["notes"])


def test_tlc_on_the_program_reads_the_batch_norm_op():
    """A batch_norm feeding the activation in the program's graph: TLC's BN variant with the module's numbers,
    with calib= (mixed: the others empirical) and data-free (the others left unscored, as on the module)."""
    m = _net()
    ep = torch.export.export(m, (X,))
    rm = cp.collapse(m, method="tlc", calib=_calib(), threshold=0.5, example_inputs=(X,))
    re = cp.collapse(ep, method="tlc", calib=_calib(), threshold=0.5)
    (vm, sm), (ve, se) = _scores(rm), _scores(re)
    assert vm == ve == "mixed"
    _close(sm, se)
    details = re.report["score_details"]["details"]
    assert details["r1"]["source"] == details["r2"]["source"] == "bn" and details["r:0"]["source"] == "empirical"
    # data-free: the BN-fed sites only (the module refuses, its hooks need data; the program's other sites are
    # graph sites, left unscored with a note as an F.relu of a module is)
    free = cp.collapse(ep, method="tlc", threshold=0.5)
    variant, scores = _scores(free)
    assert variant == "bn" and list(scores) == ["r1", "r2"]
    _close({k: sm[k] for k in scores}, scores)
    assert any("no BatchNorm right before them" in n for n in free.report["notes"])


def test_a_dynamic_program_scores_batches_of_any_size():
    """A program exported with a dynamic batch (Dim without max=) scores batches of 5; collapse(ep) raised a
    sympy AttributeError on the unbounded range before."""
    m = _net(bn=False)
    ep = torch.export.export(m, (torch.randn(2, 3, 12, 12),), dynamic_shapes=({0: torch.export.Dim("b")},))
    calib = [torch.randn(5, 3, 12, 12, generator=torch.Generator().manual_seed(3))]
    rm = cp.collapse(m, method="easier", calib=calib, threshold=0.5, example_inputs=(X,))
    re = cp.collapse(ep, method="easier", calib=calib, threshold=0.5)
    _close(_scores(rm)[1], _scores(re)[1])
    assert re.passed and re.model.module()(torch.randn(3, 3, 12, 12)).shape == (3, 4)


@pytest.mark.parametrize("method", ["easier", "tlc", "lacoot"])
def test_batches_the_static_shapes_reject_are_one_line(method):
    ep = torch.export.export(_net(), (X,))
    with pytest.raises(CollapseError, match=r"static shapes reject .*export with dynamic_shapes=") as e:
        cp.collapse(ep, method=method, calib=_calib(size=16), **({"remove_blocks": 0.5} if method == "lacoot" else
                                                                 {"threshold": 0.5}))
    assert "\n" not in str(e.value) and "(4, 3, 16, 16)" in str(e.value)
    ep2 = torch.export.export(_net(), (torch.randn(2, 3, 12, 12),))   # a static batch of 2 runs 4, not 3
    with pytest.raises(CollapseError, match="multiples of 2"):
        cp.collapse(ep2, method="easier", calib=[torch.randn(3, 3, 12, 12)], threshold=0.5)
    assert _scores(cp.collapse(ep2, method="easier", calib=_calib(), threshold=0.5))[1]
