"""HoistGlobalPool on torch.fx graphs (collapse_passes/fx/passes/hoist_global_pool.py): a global average pool moves
before the pointwise convs that feed it (mean(Wx + b) = W mean(x) + b), in every torch spelling of the pool and
the flatten, on traced, exported and compiled graphs; refused where it would not be exact."""
from __future__ import annotations

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import fx, nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import collapse_passes as cp  # noqa: E402
from collapse_passes.fx.graph import PaddedConv, linear_op, propagate_shapes, shape_of  # noqa: E402
from collapse_passes.fx.passes import Cleanup, FxRecord, HoistGlobalPool, MergeLinearChains  # noqa: E402
from tests.conftest import export_quiet  # noqa: E402


def _ops(gm, kind, min_positions=1):
    """linear ops of `kind` whose output has at least `min_positions` spatial positions (convs) / all (linears)."""
    out = []
    for n in gm.graph.nodes:
        op = linear_op(gm, n)
        if op is not None and op.kind == kind:
            s = shape_of(n)
            if kind == "linear" or s is None or int(np.prod(s[2:])) >= min_positions:
                out.append(n)
    return out


class Head(nn.Module):
    """relu (kept: the chain before the 1x1 conv is empty, so the hoist always pays) -> 1x1 conv -> pool -> head."""

    def __init__(self, spelling, dims=2, groups=1, cin=8, cout=32, stride=1, padding=0):
        super().__init__()
        conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dims]
        self.conv = conv(cin, cout, 1, groups=groups, stride=stride, padding=padding)
        self.fc = nn.Linear(cout, 5)
        self.pool = {1: nn.AdaptiveAvgPool1d, 2: nn.AdaptiveAvgPool2d, 3: nn.AdaptiveAvgPool3d}[dims](1)
        self.flat = nn.Flatten()
        self.spelling, self.dims = spelling, dims

    def forward(self, x):
        y = self.conv(torch.relu(x))
        s, sp = self.spelling, tuple(range(2, 2 + self.dims))
        if s == "module":
            z = self.flat(self.pool(y))
        elif s == "functional":
            z = torch.flatten(F.adaptive_avg_pool2d(y, (1, 1)), 1)
        elif s == "mean":
            z = y.mean(sp)
        elif s == "mean_keepdim_view":
            z = y.mean([-1, -2], keepdim=True).view(x.size(0), -1)
        elif s == "torch_mean_reshape":
            z = torch.mean(y, dim=sp, keepdim=True).reshape(x.shape[0], -1)
        elif s == "method_flatten":
            z = self.pool(y).flatten(1)
        elif s == "unflattened":   # the pooled map feeds something that is no flatten: the conv runs on 1x1
            return self.pool(y) * 2.0
        else:
            raise ValueError(s)
        return self.fc(z)


def _shape(dims, n=2, c=8, size=6):
    return (n, c) + (size,) * dims


def _hoist(gm, x, record=None):
    record = record if record is not None else FxRecord()
    out = HoistGlobalPool(record, example_inputs=(x,))(gm)
    return out.graph_module, out.modified, record


def _check(model, gm, x, modified_expected=True):
    with torch.no_grad():
        ref = model(x)
    convs_before = len(_ops(gm, "conv", 2))
    gm, modified, rec = _hoist(gm, x)
    assert modified is modified_expected
    with torch.no_grad():
        out = gm(x)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    return gm, rec, convs_before


SPELLINGS = ["module", "functional", "mean", "mean_keepdim_view", "torch_mean_reshape", "method_flatten"]


