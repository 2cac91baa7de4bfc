"""A rerun into the same -o replaces the empty data file its earlier run wrote; another model's data stays safe.

Found by the file-safety review (2026-11-29): a model read with external data is written with a data file
`<out>.data`, but only weights of at least EXTERNAL_MIN_BYTES go into it; for a small model the file was
empty and the model referred to nothing in it, so the second identical run was refused: "o.onnx.data exists
and is not the data file of -o o.onnx (another model's weights?)".
"""
from __future__ import annotations

import os

import onnx

from test_file_safety import cli, small_model


def _external(tmp_path):
    onnx.save(small_model(), tmp_path / "e.onnx", save_as_external_data=True, all_tensors_to_one_file=True,
              location="e.bin", size_threshold=0)


def test_the_same_run_twice_into_one_output(tmp_path):
    _external(tmp_path)
    for _ in range(2):
        rc, _, err = cli("e.onnx", "-o", "o.onnx", cwd=tmp_path)
        assert rc == 0, err
    assert sorted(os.listdir(tmp_path)) == ["e.bin", "e.onnx", "o.onnx", "o.onnx.data"]
    onnx.checker.check_model(onnx.load(str(tmp_path / "o.onnx")))


def test_a_data_file_with_content_that_the_model_does_not_name_is_still_kept(tmp_path):
    _external(tmp_path)
    rc, _, err = cli("e.onnx", "-o", "o.onnx", cwd=tmp_path)
    assert rc == 0, err
    (tmp_path / "o.onnx.data").write_bytes(b"another model's weights")
    rc, _, err = cli("e.onnx", "-o", "o.onnx", cwd=tmp_path)
    assert rc == 2 and "another model's weights" in err, err
    assert (tmp_path / "o.onnx.data").read_bytes() == b"another model's weights"
