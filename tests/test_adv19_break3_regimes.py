"""--channel-regimes, adversarial round 3 (2026-11-29, H46).

The per-channel map's constants have the size of the axis the scores split into "channels". For a rank-4 tensor
that is axis 1 even when the tensor is NHWC (a Transpose before the activation): the "channels" are then rows,
and with a dynamic H the written model (its dims kept dynamic) broadcast (H_calib, 1, 1) constants against any H
and failed in onnxruntime at every other size. Refused in one line now; fixed dims (--input-shape) still work.
"""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import collapse_passes as cp


def _nhwc_model() -> onnx.ModelProto:
    """conv 1x1 (positive weights) -> Transpose to NHWC -> ReLU -> Transpose back -> conv; dims b, h, w dynamic."""
    rng = np.random.default_rng(0)
    w1 = np.abs(rng.standard_normal((8, 3, 1, 1))).astype(np.float32)
    w2 = rng.standard_normal((4, 8, 1, 1)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1"),
             helper.make_node("Transpose", ["c1"], ["t1"], perm=[0, 2, 3, 1], name="tr1"),
             helper.make_node("Relu", ["t1"], ["a1"], name="act1"),
             helper.make_node("Transpose", ["a1"], ["t2"], perm=[0, 3, 1, 2], name="tr2"),
             helper.make_node("Conv", ["t2", "w2"], ["y"], name="conv2")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 3, "h", "w"])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 4, "h", "w"])],
                          [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _calib() -> np.ndarray:
    """Positive inputs, row 0 negative: the NHWC ReLU's row 0 is always off, the other rows always on (score 0)."""
    x = np.random.default_rng(1).uniform(0.1, 1.0, (16, 3, 8, 8)).astype(np.float32)
    x[:, :, 0, :] *= -1
    return x


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "collapse_passes", *map(str, args)], capture_output=True, text=True)


def test_map_along_a_dynamic_axis_is_refused_in_one_line(tmp_path):
    onnx.save(_nhwc_model(), tmp_path / "m.onnx")
    np.savez(tmp_path / "calib.npz", x=_calib())
    out = tmp_path / "out.onnx"
    r = _cli(tmp_path / "m.onnx", "--method", "easier", "--calib", tmp_path / "calib.npz", "--threshold", "0.01",
             "--channel-regimes", "-o", out)
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert "Traceback" not in r.stderr and "dynamic" in r.stderr and "--input-shape" in r.stderr
    assert len([ln for ln in r.stderr.strip().splitlines() if ln.strip()]) == 1, r.stderr
    assert not out.exists()


def test_fixed_dims_keep_the_per_row_map_exact(tmp_path):
    onnx.save(_nhwc_model(), tmp_path / "m.onnx")
    np.savez(tmp_path / "calib.npz", x=_calib())
    out = tmp_path / "out.onnx"
    r = _cli(tmp_path / "m.onnx", "--method", "easier", "--calib", tmp_path / "calib.npz", "--threshold", "0.01",
             "--channel-regimes", "--input-shape", "x:2,3,8,8", "-o", out)
    assert r.returncode == 0, r.stderr[-2000:]
    x = _calib()[:2]
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    ref = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- an edited --scores file (saved scores are editable)

def _saved(tmp_path):
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
    from test_adv19_channel_regimes import CALIB, _model

    onnx.save(_model(), tmp_path / "m.onnx")
    np.savez(tmp_path / "calib.npz", **CALIB)
    s = tmp_path / "s.json"
    assert _cli(tmp_path / "m.onnx", "--method", "easier", "--calib", tmp_path / "calib.npz", "--threshold", "0.01",
                "--save-scores", s, "--dry-run", "-q").returncode == 0
    return __import__("json").loads(s.read_text())


@pytest.mark.parametrize("field,value", [("p_off", 1.0), ("p_off", ["x"] * 8), ("p_off", {"a": 1}),
                                         ("p_above", 0.5), ("channel_axis", "x"), ("channel_axis", 1.5),
                                         ("channel_axis", -1)])
def test_malformed_per_channel_details_are_one_line_exit_2(tmp_path, field, value):
    """These were tracebacks (np.asarray of strings, iterating a float) or a silent int(1.5)."""
    import json

    s = _saved(tmp_path)
    s["details"]["act1"][field] = value
    (tmp_path / "t.json").write_text(json.dumps(s))
    out = tmp_path / "out.onnx"
    r = _cli(tmp_path / "m.onnx", "--scores", tmp_path / "t.json", "--threshold", "0.01", "--channel-regimes",
             "-o", out)
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert "Traceback" not in r.stderr and field in r.stderr and "--save-scores" in r.stderr
    assert len([ln for ln in r.stderr.strip().splitlines() if ln.strip()]) == 1, r.stderr
    assert not out.exists()


