"""HoistGlobalPool, attacked (tests/test_adv20_hoist_pool_*.py hold the rules). Found on 2026-11-29:
- torch front end: `q = pool(x); q.view(q.size(0), -1)` (the classic CIFAR head) or `x.mean(..).view(x.size(0), -1)`
  read the pooled map / the conv's output a second time for its batch size, so the pool or the conv had two users:
  the conv stayed on the 1x1 map (not merged with the classifier) or was not hoisted at all, while the ONNX export
  (the size folded) got one Gemm: different MACs on the two front ends. Under torch.compile(dynamic=True) the batch
  is a SymInt input, not a size read, and was not read as the batch either;
- the ONNX pass's pool-hoist record counted one sample, the torch one (and the report's totals) the whole batch."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import helper, numpy_helper

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import collapse_passes as cp  # noqa: E402
from collapse_passes.onnx.driver import run_passes  # noqa: E402


class _Head(nn.Module):
    """3x3 conv -> ReLU -> 1x1 conv 8->32 -> pool -> view by a batch-size read -> Linear 32->5."""

    def __init__(self, spelling):
        super().__init__()
        self.spelling = spelling
        self.stem, self.act = nn.Conv2d(3, 8, 3, padding=1), nn.ReLU()
        self.pw, self.pool, self.cls = nn.Conv2d(8, 32, 1), nn.AdaptiveAvgPool2d(1), nn.Linear(32, 5)

    def forward(self, x):
        y = self.pw(self.act(self.stem(x)))
        if self.spelling == "pooled_size":
            q = self.pool(y)
            return self.cls(q.view(q.size(0), -1))
        if self.spelling == "conv_size":
            return self.cls(y.mean((2, 3), keepdim=True).view(y.size(0), -1))
        q = self.pool(y)
        return self.cls(q.reshape(q.shape[0], -1))


def _hoists(report):
    return [m for m in report["merges"] if m["kind"] == "pool-hoist"]


@pytest.mark.parametrize("spelling", ["pooled_size", "conv_size", "shape0"])
def test_batch_size_read_is_no_second_reader_on_torch(spelling, tmp_path):
    from conftest import export_quiet

    torch.manual_seed(0)
    net = _Head(spelling).eval()
    x = torch.randn(2, 3, 6, 6)
    res = cp.collapse(net, collapse=[], example_inputs=(x,))
    torch.testing.assert_close(res.model(x), net(x), rtol=1e-4, atol=1e-5)
    convs = [m for m in res.model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 1, res.model.graph   # the 1x1 conv is gone: a Linear, merged with the classifier
    hz = _hoists(res.report)
    assert len(hz) == 1 and any(m["kind"] == "dense" for m in res.report["merges"]), res.report["merges"]
    # the ONNX export: same decision, same MACs, same record (the batch of 2 counted on both)
    onnx_res = cp.collapse(export_quiet(net, tmp_path / "m.onnx", (2, 3, 6, 6), False), collapse=[])
    assert onnx_res.report["after"]["macs"] == res.report["after"]["macs"]
    assert [(m["macs_before"], m["macs_after"]) for m in _hoists(onnx_res.report)] == \
        [(m["macs_before"], m["macs_after"]) for m in hz] == [(2 * 36 * 8 * 32, 2 * 8 * 32)]


def test_dynamic_compile_reads_the_batch_symbol():
    """torch.compile(dynamic=True): `q.view(q.size(0), -1)` is view(q, s0, -1) with s0 a graph input; it is the
    pooled map's batch symbol, so the hoisted conv is a Linear and merges with the classifier, at every size."""
    torch.manual_seed(0)
    net = _Head("pooled_size").eval()
    be = cp.torch_backend(collapse=[], inductor=False)
    torch._dynamo.reset()
    f = torch.compile(net, backend=be, dynamic=True)
    for shape in ((2, 3, 6, 6), (3, 3, 9, 7)):
        x = torch.randn(*shape)
        torch.testing.assert_close(f(x), net(x), rtol=1e-4, atol=1e-5)
    assert be.reports
    for rep in be.reports:
        kinds = [m["kind"] for m in rep["merges"]]
        assert "pool-hoist" in kinds and "dense" in kinds, kinds


