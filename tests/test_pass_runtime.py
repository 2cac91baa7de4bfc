"""Parse once, infer shapes once: the shortcuts of one run give what the long way gave."""
from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest

from collapse_passes.onnx.analysis import model_stats
from collapse_passes.onnx.shapes import inferred_types, with_shapes


def _full(model):
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    return gs.import_onnx(inferred)


def _shapes(graph):
    return {n: (str(t.dtype), None if t.shape is None else list(t.shape))
            for n, t in graph.tensors().items() if isinstance(t, gs.Variable)}


@pytest.mark.parametrize("name,dynamo", [("resnet18", False), ("mobilenet_v2", True), ("swin_t", True)])
def test_light_shape_inference_equals_full_inference(exported, name, dynamo):
    model = onnx.load(exported(name, dynamo))
    assert _shapes(with_shapes(model)) == _shapes(_full(model))
    assert inferred_types(model)   # reached the intermediate tensors


@pytest.mark.slow
def test_model_stats_from_the_passes_graph_equals_a_fresh_inference(exported):
    import collapse_passes as cp

    path = exported("mobilenet_v2", True)
    keys = [r["key"] for r in cp.list_keys(path)]
    res = cp.collapse(path, collapse=keys[::2], check=1)
    fresh = model_stats(res.model).as_dict()
    assert res.report["after"] == fresh
    assert fresh["activations"] == len(keys) - len(keys[::2])


@pytest.mark.slow
def test_nothing_requested_verifies_against_the_input_itself(exported):
    import collapse_passes as cp
    from collapse_passes.onnx.driver import requested_semantics

    model = onnx.load(exported("resnet18", False))
    assert requested_semantics(model, set()) is model
    assert requested_semantics(model, {"x"}) is not model
    res = cp.collapse(model, check=1)
    assert res.requested is res.original and res.passed
    assert res.report["verification"]["against_requested"] == res.report["verification"]["against_original"]


def test_cleanup_infers_again_only_after_a_change(exported):
    from collapse_passes.onnx.context import OnnxContext
    from collapse_passes.onnx.graph import to_graph
    from collapse_passes.onnx.passes import cleanup as cl

    calls = []
    real = cl.infer_shapes

    def counting(g):
        calls.append(1)
        return real(g)

    cl.infer_shapes = counting
    try:
        ctx = OnnxContext(graph=to_graph(onnx.load(exported("resnet18", False))))
        cl.Cleanup()(ctx)
        cl.Cleanup()(ctx)
        assert len(calls) == 1
        conv = next(n for n in ctx.graph.nodes if n.op == "Conv")
        w = conv.inputs[1]
        conv.inputs[1] = gs.Constant(w.name + "_half", np.ascontiguousarray(w.values[: w.shape[0] // 2]))
        cl.Cleanup()(ctx)   # a weight of another shape: shapes must be inferred again
        assert len(calls) == 2
        assert ctx.graph.tensors()[conv.outputs[0].name].shape[1] == w.shape[0] // 2
    finally:
        cl.infer_shapes = real


@pytest.mark.parametrize("name,dynamo", [("resnet18", False), ("mobilenet_v2", True)])
def test_model_written_in_pieces_reads_back_as_the_same_model(exported, tmp_path, name, dynamo):
    """The output is written tensor by tensor (onnx/graph.serialized_pieces): byte-for-byte another
    layout, but protobuf merges the pieces into exactly the model, and onnxruntime runs it the same."""
    from collapse_passes.core.runtime import outputs, random_inputs
    from collapse_passes.onnx.graph import save_model_atomic, serialized_pieces

    model = onnx.load(exported(name, dynamo))
    pieces = list(serialized_pieces(model))
    assert len(pieces) == 2 * len(model.graph.initializer) + 1 and max(map(len, pieces)) < model.ByteSize()
    # a header and the tensor's own bytes: together the wire form of ModelProto(graph=GraphProto(initializer=[t]))
    for k, t in enumerate(model.graph.initializer):
        piece = onnx.ModelProto()
        piece.graph.initializer.append(t)
        assert pieces[1 + 2 * k] + pieces[2 + 2 * k] == piece.SerializeToString()
    back = onnx.ModelProto()
    back.ParseFromString(b"".join(pieces))
    assert back == model
    out = save_model_atomic(model, tmp_path / "m.onnx")
    assert onnx.load(str(out)) == model
    feed = random_inputs(model, 1)[0]
    for a, b in zip(outputs(str(out), feed), outputs(model, feed)):
        np.testing.assert_array_equal(a, b)
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]   # no temp file left


def test_session_with_weights_in_memory_runs_like_one_from_the_file(exported):
    """core/runtime.session hands large initializers to onnxruntime as in-memory external data:
    same outputs as a session that reads the file, and the caller's proto is left as it was."""
    from collapse_passes.core.runtime import _weights_apart, outputs, random_inputs, session

    path = exported("resnet18", False)
    model = onnx.load(path)
    before = model.SerializeToString()
    light, names, values = _weights_apart(model)
    assert names and light.ByteSize() < model.ByteSize() // 10   # the weights really went apart
    feed = random_inputs(model, 1)[0]
    for a, b in zip(outputs(session(model), feed), outputs(str(path), feed)):
        np.testing.assert_array_equal(a, b)
    assert model.SerializeToString() == before


def test_truncated_weights_are_one_line_not_a_traceback(tmp_path, capsys):
    """The checker runs on the weight-less structure, so weight sizes are checked apart: a truncated
    large initializer is refused at load with its name, exit 2, nothing written."""
    from onnx import TensorProto, helper, numpy_helper

    from collapse_passes.cli import main

    w = numpy_helper.from_array(np.ones((64, 3, 3, 3), np.float32), "w")
    w.raw_data = w.raw_data[:-8]
    g = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
                           helper.make_node("Relu", ["c"], ["y"], name="relu")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64, 6, 6])], [w])
    src = tmp_path / "bad.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(src))
    rc = main([str(src), "-o", str(tmp_path / "out.onnx"), "--collapse", "relu"])
    err = capsys.readouterr().err
    assert rc == 2 and "initializer 'w' holds 6904 bytes" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.onnx"]


