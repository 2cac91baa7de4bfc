"""Temp files of outputs whose names hold a newline.

Seen: the temp-name pattern used '.', which skips '\\n': the temp file of `-o $'a\\nb.onnx'` left by a killed
run was never recognised, so never removed by the next run (docs/file_safety.md promises it is), and the
tests' leftover check (outputs.is_temp_name) could not see it either. `$` also matched before a final
newline, so a user's file `.o.onnx.~cp1-abcdef.tmp\\n` counted as ours.
"""
from __future__ import annotations

import onnx

from collapse_passes import outputs
from test_file_safety import _dead_pid, cli, small_model


def test_a_killed_runs_temp_file_with_a_newline_in_its_name_is_removed(tmp_path):
    onnx.save(small_model(), tmp_path / "m.onnx")
    dead = _dead_pid()
    stale = tmp_path / f".a\nb.onnx.~cp{dead}-abc123.tmp"
    lookalike = tmp_path / f".o.onnx.~cp{dead}-abc123.tmp\n"   # not a name this tool makes
    stale.write_text("half a model")
    lookalike.write_text("the user's")
    rc, _, err = cli("m.onnx", "--collapse", "block.relu", "-o", "a\nb.onnx", cwd=tmp_path)
    assert rc == 0, err
    assert "removed 1 temp file(s)" in err, err
    assert not stale.exists() and lookalike.exists() and (tmp_path / "a\nb.onnx").is_file()


def test_temp_names_with_a_newline_are_recognised():
    name = outputs.temp_path("dir/a\nb.onnx").name
    assert outputs.is_temp_name(name)
    assert not outputs.is_temp_name(name + "\n")
