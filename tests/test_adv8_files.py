"""Adversarial round 8 on the user's files and bad input (docs/file_safety.md): what was found broken.

- `-o o.onnx` from a model with external data writes `o.onnx.data`, a file no flag named: an existing one
  that belonged to another model was overwritten (that model then loaded wrong weights, silently);
- a --report that could not be written (ENOSPC) stopped the run only after the model had landed;
- `--export DIR` replaced an earlier export as a whole, deleting files the user had put into it;
- random check inputs were not bounded by memory: a declared [100000, 100000] input was a traceback
  (exit 3), `collapse(m, check=10**7)` took 14 GB before anything was said;
- the library's numeric settings (check, seed, calib_batches, per_op_overhead, ...) of the wrong type or
  value raised TypeError/ValueError from numpy, or were accepted (calib_batches=0 ran 8 batches).
"""
from __future__ import annotations

import json
import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import collapse_passes as cp
from collapse_passes import outputs
from collapse_passes.errors import CollapseError
from conftest import make_model, rnd, vinfo
from test_file_safety import cli, small_model

C = 16   # weights over 1 KiB, so onnx.save(..., save_as_external_data=True) moves them out


def wide_model():
    inits = {"w1": rnd(C, C, 1, 1, seed=1), "b1": rnd(C, seed=2), "w2": rnd(C, C, 3, 3, seed=3)}
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["h"], name="/block/conv1/Conv", kernel_shape=[1, 1]),
             helper.make_node("Relu", ["h"], ["r"], name="/block/relu/Relu"),
             helper.make_node("Conv", ["r", "w2"], ["y"], name="/block/conv2/Conv", kernel_shape=[3, 3],
                              pads=[1] * 4)]
    return make_model(nodes, [vinfo("x", [1, C, 5, 5])], [vinfo("y", [1, C, 5, 5])], inits)


def save_external(model, path, location):
    onnx.save(model, path, save_as_external_data=True, all_tensors_to_one_file=True, location=location,
              size_threshold=1024)


def one_line(rc, err, *needles):
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in lines[0], lines[0]


def test_the_data_file_of_another_model_is_never_overwritten(tmp_path):
    save_external(wide_model(), tmp_path / "m.onnx", "m.bin")   # (onnx.save moves the proto's weights out)
    save_external(wide_model(), tmp_path / "other.onnx", "o.onnx.data")   # another model's weights in o.onnx.data
    before = (tmp_path / "o.onnx.data").read_bytes()
    rc, _, err = cli("m.onnx", "--collapse", "block.relu", "-o", "o.onnx", cwd=tmp_path)
    one_line(rc, err, "o.onnx.data", "not the data file of -o o.onnx")
    assert (tmp_path / "o.onnx.data").read_bytes() == before and not (tmp_path / "o.onnx").exists()
    # an earlier output's own data file is replaced with it (a rerun), as before
    rc, _, err = cli("m.onnx", "--collapse", "block.relu", "-o", "n.onnx", cwd=tmp_path)
    assert rc == 0, err
    rc, _, err = cli("m.onnx", "-o", "n.onnx", cwd=tmp_path)
    assert rc == 0, err
    assert onnx.load(tmp_path / "n.onnx").graph.node   # loads with its data file


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full to fake a full disk")
def test_a_report_that_cannot_be_written_stops_the_model_too(tmp_path, monkeypatch):
    onnx.save(small_model(), tmp_path / "m.onnx")
    real = outputs.create_temp_file

    def full_disk_for_reports(dest):
        if os.fspath(dest).endswith("r.json"):   # every write to it fails with ENOSPC, like a full disk
            return os.open("/dev/full", os.O_WRONLY), outputs.temp_path(dest)
        return real(dest)

    monkeypatch.setattr(outputs, "create_temp_file", full_disk_for_reports)
    rc, _, err = cli("m.onnx", "--collapse", "block.relu", "-o", "o.onnx", "--report", "r.json", cwd=tmp_path)
    one_line(rc, err, "--report r.json", "nothing written")
    assert sorted(os.listdir(tmp_path)) == ["m.onnx"]   # no model, no temp file


def test_export_into_an_earlier_export_holding_user_files_is_refused(tmp_path):
    from collapse_passes.cli import build_parser, build_plan

    p = build_parser()
    if not hasattr(p, "tvm_flags"):
        pytest.skip("tvm_integration not importable")
    onnx.save(small_model(), tmp_path / "m.onnx")
    exp = tmp_path / "exp"
    (exp / "tuning").mkdir(parents=True)
    for f in (outputs.EXPORT_MARKER, "model.so", "report.json", "tuning/database_workload.json"):
        (exp / f).write_text("")
    old = os.getcwd()
    os.chdir(tmp_path)
    try:
        build_plan(p.parse_args(["m.onnx", "--target", "cpu", "--export", "exp"]))   # the export's own files only
        for extra in ("notes.txt", "tuning/run.log", "deploy/"):
            path = exp / extra
            path.mkdir() if extra.endswith("/") else path.write_text("mine")
            with pytest.raises(CollapseError, match="holds files an export does not write"):
                build_plan(p.parse_args(["m.onnx", "--target", "cpu", "--export", "exp"]))
            path.rmdir() if extra.endswith("/") else path.unlink()
    finally:
        os.chdir(old)
    (exp / "notes.txt").write_text("mine")
    rc, _, err = cli("m.onnx", "--collapse", "block.relu", "--target", "cpu", "--export", "exp", "-o", "o.onnx",
                     cwd=tmp_path)
    one_line(rc, err, "notes.txt", "move them out")
    assert (exp / "notes.txt").read_text() == "mine" and not (tmp_path / "o.onnx").exists()


