"""A conv merge's per-position bias map is carried to the end of its linear region and folded into a bias. The
global pooling that ends a CNN is GlobalAveragePool + Flatten in a TorchScript export but ReduceMean (axes as an
input, opset 18) + Reshape (allowzero=1) in a torch.export one, and `x.mean((2, 3))` is ReduceMean (axes as an
attribute, keepdims=0) in both: the bias-map pass stopped at ReduceMean / Reshape, so the torch.export file of
MobileNetV2 with its last block collapsed kept a (1, 320, 7, 7) bias-map Add (one node and one op of depth more
than the same weights exported by TorchScript), and --target-speedup priced that Add into its plan."""
from __future__ import annotations

import logging
import warnings

import numpy as np
import onnx_graphsurgeon as gs
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import collapse_passes as cp  # noqa: E402
from collapse_passes.onnx.passes.propagate_bias_maps import count_bias_map_adds  # noqa: E402


class _Net(nn.Module):
    """An inverted residual without its skip: 1x1 expand (bias) -> ReLU -> padded depthwise 3x3 -> ReLU -> 1x1
    project, collapsed and merged into one 3x3 conv plus a per-position bias map; global mean; Linear."""

    def __init__(self, pool: str):
        super().__init__()
        torch.manual_seed(0)
        self.c1, self.a1 = nn.Conv2d(3, 18, 1), nn.ReLU()
        self.c2, self.a2 = nn.Conv2d(18, 18, 3, padding=1, groups=18), nn.ReLU()
        self.c3 = nn.Conv2d(18, 4, 1)
        self.pool = pool
        self.avg = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 5)
        with torch.no_grad():
            for c in (self.c1, self.c2, self.c3):
                c.bias.uniform_(-1, 1)

    def forward(self, x):
        y = self.c3(self.a2(self.c2(self.a1(self.c1(x)))))
        y = torch.flatten(self.avg(y), 1) if self.pool == "adaptive" else y.mean((2, 3))
        return self.fc(y)


def _export(tmp_path, pool, dynamo, dynamic=False):
    from models.export import export_onnx

    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    p = tmp_path / f"{pool}_{dynamo}_{dynamic}.onnx"
    kw, shape = {}, (1, 3, 16, 16)
    if dynamic:
        kw["dynamic_shapes"] = ({0: torch.export.Dim("N", min=1, max=8)},)
        shape = (2, 3, 16, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_onnx(_Net(pool).eval(), p, shape, dynamo=dynamo, opset=17, **kw)
    return str(p)


def _collapse_all(path):
    res = cp.collapse(path, collapse=["a1", "a2"])
    g = res.model.graph
    return res, sum(n.op_type == "Add" for n in g.node), count_bias_map_adds(gs.import_onnx(res.model))


@pytest.mark.parametrize("pool", ["adaptive", "mean"])
def test_torch_export_pooling_passes_bias_maps_like_torchscript(tmp_path, pool):
    ts, ts_adds, _ = _collapse_all(_export(tmp_path, pool, dynamo=False))
    dy, dy_adds, dy_maps = _collapse_all(_export(tmp_path, pool, dynamo=True))
    assert ts.report["merges"] and dy.report["merges"], (ts.report["notes"], dy.report["notes"])
    assert ts_adds == 0, ts.report["notes"]            # the map folded into the Linear's bias
    assert dy_adds == 0 and dy_maps == 0, dy.report["notes"]
    for k in ("nodes", "depth_ops", "macs"):
        assert dy.report["after"][k] == ts.report["after"][k], k
    assert dy.report["verification"]["against_requested"]["passed"]


def test_dynamic_batch_reshape_passes_bias_maps(tmp_path):
    """view(n, -1) of a dynamic batch: Reshape to (-1, C), the -1 being the batch."""
    dy, adds, _ = _collapse_all(_export(tmp_path, "adaptive", dynamo=True, dynamic=True))
    assert adds == 0, dy.report["notes"]
    import onnxruntime as ort

    s = ort.InferenceSession(dy.model.SerializeToString(), providers=["CPUExecutionProvider"])
    assert s.run(None, {"input": np.zeros((3, 3, 16, 16), np.float32)})[0].shape == (3, 5)


def test_target_speedup_prices_the_fold_through_reduce_mean(tmp_path):
    """--target-speedup prices candidates on the linear regions cut out around them (onnx/regions.py): ReduceMean
    must be in the region, or the region's price keeps the bias-map Add the whole graph folds (MobileNetV2 from
    torch.export: features.18.2 and features.14.conv.1.2 were priced as no gain and left out of the plan)."""
    import onnx

    from collapse_passes import speedup
    from collapse_passes.algebra.cost import CostModel
    from collapse_passes.calib import model_inputs
    from collapse_passes.onnx.analysis import model_stats
    from collapse_passes.onnx.driver import run_passes
    from collapse_passes.onnx.graph import to_graph
    from collapse_passes.onnx.patterns import find_activations

    model = onnx.load(_export(tmp_path, "adaptive", dynamo=True))
    acts = find_activations(to_graph(model))
    cm = CostModel()
    shapes = {k: d for k, d, _ in model_inputs(model)}

    def full(items):
        m, ctx, _ = run_passes(model, {a.name for a in items}, cost_model=cm, input_shapes=shapes)
        return speedup.stats_cost(model_stats(m, graph=ctx.graph).as_dict(), cm)

    region = speedup.RegionPricer(model, acts, [], full,
                                  lambda sub, names, sh: run_passes(sub, names, cost_model=cm, input_shapes=sh), cm)
    assert region(acts) == pytest.approx(full(acts), rel=1e-9)
