"""`CollapseResult.save()` of a result written with external data lands the model and its data file together.

Found by the file-safety review (2026-11-29): save_model_atomic renamed `<out>.data` into place before it
wrote the model file; a ^C (or a full disk) during the model's write left the earlier `<out>` reading the
new data file at its old offsets (wrong weights, no error), while the call promised an atomic write.
The 2 GiB limit that sends a result to a data file is lowered here, so a small model takes that path.
"""
from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from onnx import helper

from collapse_passes import collapse
from collapse_passes.onnx import graph
from conftest import make_model, rnd, vinfo

C = 16   # 16x16x3x3 float weights: over EXTERNAL_MIN_BYTES, so they go to the data file


def _model():
    inits = {"w1": rnd(C, C, 1, 1, seed=1), "b1": rnd(C, seed=2), "w2": rnd(C, C, 3, 3, seed=3)}
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["h"], name="/block/conv1/Conv", kernel_shape=[1, 1]),
             helper.make_node("Relu", ["h"], ["r"], name="/block/relu/Relu"),
             helper.make_node("Conv", ["r", "w2"], ["z"], name="/block/conv2/Conv", kernel_shape=[3, 3], pads=[1] * 4),
             helper.make_node("Relu", ["z"], ["y"], name="/out_act/Relu")]
    return make_model(nodes, [vinfo("x", [1, C, 6, 6])], [vinfo("y", [1, C, 6, 6])], inits)


@pytest.fixture
def earlier_output(tmp_path, monkeypatch):
    """An earlier save() of the uncollapsed model to o.onnx + o.onnx.data, and the bytes of both."""
    monkeypatch.setattr(graph, "EMBED_LIMIT", 0)
    onnx.save(_model(), tmp_path / "m.onnx")
    collapse(tmp_path / "m.onnx").save(tmp_path / "o.onnx")
    files = {n: (tmp_path / n).read_bytes() for n in ("o.onnx", "o.onnx.data")}
    assert len(files["o.onnx.data"]) > 0
    return files


def _interrupted_pieces(real):
    def pieces(model, location):
        structure, chunks = real(model, location)

        def broken():
            yield next(iter(structure))
            raise KeyboardInterrupt   # ^C while the model file is written
        return broken(), chunks
    return pieces


def test_an_interrupted_save_leaves_the_earlier_model_and_data_as_they_were(tmp_path, monkeypatch, earlier_output):
    result = collapse(tmp_path / "m.onnx", collapse=["block.relu"])   # other weights than the earlier output
    monkeypatch.setattr(graph, "external_data_pieces", _interrupted_pieces(graph.external_data_pieces))
    with pytest.raises(KeyboardInterrupt):
        result.save(tmp_path / "o.onnx")
    assert {n: (tmp_path / n).read_bytes() for n in earlier_output} == earlier_output
    assert sorted(os.listdir(tmp_path)) == ["m.onnx", "o.onnx", "o.onnx.data"]   # no temp file left


def test_a_completed_save_replaces_both_and_loads(tmp_path, earlier_output):
    result = collapse(tmp_path / "m.onnx", collapse=["block.relu"])
    result.save(tmp_path / "o.onnx")
    assert (tmp_path / "o.onnx.data").read_bytes() != earlier_output["o.onnx.data"]
    import onnxruntime as ort

    x = np.random.default_rng(0).standard_normal((1, C, 6, 6)).astype(np.float32)
    got = ort.InferenceSession(str(tmp_path / "o.onnx")).run(None, {"x": x})[0]
    want = ort.InferenceSession(result.model.SerializeToString()).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
