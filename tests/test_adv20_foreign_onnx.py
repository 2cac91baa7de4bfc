"""ONNX files that did not come from torch's exporters (adversarial round 20, H52): hand-built with
onnx.helper the way tf2onnx, onnxruntime's optimizer and older converters write them."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto as TP, helper as h, numpy_helper as nh

import collapse_passes as cp
from collapse_passes.errors import CollapseError

C = 4


def _w(rng, *s):
    return (rng.standard_normal(s) / np.sqrt(np.prod(s[1:]))).astype(np.float32)


def _run(model, feeds):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "collapse_passes", *map(str, args)], capture_output=True, text=True)


def _if_model():
    """A scalar bool graph input (first) choosing an If branch after conv - ReLU - conv."""
    rng = np.random.default_rng(0)
    inits = [nh.from_array(_w(rng, C, C, 1, 1), "w0"), nh.from_array(_w(rng, C, C, 1, 1), "w1")]
    vi = lambda n: h.make_tensor_value_info(n, TP.FLOAT, [1, C, 8, 8])  # noqa: E731
    then_g = h.make_graph([h.make_node("Relu", ["c1"], ["t"])], "then", [], [vi("t")])
    else_g = h.make_graph([h.make_node("Neg", ["c1"], ["e"])], "else", [], [vi("e")])
    nodes = [h.make_node("Conv", ["x", "w0"], ["c0"], name="conv0"), h.make_node("Relu", ["c0"], ["a0"], name="act0"),
             h.make_node("Conv", ["a0", "w1"], ["c1"], name="conv1"),
             h.make_node("If", ["cond"], ["y"], then_branch=then_g, else_branch=else_g, name="if0")]
    g = h.make_graph(nodes, "g", [h.make_tensor_value_info("cond", TP.BOOL, []), vi("x")], [vi("y")], inits)
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 13)])
    m.ir_version = 7
    return m


def test_scalar_model_input_takes_a_0d_calibration_value(tmp_path):
    """An If's scalar condition has no sample axis: a 0-d array crashed (IndexError, exit 3) and an (N,) one was
    refused with no way out, so a model with a scalar input could not be calibrated at all."""
    m = _if_model()
    onnx.save(m, tmp_path / "m.onnx")
    x = np.random.default_rng(1).standard_normal((8, C, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "c.npz", x=x, cond=np.array(True))
    out = tmp_path / "o.onnx"
    r = _cli(tmp_path / "m.onnx", "--method", "tlc", "--calib", tmp_path / "c.npz", "--target-speedup", "1.2", "-o", out)
    assert r.returncode == 0, r.stderr[-2000:]
    res = onnx.load(out)
    ref = onnx.ModelProto()
    ref.CopyFrom(m)
    ref.graph.node[1].op_type = "Identity"
    for cond in (True, False):
        f = {"x": x[:1], "cond": np.array(cond)}
        np.testing.assert_allclose(_run(res, f)[0], _run(ref, f)[0], rtol=1e-4, atol=1e-4)
    # a per-sample vector names the way out, in one line, and nothing is written
    np.savez(tmp_path / "bad.npz", x=x, cond=np.ones(8, bool))
    out2 = tmp_path / "o2.onnx"
    r = _cli(tmp_path / "m.onnx", "--method", "easier", "--calib", tmp_path / "bad.npz", "--threshold", "0.5", "-o", out2)
    assert r.returncode == 2 and "scalar" in r.stderr and "0-d" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not out2.exists()


def _prelu_model(slope_shape):
    """conv (channel 0 always negative) - PRelu(slope shaped `slope_shape`) - conv on a 1x4x4x4 NCHW input."""
    rng = np.random.default_rng(5)
    w0 = (np.eye(C, dtype=np.float32) * 0.01).reshape(C, C, 1, 1)
    slope = np.array([0.1, 0.2, 0.3, 0.4], np.float32).reshape(slope_shape)
    inits = [nh.from_array(w0, "w0"), nh.from_array(np.array([-5, 5, 0, 5], np.float32), "b0"),
             nh.from_array(_w(rng, C, C, 1, 1), "w1"), nh.from_array(slope, "slope")]
    nodes = [h.make_node("Conv", ["x", "w0", "b0"], ["c0"], name="conv0"),
             h.make_node("PRelu", ["c0", "slope"], ["a0"], name="act0"), h.make_node("Conv", ["a0", "w1"], ["y"], name="conv1")]
    vi = lambda n: h.make_tensor_value_info(n, TP.FLOAT, [1, C, 4, 4])  # noqa: E731
    m = h.make_model(h.make_graph(nodes, "g", [vi("x")], [vi("y")], inits), opset_imports=[h.make_opsetid("", 13)])
    m.ir_version = 7
    return m, slope


def test_channel_regimes_take_a_prelu_slope_only_along_the_channel_axis():
    """A (C,) PRelu slope broadcasts along ONNX's last axis (W of an NCHW tensor; tf2onnx's NHWC PRelu when H == C).
    With W == C its values were taken as per-channel slopes: the always-off channel 0 was written as 0.1*x, a map
    the model never computes (verified, since the request was built the same way)."""
    calib = np.random.default_rng(6).standard_normal((16, C, 4, 4)).astype(np.float32)
    x = np.random.default_rng(7).standard_normal((1, C, 4, 4)).astype(np.float32)
    for shape, per_channel in (((C, 1, 1), True), ((C,), False), ((1, 1, 1, C), False)):
        m, slope = _prelu_model(shape)
        r = cp.collapse(m, method="easier", calib=calib, threshold=2.0, channel_regimes=True)
        site = r.report["channel_regimes"]["sites"][0]
        assert (site["regime"] == "per-channel") == per_channel, (shape, site)
        # channel 0 (always off) in its own off regime: the model's own PRelu there, identity elsewhere
        ref = onnx.ModelProto()
        ref.CopyFrom(m)
        mask = np.ones((1, C, 4, 4), np.float32)
        mask[:, 0] = np.broadcast_to(slope, (1, C, 4, 4))[:, 0] if per_channel else 1.0
        ref.graph.node[1].op_type = "Mul"
        ref.graph.node[1].input[1] = "mask"
        ref.graph.initializer.append(nh.from_array(mask, "mask"))
        np.testing.assert_allclose(_run(r.model, {"x": x})[0], _run(ref, {"x": x})[0], rtol=1e-4, atol=1e-5)


def _nhwc_chain(act="Relu", hw=6):
    """tf2onnx / TFLite layout: NHWC input, each 1x1 conv between Transposes, the activation on the NHWC tensor."""
    rng = np.random.default_rng(2)
    nodes = [h.make_node("Transpose", ["x"], ["t"], perm=[0, 3, 1, 2], name="tr_in")]
    inits, cur = [], "t"
    for j in range(3):
        inits += [nh.from_array(_w(rng, C, C, 1, 1), f"w{j}"), nh.from_array(_w(rng, C), f"b{j}")]
        nodes.append(h.make_node("Conv", [cur, f"w{j}", f"b{j}"], [f"c{j}"], name=f"conv{j}"))
        nodes.append(h.make_node("Transpose", [f"c{j}"], [f"n{j}" if j < 2 else "y"], perm=[0, 2, 3, 1], name=f"to_nhwc{j}"))
        if j < 2:
            nodes.append(h.make_node(act, [f"n{j}"], [f"a{j}"], name=f"act{j}"))
            nodes.append(h.make_node("Transpose", [f"a{j}"], [f"m{j}"], perm=[0, 3, 1, 2], name=f"to_nchw{j}"))
            cur = f"m{j}"
    vi = lambda n: h.make_tensor_value_info(n, TP.FLOAT, [1, hw, hw, C])  # noqa: E731
    m = h.make_model(h.make_graph(nodes, "g", [vi("x")], [vi("y")], inits), opset_imports=[h.make_opsetid("", 13)])
    m.ir_version = 7
    return m


def test_collapsed_nhwc_activation_lets_its_convs_merge():
    """Collapsing the activation left Transpose(0,2,3,1) -> Transpose(0,3,1,2) back to back: the 1x1 convs on both
    sides never met (11 -> 9 nodes, no merge, nothing said). The inverse pair is an identity (exact)."""
    m = _nhwc_chain()
    r = cp.collapse(m, collapse="act0,act1")
    ops = [n.op_type for n in r.model.graph.node]
    assert ops.count("Conv") == 1 and ops.count("Transpose") == 2, ops
    ref = onnx.ModelProto()
    ref.CopyFrom(m)
    for n in ref.graph.node:
        if n.op_type == "Relu":
            n.op_type = "Identity"
    x = np.random.default_rng(3).standard_normal((2, 6, 6, C)).astype(np.float32)[:1]
    np.testing.assert_allclose(_run(r.model, {"x": x})[0], _run(ref, {"x": x})[0], rtol=1e-4, atol=1e-5)


def test_linear_ops_left_apart_say_why():
    """Two linear ops back to back after a collapse that no merge could read stayed apart with no word: a weight
    made at run time (weight-only DequantizeLinear, a Cast of float16 weights), a ConvTranspose, W @ x, Gemm transA."""
    rng = np.random.default_rng(4)
    q = nh.from_array(rng.integers(-20, 20, (C, C, 1, 1)).astype(np.int8), "wq")
    nodes = [h.make_node("DequantizeLinear", ["wq", "s", "z"], ["w0"], name="dq"),
             h.make_node("Conv", ["x", "w0"], ["c0"], name="conv0"), h.make_node("Relu", ["c0"], ["a0"], name="act0"),
             h.make_node("ConvTranspose", ["a0", "wt"], ["c1"], name="up1"), h.make_node("Relu", ["c1"], ["a1"], name="act1"),
             h.make_node("Conv", ["a1", "w2"], ["y"], name="conv2")]
    inits = [q, nh.from_array(np.float32(0.02), "s"), nh.from_array(np.int8(0), "z"),
             nh.from_array(_w(rng, C, C, 1, 1), "wt"), nh.from_array(_w(rng, C, C, 1, 1), "w2")]
    vi = lambda n: h.make_tensor_value_info(n, TP.FLOAT, [1, C, 5, 5])  # noqa: E731
    m = h.make_model(h.make_graph(nodes, "g", [vi("x")], [vi("y")], inits), opset_imports=[h.make_opsetid("", 13)])
    m.ir_version = 7
    r = cp.collapse(m, collapse="act0,act1")
    notes = [n for n in r.report["notes"] if n.startswith("not merged")]
    assert any("conv0 + up1" in n and "DequantizeLinear" in n and "float model" in n for n in notes), notes
    assert any("up1 + conv2" in n and "ConvTranspose" in n for n in notes), notes
    # W @ x and transA: dense pairs
    inits = [nh.from_array(_w(rng, 8, 8), "wa"), nh.from_array(_w(rng, 8, 8), "wb")]
    nodes = [h.make_node("MatMul", ["wa", "x"], ["m0"], name="mm0"), h.make_node("Relu", ["m0"], ["a0"], name="act0"),
             h.make_node("Gemm", ["a0", "wb"], ["y"], transA=1, name="g1")]
    vi = lambda n: h.make_tensor_value_info(n, TP.FLOAT, [8, 8])  # noqa: E731
    m = h.make_model(h.make_graph(nodes, "g", [vi("x")], [vi("y")], inits), opset_imports=[h.make_opsetid("", 13)])
    m.ir_version = 7
    notes = [n for n in cp.collapse(m, collapse="act0").report["notes"] if n.startswith("not merged")]
    assert len(notes) == 1 and "mm0 + g1" in notes[0] and "W @ x" in notes[0], notes


def test_ratio_prune_reads_auto_pad_convs_of_a_file_without_value_info():
    """tf2onnx writes SAME padding as auto_pad=SAME_UPPER and no intermediate value_info: the channel graph read each
    such conv with no input size, froze it, and --prune-ratio removed nothing ("0 prunable group(s)")."""
    rng = np.random.default_rng(8)
    nodes, inits, cur = [], [], "x"
    for j in range(3):
        inits += [nh.from_array(_w(rng, 8, 8, 3, 3), f"w{j}"), nh.from_array(_w(rng, 8), f"b{j}")]
        nodes.append(h.make_node("Conv", [cur, f"w{j}", f"b{j}"], [f"c{j}" if j < 2 else "y"], name=f"conv{j}",
                                 auto_pad="SAME_UPPER"))
        if j < 2:
            nodes.append(h.make_node("Relu", [f"c{j}"], [f"a{j}"], name=f"act{j}"))
            cur = f"a{j}"
    vi = lambda n: h.make_tensor_value_info(n, TP.FLOAT, [1, 8, 7, 7])  # noqa: E731
    m = h.make_model(h.make_graph(nodes, "g", [vi("x")], [vi("y")], inits), opset_imports=[h.make_opsetid("", 13)])
    m.ir_version = 7
    r = cp.collapse(m, prune_ratio=0.3)
    ratio = r.report["pruning"]["ratio"]
    assert ratio["prunable_groups"] == 2 and ratio["removed_channels"] > 0, ratio
    assert r.report["verification"]["against_requested"]["passed"]
    assert [d.dim_value for d in r.model.graph.output[0].type.tensor_type.shape.dim] == [1, 8, 7, 7]


def test_prune_that_finds_no_group_names_the_layers_it_cannot_read():
    """With auto_pad convs on an input of unknown size (tf2onnx, dynamic H and W) no channel group exists, and the
    warning advised "a lower --round-to or a higher ratio removes more", which cannot help; it names the layers.
    Since 2026-11-29 (H68) a ratio prune with nothing to prune is refused (one line, nothing written), not written
    with a warning: the refusal names the layers."""
    rng = np.random.default_rng(10)
    inits = [nh.from_array(_w(rng, C, C, 3, 3), "w0"), nh.from_array(_w(rng, C, C, 3, 3), "w1")]
    nodes = [h.make_node("Conv", ["x", "w0"], ["c0"], name="conv0", auto_pad="SAME_UPPER"),
             h.make_node("Relu", ["c0"], ["a0"], name="act0"),
             h.make_node("Conv", ["a0", "w1"], ["y"], name="conv1", auto_pad="SAME_UPPER")]
    vi = lambda n: h.make_tensor_value_info(n, TP.FLOAT, [1, C, "H", "W"])  # noqa: E731
    m = h.make_model(h.make_graph(nodes, "g", [vi("x")], [vi("y")], inits), opset_imports=[h.make_opsetid("", 13)])
    m.ir_version = 7
    with pytest.raises(CollapseError, match="no channel of this model can be pruned") as err:
        cp.collapse(m, prune_ratio=0.3)
    assert "round-to" not in str(err.value)
    assert "conv0: auto_pad on an input of unknown size (--input-shape fixes it)" in str(err.value)


def test_inputs_of_different_fixed_batch_sizes_can_be_calibrated(tmp_path):
    """x with a fixed batch of 2 beside an auxiliary [1, C, 1] input: equal sample counts were required ("arrays have
    different sample counts") and equal ones were fed 16 rows to an input that takes 2, so no calibration set worked."""
    rng = np.random.default_rng(11)
    inits = [nh.from_array(_w(rng, C, C, 1), "w0"), nh.from_array(_w(rng, C, C, 1), "w1")]
    nodes = [h.make_node("Conv", ["x", "w0"], ["c0"], name="conv0"), h.make_node("Mul", ["c0", "s"], ["m0"], name="scale"),
             h.make_node("Relu", ["m0"], ["a0"], name="act0"), h.make_node("Conv", ["a0", "w1"], ["y"], name="conv1")]
    g = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", TP.FLOAT, [2, C, 6]),
                                  h.make_tensor_value_info("s", TP.FLOAT, [1, C, 1])],
                     [h.make_tensor_value_info("y", TP.FLOAT, [2, C, 6])], inits)
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 13)])
    m.ir_version = 7
    onnx.save(m, tmp_path / "m.onnx")
    np.savez(tmp_path / "c.npz", x=rng.standard_normal((8, C, 6)).astype(np.float32) + 3,
             s=rng.random((4, C, 1)).astype(np.float32) + 0.5)
    out = tmp_path / "o.onnx"
    r = _cli(tmp_path / "m.onnx", "--method", "easier", "--calib", tmp_path / "c.npz", "--threshold", "2", "-o", out)
    assert r.returncode == 0, r.stderr[-1500:]
    assert onnx.load(out).graph.node[0].op_type == "Conv"
    np.savez(tmp_path / "bad.npz", x=rng.standard_normal((8, C, 6)).astype(np.float32), s=np.ones((8, C, 1), np.float32))
    r = _cli(tmp_path / "m.onnx", "--method", "easier", "--calib", tmp_path / "bad.npz", "--threshold", "2", "-o", out)
    assert r.returncode == 2 and "fixed batch sizes" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_statistics_importance_of_an_nhwc_activation_is_refused_with_a_way_out():
    """--prune-importance easier/tlc ranks channels by the activation statistics, which run along axis 1: on an NHWC
    activation that is H. With H != C the run stopped with "give one score per channel" (the user gave none); with
    H == C the rows were silently ranked as channels."""
    import pytest

    from collapse_passes.errors import CollapseError

    calib = np.random.default_rng(12).standard_normal((8, C, C, C)).astype(np.float32)
    with pytest.raises(CollapseError, match="axis 3.*--prune-importance l1"):
        cp.collapse(_nhwc_chain(hw=C), method="easier", calib=calib, threshold=2.0, prune_importance="easier",
                    prune_ratio=0.3)


def test_key_of_an_activation_inside_an_if_body_says_where_it_is(tmp_path):
    """A Relu inside an If branch was answered "unknown layer key 'inner'; did you mean 'relu()'?" (another
    activation), though the node is in the file: bodies are left alone, and the message says so."""
    m = _if_model()
    m.graph.node[3].attribute[0].g.node[0].name = "inner"   # the then-branch's Relu
    onnx.save(m, tmp_path / "m.onnx")
    out = tmp_path / "o.onnx"
    r = _cli(tmp_path / "m.onnx", "--collapse", "inner", "-o", out)
    assert r.returncode == 2 and "inside the body of If node 'if0'" in r.stderr and "did you mean" not in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not out.exists()