def test_onnx_record_counts_the_batch():
    """A static batch of 3: the pool-hoist record's MACs are those of 3 samples, as the report's totals count."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Conv", ["x", "w0"], ["a"], name="c3", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "w1"], ["t"], name="pw"),
             helper.make_node("GlobalAveragePool", ["t"], ["p"], name="pool"),
             helper.make_node("Flatten", ["p"], ["y"], name="flat")]
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), k)
             for k, s in (("w0", (8, 8, 3, 3)), ("w1", (16, 8, 1, 1)))]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", 1, [3, 8, 5, 5])],
                          [helper.make_tensor_value_info("y", 1, [3, 16])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    _, ctx, _ = run_passes(m, set())
    rec = [r for r in ctx.merges if r["kind"] == "pool-hoist"]
    assert [(r["macs_before"], r["macs_after"]) for r in rec] == [(3 * 25 * 16 * 8, 3 * 16 * 8)], rec


def _dyn_batch_head(shape_of: str, index: int = 0):
    """x (N dynamic) -> 3x3 conv -> Relu -> 1x1 conv 8->16 -> GAP -> Reshape(Concat(Shape(`shape_of`)[index], -1))
    [-> Gemm 16->5 when it flattens]: a dynamic-batch TorchScript export of `q.view(q.size(0), -1)`."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Conv", ["x", "w0"], ["a"], name="c3", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "w1", "b1"], ["t"], name="pw"),
             helper.make_node("GlobalAveragePool", ["t"], ["p"], name="pool"),
             helper.make_node("Shape", [shape_of], ["sh"], name="shape"),
             helper.make_node("Gather", ["sh", "idx"], ["n"], name="gather", axis=0),
             helper.make_node("Unsqueeze", ["n", "ax0"], ["n1"], name="unsq"),
             helper.make_node("Concat", ["n1", "m1"], ["tgt"], name="cat", axis=0),
             helper.make_node("Reshape", ["p", "tgt"], ["f"], name="flat")]
    inits = {"w0": rng.standard_normal((8, 8, 3, 3)), "w1": rng.standard_normal((16, 8, 1, 1)),
             "b1": rng.standard_normal(16), "wc": rng.standard_normal((5, 16)), "bc": rng.standard_normal(5)}
    inits = {k: v.astype(np.float32) for k, v in inits.items()}
    inits.update(idx=np.array(index, np.int64), ax0=np.array([0], np.int64), m1=np.array([-1], np.int64))
    out = "f"
    if index == 0:
        nodes.append(helper.make_node("Gemm", ["f", "wc", "bc"], ["y"], name="cls", transB=1))
        out = "y"
    else:
        del inits["wc"], inits["bc"]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", 1, ["N", 8, 5, 5])],
                          [helper.make_tensor_value_info(out, 1, None)],
                          [numpy_helper.from_array(v, k) for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def _ort(model, x):
    import onnxruntime as ort

    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(None, {"x": x})[0]


@pytest.mark.parametrize("shape_of", ["p", "t", "x"])
def test_onnx_dynamic_batch_view_by_size_is_a_flatten(shape_of):
    """Shape(pooled map / conv output / input) -> Gather 0 -> Concat(., -1) -> Reshape: the batch read at run time.
    Before, the Shape made a second reader (of the pool or of the conv: no hoist at all) and the Reshape had no
    inferred shape: the conv stayed on the 1x1 map, unmerged, where the torch front end merges it."""
    m = _dyn_batch_head(shape_of)
    out, ctx, _ = run_passes(m, set())
    ops = [n.op_type for n in out.graph.node]
    assert ops.count("Conv") == 1 and "Reshape" not in ops and ops.count("Gemm") == 1, ops
    assert any(r["kind"] == "pool-hoist" for r in ctx.merges)
    for b in (1, 3):
        x = np.random.default_rng(b).standard_normal((b, 8, 5, 5)).astype(np.float32)
        np.testing.assert_allclose(_ort(out, x), _ort(m, x), rtol=1e-4, atol=1e-5)


def test_onnx_view_by_another_dim_is_no_flatten():
    """Concat(Shape(p)[1], -1): (C, N), not a flatten; the conv still runs on the 1x1 map, the Reshape stays."""
    m = _dyn_batch_head("p", index=1)
    out, ctx, _ = run_passes(m, set())
    assert "Reshape" in [n.op_type for n in out.graph.node]
    x = np.random.default_rng(0).standard_normal((3, 8, 5, 5)).astype(np.float32)
    np.testing.assert_allclose(_ort(out, x), _ort(m, x), rtol=1e-4, atol=1e-5)
