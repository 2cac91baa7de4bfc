"""Adversarial round 18 (H28): transformer layouts exported with a dynamic batch.

A TorchScript export with `dynamic_axes` on the batch builds Swin's shifted-window mask at run time:
`x.new_zeros((h, w))` (Shape -> Gather -> Concat -> ConstantOfShape), slice assignments (ScatterND), views.
h and w are static dims, so fold_static_dims could give every size behind the mask as a constant. It only
wrote the sizes read outside the part it deemed static, and the float mask itself (data, never written) is
in that part: the sizes it reads stayed computed from Shape reads of the activations, so the mask was
rebuilt from the activations on every inference and sat on the critical path. Swin-T (224, dynamic batch,
TorchScript) reported a critical path of 1075 ops after collapsing its 12 GELUs (393 with a static batch).
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest

from collapse_passes.core import runtime
from collapse_passes.onnx.analysis import constant_nodes, model_stats
from collapse_passes.onnx.graph import const_value
from collapse_passes.onnx.passes.fold_static_shapes import folded_graph

torch = pytest.importorskip("torch")
nn = torch.nn


class _Masked(nn.Module):
    """A Linear over an NHWC map plus a mask built from the map's (static) h, w, then a view that reads the batch."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        b, h, w, c = x.shape
        mask = x.new_zeros((h, w))
        mask[:, -2:] = 1.0                     # a slice assignment: ScatterND in the TorchScript export
        mask[-2:, :] = 2.0
        y = self.fc(x) + mask.view(1, h, w, 1)
        return y.reshape(b, h * w, c)


@pytest.fixture(scope="module")
def masked(tmp_path_factory):
    torch.manual_seed(0)
    m = _Masked().eval()
    path = str(tmp_path_factory.mktemp("masked") / "masked_dyn.onnx")
    torch.onnx.export(m, (torch.randn(2, 6, 6, 4),), path, dynamo=False, opset_version=17, input_names=["x"],
                      output_names=["y"], dynamic_axes={"x": {0: "N"}, "y": {0: "N"}})
    return m, path


def test_a_mask_built_from_static_dims_is_built_from_constants(masked):
    _, path = masked
    g = folded_graph(onnx.load(path))
    cos = [n for n in g.nodes if n.op == "ConstantOfShape"]
    assert cos and all(const_value(n.inputs[0]) is not None for n in cos)
    folded = constant_nodes(g)
    scatter = [n for n in g.nodes if n.op == "ScatterND"]
    assert scatter and all(id(n) in folded for n in scatter)   # computed once, at load
    # what reads a Shape now only reads the batch
    for n in g.nodes:
        if n.op == "Shape":
            for c in n.outputs[0].outputs:
                assert c.op != "Gather" or int(const_value(c.inputs[1])) == 0


def test_the_folded_model_computes_the_same_at_every_batch(masked, tmp_path):
    m, path = masked
    g = folded_graph(onnx.load(path))
    from collapse_passes.onnx.graph import to_model

    out = to_model(g, onnx.load(path))
    for b in (1, 3):
        x = np.random.default_rng(b).standard_normal((b, 6, 6, 4)).astype(np.float32)
        got = runtime.session(out).run(None, {"x": x})[0]
        with torch.no_grad():
            want = m(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_swin_with_a_dynamic_batch_has_the_depth_of_a_static_one(tmp_path):
    """Tiny torchvision-layout Swin (shifted windows, -100 mask), TorchScript, dynamic batch: the result of
    collapsing its GELUs is about as deep as the static export's (the batch's own size reads stay: +4 ops
    at each Reshape that reads it; 205 against 71 before the fix, 80 with it). One stage of two blocks on
    64x64 (a 16x16 map padded to 3x3 windows, the second block shifted and masked) has the mask; four stages
    (484 against 204) took 3x as long."""
    import collapse_passes as cp
    from models.swin_tv import swin_t_tv

    torch.manual_seed(0)
    m = swin_t_tv(embed_dim=16, depths=(2,), num_heads=(1,), num_classes=10).eval()
    x = torch.randn(2, 3, 64, 64)
    paths = {}
    for dyn in (False, True):
        paths[dyn] = str(tmp_path / f"swin_{int(dyn)}.onnx")
        torch.onnx.export(m, (x,), paths[dyn], dynamo=False, opset_version=17, input_names=["input"],
                          output_names=["logits"],
                          dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}} if dyn else None)
    gelus = [n for n, mod in m.named_modules() if isinstance(mod, nn.GELU)]
    results = {dyn: cp.collapse(p, collapse=gelus) for dyn, p in paths.items()}
    reports = {dyn: r.report for dyn, r in results.items()}
    assert all(r["passed"] for r in reports.values())
    static, dynamic = reports[False]["after"]["depth_ops"], reports[True]["after"]["depth_ops"]
    assert dynamic <= static + 40, (static, dynamic)
    g = results[True].model
    assert model_stats(g).depth_ops == dynamic