@pytest.mark.parametrize("name,dynamo", [("resnet18", False), ("swin_t", True)])
def test_cleanup_shapes_from_the_weightless_export_equal_full_inference(exported, name, dynamo):
    """Cleanup infers shapes on a weight-less export of its graph (shapes.light_export): the same shapes
    as inferring on the full model, and the graph's constants are neither replaced nor loaded."""
    from onnx_graphsurgeon.ir.tensor import LazyValues

    from collapse_passes.onnx.passes.cleanup import infer_shapes

    model = onnx.load(exported(name, dynamo))
    graph = gs.import_onnx(model)
    consts = {n: t for n, t in graph.tensors().items() if isinstance(t, gs.Constant)}
    assert infer_shapes(graph)
    assert _shapes(graph) == _shapes(_full(model))
    after = {n: t for n, t in graph.tensors().items() if isinstance(t, gs.Constant)}
    assert after.keys() == consts.keys() and all(after[n] is consts[n] for n in consts)
    big = [t for t in after.values() if int(np.prod(t.shape)) > 1024]
    assert big and all(isinstance(t._values, LazyValues) for t in big)   # not loaded by the export


def test_auto_session_optimizes_small_models_only_and_falls_back(exported, monkeypatch):
    """Verification's sessions are "auto": onnxruntime's graph optimizations (NCHWc: depthwise convs
    about 2x faster) when the weights are small, the graph as written when they are large (the
    re-laid-out copies would cost more memory than the run saves), and as written when onnxruntime
    cannot build the optimized session. Outputs agree either way."""
    import onnxruntime as ort

    from collapse_passes.core import runtime

    model = onnx.load(exported("mobilenet_v2", False))
    feed = runtime.random_inputs(model, 1)[0]
    level = lambda s: s.get_session_options().graph_optimization_level  # noqa: E731

    small = runtime.session(model, optimize="auto")
    assert level(small) == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    monkeypatch.setattr(runtime, "AUTO_OPTIMIZE_BYTES", runtime._weight_bytes(model) - 1)
    large = runtime.session(model, optimize="auto")
    assert level(large) == ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    for a, b in zip(runtime.outputs(small, feed), runtime.outputs(large, feed)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)

    monkeypatch.setattr(runtime, "AUTO_OPTIMIZE_BYTES", 1 << 40)
    real = runtime._session

    def optimizer_fails(m, optimize, *a, **k):
        if optimize:
            raise runtime.CollapseError("onnxruntime cannot load the model (optimizer bug)")
        return real(m, optimize, *a, **k)

    monkeypatch.setattr(runtime, "_session", optimizer_fails)
    assert level(runtime.session(model, optimize="auto")) == ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    assert runtime._mmap_fixed is False   # a library caller's malloc is left alone (OWN_PROCESS unset)


def test_input_model_the_optimized_session_cannot_run_is_run_as_written(exported, monkeypatch):
    """A run failure in the optimized session (an onnxruntime optimizer defect) is not blamed on the
    user's model: the graph as written decides."""
    from collapse_passes import verify
    from collapse_passes.core import runtime

    model = onnx.load(exported("mobilenet_v2", False))
    feeds = runtime.random_inputs(model, 2)
    real = runtime.session

    class Broken:
        def __init__(self, sess):
            self.sess = sess

        def get_session_options(self):
            return self.sess.get_session_options()

        def get_outputs(self):
            return self.sess.get_outputs()

        def run(self, *a):
            raise RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : fused kernel failed")

    def session(m, optimize=False, **k):
        s = real(m, optimize=optimize, **k)
        return Broken(s) if optimize == "auto" else s

    monkeypatch.setattr(verify, "session", session)
    outs, names = verify.run_input_model(model, feeds, "2 random inputs")
    want, _ = runtime.run(model, feeds)
    for a, b in zip(outs, want):
        np.testing.assert_allclose(a[0], b[0], rtol=1e-4, atol=1e-5)


