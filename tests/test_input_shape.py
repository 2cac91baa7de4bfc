"""--input-shape / input_shapes=: sizes for an ONNX model's dynamic dims.

An export with a dynamic height and width (dynamic_axes) was planned at 1 x 1: every conv chain was left
unmerged ("shapes unknown"), the report's MACs were those of a 1 x 1 input without a word, and the check ran
1 x 1 inputs. Fixing the sizes gives real prices, real MACs, merges, and a check at the size the user runs.
"""
from __future__ import annotations

import contextlib
import io
import warnings

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import collapse_passes as cp  # noqa: E402
from collapse_passes.cli import main  # noqa: E402
from collapse_passes.errors import CollapseError  # noqa: E402
from tests.conftest import randomize_bn  # noqa: E402


class _Net(nn.Module):
    """1x1 -> ReLU -> 1x1 (an exact merge when the ReLU is collapsed), a stride-2 3x3, flatten + Linear."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 16, 1)
        self.b1 = nn.BatchNorm2d(16)
        self.r1 = nn.ReLU()
        self.c2 = nn.Conv2d(16, 8, 1)
        self.r2 = nn.ReLU()
        self.c3 = nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.r3 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        x = self.r2(self.c2(self.r1(self.b1(self.c1(x)))))
        return self.fc(torch.flatten(self.pool(self.r3(self.c3(x))), 1))


@pytest.fixture(scope="module")
def dyn_export(tmp_path_factory):
    torch.manual_seed(0)
    m = randomize_bn(_Net().eval())
    path = tmp_path_factory.mktemp("dyn") / "dyn.onnx"
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(m, (torch.randn(1, 3, 32, 32),), str(path), dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "N", 2: "H", 3: "W"}, "logits": {0: "N"}})
    return m, str(path)


def _dims(vi):
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in vi.type.tensor_type.shape.dim]


def test_dynamic_size_is_said_and_fixed_sizes_merge_and_count_real_macs(dyn_export):
    m, path = dyn_export
    loose = cp.collapse(path, collapse=["r1"])
    assert any("dynamic input size: input (Nx3xHxW)" in n and "--input-shape" in n for n in loose.report["notes"])
    assert any("shapes unknown, not merged" in n for n in loose.report["notes"])
    assert not loose.report["merges"]

    fixed = cp.collapse(path, collapse=["r1"], input_shapes=["input:2,3,32,32"])
    assert not any("dynamic input size" in n for n in fixed.report["notes"])
    assert any("input shapes fixed" in n and "input 2x3x32x32" in n for n in fixed.report["notes"])
    assert fixed.report["merges"], fixed.report["notes"]   # c1 (+BN) and c2 are one conv now
    assert _dims(fixed.model.graph.input[0]) == [2, 3, 32, 32]
    assert _dims(fixed.model.graph.output[0]) == [2, 5]
    # per-sample MACs at 32 x 32 are those of the layers at their real sizes, not of a 1 x 1 input
    assert fixed.report["before"]["macs"] > 200 * loose.report["before"]["macs"] / 2
    # the written model against the module with r1 replaced by its linear regime, at the fixed size
    ref = _Net()
    ref.load_state_dict(m.state_dict())
    ref.r1 = nn.Identity()
    ref.eval()
    x = np.random.default_rng(3).standard_normal((2, 3, 32, 32)).astype(np.float32)
    import onnxruntime as ort

    got = ort.InferenceSession(fixed.model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"input": x})[0]
    with torch.no_grad():
        want = ref(torch.from_numpy(x)).numpy()
    assert np.abs(got - want).max() <= 1e-4 * max(1.0, np.abs(want).max())


def test_single_input_shorthand_and_dict_and_the_callers_proto_is_not_changed(dyn_export):
    _, path = dyn_export
    proto = onnx.load(path)
    before = proto.SerializeToString()
    a = cp.collapse(proto, collapse=["r1"], input_shapes={"input": [1, 3, 16, 16]})
    b = cp.collapse(proto, collapse=["r1"], input_shapes="1x3x16x16")
    c = cp.collapse(proto, collapse=["r1"], input_shapes=(1, 3, 16, 16))   # a list of ints: the only input's dims
    assert proto.SerializeToString() == before
    assert _dims(a.model.graph.input[0]) == _dims(b.model.graph.input[0]) == _dims(c.model.graph.input[0]) \
        == [1, 3, 16, 16]
    with pytest.raises(CollapseError, match="give positive integers"):
        cp.collapse(proto, collapse=["r1"], input_shapes=[1, 3, 0, 16])


@pytest.mark.parametrize("spec, why", [
    ("x:1,3,32,32", r"the model has no input 'x'; its inputs: input \(Nx3xHxW\)"),
    ("input:1,3,32", r"3 dims given, the input has rank 4"),
    ("input:1,4,32,32", r"dim 1 of the input is fixed at 3, not 4"),
    ("input:1,3,0,32", r"give positive integers"),
    ("input:1,3,2.5,32", r"give positive integers"),
    ("input:1,3-,32,32", r"give positive integers"),
    ("input:1,N,32,32", r"dim 1 of the input is fixed at 3, not a dynamic size"),
])
def test_bad_input_shape_is_one_line_exit_2_and_nothing_written(dyn_export, tmp_path, capsys, spec, why):
    _, path = dyn_export
    out = tmp_path / "o.onnx"
    assert main([path, "-o", str(out), "--collapse", "r1", "--input-shape", spec]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error:")
    import re

    assert re.search(why, err), err
    assert list(tmp_path.iterdir()) == []


def test_cli_writes_the_fixed_shape_model(dyn_export, tmp_path):
    _, path = dyn_export
    out = tmp_path / "o.onnx"
    assert main([path, "-o", str(out), "--collapse", "r1", "-q", "--input-shape", "input:1,3,24,24"]) == 0
    assert _dims(onnx.load(str(out)).graph.input[0]) == [1, 3, 24, 24]


def test_torch_model_takes_its_shapes_from_example_inputs():
    with pytest.raises(CollapseError, match="example_inputs"):
        cp.collapse(_Net().eval(), collapse=["r1"], input_shapes={"x": [1, 3, 8, 8]},
                    example_inputs=(torch.randn(1, 3, 8, 8),))


def test_dynamic_inputs_names_sizes_not_a_dynamic_batch(dyn_export):
    from collapse_passes.onnx.shapes import dynamic_inputs, fix_input_shapes

    _, path = dyn_export
    proto = onnx.load(path)
    assert dynamic_inputs(proto) == ["input (Nx3xHxW)"]
    batch_only = fix_input_shapes(proto, {"input": [1, 3, 8, 8]})
    batch_only.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "N"
    assert dynamic_inputs(batch_only) == []   # a dynamic batch is the usual per-sample count


def test_tvm_latency_table_says_what_input_it_timed():
    from tvm_integration.cli_hook import format_latency_table

    lat = {r: {"onnxruntime": 1.0, "tvm_untuned": 2.0, "tvm_tuned": None} for r in ("original", "collapsed")}
    text = format_latency_table({"latency_ms": lat, "models": {"inputs": {"input": [1, 3, 1, 1]}}})
    assert text.splitlines()[0] == "timed on input 1x3x1x1"


def test_standalone_tvm_entry_takes_input_shape_and_refuses_a_bad_one(dyn_export, capsys):
    from tvm_integration.__main__ import main as tvm_main

    _, path = dyn_export
    assert tvm_main([path, "--target", "cpu", "--input-shape", "input:1,3,40"]) == 2
    assert "3 dims given, the input has rank 4" in capsys.readouterr().err


# ----------------------------------------------------------------------------- dynamic exports, adversarial (H6)

def _ref_with(m, **linear):
    """A copy of `m` with the named children replaced (their linear regime), for comparing in torch."""
    ref = _Net()
    ref.load_state_dict(m.state_dict())
    for name, mod in linear.items():
        setattr(ref, name, mod)
    return ref.eval()


def _ort(model, x):
    import onnxruntime as ort

    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]


def _keys(path):
    return [k["key"] for k in cp.list_keys(path)]


def _close(got, want):
    return np.abs(got - want).max() <= 1e-4 * max(1.0, np.abs(want).max())


def test_without_input_shape_the_written_model_stays_dynamic_and_exact_at_every_size(dyn_export):
    m, path = dyn_export
    loose = cp.collapse(path, collapse=["r1", "r3"])
    assert _dims(loose.model.graph.input[0]) == ["N", 3, "H", "W"]
    ref = _ref_with(m, r1=nn.Identity(), r3=nn.Identity())
    rng = np.random.default_rng(0)
    for shape in [(1, 3, 32, 32), (2, 3, 24, 40), (3, 3, 7, 9)]:
        x = rng.standard_normal(shape).astype(np.float32)
        with torch.no_grad():
            assert _close(_ort(loose.model, x), ref(torch.from_numpy(x)).numpy()), shape


def test_an_absurd_input_shape_is_one_line_exit_2_not_a_traceback(dyn_export, tmp_path, capsys):
    _, path = dyn_export
    out = tmp_path / "o.onnx"
    for spec in ("input:99999999999999999999,3,4,4", "input:1,3,100000,100000"):
        assert main([path, "-o", str(out), "--collapse", "r1", "--input-shape", spec]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "give a smaller size" in err, err
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def batch_only_export(tmp_path_factory):
    torch.manual_seed(1)
    m = randomize_bn(_Net().eval())
    d = tmp_path_factory.mktemp("batch")
    paths = {}
    for tag, axes in (("static", None), ("batch", {"input": {0: "N"}, "logits": {0: "N"}})):
        paths[tag] = str(d / f"{tag}.onnx")
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(m, (torch.randn(1, 3, 16, 16),), paths[tag], dynamo=False, opset_version=17,
                              input_names=["input"], output_names=["logits"], dynamic_axes=axes)
    return m, paths


def test_batch_only_export_keys_fixed_batch_and_wrong_sizes(batch_only_export, tmp_path, capsys):
    m, paths = batch_only_export
    assert _keys(paths["batch"]) == _keys(paths["static"]) == ["r1", "r2", "r3"]
    r = cp.collapse(paths["batch"], collapse=["r1"], input_shapes="input:4,3,16,16")
    assert _dims(r.model.graph.input[0]) == [4, 3, 16, 16] and _dims(r.model.graph.output[0]) == [4, 5]
    x = np.random.default_rng(1).standard_normal((4, 3, 16, 16)).astype(np.float32)
    with torch.no_grad():
        assert _close(_ort(r.model, x), _ref_with(m, r1=nn.Identity())(torch.from_numpy(x)).numpy())
    out = tmp_path / "o.onnx"
    # a static height cannot be changed; calibration data of another size is refused, not resized
    assert main([paths["batch"], "-o", str(out), "--collapse", "r1", "--input-shape", "input:1,3,32,32"]) == 2
    assert "dim 2 of the input is fixed at 16, not 32" in capsys.readouterr().err
    calib = tmp_path / "c.npz"
    np.savez(calib, input=np.zeros((4, 3, 32, 32), np.float32))
    assert main([paths["batch"], "-o", str(out), "--method", "tlc", "--remove", "1", "--calib", str(calib)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "axis 2 is 32, expected 16" in err, err
    assert not out.exists()


def test_calibration_data_of_the_wrong_channels_names_dynamic_dims_apart_from_the_batch(dyn_export, tmp_path, capsys):
    _, path = dyn_export
    calib, out = tmp_path / "c.npz", tmp_path / "o.onnx"
    np.savez(calib, input=np.zeros((4, 4, 32, 32), np.float32))
    assert main([path, "-o", str(out), "--method", "tlc", "--remove", "1", "--calib", str(calib)]) == 2
    err = capsys.readouterr().err.strip()
    # was "expects (N, 3, N, N)": height and width read as the sample count
    assert len(err.splitlines()) == 1 and "expects (N, 3, ?, ?) (axis 1 is 4, expected 3)" in err, err
    assert not out.exists()


class _Patchify(nn.Module):
    """A stride-4 unpadded patch conv (as Swin's stem): a 1 x 1 input cannot run. With kernel=13 it cannot run at
    the check's sizes for its dynamic dims either (core/runtime.check_shapes: 2 * 4 + 1 = 9, aligned 3 * 4 = 12)."""

    def __init__(self, kernel: int = 4):
        super().__init__()
        self.patch = nn.Conv2d(3, 8, kernel, stride=4)
        self.r = nn.ReLU()
        self.fc = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.fc(self.r(self.patch(x))).mean((2, 3))


@pytest.mark.parametrize("kernel", [4, 13])
def test_a_dynamic_model_that_cannot_run_at_1x1_names_input_shape(tmp_path, capsys, kernel):
    """The check ran dynamic dims at 1: a patch-4 stem could not run. It runs at check_shapes' 9 x 9 now; a
    patch-13 stem runs neither there, nor at the aligned 12 x 12, nor at 1, and the one line names --input-shape."""
    torch.manual_seed(0)
    path = str(tmp_path / "p.onnx")
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(_Patchify(kernel).eval(), (torch.randn(1, 3, 16, 16),), path, dynamo=False,
                          opset_version=17, input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "N", 2: "H", 3: "W"}})
    out = tmp_path / "o.onnx"
    if kernel == 4:
        assert main([path, "-o", str(out), "-q", "--collapse", "r"]) == 0
        return
    assert main([path, "-o", str(out), "--collapse", "r"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--input-shape" in err, err
    assert not out.exists()
    assert main([path, "-o", str(out), "-q", "--collapse", "r", "--input-shape", "input:1,3,16,16"]) == 0
    assert out.exists()


@pytest.mark.slow
def test_dynamo_export_with_dynamic_shapes_matches_torch_and_the_static_keys(dyn_export, tmp_path):
    from torch.export import Dim

    m, ts_path = dyn_export
    paths = {}
    for tag, dyn in (("static", None), ("dyn", ({0: Dim("N", max=64), 2: Dim("H", min=8, max=512),
                                                 3: Dim("W", min=8, max=512)},))):
        paths[tag] = str(tmp_path / f"{tag}.onnx")
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(m, (torch.randn(2, 3, 32, 32),), paths[tag], dynamo=True, opset_version=18,
                              external_data=False, input_names=["input"], output_names=["logits"],
                              dynamic_shapes=dyn)
    assert _dims(onnx.load(paths["dyn"]).graph.input[0]) == ["N", 3, "H", "W"]
    assert _keys(paths["dyn"]) == _keys(paths["static"]) == _keys(ts_path) == ["r1", "r2", "r3"]
    ref = _ref_with(m, r1=nn.Identity())
    rng = np.random.default_rng(2)
    loose = cp.collapse(paths["dyn"], collapse=["r1"])
    fixed = cp.collapse(paths["dyn"], collapse=["r1"], input_shapes="input:2,3,40,24")
    assert fixed.report["merges"] and not loose.report["merges"]
    for model, shapes in ((loose.model, [(1, 3, 32, 32), (2, 3, 40, 24)]), (fixed.model, [(2, 3, 40, 24)])):
        for shape in shapes:
            x = rng.standard_normal(shape).astype(np.float32)
            with torch.no_grad():
                assert _close(_ort(model, x), ref(torch.from_numpy(x)).numpy()), shape


def test_float64_reference_run_is_quiet_when_sigmoid_overflows():
    """A refused ill-conditioned collapse (EfficientNet, collapsed SiLUs: outputs ~1e4) printed numpy's
    'invalid value encountered in divide' from onnx's reference Sigmoid above its one-line error."""
    from onnx import TensorProto, helper

    from collapse_passes.verify import _reference_run

    g = helper.make_graph([helper.make_node("Sigmoid", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    with warnings.catch_warnings(), np.errstate(all="warn"):
        warnings.simplefilter("error")
        (y,), = _reference_run(model, [{"x": np.array([[1000.0, -1000.0, 0.0]], np.float32)}])
    assert y.tolist() == [[1.0, 0.0, 0.5]]


def test_a_dim_given_by_name_stays_dynamic(dyn_export):
    """input:N,3,32,32: height and width fixed for planning, MACs and the check; the batch stays dynamic, as
    deployments keep it. The written model runs at several batch sizes and merges as the static one does."""
    import onnxruntime as ort

    m, path = dyn_export
    r = cp.collapse(path, collapse=["r1"], input_shapes=["input:N,3,32,32"])
    assert _dims(r.model.graph.input[0]) == ["N", 3, 32, 32]
    assert _dims(r.model.graph.output[0]) == ["N", 5]
    assert r.report["merges"] and not any("dynamic input size" in n for n in r.report["notes"])
    assert any("input Nx3x32x32" in n for n in r.report["notes"])
    ref = _Net()
    ref.load_state_dict(m.state_dict())
    ref.r1 = nn.Identity()
    ref.eval()
    sess = ort.InferenceSession(r.model.SerializeToString(), providers=["CPUExecutionProvider"])
    for n in (1, 3):
        x = np.random.default_rng(n).standard_normal((n, 3, 32, 32)).astype(np.float32)
        with torch.no_grad():
            want = ref(torch.from_numpy(x)).numpy()
        got = sess.run(None, {"input": x})[0]
        assert np.abs(got - want).max() <= 1e-4 * max(1.0, np.abs(want).max())


def _two_inputs_sharing_n():
    """y = conv(a) + b: a is Nx3x4x4, b is Nx2x4x4 (one dim name, one size)."""
    import onnx
    from onnx import TensorProto, helper

    w = onnx.numpy_helper.from_array(np.random.default_rng(0).standard_normal((2, 3, 1, 1)).astype(np.float32), "w")
    g = helper.make_graph(
        [helper.make_node("Conv", ["a", "w"], ["c"]), helper.make_node("Add", ["c", "b"], ["y"])], "two",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 3, 4, 4]),
         helper.make_tensor_value_info("b", TensorProto.FLOAT, ["N", 2, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2, 4, 4])], [w])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_fixing_a_dim_name_on_one_input_fixes_it_on_the_others():
    """--input-shape a:1,3,4,4 left b at Nx2x4x4: b's check input took another batch and the Add broadcast
    it. The same name is the same size: b becomes 1x2x4x4; a conflicting size for N is one line."""
    from collapse_passes.onnx.shapes import fix_input_shapes

    fixed = fix_input_shapes(_two_inputs_sharing_n(), {"a": [1, 3, 4, 4]})
    assert [_dims(vi) for vi in fixed.graph.input] == [[1, 3, 4, 4], [1, 2, 4, 4]]
    with pytest.raises(CollapseError, match="one name is one size"):
        fix_input_shapes(_two_inputs_sharing_n(), {"a": [1, 3, 4, 4], "b": [2, 2, 4, 4]})
