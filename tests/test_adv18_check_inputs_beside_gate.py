"""The checks beside the gate draw their random inputs as the gate does (core/runtime.check_inputs): dynamic
height/width at check_shapes' size, token ids over their table. --prune-calib-dead's measured error ran at
1 x 1 on a dynamic-size export, where a 3x3 conv reads its centre tap only."""
import numpy as np
import torch
from torch import nn

import collapse_passes as cp
from collapse_passes import verify
from collapse_passes.core.runtime import check_inputs, check_shapes
from models.export import export_onnx


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.r1, self.c2 = nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 4, 3, padding=1)

    def forward(self, x):
        return self.c2(self.r1(self.c1(x)))


def _dynamic_export(tmp_path):
    torch.manual_seed(0)
    m = Net().eval()
    with torch.no_grad():
        m.c1.bias[:2] = -50.0   # off on any reasonable data: removed by --prune-calib-dead
    return export_onnx(m, tmp_path / "m.onnx", (1, 3, 12, 12), dynamo=False,
                       dynamic_axes={"input": {2: "h", 3: "w"}})


def test_check_inputs_take_the_gate_sizes(tmp_path):
    path = _dynamic_export(tmp_path)
    import onnx

    model = onnx.load(path)
    sizes = check_shapes(model)["input"]
    assert sizes[2] >= 9 and sizes[3] >= 9
    assert list(check_inputs(model, 1, 0)[0]["input"].shape) == sizes


def test_prune_calib_dead_error_measured_at_the_check_size(tmp_path, monkeypatch):
    path = _dynamic_export(tmp_path)
    calib = tmp_path / "calib.npz"
    np.savez(calib, input=np.random.default_rng(1).standard_normal((8, 3, 12, 12)).astype(np.float32))
    seen = []
    real = verify.run

    def run(model, feeds, sess=None):
        seen.extend(tuple(f["input"].shape) for f in feeds if "input" in f)
        return real(model, feeds, sess)

    monkeypatch.setattr(verify, "run", run)
    res = cp.collapse(path, calib=str(calib), prune_calib_dead=True)
    assert res.report["pruning"]["calib_dead_error"] is not None
    assert seen and all(s[2] > 1 and s[3] > 1 for s in seen), seen
