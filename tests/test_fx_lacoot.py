"""LaCoOT on the torch front end: residual blocks of the traced graph (fx/blocks.py), their scores on the
ONNX path's numpy core (scores/lacoot.mswd_scores), and remove_blocks (fx/passes/remove_blocks.py)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import collapse_passes as cp
from collapse_passes.errors import CollapseError
from collapse_passes.fx.blocks import find_residual_blocks
from collapse_passes.fx.graph import count_ops
from collapse_passes.fx.passes import RemoveResidualBlocks
from conftest import export_quiet
from models import build


def _resnet():
    torch.manual_seed(0)
    return build("resnet18_tv", num_classes=10, width=16).eval()


def _calib(shape, n=2, batch=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, *shape, generator=g) for _ in range(n)]


def _onnx_calib(path, calib, tmp_path):
    import onnx

    name = onnx.load(path, load_external_data=False).graph.input[0].name
    f = tmp_path / "calib.npz"
    np.savez(f, **{name: torch.cat(calib).numpy()})
    return str(f)


@pytest.mark.parametrize("name, kw, shape", [
    ("resnet18_tv", dict(num_classes=10, width=16), (3, 32, 32)),      # BasicBlocks, projection shortcuts
    ("swin_t", dict(dim=32, depth=2, heads=2), (3, 32, 32)),           # two residuals per block module
])
def test_lacoot_on_the_module_gives_the_onnx_paths_blocks_and_scores(name, kw, shape, tmp_path):
    torch.manual_seed(0)
    m = build(name, **kw).eval()
    calib = _calib(shape)
    x = torch.randn(1, *shape)
    rt = cp.collapse(m, method="lacoot", calib=calib, example_inputs=(x,))
    path = export_quiet(m, tmp_path / "m.onnx", (1, *shape), dynamo=False)
    ro = cp.collapse(path, method="lacoot", calib=_onnx_calib(path, calib, tmp_path), prune=False)
    st = {b["key"]: b["score"] for b in rt.report["blocks"]}
    so = {b["key"]: b["score"] for b in ro.report["blocks"]}
    assert list(st) == list(so) and len(st) >= 4
    # the search is a local ascent from the best starts: torch's and onnxruntime's float32 activations (1e-7
    # apart) can land it on a neighbouring local maximum (layer4.1 on an AVX-512 EPYC host: 6.2e-4 apart, other
    # blocks 1e-8); scores of different blocks here differ by 20 % and more
    assert max(abs(st[k] - so[k]) / so[k] for k in so) < 2e-3
    assert not any(b["removed"] for b in rt.report["blocks"])
    assert any("remove_blocks=T" in w for w in rt.report["warnings"])   # a warning since 2026-11-29 (a note)
    if name == "swin_t":
        assert "blocks.0/Add_1" in st


def _reference(m, keys):
    """The module with the named BasicBlocks' residual branch dropped by hand: y = relu(x)."""
    import copy

    ref = copy.deepcopy(m)
    for k in keys:
        blk = ref.get_submodule(k)
        blk.forward = (lambda b: (lambda x: b.relu(x)))(blk)
    return ref


@pytest.fixture(scope="module")
def resnet_scores():
    m, x, calib = _resnet(), torch.randn(1, 3, 32, 32), _calib((3, 32, 32))
    return {b["key"]: b["score"] for b in cp.collapse(m, method="lacoot", calib=calib,
                                                      example_inputs=(x,)).report["blocks"]}


