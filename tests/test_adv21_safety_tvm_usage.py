"""`python -m tvm_integration` answers a usage error in one line, like the core CLI and every other bad input.

Found by the file-safety review (2026-11-29): the standalone entry used plain argparse, whose errors print
the 8-line usage block before the error (`--tune-trials x`, an unknown flag, no model, no --target).
"""
from __future__ import annotations

import pytest

from tvm_integration import __main__ as standalone


@pytest.mark.parametrize("argv, says", [
    ([], "required: model"),
    (["m.onnx"], "--target is required"),
    (["m.onnx", "--target", "cpu", "--tune-trials", "x"], "invalid int value"),
    (["m.onnx", "--target", "cpu", "--bogus"], "unrecognized arguments: --bogus"),
    (["m.onnx", "--target", "cpu", "--tvm-layout", "nchw4"], "invalid choice"),
])
def test_usage_errors_are_one_line_exit_2(tmp_path, monkeypatch, capsys, argv, says):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        standalone.main(argv)
    assert exc.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and captured.err.startswith("error: ") and says in captured.err, captured.err
    assert list(tmp_path.iterdir()) == []
