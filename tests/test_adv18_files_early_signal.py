"""A Ctrl-C / SIGTERM while `python -m collapse_passes` is still importing.

Seen: the package's __init__ imported onnx and numpy (~0.2-0.5 s) before __main__ could install its
handler, and __main__'s handler re-raised KeyboardInterrupt before main() took over: a signal in the
first half second printed a KeyboardInterrupt traceback (exit -2) or died silently (SIGTERM, -15).
Now the package imports lazily, and a signal before main() says it in one line (nothing was written).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import onnx
import pytest

from conftest import ROOT
from test_file_safety import small_model

# signal ourselves the first time `module` is imported, then run `python -m collapse_passes`
_HOOK = """
import os, runpy, signal, sys
class Hook:
    def find_spec(self, name, path=None, target=None):
        if name == {module!r}:
            sys.meta_path.remove(self)
            os.kill(os.getpid(), {sig})
        return None
sys.meta_path.insert(0, Hook())
sys.argv[0] = "collapse_passes"
runpy.run_module("collapse_passes", run_name="__main__", alter_sys=True)
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.parametrize("module", ["numpy", "onnx", "rich"])
def test_a_signal_during_the_imports_is_one_line(tmp_path, sig, module):
    onnx.save(small_model(), tmp_path / "m.onnx")
    p = subprocess.run([sys.executable, "-c", _HOOK.format(module=module, sig=int(sig)), "m.onnx",
                        "--collapse", "block.relu", "-o", "o.onnx"], cwd=tmp_path, capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": ROOT}, timeout=120)
    name = "SIGINT" if sig == signal.SIGINT else "SIGTERM"
    assert p.returncode == 128 + sig, (p.returncode, p.stderr[-2000:])
    assert p.stderr.strip() == f"interrupted ({name}); nothing written", p.stderr[-2000:]
    assert sorted(os.listdir(tmp_path)) == ["m.onnx"]


def test_importing_the_package_imports_no_heavy_library():
    code = "import sys, collapse_passes; print(sorted({'onnx', 'numpy', 'torch', 'onnxruntime'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ROOT},
                         timeout=60).stdout.strip()
    assert out == "[]"


def test_the_public_names_still_load():
    import collapse_passes as cp

    for name in cp.__all__:
        assert getattr(cp, name) is not None
    assert cp.api.collapse is cp.collapse
    with pytest.raises(AttributeError):
        cp.no_such_name
