"""The `collapse-passes` script (pyproject [project.scripts]) ends the process as `python -m collapse_passes`.

Seen: the script called `sys.exit(cli.main())`, so after a Ctrl-C during TVM tuning interpreter finalization
collected MetaSchedule's PopenPoolExecutor in one of its own threads and printed "Exception ignored in ...
__del__ ... RuntimeError: cannot join current thread" (a traceback) under "interrupted (SIGINT); ...".
`python -m tvm_integration` did the same (tests/test_adv11_tvm_signals.py, standalone case). Both now leave
through outputs.leave_program (exit hooks, then os._exit), as __main__.py did.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

from conftest import ROOT
from test_file_safety import small_model

try:   # Python 3.11+; on 3.10 (which the README supports) the tomli backport, or skip
    import tomllib
except ModuleNotFoundError:
    tomllib = pytest.importorskip("tomli")

# an object whose finalizer complains, as TVM's pool did: printed only if the interpreter finalizes
_RUN = """
import sys
class Pool:
    def __del__(self):
        sys.stderr.write("FINALIZED\\n")
keep = Pool()
sys.argv[0] = "collapse-passes"
from {module} import {func}
{call}
"""


def _run(tmp_path, module, func, call):
    onnx.save(small_model(), tmp_path / "m.onnx")
    return subprocess.run([sys.executable, "-c", _RUN.format(module=module, func=func, call=call), "m.onnx",
                           "--collapse", "block.relu", "-o", "o.onnx"], cwd=tmp_path, capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": ROOT}, timeout=120)


def test_the_script_entry_leaves_without_interpreter_finalization(tmp_path):
    entry = tomllib.loads(Path(ROOT, "pyproject.toml").read_text())["project"]["scripts"]["collapse-passes"]
    module, func = entry.split(":")
    p = _run(tmp_path, module, func, f"{func}()")
    assert p.returncode == 0, p.stderr
    assert "FINALIZED" not in p.stderr, p.stderr
    assert (tmp_path / "o.onnx").is_file()


def test_the_script_entry_keeps_the_exit_code(tmp_path):
    entry = tomllib.loads(Path(ROOT, "pyproject.toml").read_text())["project"]["scripts"]["collapse-passes"]
    module, func = entry.split(":")
    onnx.save(small_model(), tmp_path / "m.onnx")
    p = subprocess.run([sys.executable, "-c", f"from {module} import {func}; {func}()", "m.onnx", "--collapse",
                        "no.such.key", "-o", "o.onnx"], cwd=tmp_path, capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": ROOT}, timeout=120)
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert not (tmp_path / "o.onnx").exists()
