"""x.view(x.size(0), -1) into a Linear, exported by TorchScript with a dynamic batch (H30, 2026-11-29).

The exporter writes the target shape as Concat(Unsqueeze(Gather(Shape(x), 0)), [-1]) (the clean-up makes the -1
the static feature count): not a constant, so the Reshape froze the conv group before it and that export lost
fewer channels than its torch.export-based export and the torch front end (8 vs 11 with dead channels; 24 vs 28
at ratio 0.5). It is read as the flatten it is now, the size in the Concat rewritten, the batch still dynamic.
"""
import warnings

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

import collapse_passes as cp
from models.export import export_onnx
from models.tv_init import calibrate_bn


def _cbr(i, o, k, s=1):
    return nn.Sequential(nn.Conv2d(i, o, k, s, k // 2, bias=False), nn.BatchNorm2d(o), nn.ReLU())


class _ViewHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = _cbr(3, 16, 3, 2)
        self.c3 = _cbr(16, 12, 1)
        self.fc1 = nn.Linear(12 * 4 * 4, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x):
        x = self.c3(nn.functional.adaptive_avg_pool2d(self.stem(x), 4))
        return self.fc2(torch.relu(self.fc1(x.view(x.size(0), -1))))


@pytest.mark.parametrize("kw", [{}, dict(prune_ratio=0.5, round_to=4)])
def test_dynamic_batch_view_flatten_is_pruned(tmp_path, kw):
    torch.manual_seed(0)
    m = _ViewHead()
    calibrate_bn(m, (2, 3, 32, 32))
    if not kw:
        with torch.no_grad():
            m.c3[1].weight[[1, 4, 7]] = 0.0   # dead ReLU channels feeding the flatten
            m.c3[1].bias[[1, 4, 7]] = -1.0
    m.eval()
    path = export_onnx(m, tmp_path / "m.onnx", (1, 3, 32, 32), dynamo=False,
                       dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}})
    x = torch.randn(3, 3, 32, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ro = cp.collapse(path, **kw)
        rt = cp.collapse(m, example_inputs=(x,), **kw)
    key = "ratio" if kw else None
    count = [(r.report["pruning"][key] if key else r.report["pruning"])["removed_channels"] for r in (ro, rt)]
    assert count[0] == count[1] > 0, count   # the export kept the c3 group: 8 vs 11, 24 vs 28
    fc1 = next(n for n in ro.model.graph.node if n.op_type == "Gemm")
    w = next(i for i in ro.model.graph.initializer if i.name == fc1.input[1])
    assert w.dims[1] < 192, w.dims
    s = ort.InferenceSession(ro.model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = s.run(None, {"input": x.numpy()})[0]   # batch 3: the batch stays dynamic
    with torch.no_grad():
        want = (m(x) if not kw else rt.model(x)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
