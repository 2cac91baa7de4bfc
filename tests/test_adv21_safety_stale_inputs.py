"""The clean-up of a killed run's temp files never removes an input of this run.

Found by the file-safety review (2026-11-29): an input whose name had the temp-file form
`.NAME.~cp<dead pid>-<6 chars>.tmp` (a killed run's output renamed back by hand, or kept as it was) and lay
in an output's folder was deleted by the stale-temp clean-up: `--scores` of that name failed with "scores file
not found" after deleting it, and a model of that name was loaded, then deleted, and the run said exit 0.
"""
from __future__ import annotations

import json

import numpy as np
import onnx

from test_file_safety import cli, small_model

DEAD = 999_999_999   # above any pid_max: no live process has it


def _workspace(tmp_path):
    onnx.save(small_model(), tmp_path / "m.onnx")
    (tmp_path / "s.json").write_text(json.dumps({"scores": {"block.relu": 0.0, "out_act": 1.0}}))


def test_a_scores_file_with_a_temp_name_is_read_not_removed(tmp_path):
    _workspace(tmp_path)
    scores = tmp_path / f".s.json.~cp{DEAD}-abcdef.tmp"
    scores.write_bytes((tmp_path / "s.json").read_bytes())
    rc, _, err = cli("m.onnx", "--scores", scores.name, "--threshold", "0", "-o", "o.onnx", cwd=tmp_path)
    assert rc == 0, err
    assert scores.read_bytes() == (tmp_path / "s.json").read_bytes()
    assert (tmp_path / "o.onnx").is_file()


def test_a_model_with_a_temp_name_survives_the_run(tmp_path):
    _workspace(tmp_path)
    model = tmp_path / f".m.onnx.~cp{DEAD}-abcdef.tmp"
    model.write_bytes((tmp_path / "m.onnx").read_bytes())
    rc, _, err = cli(model.name, "-o", "o.onnx", cwd=tmp_path)
    assert rc == 0, err
    assert model.read_bytes() == (tmp_path / "m.onnx").read_bytes()


def test_calibration_data_in_a_folder_with_a_temp_name_survives(tmp_path):
    _workspace(tmp_path)
    folder = tmp_path / f".cal.~cp{DEAD}-abcdef.tmpdir"
    folder.mkdir()
    np.savez(folder / "c.npz", x=np.random.default_rng(0).standard_normal((4, 4, 6, 6)).astype(np.float32))
    rc, _, err = cli("m.onnx", "--calib", f"{folder.name}/c.npz", "--method", "tlc", "--threshold", "0",
                     "-o", "o.onnx", cwd=tmp_path)
    assert rc == 0, err
    assert (folder / "c.npz").is_file()


def test_a_real_stale_temp_beside_the_inputs_is_still_removed(tmp_path):
    _workspace(tmp_path)
    stale = tmp_path / f".o.onnx.~cp{DEAD}-abcdef.tmp"
    stale.write_bytes(b"half a model")
    rc, _, err = cli("m.onnx", "--scores", "s.json", "--threshold", "0", "-o", "o.onnx", cwd=tmp_path)
    assert rc == 0, err
    assert not stale.exists() and "removed 1 temp file" in err
