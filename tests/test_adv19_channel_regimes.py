"""--channel-regimes: a per-channel collapse from the scores' per-channel statistics (2026-11-29, H44).

A layer whose channels are each always off or always on scores 0, and the plain collapse (ReLU -> identity)
revived the dead channels (MobileNetV3's SE ReLU). With the flag, dead channels take the off regime (0, then
pruned exactly), the others the linear regime; the gate verifies against that per-channel map.
"""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import collapse_passes as cp
from collapse_passes.core import activations as A

DEAD = (0, 2, 5)


def _model(act: str = "Relu", attrs=None, bias: float = 5.0) -> onnx.ModelProto:
    """conv(3->8) -> act -> conv 1x1(8->4); channels DEAD get bias -bias (always off on inputs in [-1, 1]: the
    filter's sum of |w| stays under 2.7), the others +bias (always on)."""
    rng = np.random.default_rng(0)
    w1 = (rng.standard_normal((8, 3, 3, 3)) * 0.1).astype(np.float32)
    b1 = np.full(8, bias, np.float32)
    b1[list(DEAD)] = -bias
    w2 = rng.standard_normal((4, 8, 1, 1)).astype(np.float32)
    b2 = rng.standard_normal(4).astype(np.float32)
    if act == "SiLU":   # x * sigmoid(x), found by probing as kind silu
        act_nodes = [helper.make_node("Sigmoid", ["c1"], ["s1"], name="sig1"),
                     helper.make_node("Mul", ["c1", "s1"], ["a1"], name="act1")]
    else:
        act_nodes = [helper.make_node(act, ["c1"], ["a1"], name="act1", **(attrs or {}))]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]), *act_nodes,
             helper.make_node("Conv", ["a1", "w2", "b2"], ["y"], name="conv2")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4, 8, 8])],
                          [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"))])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


CALIB = {"x": np.random.default_rng(1).uniform(-1, 1, (16, 3, 8, 8)).astype(np.float32)}


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.concatenate([s.run(None, {"x": x[i:i + 2]})[0] for i in range(0, len(x), 2)])


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "collapse_passes", *map(str, args)], capture_output=True, text=True)


@pytest.fixture
def files(tmp_path):
    onnx.save(_model(), tmp_path / "m.onnx")
    np.savez(tmp_path / "calib.npz", **CALIB)
    return tmp_path


@pytest.mark.parametrize("method", ["easier", "tlc"])
def test_flag_matches_the_original_on_the_calibration_data_and_prunes_the_dead_channels(files, method):
    out, rep = files / "out.onnx", files / "r.json"
    r = _cli(files / "m.onnx", "--method", method, "--calib", files / "calib.npz", "--threshold", "0.01",
             "--channel-regimes", "-o", out, "--report", rep)
    assert r.returncode == 0, r.stderr
    report = json.loads(rep.read_text())
    assert report["passed"] and report["collapsed"] == 1
    written, original = onnx.load(out), _model()
    np.testing.assert_allclose(_run(written, CALIB["x"]), _run(original, CALIB["x"]), rtol=1e-4, atol=1e-4)
    assert report["pruning"]["removed_channels"] == len(DEAD)   # the zero channels went (exact removal)
    site = report["channel_regimes"]["sites"][0]
    assert (site["regime"], site["off_channels"], site["to_zero"], site["channels"]) == \
        ("per-channel", len(DEAD), len(DEAD), 8)
    assert report["channel_regimes"]["against_original"]["max_abs"] < 1e-4
    assert "3 of 8 channel(s) in the off regime, 3 to 0" in r.stdout.replace("\n", " ")


def test_dead_channels_leave_the_first_conv_without_merging(files):
    out = files / "out.onnx"
    r = _cli(files / "m.onnx", "--method", "easier", "--calib", files / "calib.npz", "--threshold", "0.01",
             "--channel-regimes", "--no-merge", "-o", out, "-q")
    assert r.returncode == 0, r.stderr
    convs = [n for n in onnx.load(out).graph.node if n.op_type == "Conv"]
    w = {t.name: numpy_helper.to_array(t) for t in onnx.load(out).graph.initializer}
    assert [w[c.input[1]].shape[0] for c in convs] == [5, 4]


