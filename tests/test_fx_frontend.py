"""The torch front end: collapse() on nn.Module / GraphModule / ExportedProgram, the PassBase passes in a
torch.fx PassManager, the torch.compile backend, ONNX parity and bad input.

The reference each result is checked against is built independently of the passes: a deep copy of
the module with the collapsed activation modules swapped for nn.Identity."""
from __future__ import annotations

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import collapse_passes as cp  # noqa: E402
from collapse_passes.errors import CollapseError  # noqa: E402
from tests.conftest import export_quiet, randomize_bn  # noqa: E402


# ----------------------------------------------------------------------------------- models

class ResNetTiny(nn.Module):
    """Stem + two torchvision BasicBlocks (identity shortcut; projection shortcut with stride 2)."""

    def __init__(self):
        super().__init__()
        from models.resnet_tv import BasicBlockTV

        self.conv1 = nn.Conv2d(3, 8, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU()
        down = nn.Sequential(nn.Conv2d(8, 16, 1, 2, bias=False), nn.BatchNorm2d(16))
        self.layer1 = nn.Sequential(BasicBlockTV(8, 8), BasicBlockTV(8, 16, 2, down))
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        x = self.layer1(self.relu(self.bn1(self.conv1(x))))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class MlpResidual(nn.Module):
    """x + fc2(gelu(fc1(x))): a transformer MLP with its residual."""

    def __init__(self, dim=16):
        super().__init__()
        from models.swin import Mlp

        self.mlp = Mlp(dim, 4 * dim)

    def forward(self, x):
        return x + self.mlp(x)


def _inverted_residual():
    from models.mobilenet_tv import TvInvertedResidual

    return TvInvertedResidual(8, 8, 1, 6)


def _act_module_paths(model):
    from collapse_passes.core.torch_kinds import module_kind

    return [n for n, m in model.named_modules() if n and module_kind(m) is not None]


# name -> (builder, input shape, module paths collapsed (every call site of each))
CASES = {
    "basicblocks": (ResNetTiny, (2, 3, 12, 12), ["layer1.0.relu", "layer1.1.relu"]),
    "inverted_residual": (_inverted_residual, (2, 8, 8, 8), None),   # None: all activations
    "mlp": (MlpResidual, (2, 5, 16), None),
}


def build(name):
    builder, shape, keys = CASES[name]
    torch.manual_seed(0)
    model = randomize_bn(builder()).eval()
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    return model, x, (keys if keys is not None else _act_module_paths(model))


def identity_reference(model, paths):
    """The model with the activation modules at `paths` replaced by nn.Identity (all their call sites)."""
    ref = copy.deepcopy(model)
    for p in paths:
        parent, _, leaf = p.rpartition(".")
        setattr(ref.get_submodule(parent) if parent else ref, leaf, nn.Identity())
    return ref


def aten_ops(model, x) -> int:
    """Operations of the model as torch.export sees them (call_function nodes; getitem is free)."""
    import operator

    ep = model if isinstance(model, torch.export.ExportedProgram) else torch.export.export(model, (x,))
    return sum(1 for n in ep.graph.nodes if n.op == "call_function" and n.target is not operator.getitem)


def fx_ops(model) -> int:
    """Operations of a module as torch.fx traces it (a PaddedConv counts its pad, conv and bias-map add)."""
    from collapse_passes.fx.graph import count_ops

    return count_ops(model if isinstance(model, torch.fx.GraphModule) else torch.fx.symbolic_trace(model))


def assert_close(out, ref, rtol=1e-4):
    out, ref = out.detach().double(), ref.detach().double()
    err = (out - ref).abs().max().item()
    assert err <= rtol * ref.abs().max().item() + 1e-6, f"max abs error {err}"


def as_input(model, kind, x):
    if kind == "module":
        return model
    if kind == "graphmodule":
        return torch.fx.symbolic_trace(model)
    return torch.export.export(model, (x,))


# ----------------------------------------------------------------------------------- keys

def test_keys_name_each_call_site_of_a_shared_relu():
    from collapse_passes.fx.graph import find_activations, key_index

    model, x, _ = build("basicblocks")
    for gm in (torch.fx.symbolic_trace(model), torch.export.export(model, (x,)).module()):
        sites = find_activations(gm)
        keys = [s.keys[0] for s in sites]
        assert keys == ["relu", "layer1.0.relu:0", "layer1.0.relu:1", "layer1.1.relu:0", "layer1.1.relu:1"]
        assert len(key_index(sites)["layer1.0.relu"]) == 2
    listed = cp.list_keys(model)
    assert [k["key"] for k in listed] == keys and listed[1]["module"] == "layer1.0.relu"


def test_one_call_site_of_a_shared_module_collapses_alone():
    model, x, _ = build("basicblocks")
    res = cp.collapse(model, collapse=["layer1.0.relu:0"], example_inputs=(x,))
    table = {a["key"]: a["collapsed"] for a in res.report["activations"]}
    assert table["layer1.0.relu:0"] and not table["layer1.0.relu:1"]
    assert res.report["verification"]["against_requested"]["passed"]


def test_unknown_key_names_near_matches():
    model, x, _ = build("basicblocks")
    with pytest.raises(CollapseError, match="did you mean.*layer1.0.relu"):
        cp.collapse(model, collapse=["layer1.0.rleu"], example_inputs=(x,))
    with pytest.raises(CollapseError, match="names no call site.*calls collapsed then are gone"):
        cp.collapse(model, collapse=["layer1.0.relu:5"], example_inputs=(x,))


# ----------------------------------------------------------------------------------- collapse()

@pytest.mark.parametrize("kind", ["module", "graphmodule", "exported"])
@pytest.mark.parametrize("name", list(CASES))
def test_collapse_returns_same_kind_equal_to_identity_reference_with_fewer_ops(name, kind):
    model, x, keys = build(name)
    ref = identity_reference(model, keys)
    res = cp.collapse(as_input(model, kind, x), collapse=keys, example_inputs=(x,))
    out_model = res.model
    if kind == "exported":
        assert isinstance(out_model, torch.export.ExportedProgram)
        run = out_model.module()
    else:
        assert isinstance(out_model, torch.fx.GraphModule)
        run = out_model
    with torch.no_grad():
        assert_close(run(x), ref(x))
        x2 = torch.randn_like(x)
        assert_close(run(x2), ref(x2))
    if kind == "exported":
        assert aten_ops(out_model, x) < aten_ops(ref, x)
    else:
        assert fx_ops(out_model) < fx_ops(ref)
    rep = res.report
    assert rep["passed"] and rep["collapsed"] == len([a for a in rep["activations"] if a["collapsed"]]) > 0
    assert rep["after"]["nodes"] < rep["before"]["nodes"]
    # the caller's model is untouched
    with torch.no_grad():
        orig = model(x)
    assert any(isinstance(m, (nn.ReLU, nn.ReLU6, nn.GELU)) for m in model.modules())
    assert orig.shape == ref(x).shape


def test_merges_are_planned_and_exact():
    model, x, keys = build("inverted_residual")
    res = cp.collapse(model, collapse=keys, example_inputs=(x,))
    kinds = [m["kind"] for m in res.report["merges"]]
    assert "conv" in kinds and "residual-identity" in kinds
    assert all(m["exact"] for m in res.report["merges"])
    assert res.report["after"]["macs"] < res.report["before"]["macs"]
    # BasicBlock: 3x3 'same' o 3x3 'same' is border-inexact: refused with a reason, not merged
    model, x, keys = build("basicblocks")
    res = cp.collapse(model, collapse=keys, example_inputs=(x,))
    assert not [m for m in res.report["merges"] if m["kind"] == "conv"]
    assert any("approximate" in n for n in res.report["notes"])


def test_a_chain_cut_into_two_segments_merges_both():
    """Two inverted residuals without skips: one chain of six convs, planned as two merged segments."""
    from models.mobilenet_tv import TvInvertedResidual

    torch.manual_seed(0)
    model = randomize_bn(nn.Sequential(TvInvertedResidual(8, 16, 2, 6), TvInvertedResidual(16, 24, 1, 6))).eval()
    x = torch.randn(1, 8, 16, 16)
    keys = _act_module_paths(model)
    res = cp.collapse(model, collapse=keys, example_inputs=(x,))
    assert [len(m["nodes"]) for m in res.report["merges"] if m["kind"] == "conv"] == [3, 3]
    with torch.no_grad():
        assert_close(res.model(x), identity_reference(model, keys)(x))


def test_border_approximation_is_opt_in_and_reported():
    model, x, keys = build("basicblocks")
    # a large per-op overhead makes 3x3 o 3x3 -> 5x5 pay (with MACs alone it does not, and is not merged)
    res = cp.collapse(model, collapse=keys, example_inputs=(x,), allow_border_approx=True, per_op_overhead=1e7)
    approx = [m for m in res.report["merges"] if not m["exact"]]
    assert approx and res.report["approximate"] and res.report["approximations"] == approx
    assert not res.report["verification"]["against_requested"]["passed"]   # the border differs: measured, reported
    assert any("border approximation" in w for w in res.report["warnings"])


class Scale(nn.Module):
    def __init__(self, s):
        super().__init__()
        self.s = s

    def forward(self, x):
        return self.s * x


def test_selu_regime_and_batchnorm_before_a_linear_fold_away():
    """SELU collapses to gamma*x (not identity); a BatchNorm1d before a Linear folds into it."""
    from collapse_passes.core.activations import SELU_GAMMA

    torch.manual_seed(0)
    model = nn.Sequential(nn.BatchNorm1d(6), nn.Linear(6, 12), nn.SELU(), nn.Dropout(0.1), nn.Linear(12, 3))
    randomize_bn(model).eval()
    x = torch.randn(4, 6)
    res = cp.collapse(model, collapse=["2"], example_inputs=(x,))   # eval-mode dropout is a no-op: dropped
    ref = copy.deepcopy(model)
    ref[2] = Scale(SELU_GAMMA)
    with torch.no_grad():
        assert_close(res.model(x), ref(x))
    assert fx_ops(res.model) == 1
    assert {f["kind"] for f in res.report["folds"]} == {"batchnorm-before", "scalar-affine-after"}


def test_scores_and_threshold_choose_sites():
    model, x, _ = build("basicblocks")
    scores = {"relu": 0.9, "layer1.0.relu:0": 0.01, "layer1.0.relu:1": 0.5, "layer1.1.relu": 0.02}
    res = cp.collapse(model, scores=scores, threshold=0.1, example_inputs=(x,))
    got = sorted(a["key"] for a in res.report["activations"] if a["collapsed"])
    assert got == ["layer1.0.relu:0", "layer1.1.relu:0", "layer1.1.relu:1"]


# ----------------------------------------------------------------------------------- ONNX parity

@pytest.mark.parametrize("name,dynamo", [("basicblocks", False), pytest.param("basicblocks", True, marks=pytest.mark.slow),
                                         ("inverted_residual", False)])
def test_result_exported_to_onnx_matches_the_onnx_front_end(tmp_path, name, dynamo):
    """Same keys, same outputs: the fx result exported by either torch exporter vs collapse() on the ONNX
    export of the original. basicblocks uses per-call-site keys of the shared ReLU (both front ends
    must number the calls alike)."""
    import onnx

    from collapse_passes.core.runtime import run as ort_run

    model, x, keys = build(name)
    if name == "basicblocks":
        keys = ["layer1.0.relu:0", "layer1.1.relu:1"]
    res = cp.collapse(model, collapse=keys, example_inputs=(x,))
    torch_onnx = onnx.load(export_quiet(res.model, tmp_path / "fx.onnx", tuple(x.shape), dynamo))
    onnx_res = cp.collapse(export_quiet(model, tmp_path / "orig.onnx", tuple(x.shape), dynamo), collapse=keys)
    assert sorted(a["key"] for a in onnx_res.report["activations"] if a["collapsed"]) == sorted(keys)
    feed = {"input": x.numpy()}
    a = ort_run(torch_onnx, [feed])[0][0][0]
    b = ort_run(onnx_res.model, [feed])[0][0][0]
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * np.abs(b).max())
    if name != "basicblocks":
        with torch.no_grad():
            np.testing.assert_allclose(a, identity_reference(model, keys)(x).numpy(), rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------------- PassManager

def test_passes_run_inside_a_torch_fx_pass_manager():
    from torch.fx.passes.infra.pass_manager import PassManager

    from collapse_passes.fx.passes import FoldBatchNorm, FxRecord, default_passes
    from torch.fx.passes.infra.pass_base import PassBase

    model, x, keys = build("inverted_residual")
    record = FxRecord()
    passes = default_passes(keys, example_inputs=(x,), record=record)
    assert all(isinstance(p, PassBase) for p in passes)
    gm = torch.fx.symbolic_trace(model)
    out = PassManager(passes, steps=10)(gm).graph_module
    with torch.no_grad():
        assert_close(out(x), identity_reference(model, keys)(x))
    assert record.merges and record.folds
    # one pass alone: BN folding keeps the model's function exactly
    gm = torch.fx.symbolic_trace(model)
    res = PassManager([FoldBatchNorm()])(gm)
    assert res.modified
    with torch.no_grad():
        assert_close(res.graph_module(x), model(x))


# ----------------------------------------------------------------------------------- torch.compile

@pytest.mark.parametrize("name", list(CASES))
def test_torch_compile_backend_matches_eager(name):
    torch._dynamo.reset()
    model, x, keys = build(name)
    backend = cp.torch_backend(collapse=keys, inductor=False)
    compiled = torch.compile(copy.deepcopy(model), backend=backend)
    with torch.no_grad():
        assert_close(compiled(x), identity_reference(model, keys)(x))
    assert backend.reports and backend.reports[0]["collapsed"]
    assert backend.reports[0]["verification"]["passed"]
    torch._dynamo.reset()


@pytest.mark.slow
def test_torch_compile_backend_hands_on_to_inductor():
    torch._dynamo.reset()
    model, x, keys = build("mlp")
    compiled = torch.compile(copy.deepcopy(model), backend=cp.torch_backend(collapse=keys))
    with torch.no_grad():
        assert_close(compiled(x), identity_reference(model, keys)(x))
    torch._dynamo.reset()


def test_torch_backend_with_scores_threshold():
    torch._dynamo.reset()
    model, x, _ = build("mlp")
    backend = cp.torch_backend(scores={"mlp.act": 0.0}, threshold=0.1, inductor=False)
    compiled = torch.compile(copy.deepcopy(model), backend=backend)
    with torch.no_grad():
        assert_close(compiled(x), identity_reference(model, ["mlp.act"])(x))
    assert backend.reports[0]["collapsed"] == ["mlp.act"]
    torch._dynamo.reset()


# ----------------------------------------------------------------------------------- TVM

@pytest.mark.slow
def test_result_lowers_to_relax_through_torch_export():
    pytest.importorskip("tvm")
    from tvm_integration import build as tvm_build
    from tvm_integration import run as tvm_run
    from tvm_integration.from_torch import relax_from_torch

    model, x, keys = build("mlp")
    res = cp.collapse(model, collapse=keys, example_inputs=(x,))
    mod = relax_from_torch(res, (x,))
    exe = tvm_build(mod, "llvm")
    (out,) = tvm_run(exe, {"x": x.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(out, identity_reference(model, keys)(x).numpy(), rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------------- bad input

class Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = nn.Sequential(nn.Linear(4, 4), DataDependent())

    def forward(self, x):
        return self.inner(x)


class DataDependent(nn.Module):
    def forward(self, x):
        if x.sum() > 0:
            return torch.relu(x)
        return x


def test_untraceable_control_flow_names_the_module():
    with pytest.raises(CollapseError, match=r"inner\.1.*example_inputs.*torch\.export"):
        cp.collapse(Branchy().eval())
    with pytest.raises(CollapseError, match=r"inner\.1.*torch\.export failed too"):
        cp.collapse(Branchy().eval(), example_inputs=(torch.randn(2, 4),))


class ShapeBranch(nn.Module):
    """Control flow on a shape: symbolic_trace fails, torch.export (given example inputs) specialises it."""

    def __init__(self):
        super().__init__()
        self.fc1, self.act, self.fc2, self.out = nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 4), nn.Tanh()

    def forward(self, x):
        if x.shape[0] > 1:
            x = x * 2.0
        return self.out(self.fc2(self.act(self.fc1(x))))


def test_untraceable_module_falls_back_to_torch_export_with_example_inputs():
    torch.manual_seed(0)
    model, x = ShapeBranch().eval(), torch.randn(3, 4)
    with pytest.raises(CollapseError, match="example_inputs"):
        cp.collapse(model, collapse=["act"])
    res = cp.collapse(model, collapse=["act"], example_inputs=(x,))
    assert isinstance(res.model, torch.fx.GraphModule)
    assert [m["kind"] for m in res.report["merges"]] == ["dense"]
    assert res.report["left_alone"] == ["tanh"]
    with torch.no_grad():
        assert_close(res.model(x), identity_reference(model, ["act"])(x))
    with pytest.raises(CollapseError, match="torch.export.save"):
        res.save("unused.onnx")


def test_training_mode_batchnorm_says_eval():
    model, x, keys = build("inverted_residual")
    with pytest.raises(CollapseError, match=r"training mode.*\.eval\(\)"):
        cp.collapse(model.train(), collapse=keys, example_inputs=(x,))
    with pytest.raises(CollapseError, match=r"training mode.*eval\(\)"):
        cp.collapse(torch.export.export(model.train(), (x,)), collapse=keys)


def test_missing_example_inputs_is_one_line():
    model, _, keys = build("mlp")
    with pytest.raises(CollapseError, match="example_inputs"):
        cp.collapse(model, collapse=keys)


def test_collapse_of_a_module_prunes_constant_channels_exactly_and_ratio_on_request():
    """collapse(nn.Module) runs the same channel pruning as the ONNX path: constant channels removed
    exactly by default (verified against the unpruned model), a ratio prune only when asked."""
    from test_pruning import _planted_resnet

    m, blocks = _planted_resnet()
    x = torch.randn(1, 3, 32, 32)
    res = cp.collapse(m, collapse=["layer1.0.relu1"], example_inputs=(x,))
    pr = res.report["pruning"]
    assert pr["removed_channels"] == sum(b.conv1.out_channels // 2 for b in blocks)
    assert res.report["verification"]["against_requested"]["passed"]
    assert res.report["after"]["params"] < cp.collapse(m, collapse=["layer1.0.relu1"], example_inputs=(x,),
                                                       prune=False).report["after"]["params"]
    ref = copy.deepcopy(m)
    ref.layer1[0].relu1 = nn.Identity()
    with torch.no_grad():
        torch.testing.assert_close(res.model(x), ref(x), rtol=1e-4, atol=1e-4)
    rr = cp.collapse(m, example_inputs=(x,), prune_ratio=0.5, round_to=2)
    assert rr.report["pruning"]["ratio"]["approximate"] and "error_vs_unpruned" in rr.report["pruning"]["ratio"]
    assert rr.report["after"]["params"] < res.report["before"]["params"] // 2
    with pytest.raises(CollapseError, match="prune_importance"):
        cp.collapse(m, example_inputs=(x,), prune_ratio=0.5, prune_importance="easier")