def huge_input_model():
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="r")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [100000, 100000])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [100000, 100000])])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_check_inputs_that_cannot_fit_in_memory_are_one_line(tmp_path):
    onnx.save(huge_input_model(), tmp_path / "h.onnx")
    rc, _, err = cli("h.onnx", "--collapse", "r", "-o", "o.onnx", cwd=tmp_path)   # 40 GB per input
    one_line(rc, err, "(100000, 100000)", "memory", "--calib")
    assert sorted(os.listdir(tmp_path)) == ["h.onnx"]
    with pytest.raises(CollapseError, match=r"lower --check to at most \d+"):
        cp.collapse(small_model(), collapse="block.relu", check=10**10)   # 576 B each, 5.8 TB in all


@pytest.mark.parametrize("kw, needle", [
    (dict(check="3"), "check must be an integer >= 1, got '3'"),
    (dict(check=None), "check must be an integer"),
    (dict(check=2.5), "check must be an integer"),
    (dict(check=True), "check must be an integer"),
    (dict(seed=-1), "seed must be an integer >= 0"),
    (dict(seed="x"), "seed must be an integer"),
    (dict(calib_batches=0), "calib_batches must be an integer >= 1"),
    (dict(calib_batches="2"), "calib_batches must be an integer"),
    (dict(per_op_overhead=float("nan")), "per_op_overhead must be a finite number >= 0"),
    (dict(per_op_overhead=-1), "per_op_overhead must be a finite number >= 0"),
    (dict(per_op_overhead="x"), "per_op_overhead must be a finite number"),
    (dict(approx_max_error=-1.0, allow_border_approx=True), "approx_max_error must be a finite number"),
    (dict(rtol="1e-4"), "rtol must be a finite number >= 0, got '1e-4'"),
])
def test_library_settings_of_the_wrong_type_or_value_are_collapse_errors(kw, needle):
    with pytest.raises(CollapseError) as info:
        cp.collapse(small_model(), collapse="block.relu", **kw)
    assert needle in str(info.value)


def test_a_config_that_is_not_a_collapse_config_is_named():
    with pytest.raises(CollapseError, match="config must be a collapse_passes.config.CollapseConfig, got dict"):
        cp.collapse(small_model(), config={"collapse": ["block.relu"]})


def test_good_library_settings_still_run():
    res = cp.collapse(small_model(), collapse="block.relu", check=np.int64(2), seed=np.int32(1), rtol=np.float32(1e-4),
                      per_op_overhead=0, calib_batches=None)
    assert res.passed and json.dumps(res.report, default=str)


def test_dash_is_not_taken_as_a_file_name(tmp_path):
    onnx.save(small_model(), tmp_path / "m.onnx")
    for flag in ("-o", "--report"):
        rc, _, err = cli("m.onnx", "--collapse", "block.relu", flag, "-", cwd=tmp_path)
        one_line(rc, err, f"{flag} -", "stdout", "./-")
    assert sorted(os.listdir(tmp_path)) == ["m.onnx"]
    rc, _, err = cli("m.onnx", "--collapse", "block.relu", "-o", "./-", cwd=tmp_path)   # the way out works
    assert rc == 0 and (tmp_path / "-").is_file(), err


def test_a_scores_key_given_twice_with_different_values_is_refused(tmp_path):
    onnx.save(small_model(), tmp_path / "m.onnx")
    (tmp_path / "s.json").write_text('{"scores": {"block.relu": 0.0, "out_act": 1, "block.relu": 0.9}}')
    rc, _, err = cli("m.onnx", "--scores", "s.json", "--threshold", "0.5", "-o", "o.onnx", cwd=tmp_path)
    one_line(rc, err, "'block.relu' appears twice", "keep one")
    (tmp_path / "s.json").write_text('{"scores": {"block.relu": 0.0, "out_act": 1, "block.relu": 0.0}}')
    rc, _, err = cli("m.onnx", "--scores", "s.json", "--threshold", "0.5", "-o", "o.onnx", cwd=tmp_path)
    assert rc == 0, err   # the same value twice says the same thing


def test_save_of_a_result_from_a_model_proto_never_replaces_a_fifo_device_or_folder(tmp_path):
    res = cp.collapse(small_model(), collapse="block.relu")   # a ModelProto: no input file to compare with
    os.mkfifo(tmp_path / "pipe")
    (tmp_path / "folder").mkdir()
    targets = [tmp_path / "pipe", tmp_path / "folder"]
    if os.geteuid() == 0:   # as root the rename replaced even a device node (/dev/null itself)
        os.mknod(tmp_path / "null", 0o644 | 0o020000, os.makedev(1, 3))
        targets.append(tmp_path / "null")
    for t in targets:
        kind = os.lstat(t).st_mode
        with pytest.raises(CollapseError, match="only regular files are written"):
            res.save(t)
        assert os.lstat(t).st_mode == kind
    assert res.save(tmp_path / "ok.onnx").is_file() and sorted(os.listdir(tmp_path)) == sorted(
        ["ok.onnx"] + [t.name for t in targets])
