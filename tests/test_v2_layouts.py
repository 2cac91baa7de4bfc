"""EfficientNetV2 (Fused-MBConv) and Swin V2 (post-norm, cosine attention, continuous position bias) in
torchvision's layouts (models/efficientnet_v2.py, models/swin_v2.py), exported by both torch exporters with
random weights and BatchNorm statistics, through the ONNX passes, the torch front end and the CLI; plus
the defects found attacking them."""
from __future__ import annotations

import copy

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import collapse_passes as cp
from collapse_passes.cli import main
from conftest import export_quiet

# depth 0.3: stages of 1, 2, 2, 2, 3, 5 blocks (stride-1 residual Fused-MBConv blocks in stages 2 and 3)
TINY_EV2 = dict(width_mult=0.25, depth_mult=0.3, num_classes=10, last_channel=64)
# 64x64: stage 1 is 16x16 (two 8x8 windows a side, the shifted block masked), PatchMergingV2, stage 2 8x8
# (one window: the shift is dropped); smaller maps padded to the window are covered at 224
TINY_SV2 = dict(embed_dim=16, depths=(2, 2), num_heads=(1, 2), num_classes=10)
SHAPES = {"efficientnet_v2_s": (1, 3, 32, 32), "swin_v2_t": (1, 3, 64, 64)}
KW = {"efficientnet_v2_s": TINY_EV2, "swin_v2_t": TINY_SV2}
ACT_TYPES = ("ReLU", "SiLU", "GELU")


def _build(name, kw=None, seed=0):
    import torch

    from models import build

    torch.manual_seed(seed)
    m = build(name, **(KW[name] if kw is None else kw))
    if any(isinstance(mod, torch.nn.BatchNorm2d) for mod in m.modules()):
        # BN statistics from data: with random ones EfficientNetV2's logits differ by 2e-5 (relative) between
        # inputs, inside the check's rtol, and every comparison passed whatever the collapse computed
        from models.tv_init import calibrate_bn

        m = calibrate_bn(m, (8,) + tuple(SHAPES[name][1:]), seed=seed)
    else:
        m = m.eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():   # non-trivial LayerNorm affines, so a folding error would show
        for mod in m.modules():
            if isinstance(mod, torch.nn.LayerNorm):
                mod.weight.copy_(0.5 + torch.rand(mod.weight.shape, generator=g))
                mod.bias.copy_(0.1 * torch.randn(mod.bias.shape, generator=g))
    return m


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """tiny(name, dynamo) -> (ONNX path, torch module); exported once per module."""
    d = tmp_path_factory.mktemp("v2")
    cache = {}

    def get(name, dynamo):
        if (name, dynamo) not in cache:
            m = _build(name)
            cache[name, dynamo] = (export_quiet(m, d / f"{name}_{int(dynamo)}.onnx", SHAPES[name], dynamo), m)
        return cache[name, dynamo]

    return get


def _x(name, seed=3, batch=2):
    return np.random.default_rng(seed).standard_normal((batch,) + SHAPES[name][1:]).astype(np.float32)


def _run(model, x):
    s = ort.InferenceSession(model if isinstance(model, str) else model.SerializeToString(),
                             providers=["CPUExecutionProvider"])
    name = s.get_inputs()[0].name
    return np.concatenate([s.run(None, {name: x[i:i + 1]})[0] for i in range(len(x))])


def _requested(m, keys):
    """The torch model with the activation modules at `keys` replaced by identity (their linear regime)."""
    import torch

    m = copy.deepcopy(m)
    for k in keys:
        parent, _, leaf = k.rpartition(".")
        setattr(m.get_submodule(parent), leaf, torch.nn.Identity())
    return m


def _torch_out(m, x):
    import torch

    with torch.no_grad():
        return m(torch.from_numpy(x)).numpy()


def _close(a, b, rtol=1e-4):
    return np.abs(a - b).max() <= rtol * max(1.0, np.abs(b).max())


#: float32 accuracy of a collapsed EfficientNetV2 with BN statistics from data: linearized SiLUs give logits
#: up to 1e7 and torch's own float32 forward is off its float64 one by up to ~6e-4 of the largest logit
F32_RTOL = 2e-3
#: the comparisons' rtol per model (Swin V2 has no BatchNorm: float32 is as accurate as before)
RTOL = {"efficientnet_v2_s": F32_RTOL, "swin_v2_t": 1e-4}
#: the tool's check tolerance per model (None: its default, 1e-4)
CHECK_RTOL = {"efficientnet_v2_s": F32_RTOL / 2, "swin_v2_t": None}


