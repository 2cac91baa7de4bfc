"""A decomposed program (ep.run_decompositions(), the form torch.export pipelines lower to) collapses as its plain
export does. It writes a Linear as addmm(bias, x, W.t()) / mm(x, W.t()), an eval-mode dropout as aten.clone, and a
Linear on a 3-D input as view, addmm, view: the torch front end read none of them, so no Linear chain merged and
the report counted the weight transposes as ops."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
from torch import fx, nn  # noqa: E402

import collapse_passes as cp  # noqa: E402
from collapse_passes.fx.passes import Cleanup  # noqa: E402


class Head(nn.Module):
    """conv-BN-ReLU, pool, then Linear(no bias) - ReLU - eval Dropout - Linear: mm, relu, clone, addmm decomposed."""

    def __init__(self):
        super().__init__()
        self.c, self.b, self.r = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()
        self.f1, self.r2, self.d, self.f2 = nn.Linear(8, 16, bias=False), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 5)

    def forward(self, x):
        x = self.r(self.b(self.c(x))).mean((2, 3))
        return self.f2(self.d(self.r2(self.f1(x))))


class Mlp(nn.Module):
    """A transformer MLP on (B, T, C): view, addmm, view around the ReLU once decomposed."""

    def __init__(self):
        super().__init__()
        self.f1, self.r2, self.f2 = nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 8)

    def forward(self, x):
        return x + self.f2(self.r2(self.f1(x)))


def _calls(gm) -> list[str]:
    return [str(n.target) for n in gm.graph.nodes if n.op == "call_function"]


@pytest.mark.parametrize("make,shape", [(Head, (2, 3, 8, 8)), (Mlp, (2, 4, 8))], ids=["head", "mlp3d"])
def test_decomposed_program_merges_the_linears_its_plain_export_merges(make, shape):
    torch.manual_seed(0)
    m = make().eval()
    x = torch.randn(*shape)
    ep = torch.export.export(m, (x,))
    dec = ep.run_decompositions()
    assert "aten.addmm.default" in _calls(dec.graph_module)   # the spelling this test is about
    plain = cp.collapse(ep, collapse=["r2"], example_inputs=(x,))
    res = cp.collapse(dec, collapse=["r2"], example_inputs=(x,))
    assert isinstance(res.model, torch.export.ExportedProgram)
    ref = make().eval()
    ref.load_state_dict(m.state_dict())
    ref.r2 = nn.Identity()
    torch.testing.assert_close(res.model.module()(x), ref(x), rtol=1e-5, atol=1e-5)
    # one Linear where there were two: as many MACs and parameters as the plain program's result
    assert res.report["after"]["macs"] == plain.report["after"]["macs"] < res.report["before"]["macs"]
    assert res.report["after"]["params"] == plain.report["after"]["params"]
    assert sum(c in ("aten.linear.default", "aten.addmm.default", "aten.mm.default") for c in _calls(res.model.graph_module)) == 1
    if make is Head:   # the whole report as the plain program's (no transposes or clone counted)
        assert res.report["before"] == plain.report["before"]
        assert res.report["after"] == plain.report["after"]


def test_a_clone_something_writes_into_is_kept():
    """x.clone().add_(1): the copy is what keeps x unchanged; dropping it would write into the caller's data."""

    class W(nn.Module):
        def forward(self, x):
            y = torch.ops.aten.clone.default(x)
            y.add_(1.0)
            return y * 2 + x

    gm = fx.symbolic_trace(W())
    x = torch.randn(3, 4)
    want = W()(x.clone())
    Cleanup()(gm)
    assert "aten.clone.default" in _calls(gm)
    got = gm(x)
    torch.testing.assert_close(got, want)


def test_a_contiguous_clone_a_view_needs_is_kept():
    """x.permute(...).contiguous().view(...) decomposes to clone(memory_format=contiguous_format) before the view:
    dropping it left the view a permuted tensor ("view size is not compatible"; a decomposed Swin failed so)."""

    class P(nn.Module):
        def __init__(self):
            super().__init__()
            self.f1, self.act, self.f2 = nn.Linear(6, 6), nn.ReLU(), nn.Linear(18, 4)

        def forward(self, x):   # (2, 3, 6) -> (2, 6, 3) contiguous -> (2, 18)
            return self.f2(self.act(self.f1(x).permute(0, 2, 1).contiguous().view(2, 18)))

    torch.manual_seed(0)
    m = P().eval()
    x = torch.randn(2, 3, 6)
    dec = torch.export.export(m, (x,)).run_decompositions()
    assert any(n.kwargs.get("memory_format") is torch.contiguous_format for n in dec.graph.nodes
               if n.target is torch.ops.aten.clone.default)
    res = cp.collapse(dec, collapse=["act"], example_inputs=(x,))
    ref = P().eval()
    ref.load_state_dict(m.state_dict())
    ref.act = nn.Identity()
    torch.testing.assert_close(res.model.module()(x), ref(x), rtol=1e-5, atol=1e-5)


def test_a_returned_clone_is_kept():
    """A clone the graph returns: without it the output would be the input tensor itself."""

    class R(nn.Module):
        def forward(self, x):
            return torch.ops.aten.clone.default(x)

    gm = fx.symbolic_trace(R())
    Cleanup()(gm)
    x = torch.randn(2)
    assert gm(x) is not x and "aten.clone.default" in _calls(gm)


def test_addmm_with_a_scaled_product_or_a_batch_bias_is_not_a_linear():
    """addmm(b, x, W.t(), alpha=2) and a bias with one row per sample are not x @ W.T + b: left alone, exact."""
    from collapse_passes.fx.graph import linear_op

    w, b = torch.randn(5, 4), torch.randn(5)

    class A(nn.Module):
        def __init__(self):
            super().__init__()
            self.w, self.b, self.bb = nn.Parameter(w), nn.Parameter(b), nn.Parameter(torch.randn(3, 5))

        def forward(self, x):
            return (torch.ops.aten.addmm.default(self.b, x, torch.ops.aten.t.default(self.w), alpha=2.0)
                    + torch.ops.aten.addmm.default(self.bb, x, torch.ops.aten.t.default(self.w))
                    + torch.ops.aten.addmm.default(self.b, x, torch.ops.aten.t.default(self.w)))

    gm = fx.symbolic_trace(A())
    ops = [linear_op(gm, n) for n in gm.graph.nodes if n.target is torch.ops.aten.addmm.default]
    assert [op is not None for op in ops] == [False, False, True]
    torch.testing.assert_close(torch.from_numpy(ops[2].params.weight), w.detach())