@pytest.mark.parametrize("spelling", SPELLINGS)
@pytest.mark.parametrize("graph", ["symbolic_trace", "export", "export_decomposed"])
def test_each_spelling_hoists_to_a_linear(spelling, graph):
    model = Head(spelling).eval()
    x = torch.randn(_shape(2))
    if graph == "symbolic_trace":
        gm = fx.symbolic_trace(model)
    else:
        ep = torch.export.export(model, (x,))
        gm = (ep.run_decompositions() if graph == "export_decomposed" else ep).module()
    gm, rec, convs = _check(model, gm, x)
    assert convs == 1 and _ops(gm, "conv") == []
    assert [m["kind"] for m in rec.merges] == ["pool-hoist"] and rec.merges[0]["exact"]
    assert rec.merges[0]["macs_before"] == 2 * 36 * 8 * 32 and rec.merges[0]["macs_after"] == 2 * 8 * 32
    # the metadata left behind is what a fresh shape run finds (the report's MACs and the next passes read it)
    left = {n.name: shape_of(n) for n in gm.graph.nodes}
    propagate_shapes(gm, (x,))
    assert left == {n.name: shape_of(n) for n in gm.graph.nodes}


@pytest.mark.parametrize("dims", [1, 3])
def test_1d_and_3d(dims):
    model = Head("mean" if dims == 3 else "module", dims=dims).eval()
    x = torch.randn(_shape(dims, size=5))
    gm, rec, convs = _check(model, fx.symbolic_trace(model), x)
    assert convs == 1 and _ops(gm, "conv") == [] and len(_ops(gm, "linear")) == 2


def test_grouped_conv_densified_when_it_pays_else_run_on_the_1x1_map():
    model = Head("module", groups=4).eval()   # 36 positions >= 4 groups: a dense Linear
    x = torch.randn(_shape(2))
    gm, _, _ = _check(model, fx.symbolic_trace(model), x)
    assert _ops(gm, "conv") == []
    model = Head("module", groups=8, cin=8, cout=16).eval()   # 2x2 = 4 positions < 8 groups: the conv on 1x1
    x = torch.randn(_shape(2, size=2))
    gm, _, _ = _check(model, fx.symbolic_trace(model), x)
    convs = _ops(gm, "conv")
    assert len(convs) == 1 and shape_of(convs[0])[2:] == (1, 1) and linear_op(gm, convs[0]).params.group == 8
    model = Head("mean", groups=8, cin=8, cout=16).eval()   # no keepdim and not worth densifying: left alone
    _check(model, fx.symbolic_trace(model), x, modified_expected=False)


def test_unflattened_pool_runs_the_conv_on_the_1x1_map():
    model = Head("unflattened").eval()
    x = torch.randn(_shape(2))
    gm, _, _ = _check(model, fx.symbolic_trace(model), x)
    convs = _ops(gm, "conv")
    assert len(convs) == 1 and shape_of(convs[0]) == (2, 32, 1, 1)


@pytest.mark.parametrize("case", ["stride2", "padded", "two_users", "graph_output", "partial_mean", "inplace_input"])
def test_refused_where_it_would_not_be_exact(case):
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(8, 32, 1, stride=2 if case == "stride2" else 1, padding=1 if case == "padded" else 0)

        def forward(self, x):
            x = torch.relu(x)
            y = self.conv(x)
            if case == "inplace_input":
                x.mul_(2.0)   # the conv read x before this write: a pool moved up would read it after
            p = y.mean((2,)) if case == "partial_mean" else F.adaptive_avg_pool2d(y, 1)
            if case == "two_users":
                return p + y[:, :, :1, :1]
            if case == "graph_output":
                return p, y
            return p

    model = M().eval()
    x = torch.randn(_shape(2))
    gm, rec, _ = _check(model, fx.symbolic_trace(model), x, modified_expected=False)
    assert not rec.merges and len(_ops(gm, "conv")) == 1
    if case == "inplace_input":
        assert any("changed in place" in n for n in rec.notes)


