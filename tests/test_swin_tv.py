"""A real Swin Transformer layout (models/swin_tv.py: torchvision's swin_t with shifted windows, padding,
relative position bias, patch merging), tiny, through both torch exporters, the CLI and the torch front end."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

import collapse_passes as cp
from collapse_passes.cli import main
from collapse_passes.errors import CollapseError
from conftest import export_quiet

# 64x64: stage 1 is 16x16 (padded to 21, shifted windows with the -100 mask), stage 2 8x8 (padded to 14,
# shifted), stages 3-4 smaller than the window (padded to 7, no shifted block), as torchvision does
TINY = dict(embed_dim=16, depths=(2, 2, 1, 1), num_heads=(1, 2, 2, 4), num_classes=10)
SHAPE = (1, 3, 64, 64)


def _build(seed=0):
    import torch

    from models.swin_tv import swin_t_tv

    torch.manual_seed(seed)
    m = swin_t_tv(**TINY).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():   # non-trivial LayerNorm affines, so a folding error would show
        for mod in m.modules():
            if isinstance(mod, torch.nn.LayerNorm):
                mod.weight.copy_(0.5 + torch.rand(mod.weight.shape, generator=g))
                mod.bias.copy_(0.1 * torch.randn(mod.bias.shape, generator=g))
    return m


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """tiny(dynamo) -> (ONNX path, torch module); exported once per module."""
    d = tmp_path_factory.mktemp("swin_tv")
    cache = {}

    def get(dynamo):
        if dynamo not in cache:
            m = _build()
            cache[dynamo] = (export_quiet(m, d / f"swin_tv_{int(dynamo)}.onnx", SHAPE, dynamo), m)
        return cache[dynamo]

    return get


def _gelus(m):
    import torch

    return [n for n, mod in m.named_modules() if isinstance(mod, torch.nn.GELU)]


def _ln_widths(path):
    m = onnx.load(path)
    inits = {t.name: tuple(t.dims) for t in m.graph.initializer}
    return sorted(inits.get(n.input[1], ()) for n in m.graph.node if n.op_type == "LayerNormalization")


# ----------------------------------------------------------------------------------------- model

def test_full_size_parameter_count_matches_torchvision():
    from models import build

    m = build("swin_t_tv")
    assert sum(p.numel() for p in m.parameters()) == 28_288_354   # torchvision.models.swin_t()
    assert m.features[2].reduction.bias is None and m.features[2].reduction.in_features == 384
    assert m.features[1][1].attn.shift_size == [3, 3] and m.features[1][0].attn.shift_size == [0, 0]


def test_small_inputs_pad_to_the_window():
    import torch

    m = _build()
    with torch.no_grad():
        assert m(torch.randn(2, 3, 64, 64)).shape == (2, 10)
        assert m(torch.randn(1, 3, 32, 48)).shape == (1, 10)   # odd stage sizes: patch merging pads too


# ----------------------------------------------------------------------------------------- ONNX

def test_torchscript_export_counts_the_same_macs_as_dynamo(tiny, monkeypatch):
    """The TorchScript export sizes its window Pad / Reshape from Shape ops at run time, where ONNX shape
    inference stops: the MACs of the attention and MLP MatMuls after it come from one onnxruntime run
    (onnx/shapes.complete_mac_shapes), so both exports of one module report the same MACs."""
    from collapse_passes.onnx import analysis, shapes

    ts, dyn = onnx.load(tiny(False)[0]), onnx.load(tiny(True)[0])
    macs = analysis.model_stats(dyn).macs
    assert macs > 0 and analysis.model_stats(ts).macs == macs
    graph = shapes.gs.import_onnx(ts)
    types = shapes.inferred_types(ts)
    shapes.apply_types(graph, types, reset=False)
    assert shapes.complete_mac_shapes(graph, ts) > 0   # inference alone leaves them unknown
    assert shapes.complete_mac_shapes(graph, ts) == 0  # and once filled, no second run
    monkeypatch.setattr(shapes, "complete_mac_shapes", lambda graph, model: 0)
    monkeypatch.setattr(analysis, "complete_mac_shapes", lambda graph, model: 0)
    monkeypatch.setattr(analysis, "measured_graph", shapes.with_shapes)   # unfolded: inference stops at the sizes
    assert analysis.model_stats(ts).macs < macs       # what the report said before


@pytest.mark.parametrize("dynamo", [False, True])
def test_gelus_left_alone_stay_gelus(tiny, dynamo, tmp_path):
    """Folding the Erf GELU's x*0.5 into the next MatMul is exact, but leaves no GELU to count, to
    fuse (onnxruntime's GeluFusion needs the whole pattern) or to collapse in a later run: the ops
    inside an activation that is not collapsed stay in it, on both exports."""
    path, m = tiny(dynamo)
    keys = [k["key"] for k in cp.list_keys(path)]
    r = cp.collapse(path)   # no scores: only the exact clean-ups
    assert r.report["after"]["activations"] == r.report["before"]["activations"] == len(_gelus(m))
    out = tmp_path / "out.onnx"
    r.save(str(out))
    assert sorted(k["key"] for k in cp.list_keys(str(out))) == sorted(keys)
    half = cp.collapse(path, scores={k: float(i) for i, k in enumerate(keys)}, remove=len(keys) // 2)
    assert half.report["after"]["activations"] == len(keys) - len(keys) // 2


def test_a_named_dynamic_batch_is_not_a_missing_shape(monkeypatch):
    """A batch dim the user left dynamic counts as 1 for MACs: no onnxruntime run for it."""
    from onnx import TensorProto, helper, numpy_helper

    from collapse_passes.core import runtime
    from collapse_passes.onnx import shapes

    w = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w")
    g = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    monkeypatch.setattr(runtime, "session", lambda *a, **k: pytest.fail("ran onnxruntime"))
    graph = shapes.with_shapes(model)
    assert graph.tensors()["y"].shape == ["N", 4, 6, 6]


@pytest.mark.slow
@pytest.mark.parametrize("dynamo", [False, True])
def test_collapse_every_gelu_merges_each_mlp(tiny, dynamo, tmp_path):
    path, m = tiny(dynamo)
    keys = [k["key"] for k in cp.list_keys(path)]
    assert sorted(keys) == sorted(_gelus(m))
    r = cp.collapse(path, scores={k: 0.0 for k in keys}, threshold=0.5)
    rep = r.report
    assert rep["verification"]["against_requested"]["passed"]
    assert rep["verification"]["against_requested"]["max_rel"] < 1e-4
    assert rep["after"]["activations"] == 0
    # fc1 (C->4C) and fc2 (4C->C) become one CxC linear in every block: shallower and cheaper
    assert len(rep["merges"]) == len(keys)
    assert all(mg["exact"] and mg["macs_after"] * 8 == mg["macs_before"] for mg in rep["merges"])
    assert rep["after"]["depth_nonlinear"] < rep["before"]["depth_nonlinear"]
    assert rep["after"]["depth_ops"] < rep["before"]["depth_ops"]
    out = tmp_path / "all.onnx"
    r.save(str(out))
    s = {"scores": {k: float(i) for i, k in enumerate(keys)}}
    (tmp_path / "s.json").write_text(json.dumps(s))
    assert main([path, "-o", str(tmp_path / "half.onnx"), "--scores", str(tmp_path / "s.json"),
                 "--remove", str(len(keys) // 2), "-q"]) == 0


def test_prune_ratio_only_touches_mlp_hidden_channels(tiny, tmp_path):
    path, _ = tiny(False)
    out = tmp_path / "p.onnx"
    assert main([path, "-o", str(out), "--prune-ratio", "0.2", "-q"]) == 0
    # LayerNorm'd residual streams (and patch-merging concats) are frozen: every LayerNorm keeps its width
    assert _ln_widths(str(out)) == _ln_widths(path)
    before = {t.name: t.dims for t in onnx.load(path).graph.initializer}
    assert sum(np.prod(t.dims) for t in onnx.load(str(out)).graph.initializer) < sum(np.prod(d) for d in before.values())


def test_easier_scores_from_calibration(tiny, tmp_path):
    path, _ = tiny(False)
    calib = tmp_path / "c.npz"
    np.savez(calib, input=np.random.default_rng(0).standard_normal((4,) + SHAPE[1:]).astype(np.float32))
    assert main([path, "-o", str(tmp_path / "e.onnx"), "--method", "easier", "--calib", str(calib),
                 "--remove", "3", "-q"]) == 0


# ----------------------------------------------------------------------------------------- torch

@pytest.mark.slow
def test_torch_front_end_collapses_every_gelu():
    import torch

    m = _build()
    x = torch.randn(*SHAPE)
    r = cp.collapse(m, collapse=_gelus(m), example_inputs=(x,))
    # the GELUs leave the nonlinear path; softmax and LayerNorm stay on it (counted as on ONNX since adv17)
    assert r.passed and r.report["before"]["depth_nonlinear"] - r.report["after"]["depth_nonlinear"] == len(_gelus(m))
    assert len(r.report["merges"]) == len(_gelus(m))
    with torch.no_grad():
        assert r.model(x).shape == (1, 10)


def test_torch_prune_ratio_on_aten_graph_is_a_clear_error():
    # swin_t_tv is not symbolic-traceable (shape-dependent padding), so it is traced with torch.export:
    # the channel graph sees no nn.Linear modules there, and prune_ratio used to prune nothing, silently
    import torch

    from models.swin_tv import swin_t_tv

    torch.manual_seed(0)   # one stage of one block: the shape-dependent padding is in every block (~15x faster)
    m = swin_t_tv(embed_dim=16, depths=(1,), num_heads=(1,), num_classes=10).eval()
    x = torch.randn(*SHAPE)
    with pytest.raises(CollapseError, match="aten-level"):
        cp.collapse(m, collapse=[], prune_ratio=0.2, example_inputs=(x,))
    with pytest.raises(CollapseError, match="aten-level"):
        cp.collapse(torch.export.export(m, (x,)), collapse=[], prune_ratio=0.2, example_inputs=(x,))


def test_layernorm_beta_not_folded_into_bias_free_matmul():
    # PatchMerging: LayerNorm(4C) -> Linear(4C, 2C, bias=False). Folding beta would add a bias Add op
    # (the "exact clean-up" made Swin bigger: one Add per patch merging); gamma-only LNs still fold
    from onnx import helper

    from conftest import make_model, rnd, vinfo

    d = 8
    for beta_seed in (2, None):
        inits = {"g": rnd(d, seed=1) + 1, "w": rnd(d, d // 2, seed=3)}
        ln_in = ["x", "g"] + (["be"] if beta_seed else [])
        if beta_seed:
            inits["be"] = rnd(d, seed=beta_seed)
        nodes = [helper.make_node("LayerNormalization", ln_in, ["n"], axis=-1, name="ln"),
                 helper.make_node("MatMul", ["n", "w"], ["y"], name="reduction")]
        m = make_model(nodes, [vinfo("x", [1, 4, 4, d])], [vinfo("y", [1, 4, 4, d // 2])], inits, opset=17)
        r = cp.collapse(m)
        assert r.passed
        assert [n.op_type for n in r.model.graph.node] == ["LayerNormalization", "MatMul"]
        assert bool(r.report["folds"]) == (beta_seed is None)   # gamma alone still moves into the weight


def test_region_prices_on_torchscript_swin_need_one_shape_run(tiny):
    """TorchScript Swin sizes its windows from Shape ops at run time, so inference loses the shapes at
    the MLP regions' boundaries: the region pricer reads them from ONE run (all candidates' boundaries
    at once) and prices like the whole graph, without falling back to it."""
    from collapse_passes import speedup
    from collapse_passes.algebra.cost import CostModel
    from collapse_passes.onnx.analysis import model_stats
    from collapse_passes.onnx.driver import run_passes
    from collapse_passes.onnx.graph import to_graph
    from collapse_passes.onnx.patterns import find_activations

    model = onnx.load(tiny(False)[0])
    acts = find_activations(to_graph(model))
    cm, full_calls = CostModel(), []

    def full(items):
        full_calls.append(len(items))
        m, ctx, _ = run_passes(model, {a.name for a in items}, cost_model=cm, input_shapes={})
        return speedup.stats_cost(model_stats(m, graph=ctx.graph).as_dict(), cm)

    pricer = speedup.RegionPricer(model, acts, [], full, lambda sub, names, sh: run_passes(
        sub, names, cost_model=cm, input_shapes=sh), cm, candidates=acts)
    pricer([])
    priced = [pricer(acts[:1]), pricer(acts[:2]), pricer(acts[1:3])]
    assert full_calls == [0] and pricer.runs == 1
    assert priced == pytest.approx([full(acts[:1]), full(acts[:2]), full(acts[1:3])], rel=1e-9)
