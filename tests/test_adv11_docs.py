"""Checks found by running the documented examples as a new user (README, docs/tvm.md "Library use")."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# docs/tvm.md: `from tvm_integration import (..., tune)` then `tune(mod, target, info, ...)`. The submodule was
# also named `tune`: once imported (directly, or through `from tvm_integration import tune_with_report` /
# `default_database_dir`), the package attribute `tune` was that module and `tune(mod, ...)` raised "'module'
# object is not callable". The submodule is `tvm_integration.tuning` now.
_PROBE = """
import sys
{pre}
from tvm_integration import tune
import tvm_integration.tuning as tuning
assert callable(tune) and tune is tuning.tune, tune
tuning.tune_with_report = lambda *a, **k: (("db", a, k["trials"]), None)   # no TVM needed
print(tune("mod", "target", None, trials=5)[0], tuning.plan_trials(64, 10))
"""


@pytest.mark.parametrize("pre", ["pass", "import tvm_integration.tuning",
                                 "from tvm_integration import tune_with_report",
                                 "from tvm_integration import default_database_dir"])
def test_tune_is_the_function_in_any_import_order(pre):
    out = subprocess.run([sys.executable, "-c", _PROBE.format(pre=pre)], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "db (6, 20)"
