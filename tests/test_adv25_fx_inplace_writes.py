"""In-place writes fx/graph.mutates did not see: `x[i] = v` (operator.setitem in a dynamo / hand-built graph,
x.__setitem__ in a traced one), out= keywords (`torch.mul(h, 3.0, out=h)`), and a write through the output of an
eval-mode AlphaDropout / FeatureAlphaDropout (which returns its input). Missed, a collapsed ReLU (identity) read
an alias of a tensor written later (a wrong model that passed verification, as the requested semantics were built
the same way), or the merges / a carried bias crossed the write and dead-code elimination dropped an out= write
(verification failures). References are eager modules with the activation replaced by its linear regime (a copy
of its input for ReLU), written without the passes."""
from __future__ import annotations

import copy
import operator

import pytest

torch = pytest.importorskip("torch")
from torch import fx, nn  # noqa: E402

import collapse_passes as cp  # noqa: E402
from collapse_passes.fx.graph import alias_group, eliminate_dead_code, mutates, written  # noqa: E402

aten = torch.ops.aten


class CloneIdentity(nn.Module):
    def forward(self, x):
        return x.clone()


WRITES = {
    "dunder_setitem": lambda h: h.__setitem__((slice(None), 0), 0.25),
    "out_self": lambda h: torch.mul(h, 3.0, out=h),
    "out_view": lambda h: torch.mul(h[:, :2], 3.0, out=h[:, :2]),
}


class Residual(nn.Module):
    """act (collapsed: identity) reads h, then h is written in place, and both are read: c2 + identity, merged
    at the add, must read h as it was before the write. late: the branch reads h after the write (what a merge
    that misses the write computes)."""

    def __init__(self, write, late=False):
        super().__init__()
        self.write, self.late = write, late
        self.c1, self.act, self.c2 = nn.Conv2d(4, 4, 1), nn.ReLU(), nn.Conv2d(4, 4, 1)

    def forward(self, x):
        h = self.c1(x)
        if self.late:
            WRITES[self.write](h)
        y = self.c2(self.act(h))
        if not self.late:
            WRITES[self.write](h)
        return y + h


class ReadAfterWrite(nn.Module):
    """act (collapsed: identity) reads h, h is written in place, then act's output is read: it must not see the
    write (a collapsed act is a copy where its input is written later)."""

    def __init__(self, write):
        super().__init__()
        self.write = write
        self.c1, self.act, self.c2 = nn.Conv2d(4, 4, 1), nn.ReLU(), nn.Conv2d(4, 4, 1)

    def forward(self, x):
        h = self.c1(x)
        a = self.act(h)
        WRITES[self.write](h)
        return self.c2(a) + h


class DropoutAlias(nn.Module):
    """act reads h; a write through the dropout's output (h itself in eval mode) changes h afterwards."""

    def __init__(self, drop):
        super().__init__()
        self.c1, self.act, self.drop, self.c2 = nn.Conv2d(4, 4, 1), nn.ReLU(), drop, nn.Conv2d(4, 4, 1)

    def forward(self, x):
        h = self.c1(x)
        a = self.act(h)
        self.drop(h).mul_(2.0)
        return self.c2(a) + h


def _close(a, b):
    return float((a - b).abs().max()) <= 1e-4 * float(b.abs().max()) + 1e-5


def _check(model, x, reference, wrong):
    """collapse(act) passes and equals the eager reference (act a copy of its input); `wrong` (act reading h
    after the write) does not, so the test can tell the two apart."""
    res = cp.collapse(model, collapse=["act"], example_inputs=(x,))
    assert res.passed
    ref = copy.deepcopy(reference)
    ref.act = CloneIdentity()
    with torch.no_grad():
        assert not _close(wrong(x.clone()), ref(x.clone()))
        for inp in (x, torch.randn_like(x)):
            assert _close(res.model(inp.clone()), ref(inp.clone()))


@pytest.mark.parametrize("write", list(WRITES))
def test_a_collapsed_activation_keeps_its_value_when_its_input_is_written_later(write):
    torch.manual_seed(0)
    model = Residual(write).eval()
    late = copy.deepcopy(model)
    late.late, late.act = True, nn.Identity()
    _check(model, torch.randn(2, 4, 5, 5), model, late)


def test_operator_setitem_in_a_graph_module_is_a_write():
    """dynamo's graphs (torch._dynamo.export) record `h[:, 0] = v` as operator.setitem; symbolic_trace cannot."""
    torch.manual_seed(0)
    model = ReadAfterWrite("dunder_setitem").eval()
    gm = fx.symbolic_trace(model)
    (node,) = [n for n in gm.graph.nodes if n.target == "__setitem__"]
    node.op, node.target = "call_function", operator.setitem
    gm.recompile()
    x = torch.randn(2, 4, 5, 5)
    with torch.no_grad():
        assert _close(gm(x.clone()), model(x.clone()))
    alias = copy.deepcopy(model)
    alias.act = nn.Identity()
    _check(gm, x, model, alias)


