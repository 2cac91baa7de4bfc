"""A pool-hoist record counts the batch as the report's totals do, also when the batch is an expression
(`4*N`: patches folded into the batch by the dynamo exporter): it read such a dim as 1, so the records' savings
were a quarter of before.macs - after.macs (docs/architecture.md "The report's MACs")."""
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import collapse_passes as cp


def _model(batch):
    rng = np.random.default_rng(0)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 8, 6, 6])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n)
             for n, s in (("W1", (16, 8, 3, 3)), ("W2", (32, 16, 1, 1)), ("B2", (32,)))]
    nodes = [helper.make_node("Conv", ["x", "W1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "W2", "B2"], ["c2"], name="conv2"),
             helper.make_node("GlobalAveragePool", ["c2"], ["p"], name="pool"),
             helper.make_node("Flatten", ["p"], ["y"], name="flat")]
    m = helper.make_model(helper.make_graph(nodes, "g", [x], [y], inits), opset_imports=[helper.make_opsetid("", 17)])
    return onnx.shape_inference.infer_shapes(m)


def test_pool_hoist_record_counts_an_expression_batch_as_the_totals_do():
    for batch, n in (("4*N", 4), ("N", 1), (3, 3)):
        r = cp.collapse(_model(batch)).report
        (rec,) = [m for m in r["merges"] if m["kind"] == "pool-hoist"]
        assert rec["macs_before"] == 32 * 16 * 36 * n and rec["macs_after"] == 32 * 16 * n, (batch, rec)
        assert sum(m["macs_before"] - m["macs_after"] for m in r["merges"]) == r["before"]["macs"] - r["after"]["macs"]
