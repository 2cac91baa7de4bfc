"""core/runtime.random_in_range (the random inputs --calib adds in the data's range) took an integer input's range
through float: int64's max rounds to 2 ** 63, one past numpy's bound, and hashed ids spanning int64 (a Mod before
the embedding) ended the run in a traceback ("high is out of bounds for int64"). Integers are now drawn exactly, in
the input's own dtype."""
import numpy as np
import onnx
from onnx import TensorProto as T, helper as h, numpy_helper as nh

import collapse_passes as cp
from collapse_passes.core.runtime import random_in_range


def _hashed_ids_model(dtype=T.INT64) -> onnx.ModelProto:
    r = np.random.default_rng(0)
    inits = [nh.from_array(r.standard_normal((50, 4)).astype(np.float32), "table"),
             nh.from_array(r.standard_normal((4, 4)).astype(np.float32), "w"),
             nh.from_array(np.array(50, onnx.helper.tensor_dtype_to_np_dtype(dtype)), "k")]
    nodes = [h.make_node("Mod", ["ids", "k"], ["i2"]), h.make_node("Gather", ["table", "i2"], ["e"]),
             h.make_node("MatMul", ["e", "w"], ["m"]), h.make_node("Relu", ["m"], ["r"]),
             h.make_node("MatMul", ["r", "w"], ["y"])]
    g = h.make_graph(nodes, "hash", [h.make_tensor_value_info("ids", dtype, ["b", 6])],
                     [h.make_tensor_value_info("y", T.FLOAT, ["b", 6, 4])], inits)
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def test_int64_extremes_are_drawn_in_range():
    ids = np.arange(24, dtype=np.int64).reshape(4, 6)
    ids[0, 0], ids[0, 1] = np.iinfo(np.int64).max, np.iinfo(np.int64).min
    feeds = random_in_range(_hashed_ids_model(), [{"ids": ids}], 4, seed=0)
    assert len(feeds) == 4 and all(f["ids"].dtype == np.int64 and f["ids"].shape == (1, 6) for f in feeds)


def test_uint64_beyond_int64_is_drawn_in_range():
    ids = np.full((2, 6), 7, dtype=np.uint64)
    ids[0, 0] = np.iinfo(np.uint64).max
    out = random_in_range(_hashed_ids_model(T.UINT64), [{"ids": ids}], 3, seed=0)
    assert all(f["ids"].dtype == np.uint64 and int(f["ids"].min()) >= 7 for f in out)


def test_collapse_with_calib_of_hashed_ids(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(_hashed_ids_model(), path)
    ids = np.random.default_rng(1).integers(0, 2 ** 62, (4, 6))
    ids[0, 0] = np.iinfo(np.int64).max
    np.savez(tmp_path / "calib.npz", ids=ids)
    res = cp.collapse(str(path), collapse=["relu()"], calib=str(tmp_path / "calib.npz"))
    assert res.passed
