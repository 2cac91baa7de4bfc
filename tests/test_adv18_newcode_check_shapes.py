"""core/runtime.check_shapes sizes every dynamic dim at 2 * downsampling + 1 (MAX_CHECK_SIZE at most). With three
dynamic dims (a Conv3d stack over D/H/W) and a stride product of 1024 that was 1025 ** 3 positions: 4 GiB for a
one-channel input, and the gate refused (exit 2, "over a quarter of this machine's memory") a model it had checked
at 1 before. The positions per input are now capped at MAX_CHECK_SIZE ** 2 (the 2-D maximum)."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from collapse_passes.core.runtime import MAX_CHECK_SIZE, _check_input_memory, check_shapes, input_specs


def _conv3d_stack(layers: int = 10) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    nodes, inits, x = [], [], "x"
    for i in range(layers):
        w = helper.make_tensor(f"w{i}", TensorProto.FLOAT, [1, 1, 3, 3, 3],
                               rng.standard_normal(27).astype(np.float32).tolist())
        inits.append(w)
        nodes.append(helper.make_node("Conv", [x, f"w{i}"], [f"c{i}"], strides=[2, 2, 2], pads=[1] * 6))
        nodes.append(helper.make_node("Relu", [f"c{i}"], [f"r{i}"]))
        x = f"r{i}"
    nodes.append(helper.make_node("ReduceMean", [x], ["y"], keepdims=0))
    g = helper.make_graph(nodes, "c3d", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 1, "d", "h", "w"])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_three_dynamic_dims_stay_within_two_d_positions():
    m = _conv3d_stack()
    dims = check_shapes(m)["x"]
    assert dims[:2] == [1, 1]
    assert dims[2] == dims[3] == dims[4] and dims[2] % 2 == 1 and dims[2] > 9
    assert int(np.prod(dims)) <= MAX_CHECK_SIZE ** 2
    # the gate's memory rule accepts it on a small machine's budget (it refused 1025 ** 3)
    specs = [(n, dims, dt) for n, _, dt in input_specs(m)]
    _check_input_memory(specs, 8)


def test_two_dynamic_dims_unchanged():
    m = _conv3d_stack()
    m.graph.input[0].type.tensor_type.shape.dim[2].dim_value = 5
    assert check_shapes(m)["x"] == [1, 1, 5, MAX_CHECK_SIZE, MAX_CHECK_SIZE]


# A UNet exported with dynamic height/width (the usual segmentation export): its skip Concat needs every map exactly
# halved. At check_shapes' 2 * 4 + 1 = 9 the decoder's 8 x 8 met the encoder's 9 x 9, and at the fallback's 1 x 1
# it failed too, so the gate refused the model (exit 2, "cannot run the input model"). It now also tries
# check_shapes(aligned=True): 3 * D, a multiple of every stride.
def _unet():
    import torch
    import torch.nn.functional as F
    from torch import nn

    class U(nn.Module):
        def __init__(self):
            super().__init__()
            self.e1, self.e2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 16, 3, padding=1)
            self.e3, self.d2 = nn.Conv2d(16, 16, 3, padding=1), nn.Conv2d(32, 8, 3, padding=1)
            self.d1 = nn.Conv2d(16, 4, 3, padding=1)

        def forward(self, x):
            a = torch.relu(self.e1(x))
            b = torch.relu(self.e2(F.max_pool2d(a, 2)))
            c = torch.relu(self.e3(F.max_pool2d(b, 2)))
            d = torch.relu(self.d2(torch.cat([F.interpolate(c, scale_factor=2.0, mode="nearest"), b], 1)))
            return self.d1(torch.cat([F.interpolate(d, scale_factor=2.0, mode="nearest"), a], 1))

    torch.manual_seed(0)
    return U()


def test_unet_with_dynamic_size_is_checked_at_a_multiple_of_its_strides(tmp_path):
    import collapse_passes as cp
    from models.export import export_onnx

    path = export_onnx(_unet(), tmp_path / "unet.onnx", (1, 3, 32, 32),
                       dynamic_axes={"input": {0: "b", 2: "h", 3: "w"}})
    m = onnx.load(path)
    assert check_shapes(m)["input"] == [1, 3, 9, 9] and check_shapes(m, aligned=True)["input"] == [1, 3, 12, 12]
    res = cp.collapse(path, collapse=["relu():0"])
    assert res.passed
    assert "1x3x12x12" in res.report["verification"]["inputs"], res.report["verification"]["inputs"]
