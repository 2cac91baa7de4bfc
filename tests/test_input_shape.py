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
    assert proto.SerializeToString() == before
    assert _dims(a.model.graph.input[0]) == _dims(b.model.graph.input[0]) == [1, 3, 16, 16]


@pytest.mark.parametrize("spec, why", [
    ("x:1,3,32,32", r"the model has no input 'x'; its inputs: input \(Nx3xHxW\)"),
    ("input:1,3,32", r"3 dims given, the input has rank 4"),
    ("input:1,4,32,32", r"dim 1 of the input is fixed at 3, not 4"),
    ("input:1,3,0,32", r"give positive integers"),
    ("input:1,3,a,32", r"give positive integers"),
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
