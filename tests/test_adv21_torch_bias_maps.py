"""The torch front end carries a merged conv's per-position bias map to the end of its linear region, as the ONNX
front end's PropagateBiasMaps does (fx/passes/propagate_bias_maps.py, H59, 2026-11-29). Before, a merged padded conv
kept its map as a PaddedConv Add, which no later fold / merge / absorb / pool hoist would touch: torchvision-layout
MobileNetV2 at 64x64 with every activation collapsed was 54 ops on torch and 24 on either ONNX export of it. A
PaddedConv also ran its symmetric pads (and a stride-2 merge's (1, 0) pads, whose extra end pixel no output reads)
through F.pad, one op more than the export's Conv. And a conv that lost its map keeps its size guard through a later
residual absorb (fx/graph.insert_linear), so another input size is refused, not silently wrong."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
from torch import fx, nn  # noqa: E402

import collapse_passes as cp  # noqa: E402
from collapse_passes.fx.graph import PaddedConv  # noqa: E402
from tests.conftest import export_quiet  # noqa: E402


class _Block(nn.Module):
    """An inverted residual (1x1 expand -> ReLU -> padded depthwise 3x3 -> ReLU -> 1x1 project), with the
    identity skip where stride 1 keeps the shape. `linear` computes it with the ReLUs as identities."""

    def __init__(self, cin, cout, stride, linear):
        super().__init__()
        self.e, self.a1 = nn.Conv2d(cin, 4 * cin, 1), nn.Identity() if linear else nn.ReLU()
        self.d = nn.Conv2d(4 * cin, 4 * cin, 3, stride, 1, groups=4 * cin)
        self.a2 = nn.Identity() if linear else nn.ReLU()
        self.p = nn.Conv2d(4 * cin, cout, 1)
        self.skip = stride == 1 and cin == cout

    def forward(self, x):
        y = self.p(self.a2(self.d(self.a1(self.e(x)))))
        return x + y if self.skip else y


class _Net(nn.Module):
    """Two inverted residuals (one stride 2; `one_block`: the residual one alone, on 6 channels), `head` ReLU or
    not, global mean, Linear."""

    def __init__(self, linear=False, head_linear=None, one_block=False):
        super().__init__()
        head_linear = linear if head_linear is None else head_linear
        self.b1 = nn.Identity() if one_block else _Block(3, 6, 2, linear)
        self.b2 = _Block(6, 6, 1, linear)
        self.head = nn.Identity() if head_linear else nn.ReLU()
        self.fc = nn.Linear(6, 5)
        torch.manual_seed(0)
        with torch.no_grad():
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    m.bias.uniform_(-1, 1)

    def forward(self, x):
        return self.fc(self.head(self.b2(self.b1(x))).mean((2, 3)))


_ALL = ["b1.a1", "b1.a2", "b2.a1", "b2.a2"]


def _maps(gm) -> int:
    return sum(isinstance(m, PaddedConv) and m.bias_map is not None for m in gm.modules())


def _same(res, ref, shape):
    with torch.no_grad():
        x = torch.randn(*shape)
        got, want = res.model(x), ref(x)
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max())), float((got - want).abs().max())


def test_bias_maps_reach_the_head_and_fold_as_on_onnx(tmp_path):
    model, x = _Net().eval(), torch.randn(1, 3, 16, 16)
    keys = _ALL + ["head"]
    res = cp.collapse(model, collapse=keys, example_inputs=(x,))
    assert res.report["merges"], res.report["notes"]
    assert _maps(res.model) == 0, res.model.code
    assert any(n.startswith("bias_maps:") for n in res.report["notes"]), res.report["notes"]
    for dynamo in (False, True):
        path = export_quiet(model, tmp_path / f"m{int(dynamo)}.onnx", (1, 3, 16, 16), dynamo)
        onnx_after = cp.collapse(path, collapse=keys).report["after"]
        for k in ("nodes", "macs", "depth_ops"):
            assert res.report["after"][k] == onnx_after[k], (k, dynamo, res.model.code)
    ref = _Net(linear=True).eval()
    ref.load_state_dict(model.state_dict())
    _same(res, ref, (3, 3, 16, 16))


def test_a_kept_activation_reads_the_true_value(tmp_path):
    """The region ends at the kept head ReLU: the summed map is added (or folded into a bias) before it, once."""
    model, x = _Net().eval(), torch.randn(1, 3, 16, 16)
    res = cp.collapse(model, collapse=_ALL, example_inputs=(x,))
    assert _maps(res.model) == 0, res.model.code
    path = export_quiet(model, tmp_path / "m.onnx", (1, 3, 16, 16), False)
    assert res.report["after"]["nodes"] == cp.collapse(path, collapse=_ALL).report["after"]["nodes"]
    ref = _Net(linear=True, head_linear=False).eval()
    ref.load_state_dict(model.state_dict())
    _same(res, ref, (2, 3, 16, 16))


def test_the_size_guard_survives_the_carried_map_and_the_absorbed_skip():
    """The merges and the map are exact at 16x16 only: another size is refused in one ValueError (with the map carried
    to the classifier's bias and b2's conv absorbing its skip, the absorb wrote a plain unguarded Conv2d)."""
    model, x = _Net(one_block=True).eval(), torch.randn(1, 6, 16, 16)
    res = cp.collapse(model, collapse=["b2.a1", "b2.a2", "head"], example_inputs=(x,))
    assert _maps(res.model) == 0 and any(m["kind"] == "residual-identity" for m in res.report["merges"]), \
        res.report["merges"]
    with pytest.raises(ValueError, match="spatial size"):
        res.model(torch.randn(1, 6, 20, 20))


def test_a_stride_2_merge_is_one_conv_without_f_pad():
    """A stride-2 merge needs pads (1, 0) per axis; the extra end pixel of a symmetric (1, 1) pad is never read at
    the planned size, so the conv takes the pads itself (one op, as the export's Conv) and no F.pad runs."""
    model, x = _Net().eval(), torch.randn(1, 3, 16, 16)
    res = cp.collapse(model, collapse=_ALL + ["head"], example_inputs=(x,))
    padded = [m for m in res.model.modules() if isinstance(m, PaddedConv)]
    assert padded and all(not any(m.pad) and m.op_count == 1 for m in padded), [(m.pads, m.pad) for m in padded]
    assert any(m.pads[:2] != m.pads[2:] for m in padded), [m.pads for m in padded]   # an asymmetric one was there


def test_the_pass_runs_in_a_users_pass_manager():
    from torch.fx.passes.infra.pass_manager import PassManager

    from collapse_passes.fx.passes import PropagateBiasMaps, default_passes

    model, x = _Net().eval(), torch.randn(1, 3, 16, 16)
    passes = default_passes(_ALL + ["head"], example_inputs=(x,))
    assert any(isinstance(p, PropagateBiasMaps) for p in passes)
    gm = PassManager(passes, steps=10)(fx.symbolic_trace(model)).graph_module
    assert _maps(gm) == 0, gm.code
    ref = _Net(linear=True).eval()
    ref.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.allclose(gm(x), ref(x), rtol=1e-4, atol=1e-4)
