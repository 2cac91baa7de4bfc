"""A stdout that cannot take the run's messages changes neither the files written nor the exit code.

Found by the file-safety review (2026-11-29): `python -m collapse_passes ... | head -c 10` ended with exit 1
("verification failed") and no word, nothing written (rich's broken-pipe handler raises SystemExit(1) in the
middle of the run); `> /dev/full` said "error: No space left on device; nothing written" (exit 2, as if the
outputs' disk were full); under PYTHONIOENCODING=ascii a non-ASCII `-o` was a UnicodeEncodeError traceback
(exit 3) after the model had been written and before the report was. stdout only informs: now the run goes
on and writes everything; an error other than a closed pipe is one note on stderr.
"""
from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import subprocess
import sys

import onnx
import pytest

from collapse_passes.cli import main
from test_file_safety import ROOT, small_model


class _FailingStdout(io.TextIOBase):
    """A text stream whose writes fail like a closed pipe or a full device. Its fileno is /dev/null: rich's own
    broken-pipe handler dup2()s onto it."""

    def __init__(self, err: int):
        self.err = err
        self.null = os.open(os.devnull, os.O_WRONLY)

    def writable(self):
        return True

    def write(self, text):
        raise (BrokenPipeError if self.err == errno.EPIPE else OSError)(self.err, os.strerror(self.err))

    def fileno(self):
        return self.null

    def close(self):
        os.close(self.null)
        super().close()


@pytest.fixture
def ws(tmp_path, monkeypatch):
    onnx.save(small_model(), tmp_path / "m.onnx")
    (tmp_path / "s.json").write_text(json.dumps({"scores": {"block.relu": 0.0, "out_act": 1.0}}))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _run(stdout, *argv, entry=main):
    err = io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(err):
        try:
            rc = entry(list(argv))
        except SystemExit as e:
            rc = e.code
    return rc, err.getvalue()


RUN = ("m.onnx", "--scores", "s.json", "--threshold", "0", "--report", "r.json")


@pytest.mark.parametrize("code", [errno.EPIPE, errno.ENOSPC])
@pytest.mark.parametrize("quiet", [False, True])
def test_a_stdout_that_fails_changes_no_file_and_no_exit_code(ws, code, quiet):
    out = _FailingStdout(code)
    try:
        rc, err = _run(out, *RUN, "-o", "o.onnx", *(["-q"] if quiet else []))
    finally:
        out.close()
    assert rc == 0, err
    assert (ws / "o.onnx").is_file() and json.loads((ws / "r.json").read_text())["output"] == "o.onnx"
    assert "Traceback" not in err and "error" not in err
    if code == errno.EPIPE:   # the reader went away (`| head`): nothing to say
        assert err == ""
    else:
        assert err.count("\n") == 1 and "stdout" in err and "No space left" in err


def test_a_name_the_stdout_encoding_lacks_is_written_escaped(ws):
    raw = io.BytesIO()
    out = io.TextIOWrapper(raw, encoding="ascii")
    rc, err = _run(out, *RUN, "-o", "\u00fc.onnx")
    out.flush()
    assert rc == 0, err
    assert (ws / "\u00fc.onnx").is_file() and (ws / "r.json").is_file()
    assert b"\\xfc.onnx" in raw.getvalue()


def test_a_closed_pipe_on_the_command_line(ws):
    """The process as a user runs it: `python -m collapse_passes ... | head -c 1`."""
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.Popen([sys.executable, "-m", "collapse_passes", *RUN, "-o", "o.onnx"], cwd=ws, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.read(1)
    proc.stdout.close()   # the reader is gone before the report table and the "wrote" lines
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=300) == 0, err
    assert (ws / "o.onnx").is_file() and (ws / "r.json").is_file()
    assert err == ""


def test_standalone_tvm_json_into_a_closed_pipe_is_not_a_traceback(ws, monkeypatch):
    from tvm_integration import __main__ as standalone

    monkeypatch.setattr(standalone, "check_args", lambda *a, **k: None)
    monkeypatch.setattr(standalone, "run_from_args", lambda *a, **k: {"latency": {"collapsed": 1.0}})
    out = _FailingStdout(errno.EPIPE)
    try:
        rc, err = _run(out, "m.onnx", "--target", "cpu", "--json", entry=standalone.main)
    finally:
        out.close()
    assert rc == 0 and err == "", err