# ---------------------------------------------------------------- torch: the map left in the result, in train mode

def _residual_net():
    """h = c0(x); r = relu(c1(h) + maxpool(h)); out = c3(maxpool(r)) + c2(r): the ReLU reads an Add and feeds a
    max-pool and a conv, so its map can fold neither way and stays in the result as a module. Channels 0, 2, 5 are always off there."""
    import torch

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.c0, self.c1 = torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.Conv2d(8, 8, 3, padding=1)
            self.c2, self.c3, self.act = torch.nn.Conv2d(8, 4, 1), torch.nn.Conv2d(8, 4, 1), torch.nn.ReLU()
            with torch.no_grad():
                for c in (self.c0, self.c1):
                    c.weight.mul_(0.05)
                    b = torch.full((8,), 5.0)
                    b[[0, 2, 5]] = -5.0
                    c.bias.copy_(b)

        def forward(self, x):
            h = self.c0(x)
            r = self.act(self.c1(h) + torch.nn.functional.max_pool2d(h, 3, 1, 1))
            return self.c3(torch.nn.functional.max_pool2d(r, 3, 1, 1)) + self.c2(r)

    return Net().eval()


def test_torch_map_left_in_the_result_keeps_its_arithmetic_in_train_mode():
    """A plain eval BatchNorm (eps 0) was left there: res.model.train() then raised in forward ("eps must be
    positive during training"), and with any eps it would normalize by the batch and move its running stats."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    net = _residual_net()
    calib = [torch.rand(8, 3, 8, 8) * 2 - 1 for _ in range(2)]
    res = cp.collapse(net, method="easier", calib=calib, threshold=0.01, channel_regimes=True,
                      example_inputs=(calib[0][:2],))
    site = res.report["channel_regimes"]["sites"][0]
    assert (site["regime"], site["off_channels"]) == ("per-channel", 3)
    maps = [m for n, m in res.model.named_modules() if "channel_regime" in n]
    assert maps, "the map was folded away: this net no longer tests a map left in the result"
    x = calib[1][:4]
    with torch.no_grad():
        before = res.model(x)
        np.testing.assert_allclose(before.numpy(), net(x).numpy(), rtol=1e-4, atol=1e-4)
        res.model.train()
        trained_mode = res.model(x)   # fine-tuning runs forward in train mode
        res.model.eval()
        after = res.model(x)
    np.testing.assert_allclose(trained_mode.numpy(), before.numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(after.numpy(), before.numpy(), rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------- torch vs ONNX: Conv1d -> Dropout -> ReLU

@pytest.mark.parametrize("functional", [False, True])
def test_conv1d_dropout_relu_channels_as_onnx(tmp_path, functional):
    """The exporters drop an eval Dropout, so ONNX scored the ReLU on the Conv1d's channel axis 1; the torch hooks saw
    the Dropout as its producer and scored axis 2 (the length): the site was not chosen there (entropy of mixed
    positions) and --channel-regimes differed between the front ends."""
    torch = pytest.importorskip("torch")
    from models.export import export_onnx

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.drop = torch.nn.Conv1d(3, 8, 3, padding=1), torch.nn.Dropout(0.1)
            self.act, self.c2 = torch.nn.ReLU(), torch.nn.Conv1d(8, 4, 1)
            with torch.no_grad():
                self.c1.weight.mul_(0.3)
                b = torch.full((8,), 5.0)
                b[[0, 2, 5]] = -5.0
                self.c1.bias.copy_(b)

        def forward(self, x):
            h = self.drop(self.c1(x))
            return self.c2(torch.nn.functional.relu(h) if functional else self.act(h))

    torch.manual_seed(0)
    net = Net().eval()
    calib = np.random.default_rng(1).uniform(-1, 1, (16, 3, 12)).astype(np.float32)
    export_onnx(net, tmp_path / "m.onnx", (2, 3, 12))
    on = cp.collapse(str(tmp_path / "m.onnx"), method="easier", calib={"input": calib}, threshold=0.01,
                     channel_regimes=True)
    tc = cp.collapse(net, method="easier", calib=[torch.from_numpy(calib[:8]), torch.from_numpy(calib[8:])],
                     threshold=0.01, channel_regimes=True, example_inputs=(torch.from_numpy(calib[:2]),))
    rows = [[(d["regime"], d["channels"], d["off_channels"], d["to_zero"]) for d in r.report["channel_regimes"]["sites"]]
            for r in (on, tc)]
    assert rows[0] == [("per-channel", 8, 3, 3)]
    assert rows[1] == rows[0]
    x = torch.from_numpy(calib[8:10])
    with torch.no_grad():
        np.testing.assert_allclose(tc.model(x).numpy(), net(x).numpy(), rtol=1e-4, atol=1e-4)