@pytest.mark.parametrize("kind", ["module", "graph_module", "exported"])
def test_remove_blocks_replaces_low_scoring_blocks_by_their_skip(kind, resnet_scores):
    m = _resnet()
    x = torch.randn(1, 3, 32, 32)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    y_before = m(x).detach()
    calib = _calib((3, 32, 32))
    scores = resnet_scores
    low = sorted(scores.values())
    thr = (low[1] + low[2]) / 2               # the two lowest-scoring identity blocks go (a threshold between
    # scores, not at one: the run on `given` computes its own, which may differ in the last digits)
    gone = sorted(k for k, v in scores.items() if v <= thr)
    given = {"module": m, "graph_module": torch.fx.symbolic_trace(m),
             "exported": torch.export.export(m, (x,))}[kind]
    res = cp.collapse(given, method="lacoot", calib=calib, remove_blocks=thr, example_inputs=(x,))
    assert sorted(b["key"] for b in res.report["blocks"] if b["removed"]) == gone and len(gone) == 2
    out = res.model.module() if kind == "exported" else res.model
    assert isinstance(res.model, torch.export.ExportedProgram if kind == "exported" else torch.fx.GraphModule)
    ref = _reference(m, gone)
    for seed in range(3):
        xi = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(10 + seed)) * (1 + seed)
        want, got = ref(xi).detach(), out(xi).detach()
        assert torch.allclose(got, want, rtol=1e-4, atol=1e-5 * float(want.abs().max()))
    # the branch of each removed block is gone (its in-place ReLU included), not only bypassed
    # conv, ReLU, conv and the Add of each (its BatchNorms fold into the convs: no op in either column)
    assert res.report["after"]["nodes"] <= res.report["before"]["nodes"] - 2 * 4
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    assert torch.equal(m(x), y_before)


def test_remove_blocks_pass_in_a_pass_manager_and_unknown_keys():
    from torch.fx.passes.infra.pass_manager import PassManager

    m = _resnet()
    gm = torch.fx.symbolic_trace(m)
    blocks = {b.key: b for b in find_residual_blocks(gm)}
    assert blocks["layer1.0"].identity and not blocks["layer2.0"].identity
    assert [n.name for n in blocks["layer2.0"].projection] == ["layer2_0_downsample_0", "layer2_0_downsample_1"]
    n0 = count_ops(gm)
    out = PassManager([RemoveResidualBlocks(["layer2.0"])], steps=3)(gm).graph_module
    assert count_ops(out) < n0 - 4     # conv1, bn1, relu, conv2, bn2 of the branch
    x = torch.randn(1, 3, 32, 32)
    blk = m.layer2[0]
    ref = _reference(m, [])
    ref.layer2[0].forward = lambda t: blk.relu(blk.downsample(t))   # the projection shortcut stays
    assert torch.allclose(out(x), ref(x), atol=1e-6)
    with pytest.raises(CollapseError, match=r"unknown residual block 'layer9.0'.*did you mean"):
        RemoveResidualBlocks(["layer9.0"])(torch.fx.symbolic_trace(m))


def test_remove_blocks_needs_lacoot_on_both_front_ends(tmp_path):
    m = _resnet()
    x = torch.randn(1, 3, 32, 32)
    with pytest.raises(CollapseError, match="remove_blocks .* needs method='lacoot'"):
        cp.collapse(m, remove_blocks=0.1, example_inputs=(x,))
    path = export_quiet(m, tmp_path / "m.onnx", (1, 3, 32, 32), dynamo=False)
    with pytest.raises(CollapseError, match="needs method='lacoot'"):
        cp.collapse(path, method="easier", calib=_onnx_calib(path, _calib((3, 32, 32)), tmp_path), remove_blocks=0.1)
    with pytest.raises(CollapseError, match=r"method='lacoot' needs calib="):
        cp.collapse(m, method="lacoot", example_inputs=(x,))


class _TwoInputsNoBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 3, 1)

    def forward(self, x):
        p = x.mean((2, 3), keepdim=True)
        return p + self.c(p).expand(-1, -1, 8, 8)    # the "skip" p broadcasts: not an identity block


def test_a_broadcasting_add_is_not_an_identity_block():
    gm = torch.fx.symbolic_trace(_TwoInputsNoBlock().eval())
    from collapse_passes.fx.graph import propagate_shapes

    propagate_shapes(gm, (torch.randn(1, 3, 8, 8),))
    assert find_residual_blocks(gm) == []
    gm2 = torch.fx.symbolic_trace(_TwoInputsNoBlock().eval())   # without shapes it would count
    assert [b.identity for b in find_residual_blocks(gm2)] == [True]