@pytest.mark.parametrize("drop", [nn.AlphaDropout, nn.FeatureAlphaDropout])
def test_an_eval_alpha_dropout_returns_an_alias_of_its_input(drop):
    torch.manual_seed(0)
    model = DropoutAlias(drop()).eval()
    alias = copy.deepcopy(model)
    alias.act = nn.Identity()   # act's output an alias of h: it sees the write through the dropout
    _check(model, torch.randn(2, 4, 5, 5), model, alias)


def _graph():
    g = fx.Graph()
    a, h = g.placeholder("a"), g.placeholder("h")
    return g, a, h


def test_mutates_sees_setitem_out_and_schema_writes():
    g, a, h = _graph()
    cases = [
        (g.call_function(operator.setitem, (h, 0, 1.0)), h),
        (g.call_method("__setitem__", (h, 0, 1.0)), h),
        (g.call_function(torch.Tensor.__setitem__, (h, 0, 1.0)), h),
        (g.call_function(torch.add, (a, 1.0), {"out": h}), h),
        (g.call_function(torch.max, (a, 1), {"out": (h, a)}), h),
        (g.call_function(aten.add.out, (a, a), {"out": h}), h),
        (g.call_function(aten.copy_.default, (h, a)), h),
        (g.call_function(operator.imatmul, (h, a)), h),
    ]
    for node, x in cases:
        assert mutates(node, x), node.format_node()
        assert x in written(node)
    out_add = cases[3][0]
    assert not mutates(out_add, a) and written(out_add) == [h]   # reads a, writes h
    assert not mutates(cases[5][0], a)


def test_dunder_reads_are_not_writes():
    g, a, h = _graph()
    for t in (torch.Tensor.__getitem__, torch.Tensor.__add__):
        node = g.call_function(t, (h, 0))
        assert not mutates(node, h) and written(node) == []
    assert not mutates(g.call_method("__getitem__", (h, 0)), h)


def test_an_out_call_returns_an_alias_of_its_out_tensor():
    g, a, h = _graph()
    y = g.call_function(torch.mul, (a, 3.0), {"out": h})
    write = g.call_method("relu_", (y,))
    assert h in alias_group(y) and y in alias_group(h) and a not in alias_group(y)
    assert mutates(write, y)


def test_dead_code_elimination_keeps_an_out_write_whose_result_is_unused():
    g, a, h = _graph()
    g.call_function(torch.mul, (a, 3.0), {"out": h})
    g.output(g.call_function(torch.neg, (h,)))
    gm = fx.GraphModule(nn.Module(), g)
    eliminate_dead_code(gm)
    gm.recompile()
    av, hv = torch.randn(3), torch.zeros(3)
    assert torch.equal(gm(av, hv), -3.0 * av)


class ShiftThenWrite(nn.Module):
    """Hardsigmoid collapsed to x/6 + 1/2 (a shift the passes carry through conv + BN into a bias), then the
    BN's output written in place before the next conv and the residual add read it."""

    def __init__(self, write):
        super().__init__()
        self.write = write
        self.c1, self.act, self.c2 = nn.Conv2d(4, 4, 1), nn.Hardsigmoid(), nn.Conv2d(4, 4, 3, padding=1)
        self.bn, self.c3 = nn.BatchNorm2d(4), nn.Conv2d(4, 4, 1)

    def forward(self, x):
        b = self.bn(self.c2(self.act(self.c1(x))))
        WRITES[self.write](b)
        return self.c3(b) + b


class HardsigmoidRegime(nn.Module):
    def forward(self, x):
        return x / 6.0 + 0.5


@pytest.mark.parametrize("write", ["dunder_setitem", "out_view"])
def test_a_carried_shift_does_not_cross_a_write(write):
    torch.manual_seed(0)
    model = ShiftThenWrite(write).eval()
    with torch.no_grad():
        model.bn.running_mean.normal_()
        model.bn.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 4, 5, 5)
    res = cp.collapse(model, collapse=["act"], example_inputs=(x,))
    assert res.passed
    ref = copy.deepcopy(model)
    ref.act = HardsigmoidRegime()
    with torch.no_grad():
        for inp in (x, torch.randn_like(x)):
            assert _close(res.model(inp.clone()), ref(inp.clone()))