def _matches_requested(got, m, keys, x, rtol=F32_RTOL):
    """`got` equals the requested semantics (the torch model with `keys` as identity) computed in float64, on
    every sample where float32 can compute it at all: where torch's own float32 forward is within rtol of
    float64. Collapsed SE gates (sigmoid of a linearized, 1e4-scale pre-activation) make some inputs
    chaotic: there torch float32 itself is 100% off, and no float32 program is right or wrong. At least one
    sample must be stable. On a stable sample another float32 program (onnxruntime, other summation orders)
    may be several times further off than torch's forward, which measures how ill-conditioned the sample is:
    it must be within max(rtol, 10x torch's own float32 error) (dynamo export, every other key: torch 3.9e-4,
    onnxruntime 2.1e-3 on the unmerged and the merged model alike; a wrong merge is off by O(1))."""
    import torch

    req = _requested(m, keys)
    y32 = _torch_out(req, x)
    with torch.no_grad():
        y64 = copy.deepcopy(req).double()(torch.from_numpy(x).double()).numpy()
    err32 = [np.abs(y32[i] - y64[i]).max() / max(1.0, np.abs(y64[i]).max()) for i in range(len(x))]
    stable = [i for i in range(len(x)) if err32[i] <= rtol / 2]
    assert stable, "no input on which float32 computes the requested semantics"
    return all(_close(np.asarray(got[i], np.float64), y64[i], max(rtol, 10 * err32[i])) for i in stable)


def _ops(model, op):
    return sum(n.op_type == op for n in model.graph.node)


def _act_paths(m):
    return [n for n, mod in m.named_modules() if type(mod).__name__ in ACT_TYPES]


# ----------------------------------------------------------------------------------------- layouts

def test_full_size_parameter_counts_match_torchvision():
    from models import build

    ev2 = build("efficientnet_v2_s")
    assert sum(p.numel() for p in ev2.parameters()) == 21_458_488     # torchvision.models.efficientnet_v2_s()
    assert type(ev2.features[1][0]).__name__ == "FusedMBConv" and len(ev2.features[1][0].block) == 1
    assert len(ev2.features[2][0].block) == 2 and ev2.features[2][0].block[0][0].kernel_size == (3, 3)
    assert type(ev2.features[4][0]).__name__ == "MBConv" and ev2.features[0][1].eps == 1e-3
    sv2 = build("swin_v2_t")
    assert sum(p.numel() for p in sv2.parameters()) == 28_351_570     # torchvision.models.swin_v2_t()
    attn = sv2.features[1][1].attn
    assert attn.shift_size == [4, 4] and attn.relative_coords_table.shape == (1, 15, 15, 2)
    assert attn.cpb_mlp[2].bias is None and sv2.features[2].norm.normalized_shape == (192,)


# ----------------------------------------------------------------------------------------- keys