def test_size_guarded_or_bias_map_merged_conv_is_refused_and_a_plain_one_hoisted():
    from collapse_passes.algebra.conv import ConvParams

    p = ConvParams(np.random.default_rng(0).standard_normal((16, 8, 1, 1)).astype(np.float32),
                   np.zeros(16, np.float32), (1, 1), (0, 0, 0, 0), (1, 1), 1)
    for guard, bias_map, hoisted in [(None, None, True), ((6, 6), None, False),
                                     (None, np.ones((16, 6, 6), np.float32), False)]:
        mod = PaddedConv(p, bias_map)
        mod.in_spatial = guard

        class M(nn.Module):
            def __init__(self):
                super().__init__()
                self.c = nn.Conv2d(8, 16, 1)

            def forward(self, x):
                return torch.flatten(F.adaptive_avg_pool2d(self.c(torch.relu(x)), 1), 1)

        gm = fx.symbolic_trace(M().eval())
        gm.add_submodule("c", mod)   # as the passes leave a merged conv: a call_module of a PaddedConv
        gm.recompile()
        x = torch.randn(_shape(2))
        gm, rec, _ = _check(copy.deepcopy(gm), gm, x, modified_expected=hoisted)
        assert (_ops(gm, "conv") == []) is hoisted
        if guard is not None:
            assert any("size-guarded" in n for n in rec.notes)


def test_pool_climbs_a_chain_of_pointwise_convs_and_the_merge_takes_the_linears():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.fc = nn.Conv2d(64, 16, 1), nn.Conv2d(16, 64, 1), nn.Linear(64, 5)

        def forward(self, x):
            return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.b(self.a(torch.relu(x))), 1), 1))

    model = M().eval()
    x = torch.randn(2, 64, 8, 8)
    with torch.no_grad():
        ref = model(x)
    propagate_shapes(gm := fx.symbolic_trace(model), (x,))
    from torch.fx.passes.infra.pass_manager import PassManager

    rec = FxRecord()
    gm = PassManager([HoistGlobalPool(rec), MergeLinearChains(record=rec), Cleanup(rec)], steps=5)(gm).graph_module
    assert [m["nodes"][0] for m in rec.merges if m["kind"] == "pool-hoist"] == ["b", "a"]
    assert _ops(gm, "conv") == [] and len(_ops(gm, "linear")) == 1   # 64 -> 16 -> 64 -> 5 merged into 64 -> 5
    torch.testing.assert_close(gm(x), ref, rtol=1e-4, atol=1e-5)


def test_refused_join_is_not_hoisted():
    """The merge fallback's allowed join keys (core/merge_fallback): a hoist is a merge record."""
    model = Head("module").eval()
    x = torch.randn(_shape(2))
    gm = fx.symbolic_trace(model)
    out = HoistGlobalPool(example_inputs=(x,), allowed=frozenset({"unrelated>join"}))(gm)
    assert not out.modified


def test_in_the_default_passes_of_a_pass_manager():
    from torch.fx.passes.infra.pass_manager import PassManager

    from collapse_passes.fx.passes import default_passes

    model = Head("module").eval()
    x = torch.randn(_shape(2))
    rec = FxRecord()
    passes = default_passes([], example_inputs=(x,), record=rec)
    gm = PassManager(passes, steps=5)(fx.symbolic_trace(model)).graph_module
    assert any(m["kind"] == "pool-hoist" for m in rec.merges) and _ops(gm, "conv") == []
    assert not any(m["kind"] == "pool-hoist" for m in
                   _run_default(model, x, merge=False))   # merging off: no hoist either


def _run_default(model, x, merge):
    from torch.fx.passes.infra.pass_manager import PassManager

    from collapse_passes.fx.passes import default_passes

    rec = FxRecord()
    PassManager(default_passes([], merge=merge, example_inputs=(x,), record=rec), steps=5)(fx.symbolic_trace(model))
    return rec.merges


# ----------------------------------------------------------------------------------- collapse() end to end


@pytest.fixture(scope="module")
def mobilenet_v2():
    from models import build
    from models.tv_init import calibrate_bn

    model = calibrate_bn(build("mobilenet_v2_tv", num_classes=10), (2, 3, 64, 64))
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    keys = [k["key"] for k in cp.list_keys(model, (x,))]
    return model, x, keys


def _no_1280(gm):
    return not any(1280 in tuple(linear_op(gm, n).params.weight.shape) for n in gm.graph.nodes
                   if linear_op(gm, n) is not None)


