"""The cost model's element prices read shapes that ONNX inference loses after a TorchScript export's run-time
size arithmetic (a ShuffleNet channel shuffle: `x.size()` read at run time): those tensors are filled from the
same onnxruntime run that fills the MAC shapes (onnx/shapes.missing_priced_tensors). Before, the elementwise ops
after the first shuffle cost nothing in the input model's price, and a run that collapsed nothing was predicted
slower than its input (ShuffleNetV2 at 224: 0.971x)."""
import numpy as np
import onnx
import pytest
import torch
from torch import nn

from collapse_passes.onnx.analysis import model_stats
from collapse_passes.onnx.driver import run_passes
from collapse_passes.onnx.shapes import missing_priced_tensors, with_shapes
from collapse_passes.speedup import stats_cost
from models.export import export_onnx


def _shuffle(x, groups=2):
    b, c, h, w = x.size()
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


class ShuffleBlock(nn.Module):
    def __init__(self, c=16):
        super().__init__()
        self.conv1 = nn.Conv2d(c // 2, c // 2, 1)
        self.dw = nn.Conv2d(c // 2, c // 2, 3, padding=1, groups=c // 2)
        self.conv2 = nn.Conv2d(c // 2, c // 2, 1)
        self.act = nn.Hardswish()

    def forward(self, x):
        a, b = x.chunk(2, dim=1)
        b = self.act(self.conv2(self.dw(self.act(self.conv1(b)))))
        return _shuffle(torch.cat([a, b], 1))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.blocks = nn.Sequential(ShuffleBlock(), ShuffleBlock(), ShuffleBlock())
        self.sig = nn.Sigmoid()

    def forward(self, x):
        return self.sig(self.blocks(self.stem(x))).mean((2, 3))


@pytest.fixture(scope="module")
def shuffle_model(tmp_path_factory):
    torch.manual_seed(0)
    p = tmp_path_factory.mktemp("priced") / "shuffle_ts.onnx"
    export_onnx(Net().eval(), str(p), (1, 3, 16, 16), dynamo=False)
    return onnx.load(str(p))


def test_elementwise_shapes_lost_by_inference_are_filled(shuffle_model):
    graph = with_shapes(shuffle_model)
    assert not missing_priced_tensors(graph)
    # every HardSwish after the first shuffle is priced by its real size (8 channels x 16 x 16)
    hsw = [n for n in graph.nodes if n.op == "HardSwish"]
    assert len(hsw) == 6 and all(all(isinstance(d, int) for d in n.outputs[0].shape) and
                                 int(np.prod(n.outputs[0].shape)) == 8 * 16 * 16 for n in hsw)


def test_a_run_that_collapses_nothing_is_priced_as_its_input(shuffle_model):
    before = model_stats(shuffle_model).as_dict()
    result, _, _ = run_passes(shuffle_model, set())
    after = model_stats(result).as_dict()
    assert before["element_work"].get("hardswish", 0) == 6 * 8 * 16 * 16
    assert stats_cost(before) == pytest.approx(stats_cost(after), rel=1e-3)