def _conv_gather_model(weights_listed_as_inputs: bool = False):
    """x -> Conv(w: 6.9 KB float) -> Flatten -> Gather(idx: 4.8 KB int64): one weight to feed, one integer
    initializer that stays an initializer."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((64, 3, 3, 3)).astype(np.float32), "w")
    idx = numpy_helper.from_array(rng.integers(0, 64 * 36, 600).astype(np.int64), "idx")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             helper.make_node("Flatten", ["c"], ["f"], name="flat"),
             helper.make_node("Gather", ["f", "idx"], ["y"], name="gather", axis=1)]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])]
    if weights_listed_as_inputs:   # IR < 4 style: every initializer is a graph input too
        inputs += [helper.make_tensor_value_info("w", TensorProto.FLOAT, [64, 3, 3, 3]),
                   helper.make_tensor_value_info("idx", TensorProto.INT64, [600])]
    g = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 600])],
                          [w, idx])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("listed", [False, True])
def test_session_with_fed_weights_runs_like_one_with_initializers(listed):
    """session(feed_weights=True) (verification's sessions): the float weights are graph inputs fed
    from our arrays with every run, and onnxruntime computes on those arrays themselves (no second copy
    of the weights: zeroing them changes the output); integer initializers stay initializers; the
    caller sees the model's own inputs and its proto is left as it was."""
    import ctypes

    from collapse_passes.core.runtime import outputs, random_inputs, session

    model = _conv_gather_model(listed)
    before = model.SerializeToString()
    feed = random_inputs(session(model), 1)[0]
    assert list(feed) == ["x"]
    sess = session(model, feed_weights=True)
    assert [i.name for i in sess.get_inputs()] == ["x"]
    assert set(sess._weights) == {"w"}
    ref = outputs(session(model), feed)
    np.testing.assert_allclose(outputs(sess, feed)[0], ref[0], rtol=1e-6, atol=1e-6)
    assert np.abs(ref[0]).max() > 0.1
    assert model.SerializeToString() == before
    w = sess._weights["w"]
    ctypes.memset(w.ctypes.data, 0, w.nbytes)
    np.testing.assert_array_equal(outputs(sess, feed)[0], 0.0)


def test_fed_weights_session_of_an_unloadable_model_is_one_line(tmp_path):
    """A model onnxruntime refuses is refused as before when its weights would be fed (CollapseError
    for the user's model, RuntimeError for one of ours)."""
    from collapse_passes.core.runtime import session
    from collapse_passes.errors import CollapseError

    model = _conv_gather_model()
    model.graph.node[0].op_type = "NoSuchOp"
    with pytest.raises(CollapseError, match="cannot load the model"):
        session(model, feed_weights=True)
    with pytest.raises(RuntimeError, match="cannot load the transformed model"):
        session(model, feed_weights=True, ours=True)


def test_release_free_memory_only_in_our_own_process(monkeypatch):
    """release_free_memory calls glibc's malloc_trim under `python -m collapse_passes` only."""
    import ctypes

    from collapse_passes.core import runtime

    calls = []

    class FakeLibc:
        def malloc_trim(self, pad):
            calls.append(pad)
            return 1

    monkeypatch.setattr(ctypes, "CDLL", lambda *a, **k: FakeLibc())
    monkeypatch.setattr(runtime, "OWN_PROCESS", False)
    runtime.release_free_memory()
    assert calls == []
    monkeypatch.setattr(runtime, "OWN_PROCESS", True)
    runtime.release_free_memory()
    assert calls == [0]


@pytest.mark.parametrize("optimize", [False, True])
def test_benchmark_ort_floor_child_runs_the_input_model(tmp_path, optimize):
    """benchmarks/pass_runtime.py's "ORT floor" rows: a bare onnxruntime child on the input model, listed
    beside the tools for every case."""
    import subprocess
    import sys
    from pathlib import Path

    from test_cli import small_model

    bench = Path(__file__).resolve().parent.parent / "benchmarks" / "pass_runtime.py"
    path = tmp_path / "m.onnx"
    onnx.save(small_model(), str(path))
    cmd = [sys.executable, str(bench), "--ort-floor", str(path)] + (["--ort-optimize"] if optimize else [])
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    assert subprocess.run(cmd[:2] + ["--ort-floor", str(bad)], capture_output=True, timeout=120).returncode != 0