def test_without_the_flag_the_collapse_is_the_plain_linear_regime(files):
    res = cp.collapse(_model(), method="easier", calib=CALIB, threshold=0.01)
    assert "channel_regimes" not in res.report
    assert res.report["pruning"]["removed_channels"] == 0
    # ReLU -> identity on every channel: the dead channels pass their negative inputs on, far from the model
    assert res.report["verification"]["against_original"]["max_abs"] > 1.0
    ident = _model("Identity")
    np.testing.assert_allclose(_run(res.model, CALIB["x"]), _run(ident, CALIB["x"]), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("act,attrs,bias", [("LeakyRelu", {"alpha": 0.1}, 5.0), ("HardSigmoid", {}, 5.0),
                                            ("Clip", {}, 5.0), ("PRelu", {}, 5.0)])
def test_exact_off_and_saturated_regimes(act, attrs, bias):
    m = _model(act, attrs, bias)
    if act == "Clip":   # Clip(-1, 2): off -> -1, saturated -> 2
        m.graph.initializer.extend([numpy_helper.from_array(np.float32(-1), "lo"),
                                    numpy_helper.from_array(np.float32(2), "hi")])
        m.graph.node[1].input.extend(["lo", "hi"])
    if act == "PRelu":  # a slope per channel: each off channel keeps its own slope
        m.graph.initializer.append(numpy_helper.from_array(np.linspace(0.05, 0.4, 8).astype(np.float32).reshape(8, 1, 1),
                                                           "slope"))
        m.graph.node[1].input.append("slope")
    res = cp.collapse(m, method="easier", calib=CALIB, threshold=0.01, channel_regimes=True)
    np.testing.assert_allclose(_run(res.model, CALIB["x"]), _run(m, CALIB["x"]), rtol=1e-4, atol=1e-4)
    site = res.report["channel_regimes"]["sites"][0]
    assert site["regime"] == "per-channel" and site["off_channels"] == len(DEAD)


def test_tlc_bn_variant_data_free():
    """TLC from the BatchNormalization before the ReLU (beta -5 / +5, gamma 0.1: p_off ~ 1 / ~ 0), no data."""
    m = _model()
    m.graph.node[1].input[0] = "bn1"
    C = 8
    beta = np.full(C, 5.0, np.float32)
    beta[list(DEAD)] = -5.0
    for name, v in (("g", np.full(C, 0.1, np.float32)), ("be", beta), ("mu", np.zeros(C, np.float32)),
                    ("var", np.ones(C, np.float32))):
        m.graph.initializer.append(numpy_helper.from_array(v, name))
    m.graph.node.insert(1, helper.make_node("BatchNormalization", ["c1", "g", "be", "mu", "var"], ["bn1"], name="bn"))
    res = cp.collapse(m, method="tlc", threshold=0.01, channel_regimes=True)
    assert res.report["score_details"]["variant"] == "bn"
    site = res.report["channel_regimes"]["sites"][0]
    assert (site["regime"], site["to_zero"]) == ("per-channel", len(DEAD))
    assert res.report["pruning"]["removed_channels"] == len(DEAD)
    np.testing.assert_allclose(_run(res.model, CALIB["x"]), _run(m, CALIB["x"]), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("act", ["SiLU", "Elu"])
def test_kinds_without_an_exact_off_regime_stay_linear_and_say_so(act):
    m = _model(act)
    plain = cp.collapse(m, method="easier", calib=CALIB, threshold=0.05)
    res = cp.collapse(m, method="easier", calib=CALIB, threshold=0.05, channel_regimes=True)
    assert res.report["collapsed"] == 1
    site = res.report["channel_regimes"]["sites"][0]
    assert site["regime"] == "linear" and "no exact off regime" in site["why"] and site["off_channels"] == len(DEAD)
    assert any("--channel-regimes" in w and site["key"] in w for w in res.report["warnings"])
    np.testing.assert_allclose(_run(res.model, CALIB["x"]), _run(plain.model, CALIB["x"]), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("args", [
    ["--collapse", "act1"],                                 # no scores at all
    ["--method", "prelu", "--collapse", "act1"],            # a method without per-channel p_off
    ["--scores", "{plain}", "--threshold", "0.01"],         # a scores file without easier / tlc details
    ["--method", "easier", "--calib", "{calib}", "--threshold", "0.01", "--prune-ratio", "0.3"],   # changes the channels
])
def test_flag_without_per_channel_statistics_is_one_line_exit_2(files, args):
    (files / "plain.json").write_text(json.dumps({"scores": {"act1": 0.0}}))
    out = files / "out.onnx"
    r = _cli(files / "m.onnx", *[a.format(plain=files / "plain.json", calib=files / "calib.npz") for a in args], "--channel-regimes", "-o", out)
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1 and "--channel-regimes" in r.stderr and "Traceback" not in r.stderr
    assert not out.exists()


def test_saved_scores_carry_the_statistics(files):
    s = files / "s.json"
    assert _cli(files / "m.onnx", "--method", "easier", "--calib", files / "calib.npz", "--threshold", "0.01",
                "--save-scores", s, "--dry-run", "-q").returncode == 0
    res = cp.collapse(str(files / "m.onnx"), scores=str(s), threshold=0.01, channel_regimes=True)
    assert res.report["channel_regimes"]["sites"][0]["to_zero"] == len(DEAD)


def _torch_net(act):
    import torch

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.act, self.c2 = torch.nn.Conv2d(3, 8, 3, padding=1), act, torch.nn.Conv2d(8, 4, 1)
            with torch.no_grad():
                self.c1.weight.mul_(0.3)   # |pre-activation - bias| < 5 on inputs in [-1, 1]
                b = torch.full((8,), 5.0)
                b[list(DEAD)] = -5.0
                self.c1.bias.copy_(b)

        def forward(self, x):
            return self.c2(self.act(self.c1(x)))

    return Net().eval()


@pytest.mark.parametrize("inplace", [False, True])
def test_torch_front_end_same_keys_and_choices(inplace):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    net = _torch_net(torch.nn.ReLU(inplace=inplace))
    calib = [torch.rand(8, 3, 8, 8) * 2 - 1 for _ in range(2)]
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    plain = cp.collapse(net, method="easier", calib=calib, threshold=0.01, example_inputs=(x,))
    res = cp.collapse(net, method="easier", calib=calib, threshold=0.01, channel_regimes=True, example_inputs=(x,))
    with torch.no_grad():
        ref = net(calib[0])
        assert float((plain.model(calib[0]) - ref).abs().max()) > 1.0   # the dead channels revived
        assert float((res.model(calib[0]) - ref).abs().max()) < 1e-4
    site = res.report["channel_regimes"]["sites"][0]
    assert (site["key"], site["regime"], site["off_channels"], site["to_zero"]) == ("act", "per-channel", 3, 3)
    assert res.report["pruning"]["removed_channels"] == len(DEAD)
    # folded into c1 and merged with c2: one conv left, no BatchNorm / copy_ in the way
    assert [n.op for n in res.model.graph.nodes].count("call_module") == 1


def test_torch_kind_without_off_regime_and_backend_refusal():
    torch = pytest.importorskip("torch")
    net = _torch_net(torch.nn.SiLU())
    calib = [torch.rand(8, 3, 8, 8) * 2 - 1 for _ in range(2)]
    res = cp.collapse(net, method="easier", calib=calib, threshold=0.05, channel_regimes=True,
                      example_inputs=(calib[0][:2],))
    assert res.report["channel_regimes"]["sites"][0]["regime"] == "linear"
    assert any("--channel-regimes" in w for w in res.report["warnings"])
    with pytest.raises(cp.CollapseError, match="torch_backend: channel_regimes"):
        cp.torch_backend(scores={"1": 0.0}, threshold=0.1, channel_regimes=True)


def test_catalogue_off_regime_is_the_activation_below_its_kink():
    for kind in A.COLLAPSIBLE:
        off = A.off_regime(kind)
        if off is None:
            assert kind in ("elu", "celu", "selu", "gelu", "gelu_tanh", "silu", "mish")
            continue
        lo = A.band_start(kind)
        lo = A.activation_kink(kind) if lo is None else lo
        x = np.linspace(lo - 20.0, lo, 41)
        np.testing.assert_allclose(A.reference(kind, x), off[0] * x + off[1], atol=1e-12, err_msg=kind)
    assert A.off_regime("hardsigmoid", {"alpha": -0.2, "beta": 0.5}) == (0.0, 1.0)
    assert A.off_regime("clip", {"min": -1.0, "max": 2.0}) == (0.0, -1.0)