class _CosineHead:
    """Built lazily (torch imported inside tests): Linear, F.normalize (clamp_min(1e-12) on the norm),
    ReLU, a root-level clamp_min(0) (a ReLU written as a clamp), Linear."""

    @staticmethod
    def build():
        import torch
        import torch.nn.functional as F

        class CosineHead(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.fc1 = torch.nn.Linear(8, 16)
                self.act = torch.nn.ReLU()
                self.fc2 = torch.nn.Linear(16, 4)

            def forward(self, x):
                y = F.normalize(self.fc1(x), dim=-1) * 4.0
                return self.fc2(self.act(y) + y.clamp_min(0.0))

        torch.manual_seed(0)
        return CosineHead().eval()


@pytest.mark.parametrize("dynamo", [False, True])
def test_normalize_eps_guard_is_not_an_activation(tmp_path, dynamo):
    """F.normalize divides by clamp_min(norm, 1e-12): both exporters write it as Clip(min=1e-12), which
    was listed (and collapsible) as a 'clip' activation keyed by the enclosing module (Swin V2:
    'features.1.0.attn:0', ':1', one per q and k) while the torch front end did not list it. An eps
    guard is no activation on any front end; a real lower clamp (clamp_min(0)) is one on all of them."""
    import torch

    m = _CosineHead.build()
    p = export_quiet(m, tmp_path / "cos.onnx", (2, 8), dynamo)
    keys = [(k["kind"], k["module"]) for k in cp.list_keys(p)]
    tkeys = [(k["kind"], k["module"]) for k in cp.list_keys(m, example_inputs=(torch.randn(2, 8),))]
    assert sorted(keys, key=str) == sorted(tkeys, key=str) == sorted([("relu", "act"), ("clip", None)], key=str)
    assert _ops(onnx.load(p), "Clip") == 2   # the guard is still in the graph, left alone
    r = cp.collapse(p, collapse=["act"])
    assert r.report["passed"] and _ops(r.model, "Clip") == 2


@pytest.mark.parametrize("lo,hi,kind", [(1e-12, None, None), (1e-12, float("inf"), None), (1e-6, None, None),
                                        (0.0, None, "clip"), (1e-3, None, "clip"), (1e-12, 1.0, "clip")])
def test_onnx_clip_eps_guard_forms(lo, hi, kind):
    """Clip(min=eps) with no max or max=+inf is a guard; a zero, larger or two-sided bound stays a clip."""
    from onnx import helper

    from conftest import make_model, vinfo

    ins, inits = ["x", "lo"], {"lo": np.array(lo, np.float32)}
    if hi is not None:
        ins.append("hi")
        inits["hi"] = np.array(hi, np.float32)
    m = make_model([helper.make_node("Clip", ins, ["y"], name="c")], [vinfo("x", [1, 4])], [vinfo("y", [1, 4])], inits)
    assert [k["kind"] for k in cp.list_keys(m)] == ([kind] if kind else [])


@pytest.mark.parametrize("name,dynamo", [("efficientnet_v2_s", False), ("swin_v2_t", False),
                                         pytest.param("efficientnet_v2_s", True, marks=pytest.mark.slow),
                                         pytest.param("swin_v2_t", True, marks=pytest.mark.slow)])
def test_keys_are_module_paths_equal_across_exporters_and_torch(tiny, name, dynamo):
    """Every SiLU / GELU / cpb_mlp ReLU is one key, its torch module path, the same on the export and in
    the torch front end (nn.Module); the SE Sigmoid gates and the 16*sigmoid of the position bias are
    known but no keys; F.normalize's eps clamps are no keys (they were 'features.1.0.attn:0', ':1')."""
    import torch

    p, m = tiny(name, dynamo)
    keys = [d["key"] for d in cp.list_keys(p)]
    tkeys = [d["key"] for d in cp.list_keys(m, example_inputs=(torch.from_numpy(_x(name, batch=1)),))]
    assert keys == tkeys
    assert sorted(keys) == sorted(_act_paths(m))


# ----------------------------------------------------------------------------------------- collapse

@pytest.mark.parametrize("name,dynamo", [("efficientnet_v2_s", False), ("swin_v2_t", False),
                                         pytest.param("efficientnet_v2_s", True, marks=pytest.mark.slow),
                                         pytest.param("swin_v2_t", True, marks=pytest.mark.slow)])
def test_collapse_all_and_every_other_match_torch_with_identities(tiny, name, dynamo):
    """The output equals the torch model with the chosen activation modules replaced by nn.Identity (the
    requested semantics computed independently of the tool), for all keys, every other key and a
    seeded random subset."""
    p, m = tiny(name, dynamo)
    keys = [d["key"] for d in cp.list_keys(p)]
    x = _x(name)
    rng = np.random.default_rng(11)
    subsets = [keys, keys[1::2], [k for k in keys if rng.random() < 0.4]]
    for sel in [s for s in subsets if s]:
        r = cp.collapse(p, collapse=sel, rtol=CHECK_RTOL[name])   # the check at this network's float32 accuracy
        rep = r.report
        assert rep["passed"] and rep["collapsed"] == len(sel)
        assert rep["after"]["depth_ops"] < rep["before"]["depth_ops"]
        assert _matches_requested(_run(r.model, x), m, sel, x, RTOL[name])
        assert not _close(_run(r.model, x), _torch_out(m, x), rtol=1e-2)   # the collapse did change the model


def _conv_shapes(model):
    inits = {t.name: tuple(t.dims) for t in model.graph.initializer}
    return sorted((inits.get(n.input[1], ()), tuple(tuple(a.ints) for a in n.attribute if a.name == "strides"))
                  for n in model.graph.node if n.op_type == "Conv")


@pytest.mark.parametrize("dynamo", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_fused_mbconv_expand_and_project_merge_into_one_conv(tiny, dynamo):
    """Fused-MBConv = 3x3 (stride 2) expand to 4C + BN + SiLU, 1x1 project + BN: with its SiLU collapsed the
    two convs are one exact 3x3 stride-2 conv straight to the output width (the 1x1 pads nothing), fewer
    MACs; a SiLU between two padded 3x3 convs (expand_ratio 1 block, then the next block's 3x3) is
    collapsed but not merged (the merge would differ on the border)."""
    p, m = tiny("efficientnet_v2_s", dynamo)
    blk = m.features[2][0].block
    cin, cout = blk[0][0].in_channels, blk[1][0].out_channels
    x = _x("efficientnet_v2_s")
    before = _conv_shapes(onnx.load(p))
    r = cp.collapse(p, collapse=["features.2.0.block.0.2"])
    after = _conv_shapes(r.model)
    assert len(after) == len(before) - 1
    assert ((cout, cin, 3, 3), ((2, 2),)) in after and ((cout, cin, 3, 3), ((2, 2),)) not in before
    merge = [g for g in r.report["merges"] if g["kind"] == "conv"] if r.report["merges"] else []
    assert len(merge) == 1 and merge[0]["exact"] and merge[0]["macs_after"] < merge[0]["macs_before"]
    assert _matches_requested(_run(r.model, x), m, ["features.2.0.block.0.2"], x)

    # stride 1 with the residual: the merged 3x3 absorbs the skip too (identity at its centre tap)
    r = cp.collapse(p, collapse=["features.2.1.block.0.2"])
    assert len(_conv_shapes(r.model)) == len(before) - 1 and _ops(r.model, "Add") == _ops(onnx.load(p), "Add") - 1
    assert _matches_requested(_run(r.model, x), m, ["features.2.1.block.0.2"], x)

    r = cp.collapse(p, collapse=["features.1.0.block.0.2"])   # 3x3 -> SiLU -> (next block) 3x3 stride 2
    assert r.report["passed"] and len(_conv_shapes(r.model)) == len(before)
    assert _matches_requested(_run(r.model, x), m, ["features.1.0.block.0.2"], x)


@pytest.mark.parametrize("dynamo", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_cpb_mlp_relu_on_the_constant_table_collapses_exactly(tiny, dynamo):
    """Swin V2's cpb_mlp ReLU reads a constant table (no image in it): collapsed, Linear(2,512) and
    Linear(512,heads) become one 2 x heads product (TorchScript export), exact against the torch model
    with that ReLU as identity."""
    p, m = tiny("swin_v2_t", dynamo)
    sel = [d["key"] for d in cp.list_keys(p) if d["key"].endswith("cpb_mlp.1")]
    assert len(sel) == sum(type(b).__name__ == "SwinTransformerBlockV2" for b in m.modules()) == 4
    r = cp.collapse(p, collapse=sel)
    assert r.report["passed"] and r.report["collapsed"] == len(sel)
    # the dynamo exporter already computed Linear(2,512) on the table (a constant): nothing left to merge
    merged = 0 if dynamo else len(sel)
    assert _ops(r.model, "Relu") == 0 and _ops(r.model, "MatMul") == _ops(onnx.load(p), "MatMul") - merged
    x = _x("swin_v2_t")
    assert _close(_run(r.model, x), _torch_out(_requested(m, sel), x))


# ----------------------------------------------------------------------------------------- torch front end

@pytest.mark.parametrize("name,form", [("efficientnet_v2_s", "module"), ("swin_v2_t", "graph_module"),
                                       pytest.param("efficientnet_v2_s", "exported_program", marks=pytest.mark.slow),
                                       pytest.param("swin_v2_t", "exported_program", marks=pytest.mark.slow)])
def test_torch_front_end_collapses_the_same_keys(name, form):
    """nn.Module, symbolic-traced GraphModule (torchvision's fx.wrap-ped Swin attention is a leaf call) and
    ExportedProgram: same keys as the ONNX export, result of the kind given, equal to the model with
    the chosen activations as identity."""
    import torch

    m = _build(name)
    x = torch.from_numpy(_x(name, batch=1))
    obj = {"module": lambda: m, "graph_module": lambda: torch.fx.symbolic_trace(copy.deepcopy(m)),
           "exported_program": lambda: torch.export.export(copy.deepcopy(m), (x,))}[form]()
    keys = [d["key"] for d in cp.list_keys(obj, example_inputs=(x,))]
    assert sorted(keys) == sorted(_act_paths(m))
    sel = keys[::2]
    r = cp.collapse(obj, collapse=sel, example_inputs=(x,), rtol=CHECK_RTOL[name])
    assert r.report["passed"]
    out = r.model.module() if form == "exported_program" else r.model
    assert isinstance(r.model, torch.export.ExportedProgram if form == "exported_program" else torch.fx.GraphModule)
    with torch.no_grad():
        assert _matches_requested(out(x).numpy(), m, sel, x.numpy(), RTOL[name])


# ----------------------------------------------------------------------------------------- scores, planning

def _collapsed_keys(rep):
    return [a["key"] for a in rep["activations"] if a["collapsed"]]


@pytest.mark.parametrize("name,method", [("efficientnet_v2_s", "tlc"), ("efficientnet_v2_s", "easier"),
                                         ("efficientnet_v2_s", "target_speedup"), ("swin_v2_t", "tlc"),
                                         ("swin_v2_t", "easier")])   # Swin's target: test_constant_position_bias...
def test_score_methods_and_target_speedup_give_the_requested_semantics(tiny, name, method):
    p, m = tiny(name, False)
    calib = _x(name, seed=7, batch=4)
    kw = dict(method="easier", target_speedup=1.2) if method == "target_speedup" else dict(method=method, remove=3)
    r = cp.collapse(p, calib={"input": calib}, rtol=CHECK_RTOL[name], **kw)
    rep = r.report
    sel = _collapsed_keys(rep)
    assert rep["passed"] and len(sel) == rep["collapsed"] > 0
    if method == "target_speedup":   # cheaper as priced (MACs may rise where a merge saves ops and SiLU passes)
        from collapse_passes.speedup import stats_cost

        assert stats_cost(rep["after"]) < stats_cost(rep["before"])
    else:
        scored = {a["key"]: a["score"] for a in rep["activations"] if a["score"] is not None}
        assert len(sel) == 3 and max(scored[k] for k in sel) <= min(v for k, v in scored.items() if k not in sel)
    x = _x(name)
    assert _matches_requested(_run(r.model, x), m, sel, x, RTOL[name])


@pytest.mark.parametrize("dynamo", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_constant_position_bias_mlp_is_free_so_its_relu_buys_no_speedup(tiny, dynamo):
    """The cpb_mlp chain reads only the constant coordinate table: onnxruntime folds it when the session
    loads (TVM at build), so it costs no MACs, ops or depth per inference. It was priced (345,600 MACs
    a block at this size, ~20% of the model): collapsing its ReLU, which changes the model and buys
    nothing, was reported as fewer MACs and taken first by --target-speedup."""
    p, _ = tiny("swin_v2_t", dynamo)
    keys = [d["key"] for d in cp.list_keys(p)]
    cpb = [k for k in keys if k.endswith("cpb_mlp.1")]
    a, b = cp.collapse(p, collapse=cpb).report["after"], cp.collapse(p).report["after"]   # vs nothing collapsed
    assert a["macs"] == b["macs"] > 0 and a["depth_ops"] == b["depth_ops"]
    assert a["constant_nodes"] > 0
    gelus = [k for k in keys if k.endswith("mlp.1")][:2]
    scores = {**{k: 0.0 for k in cpb}, **{k: 1.0 for k in gelus}}   # the cpb ReLUs ranked first
    r = cp.collapse(p, scores=scores, target_speedup=100.0)   # unreachable: takes whatever pays
    tried = {t["key"]: t["taken"] for t in r.report["target_speedup"]["tried"]}
    assert not any(tried.get(k) for k in cpb) and not set(cpb) & set(_collapsed_keys(r.report))
    assert r.report["collapsed"] > 0   # the MLP GELUs do pay (fc1 and fc2 merge)


@pytest.mark.slow
def test_lacoot_block_keys_of_two_residuals_per_module_equal_across_exporters(tiny):
    """A Swin block holds two residual adds (attention, MLP). Their block keys were '<path>/Add',
    '<path>/Add_1' on the TorchScript export and in the torch front end but the exporter's global node
    name on the dynamo export ('features.1.0/node_add_1'): a LaCoOT scores file did not carry over.
    The dynamo export now numbers the module's own adds the same way; the scores agree too."""
    import torch

    x = _x("swin_v2_t", seed=7, batch=4)
    got = []
    for dynamo in (False, True):
        p, m = tiny("swin_v2_t", dynamo)
        rep = cp.collapse(p, method="lacoot", calib={"input": x}, prune=False).report
        got.append({b["key"]: b["score"] for b in rep["blocks"]})
    rt = cp.collapse(m, method="lacoot", calib=[torch.from_numpy(x)], example_inputs=(torch.from_numpy(x[:1]),))
    got.append({b["key"]: b["score"] for b in rt.report["blocks"]})
    assert list(got[0]) == list(got[1]) == list(got[2]) and len(got[0]) == 2 * 4
    assert "features.1.0/Add_1" in got[0]
    assert all(abs(g[k] - got[0][k]) <= 1e-3 * abs(got[0][k]) for g in got[1:] for k in got[0])


def test_prelu_method_on_a_silu_model_is_one_clear_error(tiny):
    p, _ = tiny("efficientnet_v2_s", False)
    with pytest.raises(cp.errors.CollapseError, match="silu"):
        cp.collapse(p, method="prelu", threshold=0.1)


# ----------------------------------------------------------------------------------------- pruning

def test_exact_pruning_of_constant_channels_keeps_outputs(tmp_path):
    """BN gamma 0 with a negative beta makes channels constant (SiLU(-1)); exact removal folds them into
    the next layer's bias, through Fused-MBConv, SE and MBConv."""
    import torch

    m = _build("efficientnet_v2_s")
    g = torch.Generator().manual_seed(5)
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            k = torch.rand(mod.num_features, generator=g) < 0.3
            mod.weight.data[k] = 0.0
            mod.bias.data[k] = -1.0
    p = export_quiet(m, tmp_path / "ev2.onnx", SHAPES["efficientnet_v2_s"], False)
    r = cp.collapse(p)   # nothing collapsed: the exact clean-ups and pruning alone
    assert r.report["passed"] and r.report["pruning"]["removed_channels"] > 0
    x = _x("efficientnet_v2_s")
    assert _close(_run(r.model, x), _torch_out(m, x))
    assert r.report["after"]["params"] < r.report["before"]["params"]


# ----------------------------------------------------------------------------------------- command line

def test_cli_writes_a_verified_model_and_refuses_a_guard_key(tiny, tmp_path, capsys):
    """Exit 0 and a model; the eps guard's old key ('features.1.0.attn:0') is unknown now: exit 2, one
    line naming it, nothing written."""
    import json
    import os

    p, m = tiny("swin_v2_t", False)
    out, rep = tmp_path / "o.onnx", tmp_path / "r.json"
    assert main([p, "-o", str(out), "--collapse", "features.1.0.mlp.1,features.1.1.attn.cpb_mlp.1",
                 "--report", str(rep), "-q"]) == 0
    assert json.loads(rep.read_text())["collapsed"] == 2
    x = _x("swin_v2_t")
    assert _close(_run(str(out), x), _torch_out(_requested(m, ["features.1.0.mlp.1", "features.1.1.attn.cpb_mlp.1"]), x))
    d = tmp_path / "bad"
    d.mkdir()
    capsys.readouterr()
    assert main([p, "-o", str(d / "o.onnx"), "--collapse", "features.1.0.attn:0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "features.1.0.attn:0" in err[0] and "Traceback" not in err[0]
    assert os.listdir(d) == []


# ----------------------------------------------------------------------------------------- full size

@pytest.mark.slow
@pytest.mark.parametrize("name,kw", [("efficientnet_v2_s", dict(num_classes=10)),
                                     ("swin_v2_t", dict(embed_dim=24, depths=(2, 2, 2, 2), num_classes=10))])
def test_full_layout_at_224_collapses_every_activation_exactly(tmp_path, name, kw):
    """224x224: EfficientNetV2-S as torchvision's; Swin V2 with its 4 stages and 8x8 windows at a quarter of the
    width and 2 blocks a stage (stage 2 padded 28 -> 32, stage 3 14 -> 16, stage 4 7 -> 8 and unshifted),
    TorchScript export."""
    m = _build(name, kw)
    p = export_quiet(m, tmp_path / "m.onnx", (1, 3, 224, 224), False)
    keys = [d["key"] for d in cp.list_keys(p)]
    assert sorted(keys) == sorted(_act_paths(m))
    r = cp.collapse(p, collapse=keys, check=1)
    assert r.report["passed"] and r.report["collapsed"] == len(keys)
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    assert _close(_run(r.model, x), _torch_out(_requested(m, keys), x))