@pytest.mark.parametrize("kind", ["module", "ExportedProgram"])
def test_mobilenet_v2_head_conv_is_gone(mobilenet_v2, kind):
    model, x, keys = mobilenet_v2
    inp = torch.export.export(model, (x,)) if kind == "ExportedProgram" else model
    res = cp.collapse(inp, collapse=keys, example_inputs=(x,))
    assert res.report["passed"]
    gm = res.model.module() if kind == "ExportedProgram" else res.model
    assert isinstance(res.model, torch.export.ExportedProgram if kind == "ExportedProgram" else nn.Module)
    assert _no_1280(gm)   # 320 -> 1280 -> 10: pooled first, then merged with the classifier
    hoists = [m for m in res.report["merges"] if m["kind"] == "pool-hoist"]
    assert len(hoists) == 2   # the pool climbs features.18.0 (320->1280) and features.17's projection (960->320)
    with torch.no_grad():
        ref = res.requested(x)
        out = res.model.module()(x) if kind == "ExportedProgram" else res.model(x)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5 * float(ref.abs().max()))


def test_mobilenet_v2_result_exports_and_matches_the_onnx_front_end(mobilenet_v2, tmp_path):
    import onnx

    from collapse_passes.core.runtime import run as ort_run

    model, x, keys = mobilenet_v2
    res = cp.collapse(model, collapse=keys, example_inputs=(x,))
    ores = cp.collapse(export_quiet(model, tmp_path / "orig.onnx", tuple(x.shape), False), collapse=keys)
    feed = {"input": x.numpy()}
    b = ort_run(ores.model, [feed])[0][0][0]
    for dynamo in (False, True):
        a = ort_run(onnx.load(export_quiet(res.model, tmp_path / f"fx{dynamo}.onnx", tuple(x.shape), dynamo)),
                    [feed])[0][0][0]
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * np.abs(b).max())
    # the same plan on both front ends: the same MACs (the hoisted ops counted at one position)
    assert res.report["after"]["macs"] == ores.report["after"]["macs"]


def test_torch_backend_hoists_too(mobilenet_v2):
    model, x, keys = mobilenet_v2
    backend = cp.torch_backend(collapse=keys, inductor=False)
    compiled = torch.compile(model, backend=backend)
    with torch.no_grad():
        out = compiled(x)
    rep = backend.reports[-1]
    assert sum(m["kind"] == "pool-hoist" for m in rep["merges"]) == 2
    ref = cp.collapse(model, collapse=keys, example_inputs=(x,)).requested
    with torch.no_grad():
        torch.testing.assert_close(out, ref(x), rtol=1e-4, atol=1e-5 * float(out.abs().max()))


def test_a_hoisted_frozen_conv_stays_frozen():
    """The Linear made of a frozen conv reads only frozen parameters (fx/graph.insert_linear's sources)."""
    model = Head("unflattened").eval()
    model.conv.requires_grad_(False)
    x = torch.randn(_shape(2))
    gm, _, _ = _check(model, fx.symbolic_trace(model), x)
    new = [n for n in gm.graph.nodes if n.op == "call_module" and "hoisted" in str(n.target)]
    assert len(new) == 1 and not any(p.requires_grad for p in gm.get_submodule(new[0].target).parameters())


def test_a_view_by_another_tensors_size_is_no_flatten():
    """p.view(t.size(0), -1) flattens only when t's batch is the pooled map's: here (1, 2 * 32), so the conv runs on
    the 1x1 map and the view stays as it was."""
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(8, 32, 1)

        def forward(self, x):
            return F.adaptive_avg_pool2d(self.conv(torch.relu(x)), 1).view(x[:1].size(0), -1)

    model = M().eval()
    x = torch.randn(_shape(2))
    gm, _, _ = _check(model, fx.symbolic_trace(model), x)
    convs = _ops(gm, "conv")
    assert len(convs) == 1 and shape_of(convs[0]) == (2, 32, 1, 1) and _ops(gm, "linear") == []
