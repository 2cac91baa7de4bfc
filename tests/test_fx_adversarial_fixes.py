"""Defects an adversarial pass found in the torch front end, one test each."""
from __future__ import annotations

import gc

import pytest
import torch
from torch import nn

import collapse_passes as cp
from collapse_passes.errors import CollapseError


class TwoRelus(nn.Module):
    """Module `relu` called twice and a module named `relu_1`: fx names relu's second call `relu_1` too."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2)
        self.relu, self.relu_1 = nn.ReLU(), nn.ReLU()

    def forward(self, x):
        return self.c(self.relu_1(self.b(self.relu(self.a(self.relu(x))))))


def test_a_module_path_wins_over_an_fx_node_name():
    torch.manual_seed(0)
    m = TwoRelus().eval()
    x = torch.randn(3, 4)
    res = cp.collapse(m, collapse=["relu_1"], example_inputs=(x,))
    want = m.c(m.b(m.relu(m.a(m.relu(x)))))      # only the module relu_1 linear
    assert torch.allclose(res.model(x), want, atol=1e-6)
    assert [a["key"] for a in res.report["activations"] if a["collapsed"]] == ["relu_1"]


def test_a_reused_pass_list_linearizes_every_new_graph():
    from torch.fx.passes.infra.pass_manager import PassManager

    from collapse_passes.fx.passes import default_passes

    passes = default_passes(["relu_1"])
    gc.collect()
    gc.freeze()   # the objects alive so far are not scanned again: each full collection below frees this loop's
    try:          # graphs (cycles) in milliseconds instead of ~1 s each once torch and TVM are loaded
        for _ in range(60):   # freed graphs' ids come back: a pass that remembered ids skipped some
            g = torch.fx.symbolic_trace(TwoRelus().eval())
            out = PassManager(passes, steps=3)(g).graph_module
            assert not any(n.op == "call_module" and n.target == "relu_1" for n in out.graph.nodes)
            del g, out
            gc.collect()
    finally:
        gc.unfreeze()


class Writes(nn.Module):
    def __init__(self):
        super().__init__()
        self.r, self.c, self.r2, self.d = nn.ReLU(inplace=True), nn.Conv2d(3, 4, 1), nn.ReLU(), nn.Conv2d(4, 4, 1)

    def forward(self, x):
        return self.d(self.r2(self.c(self.r(x))))   # self.r writes into the caller's tensor


def test_calibration_batches_are_not_written_and_bad_caps_are_one_line():
    m = Writes().eval()
    x = torch.randn(1, 3, 8, 8)
    cal = [torch.randn(2, 3, 8, 8) for _ in range(3)]
    kept = [c.clone() for c in cal]
    cp.collapse(m, method="easier", calib=cal, threshold=0.9, example_inputs=(x,))
    assert all(torch.equal(a, b) for a, b in zip(cal, kept))
    for bad in (dict(calib=cal, calib_batches=0), dict(calib=cal, calib_batches=-1), dict(calib=5)):
        with pytest.raises(CollapseError, match="calib"):
            cp.collapse(m, method="easier", threshold=0.5, example_inputs=(x,), **bad)


def test_dynamic_torch_compile_with_batchnorm():
    m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()
    be = cp.torch_backend(inductor=False)
    c = torch.compile(m, backend=be, dynamic=True)
    for hw in (8, 12):
        x = torch.randn(2, 3, hw, hw)
        assert torch.allclose(c(x), m(x), atol=1e-5)


class Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.r, self.o = nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)

    def forward(self, x):
        if not torch.is_tensor(x):   # symbolic tracing sees a Proxy here and takes this branch
            x = x * 0.5
        return self.o(self.r(self.a(x)))


def test_a_trace_that_differs_from_the_model_is_refused():
    with pytest.raises(CollapseError, match="trace of the model computes other outputs.*torch.export"):
        cp.collapse(Branchy().eval(), collapse=["r"], example_inputs=(torch.randn(3, 4),))
    ep = torch.export.export(Branchy().eval(), (torch.randn(3, 4),))
    assert cp.collapse(ep, collapse=["r"]).passed


def test_wrong_example_shapes_print_one_line_not_a_torch_traceback(capfd):
    m = nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()
    with pytest.raises(CollapseError, match="does not run on example_inputs"):
        cp.collapse(m, example_inputs=(torch.randn(1, 4, 8, 8),))
    assert "Traceback" not in capfd.readouterr().err


def test_low_precision_models_and_keyword_exports_are_one_line():
    m = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)).eval().to(torch.bfloat16)
    with pytest.raises(CollapseError, match="bfloat16 weights.*model.float"):
        cp.collapse(m, collapse=["1"], example_inputs=(torch.randn(1, 4, dtype=torch.bfloat16),))

    class TwoIn(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.r = nn.Linear(6, 4), nn.Linear(5, 4), nn.ReLU()

        def forward(self, x, y):
            return self.r(self.a(x) + self.b(y))

    ep = torch.export.export(TwoIn().eval(), (torch.randn(2, 6),), kwargs={"y": torch.randn(2, 5)})
    with pytest.raises(CollapseError, match="keyword input"):
        cp.collapse(ep, collapse=["r"])


class Masked(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.r, self.o = nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)

    def forward(self, x, mask=None):
        h = self.o(self.r(self.a(x)))
        return h * mask if mask is not None else h


def test_an_input_left_at_its_default_is_named():
    """Since 2026-11-29 an input left at its default is traced at it (tests/test_adv14_torch.py); a user's own
    GraphModule that traced it as an input is still refused by name."""
    m, x = Masked().eval(), torch.randn(3, 4)
    assert cp.collapse(m, collapse=["r"], example_inputs=(x,)).passed
    with pytest.raises(CollapseError, match=r"mask keeps its default.*torch.export"):
        cp.collapse(torch.fx.symbolic_trace(m), collapse=["r"], example_inputs=(x,))
    res = cp.collapse(m, collapse=["r"], example_inputs=(x, torch.ones(3, 2)))
    assert res.passed


def test_labelled_calibration_batches_get_a_hint():
    m = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)).eval()
    loader = [(torch.randn(8, 4), torch.zeros(8)) for _ in range(2)]
    with pytest.raises(CollapseError, match=r"inputs, labels\) pass the inputs only"):
        cp.collapse(m, method="easier", calib=loader, threshold=0.5, example_inputs=(torch.randn(1, 4),))
    res = cp.collapse(m, method="easier", calib=(x for x, _ in loader), threshold=0.5,
                      example_inputs=(torch.randn(1, 4),))
    assert res.report["score_details"]["scores"]
