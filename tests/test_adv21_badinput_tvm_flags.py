"""The TVM flags' bad input is one line with a way out, alike in both CLIs (collapse_passes --target and
python -m tvm_integration).

Found by the bad-input attack (2026-11-29): `--tune-dir ""` silently meant the default tuning folder (`--export ""`
was refused), `--target '{'` said only that the JSON does not parse, and python -m tvm_integration took any
--tvm-repeat above 1 (10**8 timed for hours) where the core CLI caps it at 10000.
"""
from __future__ import annotations

import os

import onnx
import pytest

from test_file_safety import cli, small_model

pytest.importorskip("tvm")


@pytest.fixture(autouse=True)
def _no_build(monkeypatch):
    """Every case is refused before TVM builds anything: a regression fails here at once, not after a build (or
    10**8 timed runs)."""
    import tvm_integration.compile as tc

    def refuse(*args, **kwargs):
        raise AssertionError("TVM build reached: the bad flag was not refused first")

    monkeypatch.setattr(tc, "build", refuse)
    monkeypatch.setattr(tc, "import_onnx", refuse)


def _tvm_main(*args, cwd):
    from tvm_integration.__main__ import main

    old = os.getcwd()
    os.chdir(cwd)
    try:
        return main([str(a) for a in args])
    finally:
        os.chdir(old)


def test_empty_tune_dir_is_refused_by_the_core_cli(tmp_path):
    onnx.save(small_model(), tmp_path / "m.onnx")
    rc, _, err = cli("m.onnx", "--target", "cpu", "--tune-dir", "", "-o", "o.onnx", cwd=tmp_path)
    assert rc == 2 and err.count("\n") == 1 and "--tune-dir: empty path; give a path" in err, err
    assert sorted(os.listdir(tmp_path)) == ["m.onnx"]


def test_empty_tune_dir_is_refused_by_the_tvm_cli(tmp_path, capsys):
    onnx.save(small_model(), tmp_path / "m.onnx")
    assert _tvm_main("m.onnx", "--target", "cpu", "--tune-dir", "", cwd=tmp_path) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--tune-dir: empty path" in err, err
    assert sorted(os.listdir(tmp_path)) == ["m.onnx"]


@pytest.mark.parametrize("target", ["{", "[1, 2", '{"kind": "llvm"'])
def test_malformed_json_target_names_a_way_out(tmp_path, capsys, target):
    onnx.save(small_model(), tmp_path / "m.onnx")
    rc, _, err = cli("m.onnx", "--target", target, "-o", "o.onnx", cwd=tmp_path)
    if target.startswith("{"):
        assert rc == 2 and err.count("\n") == 1 and "does not parse" in err and "give a JSON object" in err, err
        assert _tvm_main("m.onnx", "--target", target, cwd=tmp_path) == 2
        assert "give a JSON object" in capsys.readouterr().err
    else:   # not JSON-looking: the list of valid names is the way out
        assert rc == 2 and "valid names" in err, err
    assert sorted(os.listdir(tmp_path)) == ["m.onnx"]


@pytest.mark.parametrize("repeat", ["10001", "100000000"])
def test_tvm_cli_caps_tvm_repeat_as_the_core_cli(tmp_path, capsys, repeat):
    from collapse_passes.cli import MAX_CHECK

    onnx.save(small_model(), tmp_path / "m.onnx")
    rc, _, err = cli("m.onnx", "--target", "cpu", "--tvm-repeat", repeat, "-o", "o.onnx", cwd=tmp_path)
    assert rc == 2 and f"--tvm-repeat must be in [1, {MAX_CHECK}], got {repeat}" in err, err
    assert _tvm_main("m.onnx", "--target", "cpu", "--tvm-repeat", repeat, cwd=tmp_path) == 2
    tvm_err = capsys.readouterr().err
    assert tvm_err.count("\n") == 1 and f"--tvm-repeat must be in [1, {MAX_CHECK}], got {repeat}" in tvm_err, tvm_err
    assert sorted(os.listdir(tmp_path)) == ["m.onnx"]


def test_tvm_cli_refuses_an_input_fixed_at_zero(tmp_path, capsys):
    """A model fixed at [0, 3]: TVM and onnxruntime "agreed" on zero elements (max abs 0, ok)."""
    from onnx import helper

    from conftest import make_model, rnd, vinfo

    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["y"])]
    onnx.save(make_model(nodes, [vinfo("x", [0, 3])], [vinfo("y", [0, 4])], {"w": rnd(3, 4)}), tmp_path / "m.onnx")
    assert _tvm_main("m.onnx", "--target", "cpu", cwd=tmp_path) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'x' has shape (0, 3), no elements" in err, err
    assert sorted(os.listdir(tmp_path)) == ["m.onnx"]
